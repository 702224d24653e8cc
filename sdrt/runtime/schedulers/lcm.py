"""LCM, latent consistency models' multistep sampling (Luo et al., https://arxiv.org/abs/2310.04378, Algorithm 1):
diffusers' LCMScheduler.

Each step maps x_t straight to a clean estimate with the consistency function f(x, t) = c_skip(t)·x + c_out(t)·x0,
then noises it again to the next timestep with fresh noise (not after the last step). The timesteps are a subset of
the ``original_inference_steps`` (50) the model was distilled on, so at most that many steps.

The U-Net of an LCM is usually guidance-distilled (w embedded through ``timestep_cond``); this is only the sampler.
"""

from __future__ import annotations

import numpy as np

from ...errors import UserInputError
from .common import Scheduler, as_f32, check_unsupported, index_for_timestep, predict_x0


class LCMScheduler(Scheduler):
    name = "lcm"
    stochastic = True
    sigma_data = 0.5  # the data's standard deviation in the boundary condition
    defaults = dict(  # diffusers' LCMScheduler.__init__
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        trained_betas=None,
        original_inference_steps=50,
        clip_sample=False,
        clip_sample_range=1.0,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="epsilon",
        thresholding=False,
        timestep_spacing="leading",  # not used by LCM
        timestep_scaling=10.0,
        rescale_betas_zero_snr=False,
    )

    def __init__(self, config: dict | None = None):
        super().__init__(config)
        check_unsupported(self.config, dict(thresholding=False), self.name)
        self.final_alpha_cumprod = np.float32(1.0) if self.config.set_alpha_to_one else self.alphas_cumprod[0]
        self.step_index: int | None = None
        self.begin_index: int | None = None

    def set_begin_index(self, begin_index: int = 0) -> None:
        self.begin_index = begin_index

    def set_timesteps(self, num_inference_steps: int) -> None:
        c = self.config
        n = self._check_steps(num_inference_steps)
        original_steps = c.original_inference_steps
        if not 1 <= original_steps <= c.num_train_timesteps:
            raise UserInputError(
                f"original_inference_steps={original_steps!r} in the scheduler config must be from 1 to "
                f"num_train_timesteps ({c.num_train_timesteps})"
            )
        if n > original_steps:
            raise UserInputError(f"the lcm sampler takes at most {original_steps} steps (its original_inference_steps)")

        # 1. the LCM training schedule: every k-th timestep, k = T // original_inference_steps
        k = c.num_train_timesteps // original_steps
        lcm_origin_timesteps = np.arange(1, original_steps + 1) * k - 1

        # 2. n of them, evenly spaced from the largest
        inference_indices = np.floor(np.linspace(0, original_steps, num=n, endpoint=False)).astype(np.int64)
        self.timesteps = lcm_origin_timesteps[::-1][inference_indices].astype(np.int64)
        self.num_inference_steps = n
        self.step_index = self.begin_index = None

    def get_scalings_for_boundary_condition_discrete(self, t) -> tuple:
        """c_skip(t) = σ_d²/((s·t)² + σ_d²), c_out(t) = s·t/√((s·t)² + σ_d²), s = ``timestep_scaling``: f(x, 0) = x."""
        scaled_timestep = np.float32(t) * np.float32(self.config.timestep_scaling)
        c_skip = self.sigma_data**2 / (scaled_timestep**2 + self.sigma_data**2)
        c_out = scaled_timestep / (scaled_timestep**2 + self.sigma_data**2) ** 0.5
        return c_skip, c_out

    def step(self, model_output: np.ndarray, t, sample: np.ndarray) -> np.ndarray:
        self._check_ready()
        model_output, sample, t = as_f32(model_output), as_f32(sample), int(t)
        if self.step_index is None:
            self.step_index = index_for_timestep(self.timesteps, t) if self.begin_index is None else self.begin_index

        # 1. get previous step value (the step's own t after the last)
        prev_step_index = self.step_index + 1
        prev_t = int(self.timesteps[prev_step_index]) if prev_step_index < len(self.timesteps) else t

        # 2. compute alphas, betas
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev

        # 3. get scalings for boundary conditions
        c_skip, c_out = self.get_scalings_for_boundary_condition_discrete(t)

        # 4. compute the predicted original sample x_0
        pred_original_sample = predict_x0(
            self.prediction_type, model_output, sample, np.sqrt(alpha_prod_t), np.sqrt(beta_prod_t)
        )
        if self.config.clip_sample:
            limit = self.config.clip_sample_range
            pred_original_sample = np.clip(pred_original_sample, -limit, limit)

        # 5. denoise model output using boundary conditions: the consistency function f(x_t, t)
        denoised = c_out * pred_original_sample + c_skip * sample
        self.denoised = denoised  # diffusers' second output (a preview of the result)

        # 6. sample z ~ N(0, I) and noise the estimate to the next timestep (multistep consistency sampling)
        if self.step_index != self.num_inference_steps - 1:
            noise = self._draw_noise(model_output.shape)
            prev_sample = np.sqrt(alpha_prod_t_prev) * denoised + np.sqrt(beta_prod_t_prev) * noise
        else:
            prev_sample = denoised
        self.step_index += 1
        return prev_sample
