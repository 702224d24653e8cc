"""ControlNet in a call, with diffusers' semantics (``StableDiffusionControlNetPipeline`` and its MultiControlNet):
the control images prepared as its control image processor does, and at each step the residuals the U-Net adds —
each ControlNet's scaled by its weight while the step lies in its [start, end] part of the schedule, several summed;
none run outside it (diffusers runs them and multiplies by 0: the same numbers). Guess mode as diffusers: the
ControlNets see the positive prompts alone and their residuals grow from 0.1× at the first level to 1× at the mid
block; the negative half gets none. Without control the U-Net is fed zeros (see docs/ARCHITECTURE.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass
import numpy as np
from PIL import Image

from ..components import ControlNet, controlnet_names, is_residual, level_sides
from ..errors import UserInputError
from ..manifest import ComponentSpec, Manifest
from . import images as imageio


# How a unit weighs its residuals level by level, and whether the negative half of a guided batch gets them:
# diffusers' guess mode, and AUTOMATIC1111's ControlNet extension's control modes (its "soft injection" weighs level
# i of 13 by 0.825^(12-i); "ControlNet is more important" also leaves the negative prompt's half without control).
CONTROL_MODES = {"balanced": "Balanced", "prompt": "My prompt is more important",
                 "controlnet": "ControlNet is more important", "guess": "Guess mode"}


@dataclass(frozen=True)
class ControlUnit:
    name: str  # the ControlNet's name in the export
    images: np.ndarray  # [images of the call, 3, H, W] in [0, 1], at the output size
    scale: float
    start: float  # fractions of the schedule
    end: float
    mode: str = "balanced"  # a key of CONTROL_MODES

    @property
    def component(self) -> str:
        return ControlNet.PREFIX + self.name

    @property
    def positive_only(self) -> bool:
        return self.mode in ("guess", "controlnet")

    def keep(self, i: int, steps: int) -> bool:
        """Whether step ``i`` of ``steps`` lies in the unit's part of the schedule (diffusers' ``controlnet_keep``)."""
        return not (i / steps < self.start or (i + 1) / steps > self.end)

    def scales(self, count: int) -> np.ndarray:
        """The factor of each of ``count`` residuals (the mid block's last)."""
        if self.mode == "guess":  # diffusers: 10^-1 … 10^0 over the levels
            levels = np.logspace(-1, 0, count, dtype=np.float32)
        elif self.mode in ("prompt", "controlnet"):  # the extension: 0.825^12 … (cut after 10 levels for SDXL)
            levels = np.float32(0.825) ** np.arange(12, 12 - count, -1, dtype=np.float32)
        else:
            levels = np.ones(count, np.float32)
        return levels * np.float32(self.scale)


@dataclass(frozen=True)
class Control:
    units: tuple[ControlUnit, ...]

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(u.component for u in self.units)

    def residuals(self, run, i: int, steps: int, model_input: np.ndarray, timestep: np.ndarray,
                  conditioning: dict[str, np.ndarray], do_cfg: bool) -> dict[str, np.ndarray] | None:
        """The residuals of step ``i`` (None when no ControlNet is active there): ``run(component, feeds)`` runs a
        graph; ``model_input``, ``timestep`` and ``conditioning`` are the U-Net's (doubled with guidance, negatives
        first)."""
        active = [u for u in self.units if u.keep(i, steps) and u.scale != 0]
        if not active:
            return None
        total: dict[str, np.ndarray] = {}
        for unit in active:
            half = len(model_input) // 2 if unit.positive_only and do_cfg else 0  # the positive prompts alone
            images = unit.images if half or not do_cfg else np.concatenate([unit.images] * 2)
            feeds = {"sample": model_input[half:], "timestep": timestep[half:],
                     **{k: v[half:] for k, v in conditioning.items()}, "controlnet_cond": images}
            out = run(unit.component, feeds)
            for (name, residual), scale in zip(out.items(), unit.scales(len(out))):
                scaled = residual * scale
                if half:
                    scaled = np.concatenate([np.zeros_like(scaled), scaled])
                total[name] = scaled if name not in total else total[name] + scaled
        return total


def zero_residuals(unet: ComponentSpec, batch: int, height: int, width: int) -> dict[str, np.ndarray]:
    """The U-Net's residual inputs as zeros (a call without control): each at its level's size (⌈h/2^k⌉)."""
    sides = level_sides(height, width)
    return {t.name: np.zeros((batch, t.shape[1], sides[t.shape[2]], sides[t.shape[3]]), np.float32)
            for t in unet.inputs if is_residual(t.name)}


def make_control(manifest: Manifest, control_image, controlnet, scale, start, end, guess_mode: bool,
                 width: int, height: int, control_mode=None, prompts: int = 1, num_images: int = 1) -> Control | None:
    """The call's Control from ``Pipeline.__call__``'s arguments (None without a control image), every value
    checked. As diffusers: with one ControlNet (a name, or none named), ``control_image`` is an image or a list of
    them, one per prompt; with a list of ControlNets, a list with one entry per ControlNet, each an image or a list
    per prompt. Scales, starts, ends and control modes: one value, or one per ControlNet."""
    if control_image is None:
        if controlnet is not None:
            raise UserInputError("a ControlNet needs its control image: control_image=... (--control-image)")
        return None
    several = isinstance(controlnet, (list, tuple))
    names = _names(manifest, controlnet)
    entries = list(control_image) if several and isinstance(control_image, (list, tuple)) else [control_image]
    if len(entries) != len(names):
        raise UserInputError(f"give one control image (or one list of them) per ControlNet: {len(names)} "
                             f"ControlNet(s) ({', '.join(names)}), {len(entries)} given")
    scales = _per_unit(scale, len(names), "controlnet_conditioning_scale", -100, 100)
    starts = _per_unit(start, len(names), "control_guidance_start", 0, 1)
    ends = _per_unit(end, len(names), "control_guidance_end", 0, 1)
    for s, e in zip(starts, ends):
        if s >= e:
            raise UserInputError(f"control guidance start {s:g} must be before its end {e:g} (fractions of the schedule)")
    if not isinstance(guess_mode, bool):
        raise UserInputError(f"guess_mode is True or False, got {guess_mode!r}")
    if guess_mode and control_mode not in (None, "guess"):
        raise UserInputError("give guess_mode (diffusers') or control_mode (AUTOMATIC1111's), not both")
    modes = _modes("guess" if guess_mode else control_mode, len(names))
    units = tuple(ControlUnit(n, _batch(entry, width, height, prompts, num_images), *rest)
                  for n, entry, *rest in zip(names, entries, scales, starts, ends, modes))
    return Control(units)


def _batch(entry, width: int, height: int, prompts: int, num_images: int) -> np.ndarray:
    """One ControlNet's images for every image of the call: one for all, or one per prompt (each prompt's images
    side by side, as diffusers' ``repeat_interleave``)."""
    images = list(entry) if isinstance(entry, (list, tuple)) else [entry]
    if len(images) not in (1, prompts):
        raise UserInputError(f"give one control image, or one per prompt ({prompts}), per ControlNet; got {len(images)}")
    arrays = np.concatenate([control_array(imageio.load_image(i, "control image"), width, height) for i in images])
    return np.repeat(arrays, num_images if len(images) == prompts else prompts * num_images, axis=0)


def _modes(control_mode, count: int) -> list[str]:
    """Each unit's mode: a key of CONTROL_MODES or AUTOMATIC1111's name for it (or its number, 0-2)."""
    values = list(control_mode) if isinstance(control_mode, (list, tuple)) else [control_mode] * count
    if len(values) != count:
        raise UserInputError(f"control_mode: give one or one per ControlNet ({count}), got {len(values)}")
    by_name = {**{v.lower(): k for k, v in CONTROL_MODES.items()}, **{k: k for k in CONTROL_MODES},
               0: "balanced", 1: "prompt", 2: "controlnet", None: "balanced"}
    modes = []
    for value in values:
        key = value.lower() if isinstance(value, str) else value
        if isinstance(key, bool) or key not in by_name:
            raise UserInputError(f"control mode {value!r} is none of {', '.join(CONTROL_MODES)} (or AUTOMATIC1111's "
                                 f"{', '.join(repr(v) for v in list(CONTROL_MODES.values())[:3])})")
        modes.append(by_name[key])
    return modes


def control_array(image: Image.Image, width: int, height: int) -> np.ndarray:
    """An RGB control image → float32 ``[1, 3, height, width]`` in [0, 1], resized with Lanczos where its size differs
    (diffusers' control image processor: no normalisation)."""
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.LANCZOS)
    return (np.asarray(image, dtype=np.float32) / np.float32(255.0)).transpose(2, 0, 1)[None]


