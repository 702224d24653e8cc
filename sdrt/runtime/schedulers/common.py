"""What the numpy samplers share: the config, the noise schedule, timestep spacing, x0/ε from the model output.

Every number is computed as diffusers computes it: the schedule in float32 as torch does on the CPU (betas and
alphas_cumprod come out bit for bit the same), samples in float32. Notation (DDPM/DDIM papers):
ᾱ_t = alphas_cumprod[t], x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Callable

import numpy as np

from ...errors import UserInputError

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")

NoiseSource = Callable[[tuple], np.ndarray]  # shape -> standard normal float32 noise


def default_noise_source(seed: int = 0) -> NoiseSource:
    """Standard normal float32 noise from a numpy Generator: what a stochastic sampler draws unless given another."""
    rng = np.random.default_rng(seed)
    return lambda shape: rng.standard_normal(shape, dtype=np.float32)


def resolve_config(defaults: dict, config: dict | None, kind: str) -> SimpleNamespace:
    """As diffusers' ``from_config``: keys the class does not take are ignored, missing ones take its default."""
    if config is not None and not isinstance(config, dict):
        raise UserInputError(f"a {kind} scheduler config must be a dict, got {type(config).__name__}")
    config = config or {}
    return SimpleNamespace(**{key: config.get(key, default) for key, default in defaults.items()})


