"""The samplers of the lean runtime: numpy ports of diffusers' schedulers, step for step (numpy only, never torch).

``make_scheduler("dpm++2m", scheduler_config)`` builds one from a diffusers scheduler config, as diffusers'
``DPMSolverMultistepScheduler.from_config(scheduler_config)`` would. Stochastic samplers (``stochastic``) draw their
noise from ``set_noise_source(fn)``.
"""

from __future__ import annotations

import re

from ...errors import UserInputError
from .common import Scheduler
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .dpm_sde import DPMSolverSDEKarrasScheduler, DPMSolverSDEScheduler
from .dpm_solver import DPMSolverMultistepKarrasScheduler, DPMSolverMultistepScheduler
from .euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from .flow_match import FlowMatchEulerScheduler, FlowMatchHeunScheduler
from .flow_solvers import FlowDPMSolverMultistepScheduler, FlowUniPCMultistepScheduler, flow_solver_config
from .heun import HeunDiscreteScheduler
from .lcm import LCMScheduler
from .lms import LMSDiscreteScheduler
from .pndm import PNDMScheduler
from .unipc import UniPCMultistepScheduler

SCHEDULERS: dict[str, type[Scheduler]] = {
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,
    "dpm++2m": DPMSolverMultistepScheduler,
    "dpm++2m-karras": DPMSolverMultistepKarrasScheduler,
    "dpm++sde": DPMSolverSDEScheduler,
    "dpm++sde-karras": DPMSolverSDEKarrasScheduler,
    "euler": EulerDiscreteScheduler,
    "euler-a": EulerAncestralDiscreteScheduler,
    "heun": HeunDiscreteScheduler,
    "lms": LMSDiscreteScheduler,
    "unipc": UniPCMultistepScheduler,
    "ddpm": DDPMScheduler,
    "lcm": LCMScheduler,
    "flow-euler": FlowMatchEulerScheduler,
    "flow-heun": FlowMatchHeunScheduler,
    "flow-dpm++2m": FlowDPMSolverMultistepScheduler,
    "flow-unipc": FlowUniPCMultistepScheduler,
}
SCHEDULER_NAMES = tuple(SCHEDULERS)
# A flow-matching model (SD 3, Flux) samples with these alone; AUTOMATIC1111's names ask for them there.
FLOW_SAMPLERS = {"euler": "flow-euler", "heun": "flow-heun", "dpm++2m": "flow-dpm++2m", "unipc": "flow-unipc"}
# the multistep solvers' flow forms: diffusers' class of the plain one, with flow_solver_config
FLOW_SOLVERS = {"flow-dpm++2m": "dpm++2m", "flow-unipc": "unipc"}

# AUTOMATIC1111's display names, as written into PNG infotext.
A1111_NAMES = {
    "ddim": "DDIM",
    "pndm": "PLMS",
    "dpm++2m": "DPM++ 2M",
    "dpm++2m-karras": "DPM++ 2M Karras",
    "dpm++sde": "DPM++ SDE",
    "dpm++sde-karras": "DPM++ SDE Karras",
    "euler": "Euler",
    "euler-a": "Euler a",
    "heun": "Heun",
    "lms": "LMS",
    "unipc": "UniPC",
    "ddpm": "DDPM",
    "lcm": "LCM",
    "flow-euler": "Euler",  # what AUTOMATIC1111 (Forge) calls it on SD 3 and Flux
    "flow-heun": "Heun",
    "flow-dpm++2m": "DPM++ 2M",
    "flow-unipc": "UniPC",
}

# The diffusers scheduler class a model's scheduler_config names → the sampler that runs it.
DIFFUSERS_CLASSES = {
    "DDIMScheduler": "ddim",
    "PNDMScheduler": "pndm",
    "DPMSolverMultistepScheduler": "dpm++2m",
    "DPMSolverSDEScheduler": "dpm++sde",
    "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler-a",
    "HeunDiscreteScheduler": "heun",
    "LMSDiscreteScheduler": "lms",
    "UniPCMultistepScheduler": "unipc",
    "DDPMScheduler": "ddpm",
    "LCMScheduler": "lcm",
    "FlowMatchEulerDiscreteScheduler": "flow-euler",
    "FlowMatchHeunDiscreteScheduler": "flow-heun",
}
KARRAS_VARIANTS = {"dpm++2m": "dpm++2m-karras", "dpm++sde": "dpm++sde-karras"}  # sampler -> its Karras variant

# Other names (k-diffusion's, AUTOMATIC1111's internal ones, ComfyUI's, shorthands). Every name is compared
# ignoring case, spaces, '-' and '_', so "Euler a", "euler_a" and "EULER-A" are one name.
ALIASES = {
    "plms": "pndm",
    "dpm": "dpm++2m",
    "dpmsolver++": "dpm++2m",
    "dpmpp_2m": "dpm++2m",
    "k_dpmpp_2m": "dpm++2m",
    "dpmpp_2m_karras": "dpm++2m-karras",
    "k_dpmpp_2m_ka": "dpm++2m-karras",
    "dpmpp_sde": "dpm++sde",
    "k_dpmpp_sde": "dpm++sde",
    "dpmpp_sde_karras": "dpm++sde-karras",
    "k_dpmpp_sde_ka": "dpm++sde-karras",
    "k_euler": "euler",
    "k_euler_a": "euler-a",
    "k_euler_ancestral": "euler-a",
    "euler_ancestral": "euler-a",
    "k_heun": "heun",
    "k_lms": "lms",
    "uni_pc": "unipc",
    "uni_pc_bh2": "unipc",
    **{a1111.lower(): canonical for canonical, a1111 in A1111_NAMES.items() if canonical not in FLOW_SAMPLERS.values()},
    **{cls.lower(): canonical for cls, canonical in DIFFUSERS_CLASSES.items()},
}

