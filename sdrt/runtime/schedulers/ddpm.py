"""DDPM (Ho et al., https://arxiv.org/abs/2006.11239): diffusers' DDPMScheduler, ancestral sampling from the
posterior q(x_t−1 | x_t, x0) with x0 predicted, on the inference timesteps (steps of several training timesteps).

Stochastic: fresh noise at every step but a step from t = 0.
"""

from __future__ import annotations

import numpy as np

from .common import Scheduler, as_f32, check_unsupported, predict_x0, spaced_timesteps

_VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large")


class DDPMScheduler(Scheduler):
    name = "ddpm"
    stochastic = True
    defaults = dict(  # diffusers' DDPMScheduler.__init__
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        trained_betas=None,
        variance_type="fixed_small",
        clip_sample=True,
        prediction_type="epsilon",
        thresholding=False,
        clip_sample_range=1.0,
        timestep_spacing="leading",
        steps_offset=0,
        rescale_betas_zero_snr=False,
    )

    def __init__(self, config: dict | None = None):
        super().__init__(config)
        extra = []
        if self.config.variance_type not in _VARIANCE_TYPES:
            extra.append(f"variance_type={self.config.variance_type!r} (only {', '.join(_VARIANCE_TYPES)})")
        check_unsupported(self.config, dict(thresholding=False), self.name, extra)

    def set_timesteps(self, num_inference_steps: int) -> None:
        self.num_inference_steps = self._check_steps(num_inference_steps)
        self.timesteps = spaced_timesteps(self.config, self.num_inference_steps)

    def previous_timestep(self, t: int) -> int:
        """The next timestep of the schedule (−1 after the last)."""
        index = int(np.flatnonzero(self.timesteps == t)[0])
        return int(self.timesteps[index + 1]) if index < len(self.timesteps) - 1 else -1

    def step(self, model_output: np.ndarray, t, sample: np.ndarray) -> np.ndarray:
        self._check_ready()
        model_output, sample, t = as_f32(model_output), as_f32(sample), int(t)

        # 1. compute alphas, betas (of the inference step t → prev_t: β_t = 1 − ᾱ_t/ᾱ_prev)
        prev_t = self.previous_timestep(t)
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else np.float32(1.0)
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev
        current_beta_t = 1 - current_alpha_t

        # 2. compute predicted original sample from predicted noise, "predicted x_0" of formula (15)
        pred_original_sample = predict_x0(
            self.prediction_type, model_output, sample, alpha_prod_t**0.5, beta_prod_t**0.5
        )

        # 3. clip "predicted x_0"
        if self.config.clip_sample:
            limit = self.config.clip_sample_range
            pred_original_sample = np.clip(pred_original_sample, -limit, limit)

        # 4. coefficients of x_0 and x_t of the posterior mean μ̃_t, formula (7)
        pred_original_sample_coeff = (alpha_prod_t_prev**0.5 * current_beta_t) / beta_prod_t
        current_sample_coeff = current_alpha_t**0.5 * beta_prod_t_prev / beta_prod_t

        # 5. compute predicted previous sample µ_t
        pred_prev_sample = pred_original_sample_coeff * pred_original_sample + current_sample_coeff * sample

        # 6. add noise of the posterior variance β̃_t = (1 − ᾱ_prev)/(1 − ᾱ_t)·β_t, formula (7) (or β_t: fixed_large)
        if t > 0:
            variance_noise = self._draw_noise(model_output.shape)
            variance = max((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t, np.float32(1e-20))
            if self.config.variance_type == "fixed_small_log":
                pred_prev_sample = pred_prev_sample + np.exp(0.5 * np.log(variance)) * variance_noise
            elif self.config.variance_type == "fixed_large":
                pred_prev_sample = pred_prev_sample + current_beta_t**0.5 * variance_noise
            else:
                pred_prev_sample = pred_prev_sample + variance**0.5 * variance_noise
        return pred_prev_sample
