"""Flux.1 on the runtime: tiny-flux (dev: the guidance embedding; double- and single-stream blocks, rotary ids, the
2×2 packing inside the graph) and a schnell-like variant of other latent channels, against diffusers' FluxPipeline
from a seed alone: the distilled guidance, true CFG with a negative prompt, batches; OpenVINO; fp16 graphs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdrt.errors import UserInputError
from sdrt.manifest import load_manifest
from sdrt.runtime import Pipeline

from parity_helpers import assert_matches
from transformer_variants import assert_fp16_export_close, assert_openvino_matches, diffusers_flux, variant_folder

PROMPTS = ["a red circle on a blue background", "a green square"]
KW = dict(num_inference_steps=4, height=64, width=96, guidance_scale=3.5)


@pytest.fixture(scope="module")
def flux(export_dir):
    with Pipeline.load(export_dir("tiny-flux")) as pipe:
        yield pipe


@pytest.fixture(scope="module")
def reference(reference_pipeline):
    pipe = reference_pipeline("tiny-flux")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _diffusers(pipe, seed: int, **kwargs):
    return diffusers_flux(pipe, seed, **{**KW, **kwargs})


def test_export_describes_the_transformer(export_dir):
    m = load_manifest(export_dir("tiny-flux"))
    assert m.family == "flux" and set(m.components) >= {"text_encoder", "t5_encoder", "unet"}
    unet = m.components["unet"]
    assert unet.input("sample").shape == ("2B", 16, "h", "w")  # unpacked: the graph packs it
    assert unet.input("encoder_hidden_states").shape == ("2B", 512, 64)
    own = [t.name for t in unet.inputs if not t.name.endswith((".lora_down", ".lora_up"))]  # LoRA sites besides
    assert own == ["sample", "timestep", "encoder_hidden_states", "pooled_projections", "guidance"]
    assert m.size_multiple == 16 and m.vae_shift_factor == pytest.approx(0.1159) and m.default_size == 512


def test_text_to_image_matches_diffusers(flux, reference):
    ours = flux(PROMPTS, seed=11, num_images=2, **KW)
    assert_matches(ours, _diffusers(reference, 11, prompt=PROMPTS, num_images_per_prompt=2))
    assert "CFG scale: 1," in ours.parameters[0] and "Distilled CFG Scale: 3.5" in ours.parameters[0]


@pytest.mark.parametrize("sampler, solver", [("DPM++ 2M", "DPMSolverMultistepScheduler"),
                                             ("UniPC", "UniPCMultistepScheduler")])
def test_solvers_in_their_flow_form_match_diffusers(flux, reference, sampler, solver):
    """DPM++ 2M and UniPC on Flux: diffusers' schedulers with flow sigmas and Flux's dynamic shift (the pipeline
    then gives them μ and no σ list of its own)."""
    import diffusers

    config = reference.scheduler.config
    scheduler = getattr(diffusers, solver).from_config(config, use_flow_sigmas=True, prediction_type="flow_prediction",
                                                       flow_shift=config["shift"])
    ours = flux(PROMPTS[0], seed=7, scheduler=sampler, **KW)
    assert_matches(ours, _diffusers(type(reference)(**{**reference.components, "scheduler": scheduler}), 7,
                                    prompt=PROMPTS[0]))
    assert f"Sampler: {sampler}," in ours.parameters[0]


def test_true_cfg_with_a_negative_prompt_matches_diffusers(flux, reference):
    kwargs = dict(negative_prompt=["", "blurry"], true_cfg_scale=2.5, guidance_scale=2.0, prompt_2=["a cat", "a tree"],
                  negative_prompt_2=["dark", ""])  # T5 reads prompt_2
    ours = flux(PROMPTS, seed=3, **{**KW, **kwargs})
    assert_matches(ours, _diffusers(reference, 3, prompt=PROMPTS, **kwargs))
    plain = flux(PROMPTS, seed=3, **{**KW, "guidance_scale": 2.0, "prompt_2": ["a cat", "a tree"]})
    assert np.abs(plain.latents - ours.latents).max() > 1e-2, "the negative prompt changed nothing"


def test_schnell_like_variant_from_a_diffusers_folder(tmp_path):
    """No guidance embedding, 8 latent channels, a fixed shift: another configuration, exported from its folder."""
    from sdrt.export import export

    folder, pipe = variant_folder("tiny-flux", tmp_path, {
        "transformer": {"guidance_embeds": False, "in_channels": 32, "num_single_layers": 1},
        "vae": {"latent_channels": 8},
        "scheduler": {"use_dynamic_shifting": False, "shift": 1.0}})
    export(str(folder), tmp_path / "export", size_range=(48, 256))
    m = load_manifest(tmp_path / "export")
    assert "guidance" not in [t.name for t in m.components["unet"].inputs] and m.latent_channels == 8
    with Pipeline.load(tmp_path / "export") as ours:
        result = ours(PROMPTS[1], seed=5, **{**KW, "height": 80, "width": 48})
    assert_matches(result, _diffusers(pipe, 5, prompt=PROMPTS[1], height=80, width=48))


def test_openvino_matches_onnx_runtime(flux, export_dir):
    assert_openvino_matches(export_dir("tiny-flux"), flux, PROMPTS[0], seed=4, **KW)


def test_fp16_export_keeps_t5_in_fp32_and_stays_close(flux, export_dir):
    assert_fp16_export_close(export_dir("tiny-flux", fp16=True), flux, PROMPTS[0], seed=4, **KW)


def test_mistakes_are_refused(flux, export_dir):
    with pytest.raises(UserInputError, match="Heun flow sampler takes no custom sigmas"):
        flux(PROMPTS[0], scheduler="heun", **KW)
    with pytest.raises(UserInputError, match="does not apply to a flow-matching model"):
        flux(PROMPTS[0], scheduler="Euler a", **KW)
    with pytest.raises(UserInputError, match="prompt_3 and negative_prompt_3 are for models with a third text encoder"):
        flux(PROMPTS[0], prompt_3="a cat", **KW)
    with pytest.raises(UserInputError, match="no LoRA named 'style'"):
        flux(PROMPTS[0] + " <lora:style:0.5>", **KW)
    with Pipeline.load(export_dir("tiny-sd3")) as sd3, pytest.raises(UserInputError, match="true_cfg_scale is for"):
        sd3(PROMPTS[0], true_cfg_scale=2.0, **KW)


def test_too_big_to_load_is_refused_before_any_work(export_dir, monkeypatch):
    """The runtime's estimate (graphs on disk × what the backend holds per byte) against the free memory."""
    import sdrt.memory

    folder = export_dir("tiny-flux")
    monkeypatch.setattr(sdrt.memory, "available_bytes", lambda: 300_000_000)
    for backend in ("onnxruntime", "openvino:bf16"):
        with pytest.raises(UserInputError, match=f"loading .* on {backend.split(':')[0]} needs about"):
            Pipeline.load(folder, backend=backend)
    monkeypatch.setattr(sdrt.memory, "available_bytes", lambda: 64_000_000_000)
    with Pipeline.load(folder) as pipe:
        assert pipe(PROMPTS[0], seed=1, **KW).images


