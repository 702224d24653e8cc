"""Output parity: how far a backend's final latents and images are from the reference's."""

from __future__ import annotations

import numpy as np


def relative_error(value: np.ndarray, reference: np.ndarray) -> float:
    """max |value − reference| / max |reference|, the spine's measure for graphs."""
    scale = float(np.abs(reference).max()) or 1.0
    return float(np.abs(value.astype(np.float64) - reference.astype(np.float64)).max()) / scale


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """Peak signal-to-noise ratio of 8-bit images, in dB (inf when identical)."""
    mse = float(np.mean((image.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def ssim(image: np.ndarray, reference: np.ndarray) -> float:
    """Structural similarity of two 8-bit RGB images [H, W, 3] (scikit-image, 7×7 windows)."""
    from skimage.metrics import structural_similarity

    side = min(image.shape[:2])
    window = min(7, side if side % 2 else side - 1)  # odd, and no larger than the image
    return float(structural_similarity(image, reference, channel_axis=2, data_range=255, win_size=window))


def max_abs_pixel_diff(image: np.ndarray, reference: np.ndarray) -> int:
    return int(np.abs(image.astype(np.int16) - reference.astype(np.int16)).max())


def difference_map(image: np.ndarray, reference: np.ndarray, gain: float = 10.0) -> np.ndarray:
    """|image − reference| per pixel (max over channels), amplified ``gain`` times, as 8-bit gray."""
    diff = np.abs(image.astype(np.int16) - reference.astype(np.int16)).max(axis=2)
    return np.clip(diff * gain, 0, 255).astype(np.uint8)


def parity_class(backend: str, graph_precision: str) -> str:
    """The least exact number format a backend computes in (``openvino:bf16:w8a8`` → int8; plain → the graph's):
    which tolerance its output is held to, and whether it is lossless (fp32)."""
    options = backend.split(":")[1:]
    return "int8" if {"int8", "w8a8"} & set(options) else "bf16" if "bf16" in options else graph_precision
