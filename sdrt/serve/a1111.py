"""AUTOMATIC1111's web API, as sdrt speaks it: request models with every field of A1111's schema (v1.10), the
translation of a request into a batcher job, and the response (base64 PNGs with the ``parameters`` chunk, the
request's parameters, the ``info`` JSON string).

Fields of features sdrt implements are honoured (the sampling settings as ``settings.py`` reads them). The others
are accepted at their default (or an equivalent neutral value: ``false`` for ``None``, ``{}``, ``[]``…); any other
value is refused with a 422 naming the field, rather than silently ignored.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Optional

from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo
from pydantic import BaseModel, ConfigDict

from ..errors import UserInputError
from ..families import FAMILIES
from ..lora.tags import read_tags
from ..runtime import GenerationResult
from ..runtime.noise import MAX_SEED, random_seed
from ..runtime.schedulers import A1111_NAMES, ALIASES, FLOW_SAMPLERS, a1111_name
from ..manifest import Manifest
from . import controlnet_api
from .batcher import Job
from .settings import Sampling, infotext_fields


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")  # as A1111: fields of newer clients are ignored

    prompt: Optional[str] = ""
    negative_prompt: Optional[str] = ""
    styles: Optional[list[str]] = None
    seed: Optional[int] = -1
    subseed: Optional[int] = -1
    subseed_strength: Optional[float] = 0
    seed_resize_from_h: Optional[int] = -1
    seed_resize_from_w: Optional[int] = -1
    sampler_name: Optional[str] = None
    scheduler: Optional[str] = None
    batch_size: Optional[int] = 1
    n_iter: Optional[int] = 1
    steps: Optional[int] = 50
    cfg_scale: Optional[float] = 7.0
    distilled_cfg_scale: Optional[float] = None  # AUTOMATIC1111 Forge's, for Flux: its guidance input (3.5)
    width: Optional[int] = 512
    height: Optional[int] = 512
    restore_faces: Optional[bool] = None
    tiling: Optional[bool] = None
    do_not_save_samples: Optional[bool] = False
    do_not_save_grid: Optional[bool] = False
    eta: Optional[float] = None
    s_min_uncond: Optional[float] = None
    s_churn: Optional[float] = None
    s_tmax: Optional[float] = None
    s_tmin: Optional[float] = None
    s_noise: Optional[float] = None
    override_settings: Optional[dict[str, Any]] = None
    override_settings_restore_afterwards: Optional[bool] = True
    refiner_checkpoint: Optional[str] = None
    refiner_switch_at: Optional[float] = None
    disable_extra_networks: Optional[bool] = False
    firstpass_image: Optional[str] = None
    comments: Optional[dict] = None
    force_task_id: Optional[str] = None
    sampler_index: str = "Euler"
    script_name: Optional[str] = None
    script_args: list = []
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict = {}
    infotext: Optional[str] = None


class Txt2ImgRequest(_Common):
    denoising_strength: Optional[float] = None  # hires fix only (ignored without enable_hr, as A1111)
    enable_hr: Optional[bool] = False
    firstphase_width: Optional[int] = 0
    firstphase_height: Optional[int] = 0
    hr_scale: Optional[float] = 2.0
    hr_upscaler: Optional[str] = None
    hr_second_pass_steps: Optional[int] = 0
    hr_resize_x: Optional[int] = 0
    hr_resize_y: Optional[int] = 0
    hr_checkpoint_name: Optional[str] = None
    hr_sampler_name: Optional[str] = None
    hr_scheduler: Optional[str] = None
    hr_prompt: Optional[str] = ""
    hr_negative_prompt: Optional[str] = ""


class Img2ImgRequest(_Common):
    denoising_strength: float = 0.75
    init_images: Optional[list] = None
    resize_mode: Optional[int] = 0
    image_cfg_scale: Optional[float] = None
    mask: Optional[str] = None
    mask_blur_x: Optional[int] = 4
    mask_blur_y: Optional[int] = 4
    mask_blur: Optional[int] = None
    mask_round: Optional[bool] = True
    inpainting_fill: Optional[int] = 0
    inpaint_full_res: Optional[bool] = True
    inpaint_full_res_padding: Optional[int] = 0
    inpainting_mask_invert: Optional[int] = 0
    initial_noise_multiplier: Optional[float] = None
    latent_mask: Optional[str] = None
    include_init_images: bool = False


# Fields whose values sdrt honours, or that change nothing in what is generated (saving, comments, task ids);
# every other field must hold a neutral value.
HONOURED = {
    "prompt", "negative_prompt", "seed", "sampler_name", "sampler_index", "scheduler", "batch_size", "n_iter", "steps",
    "cfg_scale", "distilled_cfg_scale", "width", "height", "denoising_strength", "init_images", "mask", "inpainting_mask_invert", "send_images",
    "include_init_images", "override_settings",
    # the sampling settings: used, ignored or refused per sampler and model by settings.sampling_of
    "eta", "s_churn", "s_tmin", "s_tmax", "s_noise", "s_min_uncond",
    "image_cfg_scale",  # A1111 uses it with instruct-pix2pix models only, which sdrt has not
    "refiner_checkpoint", "refiner_switch_at",  # checked against the loaded refiner (refiner_of)
    "do_not_save_samples", "do_not_save_grid", "override_settings_restore_afterwards", "disable_extra_networks",
    "comments", "force_task_id", "inpaint_full_res_padding",
}
_NEUTRAL = (None, False, 0, "", [], {})  # "off" for a field whose value turns a feature on
# Fields where 0 or false is itself a setting: only None and these values leave sdrt's behaviour unchanged
# (None: any value, as subseed without subseed_strength, script_args without script_name).
_SPECIFIC = {
    "seed_resize_from_h": (-1, 0), "seed_resize_from_w": (-1, 0), "subseed": None, "script_args": None,
    "initial_noise_multiplier": (1.0,),
    "mask_blur_x": (4, 0), "mask_blur_y": (4, 0), "mask_blur": (4, 0),  # A1111's default blur is accepted, not applied
    "inpaint_full_res": (True, False), "resize_mode": (0,), "inpainting_fill": (0, 1),
    "mask_round": (True,),  # sdrt binarizes masks at 0.5, as A1111's mask_round
}
_HIRES = {"denoising_strength", "firstphase_width", "firstphase_height", "hr_scale", "hr_upscaler",
          "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name",
          "hr_scheduler", "hr_prompt", "hr_negative_prompt"}


def refused_fields(request: _Common) -> list[str]:
    """The fields holding a value sdrt cannot honour (a 422 names them); override_settings are checked with the
    sampling settings."""
    data = request.model_dump()
    txt2img = isinstance(request, Txt2ImgRequest)
    refused = []
    for name, value in data.items():
        if name == "alwayson_scripts":  # the ControlNet extension's units are read by job_of
            refused += [f"alwayson_scripts.{other}" for other in controlnet_api.split_scripts(value or {})[1]]
            continue
        if name in HONOURED and not (txt2img and name == "denoising_strength"):
            continue
        if txt2img and name in _HIRES and not data.get("enable_hr"):
            continue  # A1111 ignores the hires fields without enable_hr
        if name in _SPECIFIC:
            allowed = _SPECIFIC[name]
            if allowed is None or value is None or value in allowed:
                continue
        elif value in _NEUTRAL:
            continue
        refused.append(name)
    return refused


def decode_image(text: Any, what: str) -> Image.Image:
    """A base64 image (a ``data:`` URL prefix allowed), never a path or a URL."""
    if not isinstance(text, str) or not text:
        raise UserInputError(f"{what} must be a base64-encoded image")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        raw = base64.b64decode(text, validate=False)
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            return image.copy()
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError) as e:
        raise UserInputError(f"{what} does not decode to an image ({e.__class__.__name__}): send base64 PNG, JPEG "
                             "or WebP data") from None


NO_REFINER = (None, "", "None", "none")


def checkpoint_title(name: str, digest: str) -> str:
    """A checkpoint as AUTOMATIC1111 names it: ``name [hash]``."""
    return f"{name} [{digest}]"


def refiner_of(request: _Common, loaded: tuple[str, str] | None) -> float | None:
    """The switch point of a request that names a refiner (A1111: ``refiner_checkpoint``, ``refiner_switch_at``,
    0.8 by default; a switch at 1 or more never switches), checked against the refiner this server loaded (its
    name and hash: a request may name it by title or by name)."""
    if request.refiner_checkpoint in NO_REFINER:
        return None
    title = None if loaded is None else checkpoint_title(*loaded)
    if loaded is None or request.refiner_checkpoint not in (title, loaded[0]):
        have = f"its refiner is {title}" if loaded else "it has no refiner (start it with --refiner OUT)"
        raise UserInputError(f"refiner_checkpoint {request.refiner_checkpoint!r} is not loaded on this server: {have}")
    switch = 0.8 if request.refiner_switch_at is None else request.refiner_switch_at
    if switch >= 1:
        return None
    if isinstance(request, Img2ImgRequest):
        raise UserInputError("sdrt runs the refiner after text to image only; send img2img without refiner_checkpoint")
    return switch


def job_of(request: _Common, sampling: Sampling, refiner_switch_at: float | None = None,
           manifest: Manifest | None = None) -> Job:
    """The batcher job for a checked request: one prompt and one seed per image (seed, seed+1, … as A1111), with
    the ControlNet extension's units (``manifest``: the served export, whose ControlNets they name)."""
    images = (request.batch_size or 1) * (request.n_iter or 1)
    if images < 1:
        raise UserInputError("batch_size and n_iter must be at least 1")
    seed = request.seed if request.seed is not None and request.seed >= 0 else random_seed()
    if seed + images - 1 > MAX_SEED:
        raise UserInputError(f"seed must be -1 (random) or 0..{MAX_SEED - images + 1}")
    params: dict[str, Any] = {
        "num_inference_steps": request.steps, "guidance_scale": request.cfg_scale, "height": request.height,
        "width": request.width, **sampling.params(), "refiner_switch_at": refiner_switch_at,
    }
    family = FAMILIES[manifest.family] if manifest is not None else None
    if family is not None and family.distilled_guidance:  # Flux, as Forge: CFG is true CFG, the guidance distilled
        params |= {"guidance_scale": request.distilled_cfg_scale or family.default_guidance,
                   "true_cfg_scale": request.cfg_scale}
    # requests join only with the same LoRA set (a call runs one)
    loras = tuple(sorted(read_tags(request.prompt or "")))
    key: tuple | None = ("txt2img", request.width, request.height, request.steps, request.cfg_scale,
                         request.distilled_cfg_scale, sampling, refiner_switch_at, loras)
    if isinstance(request, Img2ImgRequest):
        if not request.init_images:
            raise UserInputError("img2img needs init_images: a list with one base64 image")
        if len(request.init_images) > 1:
            raise UserInputError("init_images: sdrt takes one init image per request")
        params["image"] = decode_image(request.init_images[0], "init_images[0]")
        params["strength"] = request.denoising_strength
        if request.mask:
            mask = decode_image(request.mask, "mask").convert("L")
            params["mask_image"] = Image.eval(mask, lambda v: 255 - v) if request.inpainting_mask_invert else mask
        key = None  # image requests run alone
    units, _ = controlnet_api.split_scripts(request.alwayson_scripts or {})
    if units and manifest is not None:
        control = controlnet_api.control_params(units, manifest, request.width, request.height, params.get("image"))
        if control:
            params |= control
            key = None  # requests with control images run alone
    return Job(key, [request.prompt or ""] * images, [request.negative_prompt or ""] * images,
               list(range(seed, seed + images)), params)


