"""The OpenVINO backend: each compiled graph against PyTorch, whole images against diffusers, the compiled-model
cache, `auto`, and the bf16 refusal. On graphs without LoRA sites, which compile ~6× faster (LoRAs and textual
inversion on OpenVINO: tests/test_lora.py, tests/test_embeddings.py)."""

import numpy as np
import pytest
import torch

pytest.importorskip("openvino", reason="the openvino extra is not installed")

from sdrt.benchmarks.kernels import amx_share, kernel_mix  # noqa: E402
from sdrt.benchmarks.peak import openvino_kernels  # noqa: E402
from sdrt.cpu import cpu_flags  # noqa: E402
from sdrt.errors import BackendError  # noqa: E402
from sdrt.export.graphs import Shape, component_graphs  # noqa: E402
from sdrt.families import FAMILIES  # noqa: E402
from sdrt.manifest import load_manifest  # noqa: E402
from sdrt.runtime import Pipeline  # noqa: E402
from sdrt.runtime.backends import create_backend, resolve_auto  # noqa: E402
from sdrt.runtime.backends.openvino import OpenVinoBackend, check_precision  # noqa: E402

from parity_helpers import psnr, use_sampler  # noqa: E402

def _cpu_has_bf16() -> bool:
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


HAS_BF16 = _cpu_has_bf16()  # AVX512_BF16 or AMX: not on every machine this project runs on (AVX2-only EPYCs)
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 (AVX512_BF16 or AMX); "
                                "test_bf16_refused_where_the_cpu_lacks_it checks the refusal here")

# relative error = max |ov - torch| / max |torch|, as the exporter's validation
TOLERANCE = {"fp32": 1e-4, "bf16": 1e-1, "int8": 5e-2}  # bf16 keeps 8 mantissa bits; tiny's random U-Net: 6e-2


@pytest.fixture(scope="module")
def loaded(export_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("ov-cache")
    backends = {}
    for precision in ("fp32", "bf16") if HAS_BF16 else ("fp32",):
        b = OpenVinoBackend(precision=precision, cache_dir=cache)
        backends[precision] = b.load(export_dir("tiny", lora=False), load_manifest(export_dir("tiny", lora=False)))
    yield backends, cache
    for b in backends.values():
        b.close()


def _check_graphs_against_pytorch(backend, reference_pipeline, tolerance: str) -> None:
    for graph in component_graphs(reference_pipeline("tiny"), FAMILIES["sd1"], lora=False):
        inputs = graph.make_inputs(Shape(batch=1, latent_h=8, latent_w=12), torch.Generator().manual_seed(3))
        with torch.no_grad():
            expected = graph.module(*inputs.values())
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = backend.run(graph.name, {k: v.numpy() for k, v in inputs.items()})
        for spec, ref in zip(graph.outputs, expected):
            ref = ref.numpy()
            rel = np.abs(got[spec.name] - ref).max() / np.abs(ref).max()
            assert rel < TOLERANCE[tolerance], f"{graph.name}.{spec.name}: relative error {rel:.2e} ({tolerance})"


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=needs_bf16)])
def test_every_graph_matches_pytorch(loaded, reference_pipeline, precision):
    _check_graphs_against_pytorch(loaded[0][precision], reference_pipeline, precision)


HAS_AMX_BF16 = "amx_bf16" in cpu_flags()  # Sapphire Rapids class and newer


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=needs_bf16)])
def test_unet_computes_in_the_precision_asked_and_on_amx_where_present(loaded, precision):
    """OpenVINO's own kernel names for every convolution and product of the compiled U-Net: all of them in the
    precision asked for (bf16 is a hint OpenVINO may decline per layer), and on AMX tiles where the CPU has them."""
    mix = kernel_mix(loaded[0][precision].compiled_model("unet"))
    assert sum(mix.values()) >= 20, mix  # tiny's U-Net: 8 convolutions and 20-odd linear layers at least
    suffix = {"fp32": "_f32", "bf16": "_bf16"}[precision]
    assert all(kernel.endswith(suffix) for kernel in mix), mix
    # where AMX is present some of tiny's small layers may still take AVX-512 kernels: AMX must carry some
    assert (amx_share(mix) > 0) == (precision == "bf16" and HAS_AMX_BF16), mix


@needs_bf16
def test_peak_kernels_are_the_precision_measured():
    """The GEMM peak's products run on the kernels of the precision they stand for (int8: VNNI or AMX-INT8)."""
    assert all(k.endswith("_bf16") for k in openvino_kernels("bf16"))
    assert all(k.lower().endswith("_i8") for k in openvino_kernels("int8"))
    if HAS_AMX_BF16:
        assert amx_share(openvino_kernels("bf16")) == amx_share(openvino_kernels("int8")) == 1.0


def test_images_match_diffusers(export_dir, reference_pipeline):
    latents = np.random.default_rng(7).standard_normal((1, 4, 8, 12), dtype=np.float32)
    kwargs = dict(num_inference_steps=8, guidance_scale=7.5, height=64, width=96)
    with Pipeline.load(export_dir("tiny", lora=False), backend="openvino") as pipe:
        ours = pipe("a red circle", negative_prompt="dark", scheduler="ddim", latents=latents, **kwargs)
    ref = reference_pipeline("tiny")
    use_sampler(ref, "ddim")
    with torch.no_grad():
        image = ref("a red circle", negative_prompt="dark", latents=torch.from_numpy(latents), output_type="np",
                    **kwargs).images[0]
    assert psnr(np.asarray(ours.images[0]), (image * 255).round().astype(np.uint8)) > 40


