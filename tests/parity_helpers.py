"""What the end-to-end parity tests share: diffusers' scheduler for each sampler, and PSNR."""

import numpy as np

from sdrt.benchmarks import metrics

# sampler -> (diffusers class, extra from_config arguments)
DIFFUSERS_CLASS = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {}),
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}
# DPM++ SDE is left out end to end: diffusers draws its noise from torchsde's Brownian tree, which no
# seed reproduces without torch; its step math is checked against diffusers in test_samplers_extra.
_ORIGINAL_SCHEDULER_CONFIG: dict[int, object] = {}


def use_sampler(pipe, sampler: str) -> None:
    """Give a diffusers pipeline the scheduler of ``sampler``, always made from the model's own config: reference
    pipelines are shared between tests, and a config converted for one sampler (say, with Karras sigmas) would leak
    into the next."""
    import diffusers

    cls, extra = DIFFUSERS_CLASS[sampler]
    original = _ORIGINAL_SCHEDULER_CONFIG.setdefault(id(pipe.unet), pipe.scheduler.config)
    pipe.scheduler = getattr(diffusers, cls).from_config(original, **extra)


def psnr(a, b) -> float:
    """PSNR of two 8-bit images (PIL or arrays), by the benchmark's own metric."""
    return metrics.psnr(np.asarray(a), np.asarray(b))


def assert_matches(ours, expected, flat_check: bool = True) -> None:
    """A GenerationResult against diffusers' (final latents, 8-bit images): latents within 1e-4 relative, each
    image ≥ 45 dB; ``flat_check``: an image of random weights must not be flat (that would prove nothing)."""
    latents, images = expected
    rel = np.abs(ours.latents - latents).max() / np.abs(latents).max()
    assert rel < 1e-4, f"final latents differ: relative error {rel:.2e}"
    for mine, ref in zip(ours.images, images):
        assert not flat_check or np.asarray(mine).std() > 5, "a flat image proves nothing"
        assert psnr(np.asarray(mine), ref) > 45
