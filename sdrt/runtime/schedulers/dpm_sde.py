"""DPM-Solver++ SDE (k-diffusion's ``sample_dpmpp_sde``; Lu et al., https://arxiv.org/abs/2211.01095, with the
ancestral noise of Karras et al.): diffusers' DPMSolverSDEScheduler. AUTOMATIC1111's "DPM++ SDE Karras" is it with
``use_karras_sigmas``.

A second-order stochastic method in t = −log σ: each step from σ_i to σ_i+1 first takes an ancestral DPM-Solver++(1)
step to the midpoint σ_m = √(σ_i·σ_i+1), evaluates the model there, then redoes the whole step from x_i with that
x0 prediction. Each half adds noise from one Brownian path, so the two noises are correlated as the path's
increments are. So ``order`` is 2 and ``timesteps`` is [t_0, t_m0, t_1, t_m1, …, t_n−1] (2n − 1 evaluations); the
last step (to σ = 0) is a plain Euler step.

diffusers samples the Brownian path with torchsde's ``BrownianInterval``; here ``BrownianNoise`` samples the same
process (a Brownian motion on the σ axis) from the scheduler's noise source, so the samples follow the same law but
are not torchsde's numbers. ``noise_sampler`` (a callable (σ, σ_next) → noise) can be replaced to feed other noise.
η scales σ_up of both halves and s_noise the noise, as k-diffusion's ``sample_dpmpp_sde`` (η = s_noise = 1: diffusers).
"""

from __future__ import annotations

import bisect

import numpy as np

from .common import NoiseSource, as_f32, check_unsupported
from .sigmas import (
    SigmaScheduler,
    ancestral_step,
    exp_f32,
    expm1_f32,
    float_timesteps,
    interpolated_sigmas,
    karras_sigmas,
    predict_x0_from_sigma,
    sigma_to_t,
)

_UNSUPPORTED = dict(use_exponential_sigmas=False, use_beta_sigmas=False)


class BrownianNoise:
    """The normalised increments (W(σ_next) − W(σ))/√|σ_next − σ| of one Brownian path W: standard normal noise, and
    consistent between calls (k-diffusion's ``BrownianTreeNoiseSampler``). W is sampled lazily: a new point beyond
    the known ones by an independent increment, a point between two by the Brownian bridge."""

    def __init__(self, noise: NoiseSource, shape: tuple):
        self.noise, self.shape = noise, tuple(shape)
        self.times: list[float] = []  # sorted
        self.values: dict[float, np.ndarray] = {}

    def __call__(self, sigma, sigma_next) -> np.ndarray:
        s0, s1 = float(sigma), float(sigma_next)
        w0, w1 = self._at(s0), self._at(s1)
        return as_f32((w1 - w0) / np.sqrt(abs(s1 - s0)))

    def _at(self, s: float) -> np.ndarray:
        if s in self.values:
            return self.values[s]
        if not self.times:
            w = np.zeros(self.shape, dtype=np.float64)
        else:
            k = bisect.bisect(self.times, s)
            lo, hi = (self.times[k - 1] if k > 0 else None), (self.times[k] if k < len(self.times) else None)
            z = as_f32(self.noise(self.shape)).astype(np.float64)
            if lo is None:  # below every known point: W(s) = W(hi) − √(hi − s)·z
                w = self.values[hi] - np.sqrt(hi - s) * z
            elif hi is None:  # above every known point
                w = self.values[lo] + np.sqrt(s - lo) * z
            else:  # the Brownian bridge between lo and hi
                r = (s - lo) / (hi - lo)
                w = self.values[lo] + r * (self.values[hi] - self.values[lo]) + np.sqrt(r * (hi - s)) * z
        bisect.insort(self.times, s)
        self.values[s] = w
        return w


