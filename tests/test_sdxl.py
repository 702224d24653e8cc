"""SDXL on the runtime: tiny-sdxl (two text encoders of other widths, pooled embeddings, time ids) against diffusers'
StableDiffusionXL pipelines from a seed alone: text to image with several samplers, batches, an empty negative
prompt (zeros), prompt_2, CLIP skip; image to image and inpainting; ONNX Runtime and OpenVINO."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from PIL import Image

from sdrt.errors import UserInputError
from sdrt.manifest import load_manifest
from sdrt.runtime import Pipeline

from parity_helpers import assert_matches, psnr, use_sampler

PROMPT = "a red circle on a blue background"
KW = dict(num_inference_steps=6, height=64, width=96, guidance_scale=6.0)


@pytest.fixture(scope="module")
def sdxl(export_dir):
    with Pipeline.load(export_dir("tiny-sdxl")) as pipe:
        yield pipe


@pytest.fixture(scope="module")
def reference(reference_pipeline):
    pipe = reference_pipeline("tiny-sdxl")
    pipe.set_progress_bar_config(disable=True)
    for encoder in (pipe.text_encoder, pipe.text_encoder_2):  # diffusers' clip_skip reads .text_model (transformers 4)
        if not hasattr(encoder, "text_model"):
            object.__setattr__(encoder, "text_model", types.SimpleNamespace(final_layer_norm=encoder.final_layer_norm))
    return pipe


def _diffusers(pipe, seed, sampler="euler", **kwargs):
    use_sampler(pipe, sampler)
    kwargs = {**KW, **kwargs}
    generator = [torch.Generator().manual_seed(s) for s in seed] if isinstance(seed, list) else \
        torch.Generator().manual_seed(seed)
    with torch.no_grad():
        latents = pipe(output_type="latent", generator=generator, **kwargs).images
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    images = (pipe.image_processor.postprocess(image, output_type="np") * 255).round().astype(np.uint8)
    return latents.numpy(), images


def test_export_describes_both_text_encoders_and_the_extra_inputs(export_dir):
    m = load_manifest(export_dir("tiny-sdxl"))
    assert m.family == "sdxl" and set(m.tokenizers) == {"tokenizer", "tokenizer_2"} and m.zero_empty_negative
    assert [t.name for t in m.components["text_encoder_2"].outputs] == ["last_hidden_state", "pooled"]
    unet = {t.name: t.shape for t in m.components["unet"].inputs}
    assert unet["encoder_hidden_states"] == ("2B", "T", 96)  # 32 + 64: the two encoders' widths side by side
    assert unet["text_embeds"] == ("2B", 40) and unet["time_ids"] == ("2B", 6)
    assert m.validation["passed"] and m.text_layers == 2  # 3 layers, counted back from the penultimate


@pytest.mark.parametrize("sampler", ["euler", "dpm++2m", "euler-a", "ddim"])
def test_text_to_image_from_a_seed_matches_diffusers(sdxl, reference, sampler):
    ours = sdxl(PROMPT, negative_prompt="dark, blurry", scheduler=sampler, seed=42, **KW)
    assert_matches(ours, _diffusers(reference, 42, sampler, prompt=PROMPT, negative_prompt="dark, blurry"))


def test_no_negative_prompt_is_zeros_and_batches_keep_their_seeds(sdxl, reference):
    prompts = [PROMPT, "a green square"]
    ours = sdxl(prompts, num_images=2, seed=[5, 6, 7, 8], **KW)  # no negative prompt: zero conditioning
    assert_matches(ours, _diffusers(reference, [5, 6, 7, 8], prompt=prompts, num_images_per_prompt=2))


def test_prompt_2_and_clip_skip(sdxl, reference):
    ours = sdxl(PROMPT, prompt_2="an oil painting", negative_prompt="dark", negative_prompt_2="noisy", seed=3, **KW)
    assert_matches(ours, _diffusers(reference, 3, prompt=PROMPT, prompt_2="an oil painting", negative_prompt="dark",
                                     negative_prompt_2="noisy"))
    # A1111's clip skip 2 is diffusers' clip_skip=1 (diffusers applies it to the prompt only: compare unguided)
    ours = sdxl(PROMPT, seed=3, clip_skip=2, **{**KW, "guidance_scale": 1.0})
    assert_matches(ours, _diffusers(reference, 3, prompt=PROMPT, clip_skip=1, guidance_scale=1.0))
    assert "Clip skip: 2" in ours.parameters[0]


def test_image_to_image_and_inpainting_match_diffusers(sdxl, reference):
    import diffusers

    init = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8))
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (16, 16, 64, 48))
    for cls, kwargs in ((diffusers.StableDiffusionXLImg2ImgPipeline, dict(image=init, strength=0.6)),
                        (diffusers.StableDiffusionXLInpaintPipeline, dict(image=init, mask_image=mask, strength=1.0)),
                        (diffusers.StableDiffusionXLInpaintPipeline, dict(image=init, mask_image=mask, strength=0.7))):
        ref = cls(**reference.components)
        ref.set_progress_bar_config(disable=True)
        ours = sdxl(PROMPT, negative_prompt="dark", seed=9, **kwargs, **KW)
        assert_matches(ours, _diffusers(ref, 9, prompt=PROMPT, negative_prompt="dark", **kwargs))


def test_openvino_runs_sdxl(export_dir, reference):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    with Pipeline.load(export_dir("tiny-sdxl"), backend="openvino") as pipe:
        ours = pipe(PROMPT, negative_prompt="dark", seed=11, **KW)
    assert_matches(ours, _diffusers(reference, 11, prompt=PROMPT, negative_prompt="dark"))


def test_prompt_2_needs_a_second_text_encoder(export_dir):
    with Pipeline.load(export_dir("tiny")) as pipe:
        with pytest.raises(UserInputError, match="second text encoder"):
            pipe(PROMPT, prompt_2="x", num_inference_steps=1, height=64, width=64)


def test_fp16_export_keeps_the_vae_in_fp32(export_dir, sdxl):
    """SDXL's VAE overflows in fp16 (diffusers' force_upcast): an --fp16 export keeps both VAE graphs in fp32."""
    folder = export_dir("tiny-sdxl", fp16=True)
    m = load_manifest(folder)
    assert {n: c.precision for n, c in m.components.items()} == {
        "text_encoder": "fp16", "text_encoder_2": "fp16", "unet": "fp16", "vae_decoder": "fp32", "vae_encoder": "fp32"}
    with Pipeline.load(folder) as fp16:
        half = fp16(PROMPT, negative_prompt="dark", seed=2, **KW)
    full = sdxl(PROMPT, negative_prompt="dark", seed=2, **KW)
    assert np.isfinite(half.latents).all() and np.asarray(half.images[0]).std() > 1  # no NaN, no flat image
    assert psnr(np.asarray(half.images[0]), np.asarray(full.images[0])) > 25


def test_sdxl_serves_automatic1111s_api(export_dir, sdxl):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    import base64
    import io

    from test_serve import Server

    server = Server(export_dir("tiny-sdxl"))
    try:
        body = {"prompt": PROMPT, "negative_prompt": "", "seed": 4, "steps": 6, "width": 96, "height": 64,
                "cfg_scale": 6.0, "sampler_name": "Euler", "override_settings": {"CLIP_stop_at_last_layers": 2}}
        answer = server.client.post("/sdapi/v1/txt2img", json=body)
        assert answer.status_code == 200, answer.text
        served = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))
    finally:
        server.close()
    # A1111 zeros an empty negative prompt on SDXL and ignores CLIP skip there (its encoders take their own layer)
    alone = sdxl(PROMPT, seed=4, scheduler="euler", **KW)
    assert np.array_equal(np.asarray(served.convert("RGB")), np.asarray(alone.images[0]))


def test_serve_with_a_refiner(export_dir, base_and_refiner):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    import base64
    import io

    from test_serve import Server

    server = Server(export_dir("tiny-sdxl"), "--refiner", str(export_dir("tiny-sdxl-refiner")))
    try:
        models = server.client.get("/sdapi/v1/sd-models").json()
        refiner = models[1]["title"]
        assert len(models) == 2 and refiner.startswith("tiny-sdxl-refiner [")
        body = {"prompt": PROMPT, "negative_prompt": "dark", "seed": 6, "steps": 10, "width": 96, "height": 64,
                "cfg_scale": 6.0, "sampler_name": "Euler", "refiner_checkpoint": refiner, "refiner_switch_at": 0.7}
        answer = server.client.post("/sdapi/v1/txt2img", json=body)
        assert answer.status_code == 200, answer.text
        served = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))
        other = server.client.post("/sdapi/v1/txt2img", json={**body, "refiner_checkpoint": "sd_xl_refiner_1.0"})
        assert other.status_code == 422 and refiner in other.json()["detail"]
    finally:
        server.close()
    alone = base_and_refiner(PROMPT, negative_prompt="dark", seed=6, scheduler="euler", refiner_switch_at=0.7,
                             **{**KW, "num_inference_steps": 10})
    assert np.array_equal(np.asarray(served.convert("RGB")), np.asarray(alone.images[0]))


@pytest.fixture(scope="module")
def base_and_refiner(export_dir):
    with Pipeline.load(export_dir("tiny-sdxl"), refiner=export_dir("tiny-sdxl-refiner")) as pipe:
        yield pipe


@pytest.mark.parametrize("sampler", ["euler", "euler-a", "heun", "dpm++2m"])  # euler-a: the refiner continues the seed
def test_base_and_refiner_match_diffusers_hand_over(base_and_refiner, reference_pipeline, sampler):
    base, refiner = reference_pipeline("tiny-sdxl"), reference_pipeline("tiny-sdxl-refiner")
    refiner.set_progress_bar_config(disable=True)
    use_sampler(base, sampler)
    use_sampler(refiner, sampler)
    generator = torch.Generator().manual_seed(42)  # one stream through both, as the runtime draws them
    kwargs = dict(prompt=PROMPT, negative_prompt="dark", num_inference_steps=10, guidance_scale=6.0, generator=generator,
                  output_type="latent")
    with torch.no_grad():
        handed = base(height=64, width=96, denoising_end=0.7, **kwargs).images
        expected = refiner(image=handed, denoising_start=0.7, **kwargs).images.numpy()
    ours = base_and_refiner(PROMPT, negative_prompt="dark", scheduler=sampler, seed=42, refiner_switch_at=0.7,
                            **{**KW, "num_inference_steps": 10})
    assert np.abs(ours.latents - expected).max() / np.abs(expected).max() < 1e-4
    assert "Refiner: tiny-sdxl-refiner [" in ours.parameters[0] and "Refiner switch at: 0.7" in ours.parameters[0]


def test_the_refiner_alone_is_an_image_to_image_model(export_dir, reference_pipeline):
    init = Image.fromarray(np.random.default_rng(4).integers(0, 256, (64, 96, 3), dtype=np.uint8))
    ref = reference_pipeline("tiny-sdxl-refiner")
    use_sampler(ref, "euler")
    with Pipeline.load(export_dir("tiny-sdxl-refiner")) as refiner:
        ours = refiner(PROMPT, negative_prompt="dark", image=init, strength=0.5, seed=8, **KW)
    assert_matches(ours, _diffusers(ref, 8, prompt=PROMPT, negative_prompt="dark", image=init, strength=0.5))


def test_refiner_mistakes_say_what_to_do(sdxl, base_and_refiner):
    with pytest.raises(UserInputError, match="needs a refiner"):
        sdxl(PROMPT, refiner_switch_at=0.8, **KW)
    for bad in (0, 1, 1.5, "0.8"):
        with pytest.raises(UserInputError, match="between 0 and 1"):
            base_and_refiner(PROMPT, refiner_switch_at=bad, **KW)


def _a1111_sdxl_conditioning(pipe, chunks_1, chunks_2):
    """AUTOMATIC1111's SDXL conditioning in torch: each encoder's chunks through it (penultimate states), weighted
    and rescaled as in test_prompts.a1111_embeddings, concatenated; the pooled embedding of the first chunk."""
    parts, pooled = [], None
    for encoder, chunks in ((pipe.text_encoder, chunks_1), (pipe.text_encoder_2, chunks_2)):
        out = []
        for k, (ids, weights) in enumerate(zip(chunks.ids, chunks.weights)):
            with torch.no_grad():
                result = encoder(torch.from_numpy(ids[None].astype(np.int64)), output_hidden_states=True)
            z = result.hidden_states[-2]
            if k == 0 and hasattr(result, "text_embeds"):
                pooled = result.text_embeds
            original_mean, size = z.mean(), z.abs().mean()
            weighted = z * torch.from_numpy(weights)[None, :, None]
            if original_mean.abs() > 1e-4 * size and weighted.mean().abs() > 1e-4 * size:
                weighted = weighted * (original_mean / weighted.mean())
            out.append(weighted)
        parts.append(torch.cat(out, dim=1))
    return torch.cat(parts, dim=-1), pooled


def test_long_weighted_prompts_on_both_encoders(export_dir, sdxl, reference):
    """A 200-token weighted prompt and a short weighted negative on tiny-sdxl give the image diffusers gives from
    the same conditioning computed in torch, as AUTOMATIC1111 builds it for SDXL (77·4 tokens into the U-Net)."""
    from sdrt.runtime.prompts import tokenize_prompt
    from sdrt.runtime.tokenizer import ClipTokenizer

    folder = export_dir("tiny-sdxl")
    manifest = load_manifest(folder)
    tokenizers = [ClipTokenizer(folder, manifest.tokenizers[name]) for name in ("tokenizer", "tokenizer_2")]
    prompt = "a (red:1.3) circle, [blurry], " + ", ".join(f"(detail{i})" for i in range(60))
    negative = "dark, (ugly:1.2)"
    pos = [tokenize_prompt(t, prompt) for t in tokenizers]
    neg = [tokenize_prompt(t, negative).padded(len(p), tokenize_prompt(t, "")) for t, p in zip(tokenizers, pos)]
    assert len(pos[0]) == len(pos[1]) == 4
    embeds, pooled = _a1111_sdxl_conditioning(reference, *pos)
    negative_embeds, negative_pooled = _a1111_sdxl_conditioning(reference, *neg)
    use_sampler(reference, "euler")
    latents = np.random.default_rng(1).standard_normal((1, 4, 8, 12), dtype=np.float32)
    with torch.no_grad():
        expected = reference(prompt_embeds=embeds, pooled_prompt_embeds=pooled, negative_prompt_embeds=negative_embeds,
                             negative_pooled_prompt_embeds=negative_pooled, latents=torch.from_numpy(latents),
                             output_type="latent", **KW).images.numpy()
    ours = sdxl(prompt, negative_prompt=negative, latents=latents, scheduler="euler", **KW)
    assert np.abs(ours.latents - expected).max() / np.abs(expected).max() < 1e-4
