"""Seeded initial noise for the latents."""

from __future__ import annotations

import numpy as np

MAX_SEED = 2**32 - 1


def random_seed() -> int:
    return int(np.random.default_rng().integers(0, MAX_SEED))


def initial_noise(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal noise for the whole batch from one seed (diffusers' convention: one
    generator draws the batch's latents in one call), float32."""
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
