"""The OpenVINO backend: each compiled graph against PyTorch, whole images against diffusers, the compiled-model
cache, `auto`, and the bf16 refusal."""

import numpy as np
import pytest
import torch

pytest.importorskip("openvino", reason="the openvino extra is not installed")

from sdrt.errors import BackendError  # noqa: E402
from sdrt.export.graphs import Shape, component_graphs  # noqa: E402
from sdrt.families import FAMILIES  # noqa: E402
from sdrt.manifest import load_manifest  # noqa: E402
from sdrt.runtime import Pipeline  # noqa: E402
from sdrt.runtime.backends import create_backend, resolve_auto  # noqa: E402
from sdrt.runtime.backends.openvino import OpenVinoBackend, check_precision  # noqa: E402

from parity_helpers import psnr, use_sampler  # noqa: E402

# relative error = max |ov - torch| / max |torch|, as the exporter's validation
TOLERANCE = {"fp32": 1e-4, "bf16": 1e-1}  # bf16 keeps 8 mantissa bits; tiny's random U-Net: 6e-2


@pytest.fixture(scope="module")
def loaded(export_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("ov-cache")
    backends = {}
    for precision in ("fp32", "bf16"):
        b = OpenVinoBackend(precision=precision, cache_dir=cache)
        backends[precision] = b.load(export_dir("tiny"), load_manifest(export_dir("tiny")))
    yield backends, cache
    for b in backends.values():
        b.close()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_every_graph_matches_pytorch(loaded, reference_pipeline, precision):
    backend = loaded[0][precision]
    pipe = reference_pipeline("tiny")
    for graph in component_graphs(pipe, FAMILIES["sd1"]):
        inputs = graph.make_inputs(Shape(batch=1, latent_h=8, latent_w=12), torch.Generator().manual_seed(3))
        with torch.no_grad():
            expected = graph.module(*inputs.values())
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = backend.run(graph.name, {k: v.numpy() for k, v in inputs.items()})
        for spec, ref in zip(graph.outputs, expected):
            ref = ref.numpy()
            rel = np.abs(got[spec.name] - ref).max() / np.abs(ref).max()
            assert rel < TOLERANCE[precision], f"{graph.name}.{spec.name}: relative error {rel:.2e} ({precision})"


def test_images_match_diffusers(export_dir, reference_pipeline):
    latents = np.random.default_rng(7).standard_normal((1, 4, 8, 12), dtype=np.float32)
    kwargs = dict(num_inference_steps=8, guidance_scale=7.5, height=64, width=96)
    with Pipeline.load(export_dir("tiny"), backend="openvino") as pipe:
        ours = pipe("a red circle", negative_prompt="dark", scheduler="ddim", latents=latents, **kwargs)
    ref = reference_pipeline("tiny")
    use_sampler(ref, "ddim")
    with torch.no_grad():
        image = ref("a red circle", negative_prompt="dark", latents=torch.from_numpy(latents), output_type="np",
                    **kwargs).images[0]
    assert psnr(np.asarray(ours.images[0]), (image * 255).round().astype(np.uint8)) > 40


def test_cache_misses_then_hits_and_keys_on_precision(loaded, export_dir):
    backends, cache = loaded
    assert set(backends["fp32"].cache.values()) == {"miss"} and set(backends["bf16"].cache.values()) == {"miss"}
    folders = sorted(p.name for p in cache.iterdir())
    assert len(folders) == 8 and not any(".tmp-" in f for f in folders)  # 4 graphs x 2 precisions, none half-written
    again = OpenVinoBackend(precision="fp32", cache_dir=cache).load(export_dir("tiny"), load_manifest(export_dir("tiny")))
    assert set(again.cache.values()) == {"hit"}
    again.close()
    assert sorted(p.name for p in cache.iterdir()) == folders


def test_auto_picks_openvino_when_installed():
    name, reason = resolve_auto()
    assert name == "openvino" and "OpenVINO is installed" in reason
    assert isinstance(create_backend("auto"), OpenVinoBackend)


def test_bf16_refused_where_the_cpu_lacks_it():
    assert check_precision("bf16", ["FP32", "BF16"]) == "bf16"
    with pytest.raises(BackendError, match="no bf16 support.*use precision fp32"):
        check_precision("bf16", ["FP32", "INT8"])
    with pytest.raises(BackendError, match="must be one of fp32, bf16"):
        check_precision("int4", ["FP32"])
