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

from ..components import ControlNet, controlnet_names, is_residual
from ..errors import UserInputError
from ..manifest import ComponentSpec, Manifest
from . import images as imageio


@dataclass(frozen=True)
class ControlUnit:
    name: str  # the ControlNet's name in the export
    image: np.ndarray  # [1, 3, H, W] in [0, 1], at the output size
    scale: float
    start: float  # fractions of the schedule
    end: float

    @property
    def component(self) -> str:
        return ControlNet.PREFIX + self.name

    def keep(self, i: int, steps: int) -> bool:
        """Whether step ``i`` of ``steps`` lies in the unit's part of the schedule (diffusers' ``controlnet_keep``)."""
        return not (i / steps < self.start or (i + 1) / steps > self.end)


@dataclass(frozen=True)
class Control:
    units: tuple[ControlUnit, ...]
    guess_mode: bool = False

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(u.component for u in self.units)

    def residuals(self, run, i: int, steps: int, model_input: np.ndarray, timestep: np.ndarray,
                  conditioning: dict[str, np.ndarray], do_cfg: bool) -> dict[str, np.ndarray] | None:
        """The residuals of step ``i`` (None when no ControlNet is active there): ``run(component, feeds)`` runs a
        graph; ``model_input``, ``timestep`` and ``conditioning`` are the U-Net's (doubled with guidance)."""
        active = [u for u in self.units if u.keep(i, steps) and u.scale != 0]
        if not active:
            return None
        guess = self.guess_mode and do_cfg
        half = len(model_input) // 2 if guess else 0  # guess mode: the positive half alone
        feeds = {"sample": model_input[half:], "timestep": timestep[half:],
                 **{k: v[half:] for k, v in conditioning.items()}}
        total: dict[str, np.ndarray] = {}
        for unit in active:
            image = np.repeat(unit.image, len(feeds["sample"]), axis=0)
            out = run(unit.component, {**feeds, "controlnet_cond": image})
            for name, scale in zip(out, _scales(len(out), unit.scale, self.guess_mode)):
                scaled = out[name] * np.float32(scale)
                total[name] = scaled if name not in total else total[name] + scaled
        if guess:
            total = {k: np.concatenate([np.zeros_like(v), v]) for k, v in total.items()}
        return total


def _scales(count: int, scale: float, guess_mode: bool) -> np.ndarray:
    """Each residual's factor: the weight, or in guess mode 10^-1 … 10^0 over the levels times it (diffusers)."""
    if guess_mode:
        return np.logspace(-1, 0, count, dtype=np.float32) * np.float32(scale)
    return np.full(count, scale, dtype=np.float32)


def zero_residuals(unet: ComponentSpec, batch: int, height: int, width: int) -> dict[str, np.ndarray]:
    """The U-Net's residual inputs as zeros (a call without control): each at its level's size (⌈h/2^k⌉)."""
    sides = {"h": height, "w": width}
    for level in (2, 4, 8):
        sides |= {f"h_{level}": -(-height // level), f"w_{level}": -(-width // level)}
    return {t.name: np.zeros((batch, t.shape[1], sides[t.shape[2]], sides[t.shape[3]]), np.float32)
            for t in unet.inputs if is_residual(t.name)}


def make_control(manifest: Manifest, control_image, controlnet, scale, start, end, guess_mode: bool,
                 width: int, height: int) -> Control | None:
    """The call's Control from ``Pipeline.__call__``'s arguments (None without a control image), every value
    checked: one image per ControlNet; scales, starts and ends as one number or one per ControlNet."""
    if control_image is None:
        if controlnet is not None:
            raise UserInputError("a ControlNet needs its control image: control_image=... (--control-image)")
        return None
    images = list(control_image) if isinstance(control_image, (list, tuple)) else [control_image]
    names = _names(manifest, controlnet, len(images))
    if len(images) != len(names):
        raise UserInputError(f"give one control image per ControlNet: {len(names)} ControlNet(s) "
                             f"({', '.join(names)}), {len(images)} image(s)")
    scales = _per_unit(scale, len(names), "controlnet_conditioning_scale", -100, 100)
    starts = _per_unit(start, len(names), "control_guidance_start", 0, 1)
    ends = _per_unit(end, len(names), "control_guidance_end", 0, 1)
    for s, e in zip(starts, ends):
        if s >= e:
            raise UserInputError(f"control guidance start {s:g} must be before its end {e:g} (fractions of the schedule)")
    if not isinstance(guess_mode, bool):
        raise UserInputError(f"guess_mode is True or False, got {guess_mode!r}")
    units = tuple(ControlUnit(n, control_array(imageio.load_image(img, "control image"), width, height), sc, s, e)
                  for n, img, sc, s, e in zip(names, images, scales, starts, ends))
    return Control(units, guess_mode)


def control_array(image: Image.Image, width: int, height: int) -> np.ndarray:
    """An RGB control image → float32 ``[1, 3, height, width]`` in [0, 1], resized with Lanczos where its size differs
    (diffusers' control image processor: no normalisation)."""
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.LANCZOS)
    return (np.asarray(image, dtype=np.float32) / np.float32(255.0)).transpose(2, 0, 1)[None]


def _names(manifest: Manifest, controlnet, images: int) -> list[str]:
    available = controlnet_names(manifest)
    if not available:
        raise UserInputError("this export has no ControlNet; add one: sdrt add-controlnet EXPORT PATH "
                             "(or sdrt export MODEL OUT --controlnet PATH)")
    if controlnet is None:
        if len(available) > 1 or images > 1:
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
    first = control_image[0] if isinstance(control_image, (list, tuple)) and control_image else control_image
    if first is None or isinstance(first, (list, tuple)):
        return None
    return imageio.default_size(imageio.load_image(first, "control image"), factor)
