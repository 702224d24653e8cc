"""The sampling settings of an AUTOMATIC1111 request, as A1111 1.10 treats them: η, ``s_churn``/``s_tmin``/
``s_tmax``/``s_noise``, ``s_min_uncond``, ``image_cfg_scale``, ``scheduler``, CLIP skip and emphasis, from the
request, its ``override_settings`` and the server's options (``POST /sdapi/v1/options``).

The rule, field by field (read from A1111's ``processing.py``, ``sd_samplers_kdiffusion.py``,
``sd_samplers_timesteps.py``, ``sd_schedulers.py``, ``sd_hijack_open_clip.py``): what A1111 would use, sdrt uses;
what A1111 ignores for this model and sampler, sdrt accepts and ignores; what A1111 would use and sdrt cannot run is
refused with a 422 that names it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import UserInputError
from ..runtime.infotext import sampling_infotext
from ..runtime.schedulers import KARRAS_VARIANTS, SCHEDULERS, a1111_name, canonical_name

# A1111's defaults for the options clients read, and for those that change the image.
OPTION_DEFAULTS: dict[str, Any] = {
    "CLIP_stop_at_last_layers": 1, "eta_ddim": 0.0, "eta_ancestral": 1.0, "s_churn": 0.0, "s_tmin": 0.0,
    "s_tmax": 0.0, "s_noise": 1.0, "s_min_uncond": 0.0, "emphasis": "Original", "eta_noise_seed_delta": 0,
    "randn_source": "CPU", "sd_vae": "Automatic", "samples_format": "png", "sdxl_clip_l_skip": False,
    "always_discard_next_to_last_sigma": False, "sgm_noise_multiplier": False, "img2img_fix_steps": False,
    "initial_noise_multiplier": 1.0, "comma_padding_backtrack": 20, "use_old_emphasis_implementation": False,
}
# Options that change the image and that sdrt runs at these values only ("randn_source": sdrt draws torch's CPU
# numbers, A1111's "CPU"). Any other option (saving, UI, …) is kept and has no effect on the image.
FIXED_OPTIONS: dict[str, tuple] = {key: (OPTION_DEFAULTS[key],) for key in (
    "eta_noise_seed_delta", "randn_source", "always_discard_next_to_last_sigma", "sgm_noise_multiplier",
    "img2img_fix_steps", "initial_noise_multiplier", "comma_padding_backtrack", "use_old_emphasis_implementation",
    "sdxl_clip_l_skip",
)} | {"sd_vae": ("Automatic", "None")}
EMPHASIS = {"Original": True, "None": False}  # A1111's emphasis modes sdrt has → prompt weighting on/off
NUMBERS = ("eta_ddim", "eta_ancestral", "s_churn", "s_tmin", "s_tmax", "s_noise", "s_min_uncond")

# A1111 runs DDIM, PLMS and UniPC as "timesteps" samplers: the scheduler field does not apply, DDIM's η defaults to
# the eta_ddim option and is written "Eta DDIM". The rest are k-diffusion samplers (η from eta_ancestral).
TIMESTEPS_SAMPLERS = {"ddim", "pndm", "unipc"}
CHURN_SAMPLERS = {"euler", "heun"}  # k-diffusion's sample_euler/sample_heun take s_churn, s_tmin, s_tmax, s_noise
S_NOISE_SAMPLERS = {"dpm++sde", "dpm++sde-karras"}  # A1111 passes s_noise to sample_dpmpp_sde (not to Euler a)
# A1111 applies CLIP skip to SD 1.x only: SD 2.x's OpenCLIP ignores it, and SDXL's encoders take their penultimate
# layer (CLIP-L's follows CLIP skip only with the sdxl_clip_l_skip option, which sdrt refuses)
CLIP_SKIP_FAMILIES = {"sd1"}

# A1111's schedule types (GET /sdapi/v1/schedulers); sdrt runs "Automatic" and, where a sampler has it, "Karras".
SCHEDULES = {"automatic": ("Automatic", -1.0, False), "karras": ("Karras", 7.0, False)}
A1111_SCHEDULES = ("automatic", "uniform", "karras", "exponential", "polyexponential", "sgm_uniform", "kl_optimal",
                   "align_your_steps", "simple", "normal", "ddim", "beta")


@dataclass(frozen=True)
class Sampling:
    """What a request runs with, beyond prompts, seeds and size: the pipeline's keyword arguments."""
    scheduler: str
    eta: float | None
    s_noise: float | None
    clip_skip: int
    weighting: bool

    def params(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler, "eta": self.eta, "s_noise": self.s_noise, "clip_skip": self.clip_skip,
                "weighting": self.weighting}