def _run_all(backend, reference_pipeline, shape):
    outputs = {}
    for graph in component_graphs(reference_pipeline("tiny"), FAMILIES["sd1"], lora=False):
        inputs = graph.make_inputs(shape, torch.Generator().manual_seed(3))
        outputs[graph.name] = backend.run(graph.name, {k: v.numpy() for k, v in inputs.items()})
    return outputs


def test_cache_misses_then_hits_keyed_on_precision_and_shape(export_dir, reference_pipeline, tmp_path):
    folder, shape = export_dir("tiny", lora=False), Shape(batch=1, latent_h=8, latent_w=8)

    def fresh(static_shapes=True, **kwargs):
        return OpenVinoBackend(cache_dir=tmp_path, static_shapes=static_shapes, **kwargs).load(folder, load_manifest(folder))

    first = fresh()
    _run_all(first, reference_pipeline, shape)
    assert len(first.cache) == 4 and set(first.cache.values()) == {"miss"}
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert len(folders) == 4 and not any(".tmp-" in f for f in folders)  # none half-written
    again = fresh()
    expected = _run_all(first, reference_pipeline, shape)
    got = _run_all(again, reference_pipeline, shape)
    assert set(again.cache.values()) == {"hit"} and sorted(p.name for p in tmp_path.iterdir()) == folders
    for name in expected:
        for out in expected[name]:
            np.testing.assert_array_equal(got[name][out], expected[name][out])
    _run_all(again, reference_pipeline, Shape(batch=1, latent_h=8, latent_w=12))  # new shapes (not the text encoder's)
    # another precision (bf16, or int8 weights where the CPU has no bf16): compiled anew
    other = fresh(precision="bf16") if HAS_BF16 else fresh(weights="int8")
    _run_all(other, reference_pipeline, shape)
    assert set(other.cache.values()) == {"miss"}
    counted = len(list(tmp_path.iterdir()))
    dynamic = fresh(static_shapes=False)  # compiled at load, for every shape
    assert set(dynamic.cache.values()) == {"miss"} and len(list(tmp_path.iterdir())) == counted + 4
    for name, outs in _run_all(dynamic, reference_pipeline, shape).items():
        for out, value in outs.items():
            rel = np.abs(value - expected[name][out]).max() / np.abs(expected[name][out]).max()
            assert rel < 1e-5, f"static and dynamic compiles differ on {name}.{out}: {rel:.1e}"
    for b in (first, again, other, dynamic):
        b.close()


def test_int8_weights_match_pytorch_and_are_compressed_once(export_dir, reference_pipeline, tmp_path):
    folder = export_dir("tiny", lora=False)
    backend = OpenVinoBackend(cache_dir=tmp_path, weights="int8").load(folder, load_manifest(folder))
    _check_graphs_against_pytorch(backend, reference_pipeline, "int8")
    backend.close()
    irs = sorted(tmp_path.glob("*-int8-*/*.xml"))
    assert [p.stem for p in irs] == sorted(["text_encoder", "unet", "vae_decoder", "vae_encoder"])
    assert 'element_type="u8"' in irs[1].read_text()  # the U-Net's weights really are 8-bit
    stamps = {p: p.stat().st_mtime_ns for p in irs}
    again = OpenVinoBackend(cache_dir=tmp_path, weights="int8").load(folder, load_manifest(folder))
    assert set(again.cache.values()) == {"hit"} and {p: p.stat().st_mtime_ns for p in irs} == stamps
    assert "int8 weights" in again.device
    again.close()


def test_backend_specs():
    assert create_backend("openvino:bf16:int8").weights == "int8" and create_backend("openvino").weights is None
    with pytest.raises(Exception, match="int8 weights, w8a8 and static shapes are openvino's"):
        create_backend("onnxruntime:int8")
    assert create_backend("openvino:bf16:static").static_shapes is True
    assert create_backend("openvino:bf16").precision == "bf16" and create_backend("ov").static_shapes is False
    with pytest.raises(Exception, match="at most a precision"):
        create_backend("openvino:bf16:fp32")


def test_auto_picks_openvino_when_installed():
    name, reason = resolve_auto()
    assert name == "openvino" and "OpenVINO is installed" in reason
    assert isinstance(create_backend("auto"), OpenVinoBackend)


def test_bf16_refused_where_the_cpu_lacks_it(export_dir):
    assert check_precision("bf16", ["FP32", "BF16"]) == "bf16"
    if not HAS_BF16:  # this machine: the real backend refuses before compiling anything
        with pytest.raises(BackendError, match="no bf16 support.*use precision fp32"):
            Pipeline.load(export_dir("tiny", lora=False), backend="openvino:bf16")
    with pytest.raises(BackendError, match="no bf16 support.*use precision fp32"):
        check_precision("bf16", ["FP32", "INT8"])
    with pytest.raises(BackendError, match="must be one of fp32, bf16"):
        check_precision("int4", ["FP32"])
