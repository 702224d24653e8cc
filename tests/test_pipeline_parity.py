"""The runtime's images equal diffusers' StableDiffusionPipeline given the same starting latents."""

import numpy as np
import pytest
import torch

from sdrt.runtime import Pipeline

from parity_helpers import DIFFUSERS_CLASS, psnr, use_sampler

PROMPT = "a red circle on a blue background"
STEPS = 8


def diffusers_run(pipe, sampler, latents=None, **kwargs):
    use_sampler(pipe, sampler)
    if latents is not None:
        kwargs["latents"] = torch.from_numpy(latents)
    with torch.no_grad():
        final = pipe(output_type="latent", num_inference_steps=STEPS, **kwargs).images
        image = pipe.vae.decode(final / pipe.vae.config.scaling_factor, return_dict=False)[0]
    image = pipe.image_processor.postprocess(image, output_type="np")
    return final.numpy(), (image * 255).round().astype(np.uint8)


@pytest.mark.parametrize("model", ["tiny", "tiny-sd2"])  # epsilon and v-prediction
@pytest.mark.parametrize("sampler", ["ddim", "pndm", "dpm++2m"])
@pytest.mark.parametrize("size,negative", [((64, 64), "blurry, dark"), ((64, 96), None)])
def test_matches_diffusers(pipelines, reference_pipeline, model, sampler, size, negative):
    pipe = pipelines[model]
    height, width = size
    latents = np.random.default_rng(7).standard_normal((1, 4, height // 8, width // 8), dtype=np.float32)
    ours = pipe(PROMPT, negative_prompt=negative, num_inference_steps=STEPS, guidance_scale=7.5,
                height=height, width=width, scheduler=sampler, latents=latents)
    ref_latents, ref_images = diffusers_run(reference_pipeline(model), sampler, latents, prompt=PROMPT,
                                            negative_prompt=negative, guidance_scale=7.5, height=height, width=width)
    rel = np.abs(ours.latents - ref_latents).max() / np.abs(ref_latents).max()
    assert rel < 1e-4, f"final latents differ: relative error {rel:.2e}"
    assert psnr(np.asarray(ours.images[0]), ref_images[0]) > 40


def test_batch_and_no_guidance_match_diffusers(pipelines, reference_pipeline):
    pipe, prompts = pipelines["tiny"], ["a green square", "a yellow triangle on a gray background"]
    latents = np.random.default_rng(3).standard_normal((4, 4, 8, 8), dtype=np.float32)
    for guidance in (7.5, 1.0):  # 1.0: diffusers skips classifier-free guidance, so do we
        ours = pipe(prompts, num_inference_steps=STEPS, guidance_scale=guidance, height=64, width=64,
                    scheduler="ddim", num_images=2, latents=latents)
        ref_latents, ref_images = diffusers_run(reference_pipeline("tiny"), "ddim", latents, prompt=prompts,
                                                num_images_per_prompt=2, guidance_scale=guidance, height=64, width=64)
        assert len(ours.images) == 4
        assert np.abs(ours.latents - ref_latents).max() / np.abs(ref_latents).max() < 1e-4
        for mine, ref in zip(ours.images, ref_images):
            assert psnr(np.asarray(mine), ref) > 40


def test_fp16_export_stays_close(export_dir):
    latents = np.random.default_rng(5).standard_normal((1, 4, 8, 8), dtype=np.float32)
    kwargs = dict(num_inference_steps=STEPS, height=64, width=64, scheduler="ddim", latents=latents)
    with Pipeline.load(export_dir("tiny")) as fp32, Pipeline.load(export_dir("tiny", fp16=True)) as fp16:
        a, b = fp32(PROMPT, **kwargs), fp16(PROMPT, **kwargs)
    assert np.isfinite(b.latents).all()
    assert psnr(np.asarray(a.images[0]), np.asarray(b.images[0])) > 30


@pytest.mark.parametrize("model", ["tiny", "tiny-sd2"])
@pytest.mark.parametrize("sampler", sorted(DIFFUSERS_CLASS))
def test_seed_gives_diffusers_image(pipelines, reference_pipeline, model, sampler):
    """No latents passed: the seed alone (initial noise, then the stochastic samplers' step noise)
    reproduces diffusers with torch.Generator("cpu").manual_seed(seed)."""
    if sampler == "lms":
        pytest.importorskip("scipy", reason="diffusers' LMS scheduler integrates with scipy")
    seed = 1234
    ours = pipelines[model](PROMPT, negative_prompt="dark", num_inference_steps=STEPS, guidance_scale=7.5,
                            height=64, width=64, scheduler=sampler, seed=seed)
    ref_latents, ref_images = diffusers_run(reference_pipeline(model), sampler, prompt=PROMPT, negative_prompt="dark",
                                            guidance_scale=7.5, height=64, width=64,
                                            generator=torch.Generator("cpu").manual_seed(seed))
    rel = np.abs(ours.latents - ref_latents).max() / np.abs(ref_latents).max()
    assert rel < 1e-4, f"final latents differ: relative error {rel:.2e}"
    assert psnr(np.asarray(ours.images[0]), ref_images[0]) > 40


@pytest.mark.parametrize("sampler", ["dpm++2m", "euler-a"])  # euler-a: step noise from each image's generator
def test_a_seed_per_image_gives_each_image_its_own_run(pipelines, sampler):
    pipe = pipelines["tiny"]
    kwargs = dict(num_inference_steps=4, height=64, width=64, scheduler=sampler)
    joined = pipe(["a red circle", "a blue square", "a red circle"], seed=[7, 8, 9], **kwargs)
    assert joined.seeds == [7, 8, 9] and "Seed: 8" in joined.parameters[1]
    for i, (prompt, seed) in enumerate([("a red circle", 7), ("a blue square", 8), ("a red circle", 9)]):
        alone = pipe(prompt, seed=seed, **kwargs)
        np.testing.assert_allclose(joined.latents[i], alone.latents[0], rtol=0, atol=1e-4)
        assert psnr(np.asarray(joined.images[i]), np.asarray(alone.images[0])) > 50


def test_a_callback_can_stop_the_loop(pipelines):
    pipe = pipelines["tiny"]
    seen = []
    result = pipe("a red circle", seed=1, num_inference_steps=6, height=64, width=64,
                  callback=lambda i, n: seen.append(i) or i == 1)
    assert seen == [0, 1] and len(result.images) == 1
    with pytest.raises(Exception, match="one seed per image"):
        pipe("a red circle", seed=[1, 2], num_inference_steps=2, height=64, width=64)