def sampler_of(sampler_name: str, scheduler: str | None) -> str:
    """sdrt's sampler for A1111's sampler and schedule type ("DPM++ 2M" + "Karras" → dpm++2m-karras)."""
    try:
        canonical = canonical_name(sampler_name)
    except UserInputError:
        raise UserInputError(f"sampler {sampler_name!r} is not one sdrt has; GET /sdapi/v1/samplers lists them") from None
    schedule = (scheduler or "automatic").strip().lower().replace(" ", "_")
    if canonical in TIMESTEPS_SAMPLERS or schedule == "automatic":
        return canonical  # A1111's timesteps samplers take no schedule type
    has_karras = canonical in KARRAS_VARIANTS or canonical in KARRAS_VARIANTS.values()
    if schedule == "karras" and has_karras:
        return KARRAS_VARIANTS.get(canonical, canonical)
    offered = ["Automatic"] + (["Karras"] if has_karras else [])
    known = "" if schedule in A1111_SCHEDULES else " (not a schedule type AUTOMATIC1111 has)"
    raise UserInputError(f"scheduler {scheduler!r}{known} is not available with {a1111_name(canonical)} in sdrt; "
                         f"use one of: {', '.join(offered)}")


def sampling_of(request, options: dict[str, Any], family: str) -> Sampling:
    """The settings a request runs with: its fields, then its override_settings over the server's options."""
    opts = {**options, **checked_options(request.override_settings or {}, "override_settings.")}
    sampler = sampler_of(request.sampler_name or request.sampler_index, request.scheduler)
    s_min_uncond = _given(request.s_min_uncond, opts["s_min_uncond"])
    if s_min_uncond > 0:  # A1111's "NGMS" skips the negative prompt on some steps: sdrt always runs it
        raise UserInputError(f"sdrt does not implement s_min_uncond {s_min_uncond:g} (skipping the negative prompt); "
                             "send 0 or leave it out")
    eta = s_noise = None
    if SCHEDULERS[sampler].eta_default is not None:
        eta = _given(request.eta, opts["eta_ddim"] if sampler in TIMESTEPS_SAMPLERS else opts["eta_ancestral"])
    if sampler in CHURN_SAMPLERS:
        # an option differing from A1111's default wins over the request's field, as A1111 1.10 does
        churn = opts["s_churn"] if opts["s_churn"] != 0 else _given(request.s_churn, 0.0)
        if churn != 0:
            raise UserInputError(f"sdrt does not implement s_churn {churn:g} with {a1111_name(sampler)} (k-diffusion's "
                                 "churn re-evaluates the model at a raised noise level); send 0 or leave it out")
    if sampler in S_NOISE_SAMPLERS:
        s_noise = opts["s_noise"] if opts["s_noise"] != 1 else _given(request.s_noise, 1.0)
    clip_skip = int(opts["CLIP_stop_at_last_layers"]) if family in CLIP_SKIP_FAMILIES else 1
    return Sampling(sampler, eta, s_noise, clip_skip, EMPHASIS[opts["emphasis"]])


def checked_options(changes: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Options as given (POST /options, override_settings), each value checked: honoured ones must be valid, those
    sdrt runs at one value must hold it. sd_model_checkpoint is checked by the caller (it knows the model)."""
    refused = []
    for key, value in changes.items():
        if key in FIXED_OPTIONS and value not in FIXED_OPTIONS[key]:
            refused.append(f"{where}{key} {value!r} (sdrt runs {FIXED_OPTIONS[key][0]!r})")
        elif key in NUMBERS and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf):
            refused.append(f"{where}{key} {value!r} (a number of at least 0)")
        elif key == "CLIP_stop_at_last_layers" and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 12):
            refused.append(f"{where}{key} {value!r} (1 to 12)")
        elif key == "emphasis" and value not in EMPHASIS:
            refused.append(f"{where}{key} {value!r} (sdrt has {', '.join(EMPHASIS)})")
    if refused:
        raise UserInputError(f"sdrt cannot run {'; '.join(refused)}")
    return dict(changes)


def infotext_fields(sampling: Sampling) -> dict[str, Any]:
    """A1111's ``extra_generation_params``: what differs from the defaults, as the PNG parameters say it."""
    fields = sampling_infotext(sampling.scheduler, sampling.eta, sampling.s_noise, sampling.clip_skip)
    fields.pop("Clip skip", None)  # the info's own clip_skip field says it
    return fields | ({} if sampling.weighting else {"Emphasis": "None"})


def schedulers() -> list[dict]:
    """GET /sdapi/v1/schedulers, in A1111's shape: the schedule types sdrt runs."""
    return [{"name": name, "label": label, "aliases": None, "default_rho": rho, "need_inner_model": inner}
            for name, (label, rho, inner) in SCHEDULES.items()]


def _given(value, default) -> float:
    return float(default if value is None else value)