def torch_linspace_f32(start: float, end: float, n: int) -> np.ndarray:
    """``torch.linspace(start, end, n, dtype=torch.float32)`` on the CPU: a float32 step, then each value in one
    rounding (a fused multiply-add) from the nearer end. ``np.linspace`` differs in the last bit of ~1/3 of them."""
    start32, end32 = np.float32(start), np.float32(end)
    if n == 1:
        return np.array([start32], dtype=np.float32)
    step = np.float64((end32 - start32) / np.float32(n - 1))
    i = np.arange(n)
    values = np.where(i < n // 2, np.float64(start32) + step * i, np.float64(end32) - step * (n - 1 - i))
    return values.astype(np.float32)


def betas_for_alpha_bar(num_diffusion_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """The Glide cosine schedule (``squaredcos_cap_v2``): β_t = 1 − ᾱ(t+1)/ᾱ(t), ᾱ(t) = cos²((t/T+0.008)/1.008·π/2)."""

    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    n = num_diffusion_timesteps
    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return np.array(betas, dtype=np.float32)


def make_betas(config: SimpleNamespace) -> np.ndarray:
    """float32 β_1..β_T from ``trained_betas`` or ``beta_schedule``."""
    T = config.num_train_timesteps
    if config.trained_betas is not None:
        return np.asarray(config.trained_betas, dtype=np.float32)
    if config.beta_schedule == "linear":
        return torch_linspace_f32(config.beta_start, config.beta_end, T)
    if config.beta_schedule == "scaled_linear":  # the latent diffusion schedule: linear in √β
        return torch_linspace_f32(config.beta_start**0.5, config.beta_end**0.5, T) ** 2
    if config.beta_schedule == "squaredcos_cap_v2":
        return betas_for_alpha_bar(T)
    raise UserInputError(
        f"unknown beta_schedule {config.beta_schedule!r} in the scheduler config; "
        "sdrt knows 'linear', 'scaled_linear', 'squaredcos_cap_v2' (or give trained_betas)"
    )


def cumprod_f32(values: np.ndarray) -> np.ndarray:
    """``torch.cumprod`` of float32 on the CPU: it accumulates in float64 and rounds each output to float32."""
    return np.cumprod(values, dtype=np.float64).astype(np.float32)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Rescale β so that ᾱ_T = 0 (Algorithm 1 of https://arxiv.org/abs/2305.08891), in float32 as diffusers."""
    alphas_bar_sqrt = np.sqrt(cumprod_f32(1.0 - betas))
    first, last = alphas_bar_sqrt[0].copy(), alphas_bar_sqrt[-1].copy()
    alphas_bar_sqrt -= last  # shift so the last timestep is zero
    alphas_bar_sqrt *= first / (first - last)  # scale so the first timestep is back to its old value
    alphas_bar = alphas_bar_sqrt**2
    alphas = np.concatenate([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


def spaced_timesteps(config: SimpleNamespace, num_inference_steps: int) -> np.ndarray:
    """The descending int64 timesteps of DDIM and PNDM, spaced as Table 2 of https://arxiv.org/abs/2305.08891.

    Kept to diffusers' exact expressions: e.g. ``trailing`` steps a float ``np.arange``, and ``steps_offset`` applies
    to ``leading`` only.
    """
    T, n = config.num_train_timesteps, num_inference_steps
    if config.timestep_spacing == "linspace":
        return np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
    if config.timestep_spacing == "leading":
        step_ratio = T // n
        return (np.arange(0, n) * step_ratio).round()[::-1].astype(np.int64) + config.steps_offset
    step_ratio = T / n  # trailing
    return np.round(np.arange(T, 0, -step_ratio)).astype(np.int64) - 1


def predict_x0(prediction_type: str, model_output, sample, alpha, sigma):
    """The model's estimate of x0 ("predicted x_0" of formula (12) of DDIM), x_t = alpha·x0 + sigma·ε."""
    if prediction_type == "epsilon":
        return (sample - sigma * model_output) / alpha
    if prediction_type == "v_prediction":  # v = alpha·ε − sigma·x0 (section 2.4 of https://arxiv.org/abs/2210.02303)
        return alpha * sample - sigma * model_output
    if prediction_type == "flow":  # the velocity v = ε − x0 of x_t = (1 − σ)·x0 + σ·ε: alpha = 1 − σ, sigma = σ
        return sample - sigma * model_output
    return model_output  # "sample"


def predict_epsilon(prediction_type: str, model_output, sample, alpha, sigma):
    """The model's estimate of the noise ε, x_t = alpha·x0 + sigma·ε."""
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":
        return alpha * model_output + sigma * sample
    return (sample - alpha * model_output) / sigma  # "sample"


def as_f32(array) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


def index_for_timestep(timesteps: np.ndarray, t, missing: int | None = None) -> int:
    """Where ``t`` is in ``timesteps``; of two matches the second (so img2img does not skip a σ), as diffusers.
    Not found: ``missing`` (the multistep solvers use the last index), or an error."""
    candidates = np.flatnonzero(timesteps == t)
    if len(candidates) == 0:
        if missing is None:
            raise UserInputError(f"timestep {t!r} is not one of this sampler's timesteps")
        return missing
    return int(candidates[1] if len(candidates) > 1 else candidates[0])


def check_unsupported(config, unsupported: dict, name: str, extra: list[str] = ()) -> None:
    """Options of the diffusers class that sdrt does not implement must keep their defaults."""
    found = [f"{k}={getattr(config, k)!r}" for k, v in unsupported.items() if getattr(config, k) != v]
    found += list(extra)
    if found:
        raise UserInputError(f"the {name} sampler does not support {', '.join(found)} (scheduler config)")


class Scheduler:
    """A sampler: ``set_timesteps(n)``, then for each ``t`` in ``timesteps``: ``scale_model_input``, the U-Net,
    ``step``. Built from a diffusers scheduler config (a dict); ``defaults`` are the target diffusers class's."""

    name = ""  # the canonical sampler name
    defaults: dict = {}
    prediction_types = ("epsilon", "v_prediction", "sample")
    order = 1  # model evaluations per step (diffusers' ``order``)
    stochastic = False  # whether ``step`` draws noise (see ``set_noise_source``)
    init_noise_sigma = 1.0  # standard deviation of the initial noise
    custom_sigmas = True  # a flow sampler's set_timesteps takes the family's σ list (Flux's linspace)
    # η: DDIM's (0 = deterministic) or the scale of an ancestral/SDE sampler's fresh noise (k-diffusion's, 1 =
    # the usual ancestral sampler); None where the sampler has no η
    eta_default: float | None = None
    takes_s_noise = False  # whether s_noise scales the fresh noise of ``step`` (k-diffusion's ancestral/SDE samplers)

    def __init__(self, config: dict | None = None):
        self.config = resolve_config(self.defaults, config, self.name)
        if self.config.prediction_type not in self.prediction_types:
            raise UserInputError(
                f"prediction_type {self.config.prediction_type!r} is not supported by the {self.name} sampler; "
                f"use one of {', '.join(self.prediction_types)}"
            )
        if self.config.timestep_spacing not in TIMESTEP_SPACINGS:
            raise UserInputError(
                f"timestep_spacing {self.config.timestep_spacing!r} is not supported; "
                f"use one of {', '.join(TIMESTEP_SPACINGS)}"
            )
        self.betas = make_betas(self.config)
        if getattr(self.config, "rescale_betas_zero_snr", False):
            self.betas = rescale_zero_terminal_snr(self.betas)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = cumprod_f32(self.alphas)
        self.num_inference_steps: int | None = None
        self.timesteps = np.zeros(0, dtype=np.int64)
        self._noise: NoiseSource = default_noise_source()
        self.eta, self.s_noise = self.eta_default, 1.0

    @property
    def prediction_type(self) -> str:
        return self.config.prediction_type

    def __repr__(self) -> str:
        return f"{type(self).__name__}({vars(self.config)})"

    def _check_steps(self, num_inference_steps: int) -> int:
        T = self.config.num_train_timesteps
        n = num_inference_steps
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= T:
            raise UserInputError(f"the number of steps must be a whole number from 1 to {T}, got {n!r}")
        return int(n)

    def _check_ready(self) -> None:
        if self.num_inference_steps is None:
            raise RuntimeError(f"{type(self).__name__}.set_timesteps(n) must be called before step()")

    def set_timesteps(self, num_inference_steps: int) -> None:
        raise NotImplementedError

    def set_noise_source(self, noise: NoiseSource) -> None:
        """Where a stochastic sampler (euler-a, dpm++sde, ddpm, lcm, ddim at η > 0) draws its noise: ``noise(shape)``
        returns standard normal float32 noise. euler-a, ddpm, lcm and ddim call it exactly where diffusers calls
        ``randn_tensor``, with the same shapes, so a source that replays torch's CPU ``randn`` stream reproduces
        diffusers' samples; dpm++sde samples its Brownian path from it (diffusers uses torchsde there: see
        dpm_sde.py). Deterministic samplers never call it."""
        self._noise = noise

    def set_noise_scales(self, eta: float | None = None, s_noise: float | None = None) -> None:
        """η and s_noise (None: the default, η per ``eta_default``, s_noise 1). A sampler without them ignores them,
        as diffusers and AUTOMATIC1111 do (``has_eta``, ``takes_s_noise`` tell)."""
        for label, value in (("eta", eta), ("s_noise", s_noise)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, np.floating))
                                      or not 0 <= value < math.inf):
                raise UserInputError(f"{label} must be a number of at least 0, got {value!r}")
        if eta is not None and self.has_eta:
            self.eta = float(eta)
        if s_noise is not None and self.takes_s_noise:
            self.s_noise = float(s_noise)

    @property
    def has_eta(self) -> bool:
        return self.eta_default is not None

    def _draw_noise(self, shape) -> np.ndarray:
        noise = as_f32(self._noise(tuple(shape)))
        if noise.shape != tuple(shape):
            raise ValueError(f"the noise source returned shape {noise.shape}, expected {tuple(shape)}")
        return noise

    def set_begin_index(self, begin_index: int = 0) -> None:
        """img2img starts at ``timesteps[begin_index]``; only samplers that count their steps need to know."""

    def scale_model_input(self, sample: np.ndarray, t=None) -> np.ndarray:
        return sample

    def step(self, model_output: np.ndarray, t, sample: np.ndarray) -> np.ndarray:
        """One denoising step: the sample at the previous (smaller) timestep."""
        raise NotImplementedError

    def add_noise(self, original: np.ndarray, noise: np.ndarray, timesteps) -> np.ndarray:
        """Forward diffusion x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, one timestep per batch item (diffusers' DDPM add_noise)."""
        alphas_cumprod = self.alphas_cumprod.astype(original.dtype)[np.asarray(timesteps, dtype=np.int64)]
        shape = (-1,) + (1,) * (original.ndim - 1)
        sqrt_alpha_prod = np.sqrt(alphas_cumprod).reshape(shape)
        sqrt_one_minus_alpha_prod = np.sqrt(1 - alphas_cumprod).reshape(shape)
        return sqrt_alpha_prod * original + sqrt_one_minus_alpha_prod * noise
