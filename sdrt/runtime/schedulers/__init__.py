"""The samplers of the lean runtime: numpy ports of diffusers' schedulers, step for step (numpy only, never torch).

``make_scheduler("dpm++2m", scheduler_config)`` builds one from a diffusers scheduler config, as diffusers'
``DPMSolverMultistepScheduler.from_config(scheduler_config)`` would.
"""

from __future__ import annotations

from ...errors import UserInputError
from .common import Scheduler
from .ddim import DDIMScheduler
from .dpm_solver import DPMSolverMultistepScheduler
from .pndm import PNDMScheduler

SCHEDULERS: dict[str, type[Scheduler]] = {
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,
    "dpm++2m": DPMSolverMultistepScheduler,
}
SCHEDULER_NAMES = tuple(SCHEDULERS)

# Other names for them (compared case-insensitively): AUTOMATIC1111's, k-diffusion's, diffusers' class names.
ALIASES = {
    "plms": "pndm",
    "pndmscheduler": "pndm",
    "ddimscheduler": "ddim",
    "dpm": "dpm++2m",
    "dpm++ 2m": "dpm++2m",
    "dpmsolver++": "dpm++2m",
    "dpmpp_2m": "dpm++2m",
    "dpmsolvermultistepscheduler": "dpm++2m",
}

_A1111_NAMES = {"ddim": "DDIM", "pndm": "PLMS", "dpm++2m": "DPM++ 2M"}

__all__ = [
    "ALIASES",
    "SCHEDULER_NAMES",
    "DDIMScheduler",
    "DPMSolverMultistepScheduler",
    "PNDMScheduler",
    "Scheduler",
    "a1111_name",
    "canonical_name",
    "make_scheduler",
]


def canonical_name(name: str) -> str:
    """``"PLMS"`` → ``"pndm"``, ``"DPM++ 2M"`` → ``"dpm++2m"``; raises UserInputError for an unknown name."""
    key = name.strip().lower() if isinstance(name, str) else None
    if key in SCHEDULERS:
        return key
    if key in ALIASES:
        return ALIASES[key]
    raise UserInputError(
        f"unknown sampler {name!r}; available: {', '.join(SCHEDULER_NAMES)} "
        f"(also accepted: PLMS, DPM++ 2M, dpmsolver++, dpm; case does not matter)"
    )


def a1111_name(canonical: str) -> str:
    """AUTOMATIC1111's display name of a sampler, as written into PNG infotext: "DDIM", "PLMS", "DPM++ 2M"."""
    return _A1111_NAMES[canonical_name(canonical)]


def make_scheduler(name: str, config: dict | None = None, **options) -> Scheduler:
    """The sampler ``name`` (any accepted name) built from a diffusers scheduler config: keys it does not take are
    ignored, missing ones take the diffusers class's default. ``options`` go to the constructor
    (``use_karras_sigmas=True`` for dpm++2m)."""
    return SCHEDULERS[canonical_name(name)](config, **options)
