# make demo: export the built-in `shapes` model and draw a contact sheet of prompts on ONNX Runtime (CPU).
# make test: the test suite (but the few marked slow: make test-slow). Both create .venv and install the project first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sdrt-installed
DEMO := build/demo

.PHONY: demo test bench install clean

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[export,bench,openvino,tensorrt-rtx,serve,ray,test,controlnet]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m sdrt.cli export shapes $(DEMO)/shapes
	$(PY) scripts/demo.py $(DEMO)/shapes --out $(DEMO)/contact_sheet.png

test: $(STAMP) browser
	$(PY) -m pytest -q --durations=15 -m "not slow" tests

# make test-slow: the tests that install the benchmark's CPU peers from the package registries (~2 minutes)
.PHONY: test-slow
test-slow: $(STAMP)
	$(PY) -m pytest -q --durations=5 -m slow tests

# the page's tests drive headless Chromium: installed from the distribution when missing and this user may
# (root with apt-get); otherwise they skip and say how to install it
.PHONY: browser
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  echo "installing chromium and chromium-driver for the page's browser tests" && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	echo "no browser: the page's tests will skip (apt-get install chromium chromium-driver)"

# make bench: torch (diffusers) against ONNX Runtime and OpenVINO (fp32, bf16) on tiny and the SD 1.5 architecture
# at 256x256, on this machine; the report goes to benchmarks/results/cpu (committed; linked from the README).
# ~12 minutes and up to ~17 GB of memory on 2 cores (the SD 1.5 export, if not there yet, adds 3 minutes).
BENCH_BACKENDS ?= torch,onnxruntime,openvino,openvino:bf16
bench: $(STAMP)
	$(PY) -m sdrt.cli bench --model tiny sd15-arch --sizes 256 --steps 10 --warmup 1 --repeats 3 --quality \
		--backends $(BENCH_BACKENDS) --out benchmarks/results/cpu

# make train-shapes: train the built-in `shapes` model from scratch (~26 minutes on 2 CPU cores)
# and ship it into the package (sdrt/data/arch/shapes, sdrt/data/weights/shapes; git shows the change).
.PHONY: train-shapes
train-shapes: $(STAMP)
	$(PY) scripts/train_shapes.py --out build/shapes-train
	$(PY) scripts/ship_shapes.py build/shapes-train/model

# make train-shapes-lora: train the shapes-star LoRA (stars, a shape the shapes model was never shown; ~15 minutes
# on 2 CPU cores) and ship it into the package (sdrt/data/loras/shapes), where `sdrt export shapes` finds it.
.PHONY: train-shapes-lora
train-shapes-lora: $(STAMP)
	$(PY) scripts/train_shapes_lora.py --out build/shapes-lora --ship

# make train-shapes-lcm: distil the shapes model into a 4-step LCM-LoRA (latent consistency distillation, two runs of
# ~21 and ~23 minutes on 2 CPU cores, the second continuing the first at a lower learning rate) and ship it into the
# package (sdrt/data/loras/shapes), where `sdrt export shapes` finds it.
.PHONY: train-shapes-lcm
train-shapes-lcm: $(STAMP)
	$(PY) scripts/train_shapes_lcm.py --out build/shapes-lcm --minutes 20
	$(PY) scripts/train_shapes_lcm.py --out build/shapes-lcm2 --minutes 22 --lr 6e-4 --warmup-steps 10 --seed 1 \
		--resume build/shapes-lcm/shapes-lcm.safetensors --ship

# make train-shapes-controlnet: train the silhouette ControlNet (the shape drawn where a white-on-black silhouette
# is; ~20 minutes on 2 CPU cores) and ship it into the package (sdrt/data/controlnets/shapes), which `sdrt export
# shapes` exports with the model.
.PHONY: train-shapes-controlnet
train-shapes-controlnet: $(STAMP)
	$(PY) scripts/train_shapes_controlnet.py --out build/shapes-controlnet --ship

# make train-shapes-tiny-vae: distil the shapes VAE decoder into a tiny one (AutoencoderTiny; ~8 minutes on 2 CPU
# cores) and ship it into the package (sdrt/data/weights/shapes-tiny-vae), which `sdrt export shapes` exports for
# live previews and --vae tiny.
.PHONY: train-shapes-tiny-vae
train-shapes-tiny-vae: $(STAMP)
	$(PY) scripts/train_shapes_tiny_vae.py --out build/shapes-tiny-vae --ship

clean:
	rm -rf build $(VENV) .pytest_cache