__all__ = [
    "A1111_NAMES",
    "ALIASES",
    "DIFFUSERS_CLASSES",
    "KARRAS_VARIANTS",
    "SCHEDULERS",
    "SCHEDULER_NAMES",
    "DDIMScheduler",
    "DDPMScheduler",
    "DPMSolverMultistepKarrasScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSDEKarrasScheduler",
    "DPMSolverSDEScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "FLOW_SAMPLERS",
    "FLOW_SOLVERS",
    "FlowDPMSolverMultistepScheduler",
    "FlowUniPCMultistepScheduler",
    "FlowMatchEulerScheduler",
    "FlowMatchHeunScheduler",
    "HeunDiscreteScheduler",
    "LCMScheduler",
    "LMSDiscreteScheduler",
    "PNDMScheduler",
    "Scheduler",
    "UniPCMultistepScheduler",
    "a1111_name",
    "canonical_name",
    "default_sampler",
    "diffusers_equivalent",
    "make_scheduler",
    "model_sampler",
    "model_samplers",
]


def _normalize(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


_LOOKUP = {_normalize(n): n for n in SCHEDULERS} | {_normalize(a): c for a, c in ALIASES.items()}


def canonical_name(name: str) -> str:
    """``"PLMS"`` → ``"pndm"``, ``"Euler a"`` → ``"euler-a"``; raises UserInputError for an unknown name."""
    canonical = _LOOKUP.get(_normalize(name)) if isinstance(name, str) else None
    if canonical is None:
        raise UserInputError(
            f"unknown sampler {name!r}; available: {', '.join(SCHEDULER_NAMES)} (also accepted: AUTOMATIC1111's "
            "names such as 'Euler a' or 'DPM++ 2M Karras', k-diffusion's such as 'k_euler_a', diffusers' "
            "scheduler class names; case, spaces, '-' and '_' do not matter)"
        )
    return canonical


def a1111_name(canonical: str) -> str:
    """AUTOMATIC1111's display name of a sampler, as written into PNG infotext: "DDIM", "PLMS", "Euler a"…"""
    return A1111_NAMES[canonical_name(canonical)]


def default_sampler(scheduler_config: dict | None, fallback: str = "ddim") -> str:
    """The sampler of a model's own scheduler_config: its ``_class_name`` (its Karras variant when the config sets
    ``use_karras_sigmas``); ``fallback`` for a class sdrt does not know."""
    config = scheduler_config or {}
    canonical = DIFFUSERS_CLASSES.get(config.get("_class_name", ""), fallback)
    return KARRAS_VARIANTS.get(canonical, canonical) if config.get("use_karras_sigmas") else canonical


def diffusers_equivalent(name: str, model_config: dict | None = None) -> tuple[str, dict]:
    """The diffusers scheduler class that ``name`` ports, and the from_config arguments that select it
    (``"dpm++2m-karras"`` → ``("DPMSolverMultistepScheduler", {"use_karras_sigmas": True})``; a flow solver's
    depend on the model's scheduler config)."""
    canonical = canonical_name(name)
    if canonical in FLOW_SOLVERS:
        return diffusers_equivalent(FLOW_SOLVERS[canonical])[0], flow_solver_config(model_config)
    base = {karras: plain for plain, karras in KARRAS_VARIANTS.items()}.get(canonical, canonical)
    cls = next(c for c, s in DIFFUSERS_CLASSES.items() if s == base)
    return cls, ({"use_karras_sigmas": True} if base != canonical else {})


def make_scheduler(name: str, config: dict | None = None, **options) -> Scheduler:
    """The sampler ``name`` (any accepted name) built from a diffusers scheduler config: keys it does not take are
    ignored, missing ones take the diffusers class's default. ``options`` go to the constructor
    (``use_karras_sigmas=True`` for dpm++2m, dpm++sde, euler, heun, lms, unipc)."""
    return SCHEDULERS[canonical_name(name)](config, **options)


def is_flow(scheduler_config: dict | None) -> bool:
    """Whether a model's scheduler config is a flow-matching one (SD 3, Flux)."""
    return (scheduler_config or {}).get("_class_name", "").startswith("FlowMatch")


def model_sampler(name: str, scheduler_config: dict | None) -> str:
    """The sampler ``name`` (any accepted name) as a model of ``scheduler_config`` runs it: on a flow-matching model
    Euler and Heun are the flow samplers (as AUTOMATIC1111 Forge names them); a sampler of the other kind is
    refused, saying which apply."""
    canonical = canonical_name(name)
    flow = set(FLOW_SAMPLERS.values())
    if is_flow(scheduler_config):
        canonical = FLOW_SAMPLERS.get(canonical, canonical)
        if canonical not in flow:
            raise UserInputError(f"the sampler {name!r} does not apply to a flow-matching model (SD 3, Flux): use "
                                 f"{_one_of([A1111_NAMES[s] for s in sorted(flow)])}")
    elif canonical in flow:
        raise UserInputError(f"the sampler {name!r} is for flow-matching models (SD 3, Flux); this model takes "
                             f"{', '.join(s for s in SCHEDULER_NAMES if s not in flow)}")
    return canonical


def _one_of(names: list[str]) -> str:
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def model_samplers(scheduler_config: dict | None) -> tuple[str, ...]:
    """The samplers a model of ``scheduler_config`` runs."""
    flow = set(FLOW_SAMPLERS.values())
    return tuple(s for s in SCHEDULER_NAMES if (s in flow) == is_flow(scheduler_config))
