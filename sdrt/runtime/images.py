"""Latent-decoder output to PIL images, and PNGs that carry AUTOMATIC1111's ``parameters`` chunk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..fileio import atomic_path


def to_pil(images: np.ndarray) -> list[Image.Image]:
    """``[B, 3, H, W]`` in [-1, 1] → PIL images, rounded exactly as diffusers' image processor does."""
    images = np.clip(images / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
    return [Image.fromarray(img) for img in (images * 255).round().astype("uint8")]


def infotext(
    prompt: str,
    negative_prompt: str,
    *,
    steps: int,
    sampler: str,
    cfg_scale: float,
    seed: int,
    width: int,
    height: int,
    model_hash: str,
    model: str | None = None,
    extra: dict[str, object] | None = None,
) -> str:
    """The generation parameters in AUTOMATIC1111's text format (what its PNG Info tab reads)."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    fields: dict[str, object] = {
        "Steps": steps,
        "Sampler": sampler,
        "CFG scale": f"{cfg_scale:g}",
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model hash": model_hash,
    }
    if model:
        fields["Model"] = model
    fields.update(extra or {})
    lines.append(", ".join(f"{k}: {v}" for k, v in fields.items()))
    return "\n".join(lines)


def save_png(image: Image.Image, path: str | Path, parameters: str) -> Path:
    """Write ``image`` with a ``parameters`` text chunk, atomically."""
    info = PngInfo()
    info.add_text("parameters", parameters)
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path


def read_parameters(path: str | Path) -> str | None:
    with Image.open(path) as img:
        return img.info.get("parameters")
