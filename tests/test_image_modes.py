"""img2img, inpainting and outpainting equal diffusers' StableDiffusionImg2ImgPipeline and
StableDiffusionInpaintPipeline given the same seed (so the same noise, drawn in the same order)."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from sdrt.errors import UserInputError
from sdrt.runtime import Pipeline
from sdrt.runtime.images import outpaint_canvas, read_parameters

from parity_helpers import psnr, use_sampler

PROMPT, NEGATIVE = "a red circle on a blue background", "dark"
STEPS, SEED = 8, 42
HEIGHT, WIDTH = 64, 96


def picture(width=WIDTH, height=HEIGHT) -> Image.Image:
    """A gradient with a disc on it: an input with edges and smooth parts."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    image = Image.fromarray(pixels)
    ImageDraw.Draw(image).ellipse((width // 4, height // 4, width // 2, height * 3 // 4), fill=(230, 40, 40))
    return image


def mask_picture(width=WIDTH, height=HEIGHT) -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).rectangle((width // 2, 0, width - 1, height // 2), fill=255)
    return mask


@pytest.fixture(scope="module")
def pipes(export_dir):
    loaded = {m: Pipeline.load(export_dir(m)) for m in ("tiny", "tiny-sd2", "tiny-inpaint")}
    yield loaded
    for p in loaded.values():
        p.close()


def reference(reference_pipeline, model, cls_name, sampler):
    import diffusers

    base = reference_pipeline(model)
    pipe = getattr(diffusers, cls_name)(**{k: v for k, v in base.components.items()}, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    use_sampler(pipe, sampler)
    return pipe


def reference_run(pipe, **kwargs):
    with torch.no_grad():
        latents = pipe(output_type="latent", num_inference_steps=STEPS, **kwargs).images
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    image = pipe.image_processor.postprocess(image, output_type="np")
    return latents.numpy(), (image * 255).round().astype(np.uint8)


def assert_same(ours, ref_latents, ref_images):
    rel = np.abs(ours.latents - ref_latents).max() / np.abs(ref_latents).max()
    assert rel < 1e-4, f"final latents differ: relative error {rel:.2e}"
    for mine, ref in zip(ours.images, ref_images):
        assert psnr(np.asarray(mine), ref) > 40


@pytest.mark.parametrize("model", ["tiny", "tiny-sd2"])
@pytest.mark.parametrize("sampler,strength", [("ddim", 0.75), ("dpm++2m", 0.5), ("euler-a", 0.6), ("heun", 0.8), ("pndm", 1.0)])
def test_img2img_matches_diffusers(pipes, reference_pipeline, model, sampler, strength):
    ours = pipes[model](PROMPT, negative_prompt=NEGATIVE, image=picture(), strength=strength, num_inference_steps=STEPS,
                        scheduler=sampler, seed=SEED)
    ref = reference(reference_pipeline, model, "StableDiffusionImg2ImgPipeline", sampler)
    assert_same(ours, *reference_run(ref, prompt=PROMPT, negative_prompt=NEGATIVE, image=picture(), strength=strength,
                                     generator=torch.Generator().manual_seed(SEED)))
    assert ours.mode == "img2img" and ours.images[0].size == (WIDTH, HEIGHT)
    assert f"Denoising strength: {strength:g}" in ours.parameters[0]


def test_img2img_batch_matches_diffusers(pipes, reference_pipeline):
    prompts = [PROMPT, "a green square"]
    ours = pipes["tiny"](prompts, image=picture(), strength=0.7, num_inference_steps=STEPS, scheduler="ddim", seed=SEED,
                         num_images=2)
    ref = reference(reference_pipeline, "tiny", "StableDiffusionImg2ImgPipeline", "ddim")
    assert len(ours.images) == 4
    assert_same(ours, *reference_run(ref, prompt=prompts, image=picture(), strength=0.7, num_images_per_prompt=2,
                                     generator=torch.Generator().manual_seed(SEED)))


@pytest.mark.parametrize("model", ["tiny", "tiny-inpaint"])  # latent blending; a 9-channel inpainting U-Net
@pytest.mark.parametrize("sampler,strength", [("ddim", 1.0), ("dpm++2m", 0.7), ("euler-a", 1.0), ("euler", 0.6)])
def test_inpaint_matches_diffusers(pipes, reference_pipeline, model, sampler, strength):
    ours = pipes[model](PROMPT, negative_prompt=NEGATIVE, image=picture(), mask_image=mask_picture(), strength=strength,
                        num_inference_steps=STEPS, scheduler=sampler, seed=SEED)
    ref = reference(reference_pipeline, model, "StableDiffusionInpaintPipeline", sampler)
    assert_same(ours, *reference_run(ref, prompt=PROMPT, negative_prompt=NEGATIVE, image=picture(),
                                     mask_image=mask_picture(), strength=strength, height=HEIGHT, width=WIDTH,
                                     generator=torch.Generator().manual_seed(SEED)))
    inpainting = "model" if model == "tiny-inpaint" else "latent blend"
    assert ours.mode == "inpaint" and f"Inpainting: {inpainting}" in ours.parameters[0]


def test_latent_blending_keeps_the_unmasked_part(pipes):
    """With an ordinary model the final latents outside the mask are the image's own, whatever the prompt."""
    pipe, kwargs = pipes["tiny"], dict(image=picture(), mask_image=mask_picture(), num_inference_steps=STEPS, seed=SEED)
    a, b = pipe(PROMPT, **kwargs), pipe("a yellow triangle on a gray background", **kwargs)
    keep = np.asarray(mask_picture())[::8, ::8] < 128
    np.testing.assert_array_equal(a.latents[..., keep], b.latents[..., keep])
    assert not np.allclose(a.latents[..., ~keep], b.latents[..., ~keep])


def test_outpaint_canvas():
    canvas, mask = outpaint_canvas(picture(), 8, 0, 20, 3, factor=8)
    assert canvas.size == (WIDTH + 8 + 24, HEIGHT + 8)  # right and bottom rounded up to multiples of 8
    m = np.asarray(mask)
    assert (m[:HEIGHT, 8 : 8 + WIDTH] == 0).all() and (m[:, :8] == 255).all() and (m[HEIGHT:] == 255).all()
    np.testing.assert_array_equal(np.asarray(canvas)[:HEIGHT, 8 : 8 + WIDTH], np.asarray(picture()))
    np.testing.assert_array_equal(np.asarray(canvas)[:HEIGHT, 0], np.asarray(picture())[:, 0])  # edges stretched


@pytest.mark.parametrize("model", ["tiny", "tiny-inpaint"])
def test_outpaint_is_inpainting_of_the_grown_canvas(pipes, reference_pipeline, model):
    margins = (16, 0, 32, 8)
    ours = pipes[model](PROMPT, image=picture(), outpaint=margins, num_inference_steps=STEPS, scheduler="ddim", seed=SEED)
    canvas, mask = outpaint_canvas(picture(), *margins, factor=8)
    assert ours.images[0].size == canvas.size and "Outpaint: 16,0,32,8" in ours.parameters[0]
    ref = reference(reference_pipeline, model, "StableDiffusionInpaintPipeline", "ddim")
    assert_same(ours, *reference_run(ref, prompt=PROMPT, image=canvas, mask_image=mask, height=canvas.height,
                                     width=canvas.width, generator=torch.Generator().manual_seed(SEED)))


def test_inpainting_model_also_does_txt2img_and_img2img(pipes):
    pipe = pipes["tiny-inpaint"]
    txt = pipe(PROMPT, num_inference_steps=4, height=64, width=64, seed=1)
    img = pipe(PROMPT, image=picture(), strength=0.5, num_inference_steps=4, seed=1)
    assert txt.mode == "txt2img" and img.mode == "img2img"
    assert np.isfinite(txt.latents).all() and img.images[0].size == (WIDTH, HEIGHT)


def test_size_follows_the_image_or_resizes_it(pipes):
    pipe = pipes["tiny"]
    odd = picture(101, 70)
    assert pipe(PROMPT, image=odd, num_inference_steps=2, seed=0).images[0].size == (96, 64)  # rounded down to 8
    assert pipe(PROMPT, image=odd, num_inference_steps=2, seed=0, width=128, height=128).images[0].size == (128, 128)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(image=picture(), strength=1.5), "strength must be a number from 0 to 1"),
        (dict(image=picture(), strength=-0.1), "strength must be a number from 0 to 1"),
        (dict(image=picture(), strength="0.5"), "strength must be a number"),
        (dict(image=picture(), strength=0.1), "leaves no step to run"),
        (dict(strength=0.5), "strength applies to an input image"),
        (dict(image=picture(), mask_image=mask_picture(64, 64)), "mask is 64x64 but the image is 96x64"),
        (dict(mask_image=mask_picture()), "a mask needs the image"),
        (dict(image=picture(), mask_image=mask_picture(), inpaint_mode="model"), "not the 9 of an inpainting model"),
        (dict(image=picture(), mask_image=mask_picture(), inpaint_mode="fancy"), "inpaint mode must be one of"),
        (dict(image=picture(), outpaint=(0, 0, 0, 0)), "four whole numbers"),
        (dict(image=picture(), outpaint=(8, 8)), "four pixel margins"),
        (dict(outpaint=(8, 8, 8, 8)), "outpainting extends an image"),
        (dict(image=picture(), latents=np.zeros((1, 4, 8, 12), np.float32)), "latents= replaces the noise"),
        (dict(image=np.zeros((8, 8), np.float32)), "uint8 pixels"),
        (dict(image=42), "file path, a PIL image or a uint8 array"),
        (dict(image="does/not/exist.png"), "does not exist"),
    ],
)
def test_bad_image_requests(pipes, kwargs, message):
    with pytest.raises(UserInputError, match=message):
        pipes["tiny"](PROMPT, num_inference_steps=4, **kwargs)


def test_blend_refused_for_an_inpainting_model(pipes):
    with pytest.raises(UserInputError, match="this is an inpainting model"):
        pipes["tiny-inpaint"](PROMPT, image=picture(), mask_image=mask_picture(), inpaint_mode="blend")


def test_file_that_is_not_an_image(pipes, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    with pytest.raises(UserInputError, match="not an image Pillow can read"):
        pipes["tiny"](PROMPT, image=bad)


def test_cli_img2img_inpaint_and_errors(export_dir, tmp_path):
    folder = export_dir("tiny")
    picture().save(tmp_path / "in.png")
    mask_picture().save(tmp_path / "mask.png")
    base = [sys.executable, "-m", "sdrt.cli", "generate", str(folder), "--prompt", PROMPT, "--steps", "4", "--seed", "3",
            "--init-image", str(tmp_path / "in.png"), "-q"]
    run = subprocess.run(base + ["--strength", "0.5", "--out", str(tmp_path / "a.png")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "Denoising strength: 0.5" in read_parameters(tmp_path / "a.png")
    run = subprocess.run(base + ["--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "b.png")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "Inpainting: latent blend" in read_parameters(tmp_path / "b.png")
    run = subprocess.run(base + ["--strength", "2", "--out", str(tmp_path / "c.png")], capture_output=True, text=True)
    assert run.returncode == 2 and "strength must be a number from 0 to 1" in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "c.png").exists()