def png_base64(image: Image.Image, parameters: str) -> str:
    info = PngInfo()
    if parameters:
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def response(request: _Common, sampling: Sampling, result: GenerationResult, model_name: str, model_hash: str) -> dict:
    """A1111's TextToImageResponse / ImageToImageResponse."""
    parameters = request.model_dump()
    if isinstance(request, Img2ImgRequest) and not request.include_init_images:
        parameters["init_images"], parameters["mask"] = None, None
    images = [png_base64(i, p) for i, p in zip(result.images, result.parameters)] if request.send_images else []
    n = len(result.seeds)
    info = {
        "prompt": request.prompt, "all_prompts": [request.prompt] * n,
        "negative_prompt": request.negative_prompt, "all_negative_prompts": [request.negative_prompt] * n,
        "seed": result.seeds[0], "all_seeds": result.seeds, "subseed": -1, "all_subseeds": [-1] * n,
        "subseed_strength": 0, "width": request.width, "height": request.height,
        "sampler_name": a1111_name(sampling.scheduler), "cfg_scale": request.cfg_scale, "steps": request.steps,
        "batch_size": request.batch_size, "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": model_name, "sd_model_hash": model_hash, "sd_vae_name": None, "sd_vae_hash": None,
        "seed_resize_from_w": -1, "seed_resize_from_h": -1,
        "denoising_strength": request.denoising_strength if isinstance(request, Img2ImgRequest) else None,
        "extra_generation_params": infotext_fields(sampling), "index_of_first_image": 0,
        "infotexts": result.parameters, "styles": [], "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": sampling.clip_skip,
        "is_using_inpainting_conditioning": result.mode == "inpaint", "version": "sdrt",
    }
    return {"images": images, "parameters": parameters, "info": json.dumps(info)}


