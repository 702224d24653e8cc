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
