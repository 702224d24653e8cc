"""DDIM (Song et al., https://arxiv.org/abs/2010.02502): diffusers' DDIMScheduler as StableDiffusionPipeline runs
it, deterministic at η = 0 (the default) and adding σ_t(η) of fresh noise per step at η > 0 (formula (16); η = 1 is
DDPM's variance). The noise is drawn where diffusers draws it, so a seed gives diffusers' samples at any η."""

from __future__ import annotations

import numpy as np

from ...errors import UserInputError
from .common import Scheduler, as_f32, predict_epsilon, predict_x0, spaced_timesteps


class DDIMScheduler(Scheduler):
    name = "ddim"
    eta_default = 0.0
    defaults = dict(  # diffusers' DDIMScheduler.__init__
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        trained_betas=None,
        clip_sample=True,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="epsilon",
        thresholding=False,
        clip_sample_range=1.0,
        timestep_spacing="leading",
        rescale_betas_zero_snr=False,
    )

    def __init__(self, config: dict | None = None):
        super().__init__(config)
        if self.config.thresholding:
            raise UserInputError("the ddim sampler does not implement dynamic thresholding (thresholding=True)")
        # The last step has no previous ᾱ: use 1 (set_alpha_to_one) or ᾱ_0.
        self.final_alpha_cumprod = np.float32(1.0) if self.config.set_alpha_to_one else self.alphas_cumprod[0]

    def set_noise_scales(self, eta: float | None = None, s_noise: float | None = None) -> None:
        super().set_noise_scales(eta, s_noise)
        if self.eta > 1:  # past 1, σ_t(η)² exceeds 1 − ᾱ_prev and the direction term has no square root
            raise UserInputError(f"DDIM's eta runs from 0 (deterministic) to 1, got {self.eta:g}")

    def set_timesteps(self, num_inference_steps: int) -> None:
        self.num_inference_steps = self._check_steps(num_inference_steps)
        self.timesteps = spaced_timesteps(self.config, self.num_inference_steps)

    def step(self, model_output: np.ndarray, t, sample: np.ndarray) -> np.ndarray:
        self._check_ready()
        model_output, sample, t = as_f32(model_output), as_f32(sample), int(t)

        # 1. get previous step value (=t-1); T // n whatever the spacing, as diffusers
        prev_t = t - self.config.num_train_timesteps // self.num_inference_steps

        # 2. compute alphas, betas
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        beta_prod_t = 1 - alpha_prod_t

        # 3. compute "predicted x_0" of formula (12), and the predicted noise ε_θ(x_t, t)
        alpha, sigma = np.sqrt(alpha_prod_t), np.sqrt(beta_prod_t)
        pred_original_sample = predict_x0(self.prediction_type, model_output, sample, alpha, sigma)
        pred_epsilon = predict_epsilon(self.prediction_type, model_output, sample, alpha, sigma)

        # 4. clip "predicted x_0"
        if self.config.clip_sample:
            limit = self.config.clip_sample_range
            pred_original_sample = np.clip(pred_original_sample, -limit, limit)

        # 5. the variance σ_t(η)² of formula (16)
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        variance = (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
        std_dev_t = np.float32(self.eta) * np.sqrt(variance)

        # 6. compute "direction pointing to x_t" of formula (12)
        pred_sample_direction = np.sqrt(1 - alpha_prod_t_prev - std_dev_t**2) * pred_epsilon

        # 7. compute x_t-1 of formula (12), and its "random noise" at η > 0 (drawn at every step, as diffusers)
        prev_sample = np.sqrt(alpha_prod_t_prev) * pred_original_sample + pred_sample_direction
        if self.eta > 0:
            prev_sample = prev_sample + std_dev_t * self._draw_noise(model_output.shape)
        return prev_sample