# GET routes clients call at start-up, answered in A1111's shapes; empty since sdrt has nothing of these kinds
# (upscalers, hires fix's latent upscaling, extra VAEs, hypernetworks, face restoration, styles, scripts).
EMPTY_LISTINGS: dict[str, Any] = {
    "/sdapi/v1/upscalers": [], "/sdapi/v1/latent-upscale-modes": [], "/sdapi/v1/sd-vae": [],
    "/sdapi/v1/hypernetworks": [], "/sdapi/v1/face-restorers": [], "/sdapi/v1/realesrgan-models": [],
    "/sdapi/v1/prompt-styles": [],
    "/sdapi/v1/scripts": {"txt2img": [], "img2img": []}, "/sdapi/v1/script-info": [],
}


def embedding_listing(fitting: dict, others: dict) -> dict:
    """A1111's EmbeddingsResponse: the embeddings this model can use ("loaded") and those of another model's text
    encoders ("skipped"), each with its width (SDXL: both encoders' together) and vector count."""
    def item(e) -> dict:
        return {"step": e.step, "sd_checkpoint": None, "sd_checkpoint_name": None,
                "shape": sum(v.shape[1] for v in e.vectors.values()), "vectors": e.count}

    return {"loaded": {n: item(e) for n, e in fitting.items()}, "skipped": {n: item(e) for n, e in others.items()}}


