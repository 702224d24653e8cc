"""η, s_noise and CLIP skip: DDIM's η against diffusers (step for step, and from a seed end to end); Euler a's and
DPM++ SDE's η and s_noise against k-diffusion's own samplers (transcribed in kdiffusion_reference); CLIP skip against
diffusers' ``clip_skip`` from a seed; infotext and errors."""

from __future__ import annotations

import json
import shutil
import types

import numpy as np
import pytest
import torch

from sdrt.errors import ManifestError, UserInputError
from sdrt.runtime import Pipeline
from sdrt.runtime.schedulers import make_scheduler

import kdiffusion_reference as kd
from parity_helpers import psnr, use_sampler
from scheduler_reference import SD15, SHAPE, NoiseTape, run_both

PROMPT = "a red circle on a blue background"


@pytest.mark.parametrize("eta", [0.3, 1.0])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_eta_matches_diffusers_step_for_step(eta, prediction_type):
    run_both("ddim", {**SD15, "prediction_type": prediction_type}, 10, eta=eta)


def _denoiser(x0):
    """A stand-in model: the x0 it predicts depends on the sample and σ, so errors cannot hide."""
    def numpy_version(x, sigma):
        return (x0 + 0.1 * np.tanh(x / (1 + sigma))).astype(np.float32)

    def torch_version(x, sigma):
        return torch.from_numpy(x0) + 0.1 * torch.tanh(x / (1 + sigma))

    return numpy_version, torch_version


def _run_ours(name, steps, x, denoise, tape, eta, s_noise):
    ours = make_scheduler(name, SD15)
    ours.set_noise_scales(eta=eta, s_noise=s_noise)
    ours.set_timesteps(steps)
    ours.set_noise_source(lambda shape: tape.draw("ours", shape))
    if hasattr(ours, "noise_sampler"):  # DPM++ SDE: its Brownian noise from the same tape as k-diffusion's
        ours.noise_sampler = tape.sampler("ours")
    for t in ours.timesteps:
        ours.scale_model_input(x, t)  # finds the step; the stand-in model reads the unscaled sample
        first = getattr(ours, "state_in_first_order", True)
        sigma = ours.sigmas[ours.step_index] if first else ours.mid_point_sigma
        eps = (x - denoise(x, sigma)) / sigma
        x = ours.step(eps.astype(np.float32), t, x)
    return x, ours


@pytest.mark.parametrize("name", ["euler-a", "dpm++sde", "dpm++sde-karras"])
@pytest.mark.parametrize("eta,s_noise", [(0.0, 1.0), (0.5, 1.0), (1.0, 0.7), (0.67, 1.3), (1.0, 1.0)])
def test_ancestral_eta_and_s_noise_match_k_diffusion(name, eta, s_noise):
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal(SHAPE).astype(np.float32)
    denoise, denoise_ref = _denoiser(x0)
    tape = NoiseTape(4)
    probe = make_scheduler(name, SD15)
    probe.set_timesteps(8)
    x = rng.standard_normal(SHAPE, dtype=np.float32) * np.float32(probe.init_noise_sigma)
    ours, scheduler = _run_ours(name, 8, x.copy(), denoise, tape, eta, s_noise)

    sigmas = scheduler.sigmas if name == "euler-a" else np.append(scheduler.sigmas[0::2], 0).astype(np.float32)
    sample = kd.sample_euler_ancestral if name == "euler-a" else kd.sample_dpmpp_sde
    ref = sample(denoise_ref, torch.from_numpy(x.copy()), torch.from_numpy(sigmas), eta=eta, s_noise=s_noise,
                 noise_sampler=tape.sampler("ref"))
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-5, atol=1e-4)
    if name != "euler-a":
        np.testing.assert_allclose(tape.intervals["ours"], tape.intervals["ref"], rtol=1e-6)


def test_eta_and_s_noise_apply_only_where_the_sampler_has_them():
    for name, has_eta, takes_s_noise in (("ddim", True, False), ("euler-a", True, True), ("dpm++sde", True, True),
                                         ("euler", False, False), ("dpm++2m", False, False), ("pndm", False, False),
                                         ("unipc", False, False), ("lms", False, False), ("heun", False, False)):
        scheduler = make_scheduler(name, SD15)
        scheduler.set_noise_scales(eta=0.5, s_noise=0.5)
        assert scheduler.has_eta == has_eta and (scheduler.eta == 0.5) == has_eta, name
        assert (scheduler.s_noise == 0.5) == takes_s_noise, name
    with pytest.raises(UserInputError, match="from 0 .* to 1"):
        make_scheduler("ddim", SD15).set_noise_scales(eta=1.5)
    for bad in (-0.1, float("nan"), "1", True):
        with pytest.raises(UserInputError, match="eta must be a number"):
            make_scheduler("euler-a", SD15).set_noise_scales(eta=bad)


# -- end to end, from a seed -----------------------------------------------------------------------------------


def _reference(reference_pipeline, model, sampler):
    pipe = reference_pipeline(model)
    use_sampler(pipe, sampler)
    encoder = pipe.text_encoder
    if not hasattr(encoder, "text_model"):  # diffusers 0.42's clip_skip reads .text_model, gone in transformers 5
        object.__setattr__(encoder, "text_model", types.SimpleNamespace(final_layer_norm=encoder.final_layer_norm))
    return pipe


def _diffusers_latents(pipe, seed, **kwargs):
    with torch.no_grad():
        return pipe(output_type="latent", num_inference_steps=8, height=64, width=64,
                    generator=torch.Generator("cpu").manual_seed(seed), **kwargs).images.numpy()


