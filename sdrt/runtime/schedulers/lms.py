"""Linear multistep (k-diffusion's ``sample_lms``, Karras et al.'s ODE, https://arxiv.org/abs/2206.00364):
diffusers' LMSDiscreteScheduler.

Adams–Bashforth in σ, of order up to 4: the last slopes d_j = (x − D(x; σ_j))/σ_j are interpolated by a polynomial
in σ and integrated over [σ_i, σ_i+1]. diffusers integrates each Lagrange basis polynomial with scipy's ``quad``;
it is a polynomial of degree < 4, so it is integrated exactly here instead (numpy only).
"""

from __future__ import annotations

import numpy as np
from numpy.polynomial import polynomial as P

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


class LMSDiscreteScheduler(SigmaScheduler):
    name = "lms"
    lms_order = 4  # diffusers' default ``step(order=4)``
    defaults = dict(  # diffusers' LMSDiscreteScheduler.__init__
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        trained_betas=None,
        use_karras_sigmas=False,
        prediction_type="epsilon",
        timestep_spacing="linspace",
        steps_offset=0,
        **_UNSUPPORTED,
    )

    def __init__(self, config: dict | None = None, *, use_karras_sigmas: bool | None = None):
        super().__init__(config)
        if use_karras_sigmas is not None:
            self.config.use_karras_sigmas = bool(use_karras_sigmas)
        check_unsupported(self.config, _UNSUPPORTED, self.name)
        self.derivatives: list[np.ndarray] = []

    def _reset(self) -> None:
        super()._reset()
        self.derivatives = []  # the last slopes, newest last

    def set_timesteps(self, num_inference_steps: int) -> None:
        c = self.config
        n = self.num_inference_steps = self._check_steps(num_inference_steps)
        timesteps = float_timesteps(c, n).astype(np.float32)
        sigmas, log_sigmas = interpolated_sigmas(timesteps, self.alphas_cumprod)
        if c.use_karras_sigmas:
            sigmas = karras_sigmas(sigmas[-1].item(), sigmas[0].item(), n)
            timesteps = sigma_to_t(sigmas, log_sigmas)
        self.sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self.timesteps = timesteps.astype(np.float32)
        self._reset()

    def get_lms_coefficient(self, order: int, i: int, current_order: int) -> float:
        """∫ from σ_i to σ_i+1 of the Lagrange basis polynomial ℓ_j(σ) = Π_k≠j (σ − σ_i−k)/(σ_i−j − σ_i−k),
        j = ``current_order``, over the nodes σ_i, σ_i−1, …, σ_i−order+1."""
        s = self.sigmas.astype(np.float64)
        others = [s[i - k] for k in range(order) if k != current_order]
        basis = P.polyfromroots(others) / np.prod([s[i - current_order] - r for r in others])
        antiderivative = P.polyint(basis)
        return float(P.polyval(s[i + 1], antiderivative) - P.polyval(s[i], antiderivative))

    def step(self, model_output: np.ndarray, t, sample: np.ndarray) -> np.ndarray:
        self._check_ready()
        model_output, sample = as_f32(model_output), as_f32(sample)
        self._init_step_index(t)

        # 1. compute the denoised sample D(x; σ)
        sigma = self.sigmas[self.step_index]
        pred_original_sample = predict_x0_from_sigma(self.prediction_type, model_output, sample, sigma)

        # 2. the ODE slope d_i = (x − D)/σ_i; keep the last ``lms_order``
        self.derivatives.append((sample - pred_original_sample) / sigma)
        if len(self.derivatives) > self.lms_order:
            self.derivatives.pop(0)

        # 3. the linear multistep coefficients: the integrals of the Lagrange basis over [σ_i, σ_i+1]
        order = min(self.step_index + 1, self.lms_order)
        lms_coeffs = [self.get_lms_coefficient(order, self.step_index, j) for j in range(order)]

        # 4. x_i+1 = x_i + Σ_j c_j·d_i−j
        self.step_index += 1
        return sample + sum(coeff * derivative for coeff, derivative in zip(lms_coeffs, reversed(self.derivatives)))
