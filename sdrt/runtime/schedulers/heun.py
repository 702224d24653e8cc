"""Heun (Karras et al., https://arxiv.org/abs/2206.00364, Algorithm 1 without churn): diffusers'
HeunDiscreteScheduler.

A second-order method: each step from σ_i to σ_i+1 evaluates the model twice, at σ_i (an Euler step) and at σ_i+1
(the correction: the mean of both slopes). So ``order`` is 2 and ``timesteps`` repeats every timestep but the first:
[t_0, t_1, t_1, t_2, t_2, …]; 2n − 1 evaluations for n steps, the last step (to σ = 0) is a plain Euler step.
"""

from __future__ import annotations

import numpy as np

from .common import as_f32, check_unsupported
from .sigmas import (
    SigmaScheduler,
    float_timesteps,
    interpolated_sigmas,
    karras_sigmas,
    predict_x0_from_sigma,
    sigma_to_t,
)

_UNSUPPORTED = dict(use_exponential_sigmas=False, use_beta_sigmas=False)


class HeunDiscreteScheduler(SigmaScheduler):
    name = "heun"
    order = 2
    defaults = dict(  # diffusers' HeunDiscreteScheduler.__init__
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="linear",
        trained_betas=None,
        prediction_type="epsilon",
        use_karras_sigmas=False,
        clip_sample=False,
        clip_sample_range=1.0,
        timestep_spacing="linspace",
        steps_offset=0,
        **_UNSUPPORTED,
    )

    def __init__(self, config: dict | None = None, *, use_karras_sigmas: bool | None = None):
        super().__init__(config)
        if use_karras_sigmas is not None:
            self.config.use_karras_sigmas = bool(use_karras_sigmas)
        check_unsupported(self.config, _UNSUPPORTED, self.name)
        self._reset()

    def _reset(self) -> None:
        super()._reset()
        self.prev_derivative = None  # the Euler slope of the step under way
        self.dt = None  # its σ_i+1 − σ_i; None between steps (the first-order state)
        self.sample = None  # the sample it started from

    def set_timesteps(self, num_inference_steps: int) -> None:
        c = self.config
        n = self.num_inference_steps = self._check_steps(num_inference_steps)
        # 1. the timesteps and their σ (or Karras et al.'s σ spacing between the same ends, t from σ)
        timesteps = float_timesteps(c, n).astype(np.float32)
        sigmas, log_sigmas = interpolated_sigmas(timesteps, self.alphas_cumprod)
        if c.use_karras_sigmas:
            sigmas = karras_sigmas(sigmas[-1].item(), sigmas[0].item(), n)
            timesteps = sigma_to_t(sigmas, log_sigmas)

        # 2. every σ and t but the first twice: the Euler evaluation ends where the correction evaluates
        sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self.sigmas = np.concatenate([sigmas[:1], sigmas[1:-1].repeat(2), sigmas[-1:]])
        self.timesteps = np.concatenate([timesteps[:1], timesteps[1:].repeat(2)]).astype(np.float32)
        self._reset()

    @property
    def state_in_first_order(self) -> bool:
        return self.dt is None

    def step(self, model_output: np.ndarray, t, sample: np.ndarray) -> np.ndarray:
        self._check_ready()
        model_output, sample = as_f32(model_output), as_f32(sample)
        self._init_step_index(t)

        # 1. the step's σ_i and σ_i+1 (the correction is evaluated at σ_i+1)
        first_order = self.state_in_first_order
        i = self.step_index if first_order else self.step_index - 1
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]

        # 2. compute the denoised sample D(x; σ) at the σ the model saw
        sigma_input = sigma if first_order else sigma_next
        pred_original_sample = predict_x0_from_sigma(self.prediction_type, model_output, sample, sigma_input)
        if self.config.clip_sample:
            limit = self.config.clip_sample_range
            pred_original_sample = np.clip(pred_original_sample, -limit, limit)

        # 3. Euler: the slope d_i = (x − D)/σ_i, kept for the correction
        if first_order:
            derivative = (sample - pred_original_sample) / sigma
            dt = sigma_next - sigma
            self.prev_derivative, self.dt, self.sample = derivative, dt, sample
        # 4. correction: the mean of d_i and the slope at σ_i+1, from the step's first sample (trapezoidal rule)
        else:
            derivative = (sample - pred_original_sample) / sigma_next
            derivative = (self.prev_derivative + derivative) / 2
            dt, sample = self.dt, self.sample
            self.prev_derivative = self.dt = self.sample = None

        # 5. x_i+1 = x_i + d·(σ_i+1 − σ_i)
        self.step_index += 1
        return sample + derivative * dt