class DPMSolverSDEScheduler(SigmaScheduler):
    name = "dpm++sde"
    order = 2
    stochastic = True
    eta_default = 1.0
    takes_s_noise = True
    defaults = dict(  # diffusers' DPMSolverSDEScheduler.__init__
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="linear",
        trained_betas=None,
        prediction_type="epsilon",
        use_karras_sigmas=False,
        noise_sampler_seed=None,  # torchsde's seed: accepted, not used (the noise source decides)
        timestep_spacing="linspace",
        steps_offset=0,
        **_UNSUPPORTED,
    )
    prediction_types = ("epsilon", "v_prediction")

    def __init__(self, config: dict | None = None, *, use_karras_sigmas: bool | None = None):
        super().__init__(config)
        if use_karras_sigmas is not None:
            self.config.use_karras_sigmas = bool(use_karras_sigmas)
        check_unsupported(self.config, _UNSUPPORTED, self.name)
        self._reset()

    def _reset(self) -> None:
        super()._reset()
        self.sample = None  # the step's first sample while its midpoint is evaluated
        self.mid_point_sigma = None
        self.noise_sampler = None  # (σ, σ_next) → noise; a BrownianNoise on the first step unless set

    def set_timesteps(self, num_inference_steps: int) -> None:
        c = self.config
        n = self.num_inference_steps = self._check_steps(num_inference_steps)
        # 1. the timesteps (float64) and their σ, or Karras et al.'s σ spacing between the same ends (t from σ)
        timesteps = float_timesteps(c, n)
        sigmas, log_sigmas = interpolated_sigmas(timesteps, self.alphas_cumprod)
        if c.use_karras_sigmas:
            sigmas = karras_sigmas(sigmas[-1].item(), sigmas[0].item(), n)
            timesteps = sigma_to_t(sigmas, log_sigmas)

        # 2. the midpoints in t = −log σ, where the second evaluation of each step happens
        t = -np.log(sigmas)
        midpoint_timesteps = sigma_to_t(np.exp(-(t[:-1] + np.diff(t) * 0.5)), log_sigmas)

        # 3. every σ but the first twice; the timesteps interleaved with the midpoints
        sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self.sigmas = np.concatenate([sigmas[:1], sigmas[1:-1].repeat(2), sigmas[-1:]])
        timesteps = np.concatenate([timesteps[:1], timesteps[1:].repeat(2)])
        timesteps[1::2] = midpoint_timesteps
        self.timesteps = timesteps  # float64, as diffusers
        self._reset()

    @property
    def state_in_first_order(self) -> bool:
        return self.sample is None

    def scale_model_input(self, sample: np.ndarray, t=None) -> np.ndarray:
        """x/√(σ²+1), at the midpoint σ_m for a step's second evaluation."""
        self._check_ready()
        self._init_step_index(t)
        sigma = self.sigmas[self.step_index] if self.state_in_first_order else self.mid_point_sigma
        return as_f32(sample) / (sigma**2 + 1) ** 0.5

    def step(self, model_output: np.ndarray, t, sample: np.ndarray) -> np.ndarray:
        self._check_ready()
        model_output, sample = as_f32(model_output), as_f32(sample)
        self._init_step_index(t)
        if self.noise_sampler is None:
            self.noise_sampler = BrownianNoise(self._draw_noise, sample.shape)

        # 1. the step's σ_i, σ_i+1 in t = −log σ, and the midpoint t_m = (t_i + t_i+1)/2
        first_order = self.state_in_first_order
        i = self.step_index if first_order else self.step_index - 1
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        with np.errstate(divide="ignore"):
            t, t_next = -np.log(sigma), -np.log(sigma_next)
        t_proposed = t + (t_next - t) * 0.5

        # 2. compute the denoised sample D(x; σ) at the σ the model saw: σ_i, then the midpoint
        sigma_input = sigma if first_order else exp_f32(-t_proposed)
        pred_original_sample = predict_x0_from_sigma(self.prediction_type, model_output, sample, sigma_input)

        # 3. the last step (to σ = 0): an Euler step
        if sigma_next == 0:
            derivative = (sample - pred_original_sample) / sigma
            self.step_index += 1
            return sample + derivative * (sigma_next - sigma)

        # 4. first evaluation: step to the midpoint; second: redo the whole step from x_i with D at the midpoint
        if first_order:
            t_next = t_proposed
        else:
            sample = self.sample

        # 5. ancestral split of the target noise level: σ_down deterministically, fresh noise of σ_up
        sigma_down, sigma_up = ancestral_step(exp_f32(-t), exp_f32(-t_next), self.eta)
        ancestral_t = -np.log(sigma_down)

        # 6. DPM-Solver++(1) to σ_down: x = (σ_down/σ)·x − (e^(t−t_down) − 1)·D, then the Brownian noise
        prev_sample = exp_f32(-ancestral_t) / exp_f32(-t) * sample - expm1_f32(t - ancestral_t) * pred_original_sample
        noise = self.noise_sampler(exp_f32(-t), exp_f32(-t_next))
        prev_sample = prev_sample + noise * np.float32(self.s_noise) * sigma_up

        # 7. remember the step's start for its second evaluation
        if first_order:
            self.sample, self.mid_point_sigma = sample, exp_f32(-t_next)
        else:
            self.sample = self.mid_point_sigma = None
        self.step_index += 1
        return prev_sample


class DPMSolverSDEKarrasScheduler(DPMSolverSDEScheduler):
    """DPM++ SDE Karras (AUTOMATIC1111's name): DPM-Solver++ SDE on Karras et al.'s σ spacing."""

    name = "dpm++sde-karras"

    def __init__(self, config: dict | None = None, *, use_karras_sigmas: bool = True):
        super().__init__(config, use_karras_sigmas=use_karras_sigmas)