def _relative(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("model", ["tiny", "tiny-sd2"])
def test_ddim_eta_from_a_seed_matches_diffusers(pipelines, reference_pipeline, model):
    ref = _reference(reference_pipeline, model, "ddim")
    for eta in (0.5, 1.0):
        ours = pipelines[model](PROMPT, negative_prompt="dark", num_inference_steps=8, height=64, width=64,
                                guidance_scale=7.5, scheduler="ddim", seed=99, eta=eta)
        expected = _diffusers_latents(ref, 99, prompt=PROMPT, negative_prompt="dark", guidance_scale=7.5, eta=eta)
        assert _relative(ours.latents, expected) < 1e-4
        assert f"Eta DDIM: {eta:g}" in ours.parameters[0]


def test_ddim_eta_with_a_seed_per_image(pipelines, reference_pipeline):
    """Joined requests (a seed per image): each image's step noise from its own generator, as diffusers' list."""
    ref = _reference(reference_pipeline, "tiny", "ddim")
    ours = pipelines["tiny"]([PROMPT, "a green square"], num_inference_steps=8, height=64, width=64,
                             guidance_scale=7.5, scheduler="ddim", seed=[5, 6], eta=0.8)
    with torch.no_grad():
        expected = ref([PROMPT, "a green square"], output_type="latent", num_inference_steps=8, height=64, width=64,
                       guidance_scale=7.5, eta=0.8,
                       generator=[torch.Generator("cpu").manual_seed(s) for s in (5, 6)]).images.numpy()
    assert _relative(ours.latents, expected) < 1e-4


@pytest.mark.parametrize("model", ["tiny", "tiny-sd2"])
def test_clip_skip_matches_diffusers(pipelines, reference_pipeline, model):
    """AUTOMATIC1111's clip skip 2 is diffusers' clip_skip=1. diffusers applies it to the prompt only; sdrt, as
    A1111, to the negative prompt too, so with guidance the reference gets both embeddings made by diffusers'
    own encode_prompt(clip_skip=1)."""
    pipe, ref = pipelines[model], _reference(reference_pipeline, model, "dpm++2m")
    ours = pipe(PROMPT, num_inference_steps=8, height=64, width=64, guidance_scale=1.0, scheduler="dpm++2m", seed=4,
                clip_skip=2)
    expected = _diffusers_latents(ref, 4, prompt=PROMPT, guidance_scale=1.0, clip_skip=1)
    assert _relative(ours.latents, expected) < 1e-4
    assert "Clip skip: 2" in ours.parameters[0]

    with torch.no_grad():
        positive = ref.encode_prompt(PROMPT, "cpu", 1, False, clip_skip=1)[0]
        negative = ref.encode_prompt("dark", "cpu", 1, False, clip_skip=1)[0]
    ours = pipe(PROMPT, negative_prompt="dark", num_inference_steps=8, height=64, width=64, guidance_scale=7.5,
                scheduler="dpm++2m", seed=4, clip_skip=2)
    expected = _diffusers_latents(ref, 4, prompt_embeds=positive, negative_prompt_embeds=negative, guidance_scale=7.5)
    assert _relative(ours.latents, expected) < 1e-4
    plain = pipe(PROMPT, negative_prompt="dark", num_inference_steps=8, height=64, width=64, guidance_scale=7.5,
                 scheduler="dpm++2m", seed=4)
    assert psnr(np.asarray(plain.images[0]), np.asarray(ours.images[0])) < 40  # the setting changes the image


def test_infotext_says_what_ran(pipelines):
    pipe = pipelines["tiny"]
    kwargs = dict(num_inference_steps=2, height=64, width=64, seed=1)
    assert "Eta: 0.5" in pipe(PROMPT, scheduler="euler-a", eta=0.5, s_noise=0.9, **kwargs).parameters[0]
    assert "Sigma noise: 0.9" in pipe(PROMPT, scheduler="dpm++sde", s_noise=0.9, **kwargs).parameters[0]
    text = pipe(PROMPT, scheduler="euler", eta=0.5, s_noise=0.9, **kwargs).parameters[0]
    assert "Eta" not in text and "Sigma noise" not in text  # Euler has neither: ignored, as A1111 and diffusers
    assert "Eta" not in pipe(PROMPT, scheduler="euler-a", eta=1.0, **kwargs).parameters[0]  # the default


def test_bad_clip_skip_and_an_export_without_it(pipelines, export_dir, tmp_path):
    pipe = pipelines["tiny"]
    kwargs = dict(num_inference_steps=2, height=64, width=64, seed=1)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(UserInputError, match="clip skip is a whole number"):
            pipe(PROMPT, clip_skip=bad, **kwargs)
    with pytest.raises(UserInputError, match="more than the 2 layers"):
        pipe(PROMPT, clip_skip=3, **kwargs)
    with pytest.raises(UserInputError, match="DDIM's eta"):
        pipe(PROMPT, scheduler="ddim", eta=2.0, **kwargs)

    old = tmp_path / "old"  # an export from before CLIP skip: its text encoder takes input_ids alone
    shutil.copytree(export_dir("tiny"), old)
    manifest = json.loads((old / "manifest.json").read_text())
    encoder = manifest["components"]["text_encoder"]
    encoder["inputs"] = [t for t in encoder["inputs"] if t["name"] != "clip_skip"]
    manifest.pop("text_layers")
    (old / "manifest.json").write_text(json.dumps(manifest))
    with Pipeline.load(old) as stale:
        with pytest.raises(ManifestError, match="export the model again"):
            stale(PROMPT, clip_skip=2, **kwargs)
