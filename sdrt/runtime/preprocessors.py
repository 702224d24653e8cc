"""ControlNet preprocessors: a picture → the control map a ControlNet was trained on. ``none`` for images that
already are maps, ``canny`` (OpenCV's edge detector, as AUTOMATIC1111's ControlNet extension runs it: thresholds
100 and 200 by default, white edges on black). Depth, pose, line-art and the rest need their own networks; make
those maps with the tool of your choice and pass them with ``none``."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import UserInputError

CANNY_THRESHOLDS = (100, 200)  # the extension's defaults (threshold_a, threshold_b)


def none(image: Image.Image, **_) -> Image.Image:
    return image


def canny(image: Image.Image, low: float | None = None, high: float | None = None, **_) -> Image.Image:
    """White edges on black, three channels, from OpenCV's Canny with hysteresis thresholds ``low`` and ``high``."""
    try:
        import cv2
    except ImportError as e:
        raise UserInputError("the canny preprocessor needs OpenCV: pip install 'sdrt[controlnet]' "
                             "(or pip install opencv-python-headless)") from e
    low = CANNY_THRESHOLDS[0] if low is None else low
    high = CANNY_THRESHOLDS[1] if high is None else high
    if not (isinstance(low, (int, float)) and isinstance(high, (int, float)) and 0 <= low and 0 <= high):
        raise UserInputError(f"canny thresholds are two numbers >= 0 (low, high), got {low!r}, {high!r}")
    edges = cv2.Canny(np.asarray(image.convert("RGB")), float(low), float(high))
    return Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2))


PREPROCESSORS = {"none": none, "canny": canny}


def preprocess(name: str, image: Image.Image, **params) -> Image.Image:
    """``image`` through the preprocessor ``name`` (``params``: its thresholds)."""
    try:
        run = PREPROCESSORS[name]
    except KeyError:
        raise UserInputError(f"no preprocessor {name!r}; available: {', '.join(PREPROCESSORS)}") from None
    return run(image, **params)