def test_automatic1111_api_serves_flux_as_forge(flux, export_dir):
    """Forge's fields: distilled_cfg_scale is the guidance input, cfg_scale true CFG (1: none); webuiapi's own
    payload defaults otherwise."""
    import base64
    import io

    from fastapi.testclient import TestClient
    from PIL import Image
    from sdrt.serve.app import create_app

    with TestClient(create_app(export_dir("tiny-flux"), load_in_background=False)) as client:
        payload = {"prompt": PROMPTS[0], "steps": 4, "width": 96, "height": 64, "cfg_scale": 1, "seed": 9,
                   "distilled_cfg_scale": 2.5, "sampler_name": "Euler"}
        r = client.post("/sdapi/v1/txt2img", json=payload)
        assert r.status_code == 200, r.text
        served = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("RGB")
        expected = flux(PROMPTS[0], seed=9, **{**KW, "guidance_scale": 2.5}).images[0]
        assert np.array_equal(np.asarray(served), np.asarray(expected))
        assert "Distilled CFG Scale: 2.5" in json.loads(r.json()["info"])["infotexts"][0]


@pytest.mark.parametrize("pipeline", ["FluxImg2ImgPipeline", "FluxInpaintPipeline"])
def test_image_to_image_and_inpainting_match_diffusers(flux, reference, pipeline):
    """Strength 0.7 of 5 steps runs 4 here (SD 1.x would run 3: diffusers' pipelines round differently)."""
    import diffusers
    from PIL import Image

    rng = np.random.default_rng(3)
    init = Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    mask = {"mask_image": Image.fromarray(np.pad(np.full((32, 48), 255, np.uint8), ((16, 16), (32, 16))))} \
        if pipeline == "FluxInpaintPipeline" else {}
    kw = dict(image=init, strength=0.7, num_inference_steps=5, **mask)
    ours = flux(PROMPTS[0], seed=5, guidance_scale=3.5, **kw)
    edit = getattr(diffusers, pipeline)(**reference.components)
    edit.set_progress_bar_config(disable=True)
    assert_matches(ours, _diffusers(edit, 5, prompt=PROMPTS[0], **kw))