def _names(manifest: Manifest, controlnet) -> list[str]:
    available = controlnet_names(manifest)
    if not available:
        raise UserInputError("this export has no ControlNet; add one: sdrt add-controlnet EXPORT PATH "
                             "(or sdrt export MODEL OUT --controlnet PATH)")
    if controlnet is None:
        if len(available) > 1:
            raise UserInputError(f"say which ControlNet(s) to use: controlnet=NAME or a list (--controlnet); this "
                                 f"export has {', '.join(available)}")
        names = available
    else:
        names = [controlnet] if isinstance(controlnet, str) else list(controlnet)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise UserInputError(f"no ControlNet {', '.join(map(str, unknown))} in this export; it has {', '.join(available)}")
    return names


def _per_unit(value, count: int, label: str, lo: float, hi: float) -> list[float]:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * count
    if len(values) != count:
        raise UserInputError(f"{label}: give one number or one per ControlNet ({count}), got {len(values)}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
            raise UserInputError(f"{label} must be a number from {lo} to {hi}, got {v!r}")
    return [float(v) for v in values]


def default_control_size(control_image, factor: int) -> tuple[int, int] | None:
    """(width, height) of the first control image rounded down to multiples of ``factor``: a ControlNet call's
    default size, as diffusers'."""
    first = control_image
    while isinstance(first, (list, tuple)) and first:
        first = first[0]
    if first is None or isinstance(first, (list, tuple)):
        return None
    return imageio.default_size(imageio.load_image(first, "control image"), factor)
