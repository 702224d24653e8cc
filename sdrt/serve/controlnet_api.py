"""AUTOMATIC1111's ControlNet extension (Mikubill/sd-webui-controlnet), as its API clients speak it:
``alwayson_scripts: {"controlnet": {"args": [unit, …]}}`` on txt2img and img2img, and ``GET /controlnet/model_list``,
``/controlnet/module_list``, ``/controlnet/version``.

A unit: ``image`` (base64, or ``{"image": …, "mask": …}``; img2img's init image when left out), ``module``
(preprocessor: ``none`` or ``canny`` with ``threshold_a``/``threshold_b`` and ``processor_res``), ``model`` (the
export's ControlNet by name, or ``name [hash]`` as the model list gives it), ``weight``, ``guidance_start``,
``guidance_end``, ``control_mode`` (0-2 or its name) and ``resize_mode`` (how the map is fitted to the output size:
"Just Resize", "Crop and Resize", "Resize and Fill", or 0-2), as the extension applies them. ``enabled: false``
units are skipped; ``low_vram``, ``pixel_perfect`` and ``hr_option`` change nothing here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from ..components import ControlNet, controlnet_names
from ..errors import UserInputError
from ..manifest import Manifest
from ..runtime.preprocessors import CANNY_THRESHOLDS, PREPROCESSORS, preprocess

SCRIPT = "controlnet"
API_VERSION = 2
RESIZE_MODES = {"just resize": "resize", "crop and resize": "crop", "resize and fill": "fill",
                "inner fit (scale to fit)": "crop", "scale to fit (inner fit)": "crop",
                "outer fit (shrink to fit)": "fill", "envelope (outer fit)": "fill", 0: "resize", 1: "crop", 2: "fill"}
PROCESSOR_RES = 512  # the extension's default preprocessor resolution (the image's shorter side)
_SLIDERS = {
    "none": [],
    "canny": [{"name": "Preprocessor Resolution", "value": PROCESSOR_RES, "min": 64, "max": 2048, "step": 8},
              {"name": "Canny Low Threshold", "value": CANNY_THRESHOLDS[0], "min": 1, "max": 255, "step": 1},
              {"name": "Canny High Threshold", "value": CANNY_THRESHOLDS[1], "min": 1, "max": 255, "step": 1}],
}


def model_titles(manifest: Manifest) -> dict[str, str]:
    """The export's ControlNets as the extension titles them (``name [hash]``), by name."""
    return {name: f"{name} [{manifest.components[ControlNet.PREFIX + name].sha256[:8]}]"
            for name in controlnet_names(manifest)}


def model_list(manifest: Manifest) -> dict:
    return {"model_list": list(model_titles(manifest).values())}


def module_list() -> dict:
    return {"module_list": list(PREPROCESSORS),
            "module_detail": {m: {"model_free": False, "sliders": _SLIDERS[m]} for m in PREPROCESSORS}}


def detect(body: dict) -> dict:
    """``POST /controlnet/detect``: the preprocessor's maps of the images (base64 PNGs), as the extension answers;
    the images under ``controlnet_input_images`` (the extension's name) or ``controlnet_images`` (webuiapi's)."""
    from .a1111 import decode_image, png_base64

    if not isinstance(body, dict):
        raise UserInputError("the body must be a JSON object")
    images = body.get("controlnet_input_images") or body.get("controlnet_images") or []
    if not isinstance(images, list) or not images:
        raise UserInputError("no image given: send base64 images in controlnet_input_images")
    unit = {"module": body.get("controlnet_module", "none"), "processor_res": body.get("controlnet_processor_res", -1),
            "threshold_a": body.get("controlnet_threshold_a", -1), "threshold_b": body.get("controlnet_threshold_b", -1)}
    maps = [_preprocessed(unit, i, decode_image(image, f"image {i}").convert("RGB")) for i, image in enumerate(images)]
    return {"images": [png_base64(m, "") for m in maps], "info": "Success"}


def split_scripts(alwayson_scripts: dict) -> tuple[list, list[str]]:
    """The ControlNet units of a request's ``alwayson_scripts`` (its key in any case, as A1111 matches script
    names), and the names of the other scripts, which sdrt has not."""
    if not isinstance(alwayson_scripts, dict):
        raise UserInputError("alwayson_scripts must be an object: {\"controlnet\": {\"args\": [...]}}")
    units, others = [], []
    for name, script in alwayson_scripts.items():
        if name.lower() != SCRIPT:
            others.append(name)
            continue
        args = script.get("args", []) if isinstance(script, dict) else None
        if not isinstance(args, list):
            raise UserInputError("alwayson_scripts.controlnet.args must be a list of ControlNet units")
        units += args
    return units, others


