"""DeepCache (``sdrt export --deepcache``, ``deepcache_interval``): against diffusers' own sampler loop with its U-Net
run the DeepCache way (the whole U-Net every N-th call, its first level on the kept deep features between), from a
seed alone, with and without a LoRA, on ONNX Runtime and OpenVINO; interval 1 is the plain loop; mistakes are
clear errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from sdrt.components import UNET, UNET_SHALLOW
from sdrt.errors import ExportError, ManifestError, UserInputError
from sdrt.export import export
from sdrt.export.deepcache import DeepFeatureTap, ShallowUNet
from sdrt.runtime import Pipeline
from sdrt.runtime.deepcache import check_deepcache

from lora_files import kohya_lora
from parity_helpers import use_sampler

PROMPT = "a red circle on a blue background"
KW = dict(num_inference_steps=6, height=64, width=80, guidance_scale=6.0)


def _deepcache_diffusers(reference, interval: int, lora=None):
    """A copy of the diffusers pipeline whose U-Net calls run as DeepCache runs them (``lora``: a file, fused)."""
    pipe = copy.deepcopy(reference)
    if lora is not None:
        pipe.load_lora_weights(str(lora), adapter_name="l")
        pipe.fuse_lora(adapter_names=["l"])
    unet, whole, kept = pipe.unet, pipe.unet.forward, {}
    shallow = ShallowUNet(unet)

    def forward(sample, timestep, encoder_hidden_states, *args, **kwargs):
        call = kept["calls"] = kept.get("calls", -1) + 1
        if call % interval == 0:
            with DeepFeatureTap(unet) as tap:
                out = whole(sample, timestep, encoder_hidden_states, *args, **kwargs)
            kept["features"] = tap.features
            return out
        return (shallow(sample, timestep.expand(len(sample)), encoder_hidden_states, kept["features"]),)

    unet.forward = forward
    return pipe


def _latents(pipe, seed: int) -> np.ndarray:
    use_sampler(pipe, "euler")
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        return pipe(PROMPT, generator=torch.Generator().manual_seed(seed), output_type="latent", **KW).images.numpy()


def _difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def lora(tmp_path_factory, reference_pipeline):
    path = tmp_path_factory.mktemp("deepcache-lora") / "l.safetensors"
    kohya_lora(reference_pipeline("tiny"), path, seed=4, text=False)
    return path


@pytest.fixture(scope="module")
def cached(export_dir, lora):
    with Pipeline.load(export_dir("tiny", deep_cache=True), lora_dir=lora.parent) as pipe:
        yield pipe


def test_the_export_has_the_shallow_unet_and_the_features(cached):
    components = cached.manifest.components
    assert UNET_SHALLOW.FEATURES in [t.name for t in components[UNET.name].outputs]
    shallow_inputs = {t.name for t in components[UNET_SHALLOW.name].inputs}
    assert UNET_SHALLOW.FEATURES in shallow_inputs and not any("residual" in n for n in shallow_inputs)
    # the LoRA sites of the layers it runs, and no others
    assert any(n.startswith("down_blocks.0.attentions.") for n in shallow_inputs)
    assert not any(n.startswith(("mid_block.", "down_blocks.1.", "down_blocks.0.downsamplers")) for n in shallow_inputs)


@pytest.mark.parametrize("interval, with_lora", [(2, False), (3, True)])
def test_matches_diffusers_run_the_deepcache_way(cached, reference_pipeline, lora, interval, with_lora):
    expected = _latents(_deepcache_diffusers(reference_pipeline("tiny"), interval, lora if with_lora else None), 3)
    tag = " <lora:l:1>" if with_lora else ""
    ours = cached(PROMPT + tag, seed=3, scheduler="euler", deepcache_interval=interval, **KW)
    assert _difference(ours.latents, expected) < 1e-4
    whole = cached(PROMPT + tag, seed=3, scheduler="euler", **KW)
    assert _difference(whole.latents, expected) > 1e-3  # the reuse changes the result
    assert f"DeepCache interval: {interval}" in ours.parameters[0]


def test_interval_one_is_the_plain_loop(cached, export_dir):
    with Pipeline.load(export_dir("tiny")) as plain:
        expected = plain(PROMPT, seed=2, **KW).latents
    np.testing.assert_allclose(cached(PROMPT, seed=2, deepcache_interval=1, **KW).latents, expected, atol=1e-5)


def test_openvino_runs_the_shallow_unet_too(cached, export_dir):
    pytest.importorskip("openvino")
    with Pipeline.load(export_dir("tiny", deep_cache=True), backend="openvino") as ov:
        got = ov(PROMPT, seed=5, deepcache_interval=2, **KW).latents
    np.testing.assert_allclose(got, cached(PROMPT, seed=5, deepcache_interval=2, **KW).latents, atol=2e-3)


def test_mistakes_are_clear(cached, export_dir, tmp_path):
    with pytest.raises(UserInputError, match="whole number of at least 1"):
        cached(PROMPT, deepcache_interval=0, **KW)
    with pytest.raises(UserInputError, match="ControlNets"):
        check_deepcache(cached.manifest, 2, control=object())
    with Pipeline.load(export_dir("tiny")) as plain, pytest.raises(ManifestError, match="--deepcache"):
        plain(PROMPT, deepcache_interval=2, **KW)
    with pytest.raises(ExportError, match="transformer"):
        export("tiny-sd3", tmp_path / "sd3", deep_cache=True)
    assert not (tmp_path / "sd3").exists()


def test_the_bench_reports_time_flops_and_drift(export_dir, tmp_path):
    from sdrt.benchmarks.deepcache import DeepCacheBenchOptions, bench_deepcache, text

    opts = DeepCacheBenchOptions(model=str(export_dir("tiny", deep_cache=True)), backends=("onnxruntime",), size=64,
                                 steps=4, warmup=0, repeats=1, intervals=(1, 2), work_dir=tmp_path)
    report = bench_deepcache(opts, log=lambda msg: None)
    assert 0 < report["flops"]["shallow_share"] < 1
    timings = report["backends"]["onnxruntime"]
    assert timings["speedup"]["1"]["denoise"] == 1.0 and timings["seconds"]["2"]["denoise"]["median"] > 0
    quality = report["quality"]["by_interval"]
    assert quality["1"]["psnr_db_worst"] == float("inf") and quality["2"]["psnr_db_worst"] < float("inf")
    assert "| onnxruntime | 2 |" in text(report)