def memory() -> dict:
    """A1111's MemoryResponse: this process's RAM (bytes) from /proc; "cuda" unavailable (sdrt runs no torch)."""
    ram: dict[str, Any] = {"error": "unavailable"}
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        total = int(meminfo["MemTotal"].split()[0]) * 1024
        used = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        ram = {"free": total - used, "used": used, "total": total}
    except (OSError, KeyError, ValueError):
        pass
    return {"ram": ram, "cuda": {"error": "unavailable"}}


def samplers() -> list[dict]:
    aliases: dict[str, list[str]] = {}
    for alias, canonical in ALIASES.items():
        if alias.startswith("k_"):
            aliases.setdefault(canonical, []).append(alias)
    # a flow model's samplers go by the names of the others (Euler, Heun): listed once
    return [{"name": name, "aliases": aliases.get(canonical, []), "options": {}} for canonical, name in A1111_NAMES.items()
            if canonical not in FLOW_SAMPLERS.values()]


def parse_infotext(text: str) -> dict[str, str]:
    """A1111's ``parse_generation_parameters``, for the common fields: Prompt, Negative prompt, and each
    ``Key: value`` of the last line (Size split into Size-1 and Size-2)."""
    lines = text.strip().split("\n")
    last = lines.pop() if lines and re.search(r"\bSteps: ", lines[-1]) else ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    fields = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in re.findall(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)', last):
        fields[key.strip()] = value.strip()
    if "x" in fields.get("Size", ""):
        fields["Size-1"], fields["Size-2"] = fields["Size"].split("x", 1)
    return fields


def png_info(text: Any) -> dict:
    image = decode_image(text, "image")
    items = {k: v for k, v in image.info.items() if isinstance(v, str)}
    info = items.pop("parameters", "")
    return {"info": info, "items": items, "parameters": parse_infotext(info) if info else {}}