def control_params(units: list, manifest: Manifest, width: int, height: int, init_image: Image.Image | None
                   ) -> dict[str, Any]:
    """The pipeline's ControlNet arguments for the request's enabled units (none: {})."""
    names, titles = controlnet_names(manifest), model_titles(manifest)
    chosen = [(i, u) for i, u in enumerate(units) if _unit(u, i).get("enabled", True)]
    if not chosen:
        return {}
    params: dict[str, list] = {k: [] for k in ("control_image", "controlnet", "controlnet_conditioning_scale",
                                               "control_guidance_start", "control_guidance_end", "control_mode")}
    for i, unit in chosen:
        params["controlnet"].append(_model(unit.get("model"), i, names, titles))
        image = _image(unit, i, init_image)
        image = _preprocessed(unit, i, image)
        params["control_image"].append(fit(image, width, height, unit.get("resize_mode", "Crop and Resize"), i))
        params["controlnet_conditioning_scale"].append(unit.get("weight", 1.0))
        params["control_guidance_start"].append(unit.get("guidance_start", 0.0))
        params["control_guidance_end"].append(unit.get("guidance_end", 1.0))
        params["control_mode"].append(unit.get("control_mode", 0))
    return params


def _unit(unit, i: int) -> dict:
    if not isinstance(unit, dict):
        raise UserInputError(f"ControlNet unit {i} must be an object (image, module, model, weight, …)")
    return unit


def _model(model, i: int, names: list[str], titles: dict[str, str]) -> str:
    for name in names:
        if model in (name, titles[name]):
            return name
    have = ", ".join(titles.values()) or "none (add one: sdrt add-controlnet EXPORT PATH)"
    raise UserInputError(f"ControlNet unit {i}: no model {model!r} on this server; available: {have}")


def _image(unit: dict, i: int, init_image: Image.Image | None) -> Image.Image:
    from .a1111 import decode_image

    image = unit.get("image") or unit.get("input_image")
    if isinstance(image, dict):  # {"image": ..., "mask": ...}
        image = image.get("image")
    if not image:
        if init_image is None:
            raise UserInputError(f"ControlNet unit {i} has no image: send one as base64 in its \"image\"")
        return init_image  # the extension uses img2img's own image
    return decode_image(image, f"ControlNet unit {i}'s image").convert("RGB")


def _preprocessed(unit: dict, i: int, image: Image.Image) -> Image.Image:
    module = unit.get("module", "none") or "none"
    if module not in PREPROCESSORS:
        raise UserInputError(f"ControlNet unit {i}: no module {module!r}; available: {', '.join(PREPROCESSORS)} "
                             "(make other maps yourself and send them with module \"none\")")
    if module == "none":
        return image
    res = unit.get("processor_res", PROCESSOR_RES)
    res = PROCESSOR_RES if not isinstance(res, (int, float)) or res <= 0 else int(res)
    k = res / min(image.size)
    image = image.resize((round(image.width * k), round(image.height * k)), Image.LANCZOS)
    low, high = (_threshold(unit.get(f"threshold_{x}")) for x in "ab")
    return preprocess(module, image, low=low, high=high)


def _threshold(value) -> float | None:
    """A preprocessor threshold; -1 (the extension's "default") or none given: the preprocessor's own."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0):
        return None
    return value  # anything else is checked by the preprocessor


def fit(image: Image.Image, width: int, height: int, mode, i: int = 0) -> Image.Image:
    """The control map at the output size as the extension fits it: stretched ("Just Resize"), scaled to cover and
    cropped at the centre ("Crop and Resize"), or scaled to fit inside on the median colour of its border ("Resize
    and Fill")."""
    how = RESIZE_MODES.get(mode.lower() if isinstance(mode, str) else mode)
    if how is None:
        raise UserInputError(f"ControlNet unit {i}: resize_mode {mode!r} is none of \"Just Resize\", "
                             "\"Crop and Resize\", \"Resize and Fill\" (or 0-2)")
    if how == "resize" or image.size == (width, height):
        return image.resize((width, height), Image.LANCZOS) if image.size != (width, height) else image
    k = (max if how == "crop" else min)(width / image.width, height / image.height)
    scaled = image.resize((max(1, round(image.width * k)), max(1, round(image.height * k))), Image.LANCZOS)
    if how == "crop":
        left, top = (scaled.width - width) // 2, (scaled.height - height) // 2
        return scaled.crop((left, top, left + width, top + height))
    pixels = np.asarray(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    canvas = Image.new("RGB", (width, height), tuple(int(v) for v in np.median(border, axis=0)))
    canvas.paste(scaled, ((width - scaled.width) // 2, (height - scaled.height) // 2))
    return canvas
