"""SD 3 / 3.5 on the runtime: tiny-sd3 (an MMDiT with dual attention and RMS-normed q/k as 3.5 medium, CLIP-L,
CLIP-G and T5, a 16-channel VAE with a shift) against diffusers' StableDiffusion3 pipelines from a seed alone:
flow-matching Euler and Heun, batches with negative prompts, image to image, no T5; OpenVINO; fp16 graphs; the
AUTOMATIC1111 API."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from sdrt.errors import UserInputError
from sdrt.manifest import load_manifest
from sdrt.runtime import Pipeline

from parity_helpers import assert_matches
from transformer_variants import assert_fp16_export_close, assert_openvino_matches, diffusers_sd3

PROMPTS = ["a red circle on a blue background", "a green square"]
NEGATIVES = ["", "blurry"]
KW = dict(num_inference_steps=4, height=64, width=96, guidance_scale=5.0)
A1111_NAMES = {"euler": "Euler", "heun": "Heun", "dpm++2m": "DPM++ 2M", "unipc": "UniPC"}  # what Forge calls them


@pytest.fixture(scope="module")
def sd3(export_dir):
    with Pipeline.load(export_dir("tiny-sd3")) as pipe:
        yield pipe


@pytest.fixture(scope="module")
def reference(reference_pipeline):
    pipe = reference_pipeline("tiny-sd3")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _diffusers(pipe, sampler: str, seed: int, **kwargs):
    return diffusers_sd3(pipe, sampler, seed, **{**KW, **kwargs})


def test_export_describes_the_transformer_and_t5(export_dir):
    m = load_manifest(export_dir("tiny-sd3"))
    assert m.family == "sd3" and set(m.components) >= {"text_encoder", "text_encoder_2", "t5_encoder", "unet"}
    unet = m.components["unet"]
    assert unet.input("encoder_hidden_states").shape == ("2B", 77 + 256, 64)  # CLIP's window, then T5's tokens
    assert unet.input("pooled_projections").shape == ("2B", 64)
    assert m.latent_channels == 16 and m.vae_shift_factor == pytest.approx(0.0609)
    assert m.size_multiple == 16 and m.tokenizers["tokenizer_3"].model_max_length == 256
    # LoRA sites on the CLIP encoders and the transformer, none on T5 (tests/test_transformer_lora.py)
    with_sites = {name for name, spec in m.components.items() if any(t.name.endswith(".lora_up") for t in spec.inputs)}
    assert with_sites == {"text_encoder", "text_encoder_2", "unet"}


@pytest.mark.parametrize("sampler, prompts", [("euler", {}), ("heun", {"prompt_2": ["a blue star", "a dog"],
                                                                       "prompt_3": ["a cat", "a tree"],
                                                                       "negative_prompt_3": ["dark", ""]}),
                                              ("dpm++2m", {}), ("unipc", {})])
def test_text_to_image_matches_diffusers(sd3, reference, sampler, prompts):
    """Heun with each encoder's own prompts: CLIP-G's prompt_2, T5's prompt_3 and negative_prompt_3; DPM++ 2M and
    UniPC in their flow form (diffusers' schedulers with flow sigmas and the model's shift)."""
    ours = sd3(PROMPTS, negative_prompt=NEGATIVES, seed=11, num_images=2, scheduler=sampler, **KW, **prompts)
    expected = _diffusers(reference, sampler, 11, prompt=PROMPTS, negative_prompt=NEGATIVES, num_images_per_prompt=2,
                          **prompts)
    assert_matches(ours, expected)
    assert f"Sampler: {A1111_NAMES[sampler]}," in ours.parameters[0]


@pytest.mark.parametrize("pipeline", ["StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline"])
def test_image_to_image_and_inpainting_match_diffusers(sd3, reference, pipeline):
    """Strength 0.7 of 5 steps runs 4 here (SD 1.x would run 3: diffusers' pipelines round differently). The
    inpainting images are compared with diffusers' latents decoded with the VAE's shift, which diffusers 0.42's
    StableDiffusion3InpaintPipeline leaves out of its own decode."""
    import diffusers

    rng = np.random.default_rng(3)
    init = Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    mask = {"mask_image": Image.fromarray(np.pad(np.full((32, 48), 255, np.uint8), ((16, 16), (32, 16))))} \
        if pipeline == "StableDiffusion3InpaintPipeline" else {}
    kw = dict(image=init, strength=0.7, num_inference_steps=5, guidance_scale=4.0, **mask)
    ours = sd3(PROMPTS[0], seed=5, scheduler="euler", **kw)
    edit = getattr(diffusers, pipeline)(**reference.components)
    assert_matches(ours, _diffusers(edit, "euler", 5, prompt=PROMPTS[0], **kw))


def test_diffusers_folder_without_t5_conditions_on_zeros_as_diffusers(reference, tmp_path):
    """A diffusers folder exported with --no-t5: T5 is not loaded, and zeros stand in for it."""
    from diffusers import StableDiffusion3Pipeline
    from sdrt.export import export

    parts = {k: v for k, v in reference.components.items() if k not in ("text_encoder_3", "tokenizer_3")}
    no_t5 = StableDiffusion3Pipeline(**parts, text_encoder_3=None, tokenizer_3=None)
    no_t5.set_progress_bar_config(disable=True)
    reference.save_pretrained(tmp_path / "folder")
    export(str(tmp_path / "folder"), tmp_path / "export", t5=False, size_range=(64, 256))
    m = load_manifest(tmp_path / "export")
    assert "t5_encoder" not in m.components and "tokenizer_3" not in m.tokenizers
    with Pipeline.load(tmp_path / "export") as pipe:
        ours = pipe(PROMPTS[1], seed=2, **KW)
    assert_matches(ours, _diffusers(no_t5, "euler", 2, prompt=PROMPTS[1]))


def test_openvino_matches_onnx_runtime(sd3, export_dir):
    assert_openvino_matches(export_dir("tiny-sd3"), sd3, PROMPTS[0], seed=4, **KW)


def test_fp16_export_keeps_t5_in_fp32_and_stays_close(sd3, export_dir):
    assert_fp16_export_close(export_dir("tiny-sd3", fp16=True), sd3, PROMPTS[0], seed=4, **KW)


def test_samplers_that_do_not_apply_are_refused(sd3, export_dir):
    with pytest.raises(UserInputError, match="does not apply to a flow-matching model.*DPM\\+\\+ 2M, Euler, Heun or UniPC"):
        sd3(PROMPTS[0], scheduler="DPM++ 2M Karras", **KW)
    with pytest.raises(UserInputError, match="multiple of 16"):
        sd3(PROMPTS[0], height=72, width=64, num_inference_steps=2)
    with Pipeline.load(export_dir("tiny")) as sd1, pytest.raises(UserInputError, match="for flow-matching models"):
        sd1(PROMPTS[0], scheduler="flow-euler", num_inference_steps=2)


def test_automatic1111_api_serves_sd3(sd3, export_dir):
    from fastapi.testclient import TestClient
    from sdrt.serve.app import create_app

    app = create_app(export_dir("tiny-sd3"), load_in_background=False)
    with TestClient(app) as client:
        payload = {"prompt": PROMPTS[0], "steps": 4, "width": 96, "height": 64, "cfg_scale": 5, "seed": 9,
                   "sampler_name": "Euler"}
        r = client.post("/sdapi/v1/txt2img", json=payload)
        assert r.status_code == 200, r.text
        info = json.loads(r.json()["info"])
        assert info["sampler_name"] == "Euler" and info["seed"] == 9
        served = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("RGB")
        assert np.array_equal(np.asarray(served), np.asarray(sd3(PROMPTS[0], seed=9, **KW).images[0]))
        r = client.post("/sdapi/v1/txt2img", json={**payload, "sampler_name": "DPM++ 2M Karras"})
        assert r.status_code == 422 and "flow-matching" in r.text
        names = [s["name"] for s in client.get("/sdapi/v1/samplers").json()]
        assert names.count("Euler") == 1


def test_another_configuration_from_a_diffusers_folder(tmp_path):
    """SD 3 (not 3.5): no dual attention, no q/k norm, 4 latent channels, 3 layers, the size-dependent shift."""
    from sdrt.export import export

    from transformer_variants import variant_folder

    folder, pipe = variant_folder("tiny-sd3", tmp_path, {
        "transformer": {"in_channels": 4, "out_channels": 4, "num_layers": 3, "dual_attention_layers": [],
                        "qk_norm": None},
        "vae": {"latent_channels": 4},
        "scheduler": {"use_dynamic_shifting": True, "shift": 1.0}})
    export(str(folder), tmp_path / "export", size_range=(64, 256))
    assert load_manifest(tmp_path / "export").latent_channels == 4
    with Pipeline.load(tmp_path / "export") as ours:
        result = ours(PROMPTS, negative_prompt=NEGATIVES, seed=8, **{**KW, "height": 96, "width": 64})
    assert_matches(result, _diffusers(pipe, "euler", 8, prompt=PROMPTS, negative_prompt=NEGATIVES, height=96,
                                       width=64))
