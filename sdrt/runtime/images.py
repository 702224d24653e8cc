"""Images in and out: input images and masks to arrays as diffusers' image processor makes them, outpainting
canvases, latent-decoder output to PIL images, and PNGs that carry AUTOMATIC1111's ``parameters`` chunk."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from ..errors import UserInputError
from ..fileio import atomic_path

ImageInput = Union[str, Path, Image.Image, np.ndarray]  # a file, a PIL image, or uint8 [H, W(, C)] pixels


def load_image(source: ImageInput, what: str = "image", mode: str = "RGB") -> Image.Image:
    """``source`` as a PIL image in ``mode`` ("RGB" for pictures, "L" for masks); a clear error if it is not one."""
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3):
            raise UserInputError(f"the {what} array must be uint8 pixels [H, W] or [H, W, C], got {source.dtype} {source.shape}")
        image = Image.fromarray(source)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise UserInputError(f"the {what} {path} does not exist")
        try:
            with Image.open(path) as opened:
                image = opened.copy()
        except (UnidentifiedImageError, OSError) as e:
            raise UserInputError(f"{path} is not an image Pillow can read ({e}); give a PNG, JPEG or WebP file") from None
    else:
        raise UserInputError(f"the {what} must be a file path, a PIL image or a uint8 array, got {type(source).__name__}")
    if image.mode in ("RGBA", "LA", "PA") and mode == "RGB":
        # composite transparency over white rather than let it decide the colour of the hidden pixels
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    return image.convert(mode)


def default_size(image: Image.Image, factor: int) -> tuple[int, int]:
    """(width, height) of ``image`` rounded down to multiples of ``factor``, as diffusers' image processor."""
    return image.width - image.width % factor, image.height - image.height % factor


def image_to_array(image: Image.Image, width: int, height: int) -> np.ndarray:
    """An RGB image → float32 ``[1, 3, height, width]`` in [-1, 1], resized with Lanczos if needed (diffusers)."""
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.LANCZOS)
    array = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    return (np.float32(2.0) * array - np.float32(1.0)).transpose(2, 0, 1)[None]


def mask_to_array(mask: Image.Image, width: int, height: int) -> np.ndarray:
    """A grayscale mask → float32 ``[1, 1, height, width]`` of 0 (keep) and 1 (repaint): white repaints."""
    if mask.size != (width, height):
        mask = mask.resize((width, height), resample=Image.LANCZOS)
    array = np.asarray(mask, dtype=np.float32) / np.float32(255.0)
    return (array >= 0.5).astype(np.float32)[None, None]


def outpaint_canvas(image: Image.Image, left: int, top: int, right: int, bottom: int, factor: int
                    ) -> tuple[Image.Image, Image.Image]:
    """The image on a canvas grown by the given pixels (edge pixels stretched outwards), and the mask of the new
    area. Right and bottom grow a little more where needed so both sides are multiples of ``factor``."""
    pads = (left, top, right, bottom)
    if any(not isinstance(p, (int, np.integer)) or p < 0 for p in pads) or not any(pads):
        raise UserInputError(f"outpaint takes four whole numbers of pixels >= 0 (left, top, right, bottom), not all 0; got {pads}")
    width, height = image.width + left + right, image.height + top + bottom
    right += -width % factor
    bottom += -height % factor
    pixels = np.pad(np.asarray(image.convert("RGB")), ((top, bottom), (left, right), (0, 0)), mode="edge")
    mask = np.full(pixels.shape[:2], 255, dtype=np.uint8)
    mask[top : top + image.height, left : left + image.width] = 0
    return Image.fromarray(pixels), Image.fromarray(mask)


def image_hash(image: Image.Image) -> str:
    """A short content hash of the pixels, for the infotext (which input image made this)."""
    return hashlib.sha256(image.tobytes()).hexdigest()[:10]


def to_pil(images: np.ndarray) -> list[Image.Image]:
    """``[B, 3, H, W]`` in [-1, 1] → PIL images, rounded exactly as diffusers' image processor does."""
    images = np.clip(images / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
    return [Image.fromarray(img) for img in (images * 255).round().astype("uint8")]


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
