"""The tiny VAE decoder (diffusers' AutoencoderTiny, TAESD's architecture): exported beside the VAE from a diffusers
folder, its images equal diffusers' with that decoder, used by live previews; the one trained for shapes reads like
the full decoder."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from sdrt import shapes
from sdrt.errors import ExportError, ModelSourceError, UserInputError
from sdrt.export import export
from sdrt.export.tiny_vae import add_to_export, load_tiny_vae, random_tiny_vae
from sdrt.runtime import Pipeline
from sdrt.runtime.preview import Preview


def _psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


@pytest.fixture(scope="module")
def taesd_folder(tmp_path_factory):
    """A random AutoencoderTiny for `tiny`'s latents (4 channels, 8×), as a diffusers folder (as madebyollin/taesd
    comes)."""
    folder = tmp_path_factory.mktemp("taesd")
    random_tiny_vae(4, 8, seed=1).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, taesd_folder):
    out = tmp_path_factory.mktemp("tiny-taesd") / "export"
    export("tiny", out, lora=False, tiny_vae=str(taesd_folder))
    return out


@pytest.mark.parametrize("sampler, diffusers_class", [("dpm++2m", "DPMSolverMultistepScheduler"),
                                                      ("euler a", "EulerAncestralDiscreteScheduler")])
def test_images_equal_diffusers_with_the_tiny_decoder(tiny_export, taesd_folder, reference_pipeline, sampler,
                                                      diffusers_class):
    import diffusers

    reference = reference_pipeline("tiny")
    vae, scheduler = reference.vae, reference.scheduler
    reference.vae = diffusers.AutoencoderTiny.from_pretrained(taesd_folder)
    reference.scheduler = getattr(diffusers, diffusers_class).from_config(scheduler.config)
    try:
        expected = reference(["a red circle", "a blue square"], generator=torch.Generator().manual_seed(5),
                             num_inference_steps=6, guidance_scale=7.5, output_type="np").images
    finally:
        reference.vae, reference.scheduler = vae, scheduler
    with Pipeline.load(tiny_export) as pipe:
        result = pipe(["a red circle", "a blue square"], seed=5, num_inference_steps=6, guidance_scale=7.5,
                      scheduler=sampler, vae="tiny")
    assert "VAE: tiny" in result.parameters[0]
    for image, want in zip(result.images, expected):
        assert _psnr(image, np.round(want * 255)) >= 45


def test_openvino_runs_the_tiny_decoder(tiny_export):
    kw = dict(seed=2, num_inference_steps=4, vae="tiny")
    with Pipeline.load(tiny_export) as pipe:
        ort = pipe("a green triangle", **kw).images[0]
    with Pipeline.load(tiny_export, backend="openvino") as pipe:
        ov = pipe("a green triangle", **kw).images[0]
    assert _psnr(ort, ov) >= 40


def test_previews_use_the_tiny_decoder(tiny_export):
    runs, shown = [], []
    with Pipeline.load(tiny_export) as pipe:
        pipe.backend.observers.append(lambda component, seconds: runs.append(component))
        pipe("a red circle", seed=1, num_inference_steps=6, preview=Preview(lambda step, images: shown.append(images),
                                                                            every=2, budget=100))
    assert len(shown) == 3 and shown[0][0].size == (256, 256)
    assert runs.count("vae_decoder_tiny") == 3 and runs.count("vae_decoder") == 1  # the image: the full decoder


def test_a_tiny_vae_added_to_an_existing_export(tmp_path, export_dir):
    out = tmp_path / "export"
    shutil.copytree(export_dir("tiny"), out)
    before = (out / "unet.onnx").stat().st_mtime_ns
    add_to_export(out, "random")
    with Pipeline.load(out) as pipe:  # the manifest and integrity record know the new graph
        assert pipe.preview_decoder == "vae_decoder_tiny"
        result = pipe("a red circle", seed=1, num_inference_steps=2, vae="tiny")
    assert result.images[0].size == (256, 256) and (out / "unet.onnx").stat().st_mtime_ns == before
    assert "vae_decoder_tiny" in (out / "validation.txt").read_text()


def test_bad_tiny_vaes_are_refused_clearly(tmp_path, export_dir, taesd_folder):
    with Pipeline.load(export_dir("tiny")) as pipe, pytest.raises(UserInputError, match="add-tiny-vae"):
        pipe("x", num_inference_steps=1, vae="tiny")
    with pytest.raises(ExportError, match="another family"):
        load_tiny_vae(taesd_folder, latent_channels=16, vae_scale=8)
    with pytest.raises(ExportError, match="another family"):
        load_tiny_vae(taesd_folder, latent_channels=4, vae_scale=4)
    with pytest.raises(ModelSourceError, match="AutoencoderTiny"):
        load_tiny_vae(tmp_path, latent_channels=4, vae_scale=8)


def test_the_shapes_tiny_decoder_reads_like_the_full_one(export_dir):
    """The shipped tiny decoder of `shapes` (scripts/train_shapes_tiny_vae.py): the reader reads the same prompts
    in its images as in the full decoder's."""
    prompts = [("red", "circle", "white"), ("blue", "square", "gray"), ("yellow", "triangle", "black"),
               ("green", "circle", "blue"), ("red", "triangle", "gray"), ("blue", "circle", "white")]
    captions = [shapes.caption(*p) for p in prompts]
    kw = dict(seed=[1, 2, 3, 4, 5, 6], num_inference_steps=25, guidance_scale=5.0, scheduler="dpm++2m")
    with Pipeline.load(export_dir("shapes")) as pipe:
        assert pipe.has_tiny_vae
        full = pipe(captions, **kw).images
        tiny = pipe(captions, **kw, vae="tiny").images
    same = sum(shapes.read(a) == shapes.read(b) for a, b in zip(tiny, full))
    psnr = [_psnr(a, b) for a, b in zip(tiny, full)]
    assert same >= 5 and np.median(psnr) >= 22, (same, psnr)
