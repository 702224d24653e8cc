# make demo: export the built-in `tiny` model and generate a PNG on ONNX Runtime (CPU).
# make test: the test suite. Both create .venv and install the project into it first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sdrt-installed
DEMO := build/demo

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[export,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m sdrt.cli export tiny $(DEMO)/tiny
	$(PY) -m sdrt.cli generate $(DEMO)/tiny --prompt "a red circle on a blue background" \
		--negative-prompt "blurry" --steps 20 --seed 42 --sampler dpm++2m --out $(DEMO)/tiny.png

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf build $(VENV) .pytest_cache
