"""What the end-to-end parity tests share: diffusers' scheduler for each sampler, and PSNR."""

import numpy as np

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


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
