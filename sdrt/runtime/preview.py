"""Live previews: the sampler's current estimate of the final images, decoded while the loop runs.

At a step, the model's estimate of the clean latents (x0, from the guided noise prediction) goes through the export's
own VAE decoder, so a preview is right for every family and VAE. A cheaper linear latent→RGB map was measured on
`shapes` and dropped: 8–11 dB against the decoded image, shapes unreadable (docs/ARCHITECTURE.md, "Live previews").
The decoder can cost more than a U-Net step, so previews are rationed by time: at most ``budget`` of the loop's
time goes to them, whatever the model and size, and none while nobody watches (``wanted``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image

from .schedulers import Scheduler
from .schedulers.common import predict_x0

ShowPreview = Callable[[int, list[Image.Image]], None]  # (step index, the batch's preview images)


@dataclass
class Preview:
    """When to decode a preview and whom to give it: every ``every`` steps, while ``wanted()``, and only while the
    previews so far (and the next, as estimated from the cheapest decode seen) stay within ``budget`` of the loop's
    time. One Preview may serve many calls: the estimate carries over."""
    show: ShowPreview
    every: int = 5
    budget: float = 0.04  # of the loop's time; under the 5 % target, for what a decode costs the next step (caches)
    wanted: Callable[[], bool] = lambda: True
    _started: float = 0.0
    _spent: float = 0.0
    _seconds_per_pixel: float = 0.0  # the cheapest decode so far, per latent pixel
    _decodes: int = 0
    _pixels: int = field(default=0, repr=False)

    def start(self, latents: np.ndarray) -> None:
        """A loop begins on ``latents`` (its shape sizes the estimate of a decode)."""
        self._started, self._spent = time.perf_counter(), 0.0
        self._pixels = latents.shape[0] * latents.shape[2] * latents.shape[3]

    def due(self, step: int) -> bool:
        if self.every < 1 or (step + 1) % self.every or not self.wanted():
            return False
        stepping = time.perf_counter() - self._started - self._spent
        return self._spent + self._seconds_per_pixel * self._pixels <= self.budget * stepping

    def render(self, step: int, decode: Callable[[], list[Image.Image]]) -> None:
        t0 = time.perf_counter()
        images = decode()
        seconds = time.perf_counter() - t0
        self._spent += seconds
        self._decodes += 1
        if self._decodes > 1:  # the first decode pays the decoder's compilation and warm-up: not an estimate
            cost = seconds / max(self._pixels, 1)
            self._seconds_per_pixel = min(self._seconds_per_pixel, cost) if self._seconds_per_pixel else cost
        if images:
            self.show(step, images)


def denoised(scheduler: Scheduler, scaled_input: np.ndarray, noise_pred: np.ndarray, t) -> np.ndarray:
    """The model's estimate of the clean (scaled) latents from its prediction at timestep ``t``. Every sampler's
    U-Net input is x_t = √ᾱ·x0 + √(1−ᾱ)·ε at the input's timestep (a σ sampler's x/√(σ²+1) is that, ᾱ = 1/(σ²+1)),
    so one formula serves all; ᾱ is interpolated at fractional timesteps (Karras σs). A flow sampler's x0 is
    x − σ·v."""
    if scheduler.prediction_type == "flow":
        return scheduler.predict_x0(noise_pred.astype(np.float32), scaled_input.astype(np.float32), t)
    alphas = scheduler.alphas_cumprod
    alpha_bar = float(np.interp(float(t), np.arange(len(alphas)), alphas))
    return predict_x0(scheduler.prediction_type, noise_pred.astype(np.float32), scaled_input.astype(np.float32),
                      np.float32(alpha_bar ** 0.5), np.float32((1 - alpha_bar) ** 0.5))
