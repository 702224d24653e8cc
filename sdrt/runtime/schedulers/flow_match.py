"""Flow-matching samplers (rectified flow: SD 3 / 3.5 and Flux): diffusers' FlowMatchEulerDiscreteScheduler and
FlowMatchHeunDiscreteScheduler, step for step.

The model predicts the velocity v = ε − x0 of x_σ = (1 − σ)·x0 + σ·ε, so x0 = x − σ·v, and a step from σ to σ' is
x + (σ' − σ)·v (Euler; Heun averages v at both ends). σ runs from 1 (noise) to 0, shifted towards noise by
σ ↦ shift·σ / (1 + (shift − 1)·σ) (SD 3: shift 3), or, with ``use_dynamic_shifting`` (Flux), by
σ ↦ e^μ / (e^μ + (1/σ − 1)) with μ growing linearly with the image's token count (diffusers' ``calculate_shift``).
The model is fed t = 1000·σ. Every number is computed in the dtype diffusers computes it in (float64 numpy for the
spacing, float32 after), so the sigmas come out bit for bit the same.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import UserInputError
from ...families import FAMILIES
from .common import NoiseSource, Scheduler, as_f32, check_unsupported, default_noise_source, index_for_timestep, \
    resolve_config

# Options of diffusers' FlowMatchEulerDiscreteScheduler that sdrt does not implement: each must keep its default.
_UNSUPPORTED = dict(invert_sigmas=False, use_karras_sigmas=False, use_exponential_sigmas=False,
                    use_beta_sigmas=False, stochastic_sampling=False)


def calculate_shift(image_tokens: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
                    max_shift: float = 1.15) -> float:
    """μ of the dynamic shift: linear in the image's token count, ``base_shift`` at ``base_seq_len`` tokens and
    ``max_shift`` at ``max_seq_len`` (diffusers' ``calculate_shift``)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_tokens * m + base_shift - m * base_seq_len


def shifted(sigmas, shift: float):
    """σ moved towards 1 by ``shift`` (SD 3's 3.0): shift·σ / (1 + (shift − 1)·σ), as diffusers writes it."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_schedule(manifest, steps: int, height: int, width: int, custom_sigmas: bool = True) -> dict:
    """What a flow sampler's schedule takes for ``steps`` steps at this image size, as the family's diffusers
    pipeline gives it: Flux's σ spaced as linspace(1, 1/n, n) (to a sampler that takes ``custom_sigmas``), and μ
    of the dynamic shift from the image's token count (the latent's patches) where the model's scheduler config
    asks for it."""
    config = manifest.scheduler_config
    linear = FAMILIES[manifest.family].linear_sigmas and custom_sigmas
    sigmas = {"sigmas": np.linspace(1.0, 1 / steps, steps)} if linear else {}
    if not config.get("use_dynamic_shifting"):
        return sigmas
    side = manifest.size_multiple  # pixels per patch
    mu = calculate_shift((height // side) * (width // side), config.get("base_image_seq_len", 256),
                         config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                         config.get("max_shift", 1.15))
    return sigmas | {"mu": mu}


class FlowMatchScheduler(Scheduler):
    """What the flow samplers share: the shifted σ schedule, the forward process, x0 from the velocity."""

    defaults = dict(num_train_timesteps=1000, shift=1.0)
    prediction_types = ("flow",)

    def __init__(self, config: dict | None = None):
        self.config = resolve_config(self.defaults, config, self.name)
        T = self.config.num_train_timesteps
        sigmas = np.linspace(1, T, T, dtype=np.float32)[::-1] / np.float32(T)
        if not getattr(self.config, "use_dynamic_shifting", False):
            sigmas = self._shifted(sigmas)
        self.sigma_min, self.sigma_max = float(sigmas[-1]), float(sigmas[0])
        self.num_inference_steps: int | None = None
        self.timesteps = np.zeros(0, dtype=np.float32)
        self.sigmas = np.zeros(0, dtype=np.float32)
        self._noise: NoiseSource = default_noise_source()
        self.eta, self.s_noise = self.eta_default, 1.0
        self._begin = self._index = None

    @property
    def prediction_type(self) -> str:
        return "flow"

    def _shifted(self, sigmas: np.ndarray) -> np.ndarray:
        return shifted(sigmas, self.config.shift)

    def _spaced_sigmas(self, n: int, sigmas: np.ndarray | None, mu: float | None) -> np.ndarray:
        """The n sigmas of the schedule (before the final 0), as diffusers' ``set_timesteps``: evenly spaced in t
        between the shifted ends, or the caller's ``sigmas`` (Flux's linspace(1, 1/n, n)); then shifted."""
        T = self.config.num_train_timesteps
        if sigmas is None:
            sigmas = np.linspace(self.sigma_max * T, self.sigma_min * T, n) / T
        else:
            sigmas = np.asarray(sigmas).astype(np.float32)
        if getattr(self.config, "use_dynamic_shifting", False):
            if mu is None:
                raise UserInputError("this model's sampler shifts its schedule by the image size: give the image's "
                                     "token count (mu)")
            sigmas = math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1) ** 1.0)
        else:
            sigmas = self._shifted(sigmas)
        terminal = getattr(self.config, "shift_terminal", None)
        if terminal:  # stretched so that the last σ is ``shift_terminal``
            one_minus = 1 - sigmas
            sigmas = 1 - one_minus / (one_minus[-1] / (1 - terminal))
        return as_f32(sigmas)

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin = begin_index

    def _step_index(self, t) -> int:
        if self._index is None:
            self._index = self._begin if self._begin is not None else index_for_timestep(self.timesteps, t)
        return self._index

    def add_noise(self, original: np.ndarray, noise: np.ndarray, timesteps) -> np.ndarray:
        """The forward process x_σ = σ·ε + (1 − σ)·x0 (diffusers' ``scale_noise``): at the step the sampler is at
        once it runs (inpainting's blend, after a step), else where img2img begins, else at ``timesteps``."""
        if self._begin is None:
            index = index_for_timestep(self.timesteps, np.asarray(timesteps)[0])
        else:
            index = self._index if self._index is not None else self._begin
        sigma = self.sigmas[index]
        return as_f32(sigma * noise + (np.float32(1.0) - sigma) * original)

    def predict_x0(self, model_output: np.ndarray, sample: np.ndarray, t) -> np.ndarray:
        """x0 = x − σ·v at the model's input timestep ``t`` (= 1000·σ)."""
        return sample - np.float32(float(t) / self.config.num_train_timesteps) * model_output


class FlowMatchEulerScheduler(FlowMatchScheduler):
    name = "flow-euler"
    defaults = dict(
        num_train_timesteps=1000,
        shift=1.0,
        use_dynamic_shifting=False,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
        shift_terminal=None,
        time_shift_type="exponential",
        **_UNSUPPORTED,
    )

    def __init__(self, config: dict | None = None):
        super().__init__(config)
        extra = [] if self.config.time_shift_type == "exponential" else \
            [f"time_shift_type={self.config.time_shift_type!r} (only 'exponential')"]
        check_unsupported(self.config, _UNSUPPORTED, self.name, extra)

    def set_timesteps(self, num_inference_steps: int, sigmas=None, mu: float | None = None) -> None:
        n = self.num_inference_steps = self._check_steps(num_inference_steps)
        spaced = self._spaced_sigmas(n, sigmas, mu)
        self.timesteps = spaced * np.float32(self.config.num_train_timesteps)
        self.sigmas = np.concatenate([spaced, np.zeros(1, np.float32)])
        self._begin = self._index = None

    def step(self, model_output: np.ndarray, t, sample: np.ndarray) -> np.ndarray:
        i = self._step_index(t)
        dt = self.sigmas[i + 1] - self.sigmas[i]
        self._index += 1
        return as_f32(as_f32(sample) + dt * as_f32(model_output))


class FlowMatchHeunScheduler(FlowMatchScheduler):
    """Heun's second-order method on the flow ODE: each step evaluates the model at σ and at σ' and averages the
    velocities (two evaluations per step, diffusers' ``order = 2``: the timesteps after the first come twice)."""

    name = "flow-heun"
    order = 2

    def set_timesteps(self, num_inference_steps: int, sigmas=None, mu: float | None = None) -> None:
        if sigmas is not None or mu is not None:
            raise UserInputError("the Heun flow sampler takes no custom sigmas or dynamic shift (diffusers' "
                                 "FlowMatchHeunDiscreteScheduler): use flow-euler for this model")
        n = self.num_inference_steps = self._check_steps(num_inference_steps)
        spaced = self._spaced_sigmas(n, None, None)
        timesteps = spaced * np.float32(self.config.num_train_timesteps)
        self.timesteps = np.concatenate([timesteps[:1], np.repeat(timesteps[1:], 2)])
        sigmas = np.concatenate([spaced, np.zeros(1, np.float32)])
        self.sigmas = np.concatenate([sigmas[:1], np.repeat(sigmas[1:-1], 2), sigmas[-1:]])
        self._begin = self._index = None
        self._first = None  # (derivative, dt, sample) between a step's two evaluations

    def step(self, model_output: np.ndarray, t, sample: np.ndarray) -> np.ndarray:
        i = self._step_index(t)
        sample, v = as_f32(sample), as_f32(model_output)
        if self._first is None:  # the first evaluation: an Euler step, remembered
            sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
            derivative = (sample - (sample - v * sigma)) / sigma
            dt = sigma_next - sigma
            self._first = (derivative, dt, sample)
        else:  # the second, at the Euler step's end: the average slope from the first one's start
            sigma_next = self.sigmas[i]
            derivative = (sample - (sample - v * sigma_next)) / sigma_next
            first, dt, sample = self._first
            derivative = np.float32(0.5) * (first + derivative)
            self._first = None
        self._index += 1
        return as_f32(sample + derivative * dt)
