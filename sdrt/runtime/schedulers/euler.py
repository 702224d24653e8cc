"""Euler and Euler ancestral (Karras et al., https://arxiv.org/abs/2206.00364, Algorithm 1; k-diffusion's
``sample_euler`` and ``sample_euler_ancestral``): diffusers' EulerDiscreteScheduler and
EulerAncestralDiscreteScheduler.

Both integrate the probability-flow ODE dx/dσ = (x − D(x; σ))/σ on x = x0 + σ·ε, one model evaluation per step.
Euler ancestral steps down to σ_down < σ_next and adds fresh noise of σ_up (σ_down² + σ_up² = σ_next²); η scales σ_up
and s_noise the noise, as k-diffusion's ``get_ancestral_step`` (at η = s_noise = 1, diffusers' sampler).
"""

from __future__ import annotations

import numpy as np

from .common import as_f32, check_unsupported
from .sigmas import (
    SigmaScheduler,
    ancestral_step,
    float_timesteps,
    interpolated_sigmas,
    karras_sigmas,
    predict_x0_from_sigma,
    sigma_to_t,
    train_sigmas,
)

# Options of diffusers' EulerDiscreteScheduler that sdrt does not implement: each must keep its default.
_UNSUPPORTED = dict(interpolation_type="linear", use_exponential_sigmas=False, use_beta_sigmas=False)


class EulerDiscreteScheduler(SigmaScheduler):
    name = "euler"
    defaults = dict(  # diffusers' EulerDiscreteScheduler.__init__
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        trained_betas=None,
        prediction_type="epsilon",
        use_karras_sigmas=False,
        sigma_min=None,
        sigma_max=None,
        timestep_spacing="linspace",
        timestep_type="discrete",
        steps_offset=0,
        rescale_betas_zero_snr=False,
        final_sigmas_type="zero",
        **_UNSUPPORTED,
    )

    def __init__(self, config: dict | None = None, *, use_karras_sigmas: bool | None = None):
        super().__init__(config)
        c = self.config
        if use_karras_sigmas is not None:
            c.use_karras_sigmas = bool(use_karras_sigmas)
        extra = []
        if c.final_sigmas_type not in ("zero", "sigma_min"):
            extra.append(f"final_sigmas_type={c.final_sigmas_type!r} (only 'zero' or 'sigma_min')")
        if c.timestep_type not in ("discrete", "continuous"):
            extra.append(f"timestep_type={c.timestep_type!r} (only 'discrete' or 'continuous')")
        check_unsupported(c, _UNSUPPORTED, self.name, extra)

    def set_timesteps(self, num_inference_steps: int) -> None:
        c = self.config
        n = self.num_inference_steps = self._check_steps(num_inference_steps)
        # 1. the timesteps (float32: linspace is not rounded), and their σ interpolated linearly in t
        timesteps = float_timesteps(c, n).astype(np.float32)
        sigmas, log_sigmas = interpolated_sigmas(timesteps, self.alphas_cumprod)

        # 2. or Karras et al.'s σ spacing between the ends of those (or the config's σ_min, σ_max), t from σ
        if c.use_karras_sigmas:
            sigma_min = c.sigma_min if c.sigma_min is not None else sigmas[-1].item()
            sigma_max = c.sigma_max if c.sigma_max is not None else sigmas[0].item()
            sigmas = karras_sigmas(sigma_min, sigma_max, n)
            timesteps = sigma_to_t(sigmas, log_sigmas)

        # 3. the last step goes to σ = 0 (x0 itself) or to the smallest trained σ
        sigma_last = 0 if c.final_sigmas_type == "zero" else train_sigmas(self.alphas_cumprod[:1])[0]
        self.sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)
        if c.timestep_type == "continuous" and c.prediction_type == "v_prediction":
            timesteps = 0.25 * np.log(self.sigmas[:-1])  # the U-Net takes ¼·log σ (EDM-style c_noise)
        self.timesteps = timesteps.astype(np.float32)
        self._reset()

    def step(self, model_output: np.ndarray, t, sample: np.ndarray) -> np.ndarray:
        self._check_ready()
        model_output, sample = as_f32(model_output), as_f32(sample)
        self._init_step_index(t)

        # 1. the noise level of this step (no "churn": σ_hat = σ, γ = 0)
        sigma = self.sigmas[self.step_index]

        # 2. compute the denoised sample D(x; σ)
        pred_original_sample = predict_x0_from_sigma(self.prediction_type, model_output, sample, sigma)

        # 3. the ODE derivative dx/dσ = (x − D(x; σ))/σ, eq. (7) of Karras et al.
        derivative = (sample - pred_original_sample) / sigma

        # 4. one Euler step to the next σ
        dt = self.sigmas[self.step_index + 1] - sigma
        self.step_index += 1
        return sample + derivative * dt


class EulerAncestralDiscreteScheduler(SigmaScheduler):
    name = "euler-a"
    defaults = dict(  # diffusers' EulerAncestralDiscreteScheduler.__init__
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        trained_betas=None,
        prediction_type="epsilon",
        timestep_spacing="linspace",
        steps_offset=0,
        rescale_betas_zero_snr=False,
    )
    prediction_types = ("epsilon", "v_prediction")
    stochastic = True
    eta_default = 1.0
    takes_s_noise = True

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self.num_inference_steps = self._check_steps(num_inference_steps)
        timesteps = float_timesteps(self.config, n).astype(np.float32)
        sigmas = train_sigmas(self.alphas_cumprod)
        sigmas = np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)
        self.sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self.timesteps = timesteps
        self._reset()

    def step(self, model_output: np.ndarray, t, sample: np.ndarray) -> np.ndarray:
        self._check_ready()
        model_output, sample = as_f32(model_output), as_f32(sample)
        self._init_step_index(t)

        # 1. compute the denoised sample D(x; σ)
        sigma = self.sigmas[self.step_index]
        pred_original_sample = predict_x0_from_sigma(self.prediction_type, model_output, sample, sigma)

        # 2. split the next noise level: σ_up of fresh noise, σ_down reached deterministically
        sigma_down, sigma_up = ancestral_step(sigma, self.sigmas[self.step_index + 1], self.eta)

        # 3. an Euler step of the ODE to σ_down
        derivative = (sample - pred_original_sample) / sigma
        dt = sigma_down - sigma
        prev_sample = sample + derivative * dt

        # 4. add noise of σ_up (drawn at every step, the last included, as diffusers)
        noise = self._draw_noise(model_output.shape)
        self.step_index += 1
        return prev_sample + noise * np.float32(self.s_noise) * sigma_up
