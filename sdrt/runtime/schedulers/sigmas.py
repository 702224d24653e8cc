"""Noise levels σ: what the σ-based samplers (Euler, Heun, LMS, DPM++ SDE, and the solvers' Karras option) share.

A timestep t has the noise level σ_t = √((1−ᾱ_t)/ᾱ_t): x_t/√ᾱ_t = x0 + σ_t·ε ("variance exploding" form of
Karras et al., https://arxiv.org/abs/2206.00364). The σ samplers integrate in that form (samples are x0 + σ·ε, the
U-Net gets x/√(σ²+1)); the solvers use α_t = 1/√(σ²+1), σ_t·α_t and λ = log(α_t/(σ·α_t)).

float32/float64 exactly where diffusers has them, so the steps agree to float32 rounding.
"""

from __future__ import annotations

import numpy as np

from .common import Scheduler, as_f32, index_for_timestep


def train_sigmas(alphas_cumprod: np.ndarray) -> np.ndarray:
    """σ of each training timestep, float32, ascending in t."""
    return np.sqrt((1 - alphas_cumprod) / alphas_cumprod)


def interpolated_sigmas(timesteps: np.ndarray, alphas_cumprod: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """σ at (fractional) ``timesteps``, interpolated linearly in t between the training σ; and log σ of those."""
    sigmas = train_sigmas(alphas_cumprod)
    return np.interp(timesteps, np.arange(0, len(sigmas)), sigmas), np.log(sigmas)


def float_timesteps(config, num_inference_steps: int) -> np.ndarray:
    """The descending float64 timesteps of the σ samplers (Table 2 of https://arxiv.org/abs/2305.08891); unlike
    ``spaced_timesteps``, ``linspace`` is not rounded (Euler's 20 steps start 999, 946.4…)."""
    T, n = config.num_train_timesteps, num_inference_steps
    if config.timestep_spacing == "linspace":
        return np.linspace(0, T - 1, n)[::-1].copy()
    if config.timestep_spacing == "leading":
        return (np.arange(0, n) * (T // n)).round()[::-1].astype(np.float64) + config.steps_offset
    return np.arange(T, 0, -T / n).round() - 1  # trailing


def solver_timesteps(config, num_inference_steps: int, last_timestep: int | None = None) -> np.ndarray:
    """The descending int64 timesteps of the multistep solvers (DPM-Solver++, UniPC): n of n + 1 points, so t = 0 is
    never one; ``last_timestep`` (the number of training timesteps unless λ is clipped) bounds them."""
    T, n = config.num_train_timesteps, num_inference_steps
    last = T if last_timestep is None else last_timestep
    if config.timestep_spacing == "linspace":
        return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].astype(np.int64)
    if config.timestep_spacing == "leading":
        step_ratio = last // (n + 1)
        return (np.arange(0, n + 1) * step_ratio).round()[::-1][:-1].astype(np.int64) + config.steps_offset
    return np.arange(last, 0, -T / n).round().astype(np.int64) - 1  # trailing


def karras_sigmas(sigma_min: float, sigma_max: float, num_inference_steps: int) -> np.ndarray:
    """σ_i = (σ_max^(1/ρ) + i/(n−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, ρ = 7: eq. (5) of Karras et al. (float64)."""
    rho = 7.0
    ramp = np.linspace(0, 1, num_inference_steps)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """The (fractional) timesteps of noise levels σ, interpolating linearly in log σ."""
    sigma = np.asarray(sigma)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    return ((1 - w) * low_idx + w * high_idx).reshape(sigma.shape)


def exp_f32(x) -> np.float32:
    """e^x of a float32 scalar, correctly rounded, as torch's CPU float32 ``exp`` almost always is (numpy's float32
    ``exp`` is an ulp off for a third of inputs, which the DPM++ SDE step amplifies)."""
    return np.float32(np.exp(np.float64(x)))


def expm1_f32(x) -> np.float32:
    """e^x − 1 of a float32 scalar, correctly rounded (as torch's CPU float32 ``expm1`` almost always is)."""
    return np.float32(np.expm1(np.float64(x)))


def ancestral_step(sigma_from, sigma_to, eta: float = 1.0):
    """k-diffusion's ``get_ancestral_step``: (σ_down, σ_up) with σ_down² + σ_up² = σ_to², σ_up the fresh noise an
    ancestral step adds (η = 1: the most the step allows; η = 0: none, an ODE step)."""
    sigma_up = min(sigma_to, np.float32(eta) * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def alpha_sigma(sigma):
    """α_t = 1/√(σ²+1) and σ_t = σ·α_t of a noise level σ (x_t = α_t·x0 + σ_t·ε)."""
    alpha_t = 1 / np.sqrt(sigma**2 + 1)
    return alpha_t, sigma * alpha_t


def noising_indices(scheduler, timesteps, missing: int | None = None) -> list[int]:
    """The σ index ``add_noise`` uses for each timestep, as diffusers: found in ``timesteps`` without a
    ``begin_index``; else the current step (inpainting, after the first step) or ``begin_index`` (img2img)."""
    timesteps = np.atleast_1d(np.asarray(timesteps))
    if scheduler.begin_index is None:
        return [index_for_timestep(scheduler.timesteps, t, missing) for t in timesteps]
    if scheduler.step_index is not None:
        return [scheduler.step_index] * len(timesteps)
    return [scheduler.begin_index] * len(timesteps)


class NoiseLevels:
    """α_t, σ_t and the half log-SNR λ_t of a noise level σ for the multistep solvers, and their forward process:
    the variance-preserving forms above; their flow-matching forms (``flow_solvers.py``) replace ``_alpha_sigma``."""

    @staticmethod
    def _alpha_sigma(sigma):
        return alpha_sigma(sigma)

    def _alpha_sigma_lambda(self, sigma):
        """α_t, σ_t and λ_t = log α_t − log σ_t (inf at σ = 0)."""
        alpha_t, sigma_t = self._alpha_sigma(sigma)
        with np.errstate(divide="ignore"):
            return alpha_t, sigma_t, np.log(alpha_t) - np.log(sigma_t)

    def add_noise(self, original: np.ndarray, noise: np.ndarray, timesteps) -> np.ndarray:
        """x_t = α_t·x0 + σ_t·ε at the σ of each timestep (of ``begin_index`` or the current step when set)."""
        indices = noising_indices(self, timesteps, missing=len(self.timesteps) - 1)
        sigma = self.sigmas.astype(original.dtype)[indices].reshape((-1,) + (1,) * (original.ndim - 1))
        alpha_t, sigma_t = self._alpha_sigma(sigma)
        return alpha_t * original + sigma_t * noise


def predict_x0_from_sigma(prediction_type: str, model_output, sample, sigma):
    """The denoised x0 from the output at noise level σ, for samples x = x0 + σ·ε (Karras et al.'s D(x; σ))."""
    if prediction_type == "epsilon":
        return sample - sigma * model_output
    if prediction_type == "v_prediction":  # v at the U-Net's input x/√(σ²+1)
        return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
    return model_output  # "sample"


class SigmaScheduler(Scheduler):
    """A sampler on x = x0 + σ·ε: the U-Net input is x/√(σ²+1), the initial noise has σ_max (or √(σ_max²+1) for
    ``leading`` spacing, as diffusers), and the step index counts from the first call (diffusers' ``_step_index``).

    Subclasses set ``sigmas`` (one per model evaluation, then the final one) and ``timesteps`` in ``set_timesteps``.
    """

    def __init__(self, config: dict | None = None):
        super().__init__(config)
        if getattr(self.config, "rescale_betas_zero_snr", False):
            self.alphas_cumprod[-1] = 2**-24  # close to 0 without being 0, so the first σ is not inf (as diffusers)
        self.sigmas = np.zeros(0, dtype=np.float32)
        self.step_index: int | None = None
        self.begin_index: int | None = None

    @property
    def init_noise_sigma(self) -> float:
        max_sigma = self.sigmas.max() if len(self.sigmas) else train_sigmas(self.alphas_cumprod).max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return float(max_sigma)
        return float((max_sigma**2 + 1) ** 0.5)

    def _reset(self) -> None:
        self.step_index = None
        self.begin_index = None

    def set_begin_index(self, begin_index: int = 0) -> None:
        self.begin_index = begin_index

    def _init_step_index(self, t) -> None:
        if self.step_index is None:
            self.step_index = index_for_timestep(self.timesteps, t) if self.begin_index is None else self.begin_index

    def scale_model_input(self, sample: np.ndarray, t=None) -> np.ndarray:
        """x/√(σ²+1): the U-Net was trained on x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, which is that."""
        self._check_ready()
        self._init_step_index(t)
        sigma = self.sigmas[self.step_index]
        return as_f32(sample) / (sigma**2 + 1) ** 0.5

    def add_noise(self, original: np.ndarray, noise: np.ndarray, timesteps) -> np.ndarray:
        """x = x0 + σ·ε at the σ of each timestep (of ``begin_index`` or the current step when set)."""
        sigma = self.sigmas.astype(original.dtype)[noising_indices(self, timesteps)]
        return original + noise * sigma.reshape((-1,) + (1,) * (original.ndim - 1))
