"""PNDM (Liu et al., https://arxiv.org/abs/2202.09778): diffusers' PNDMScheduler.

Stable Diffusion's configs set ``skip_prk_steps``: that is PLMS (crowsonkb's sampler from
https://github.com/CompVis/latent-diffusion/pull/51), a linear multistep method of order up to 4 whose warm-up is one
second-order (Heun-like) step. It evaluates the model once more than ``num_inference_steps``: the first timestep
pair repeats (``timesteps`` has n + 1 entries). Without ``skip_prk_steps`` the first three steps are Runge-Kutta
(four model evaluations each), as the paper's F-PNDM.
"""

from __future__ import annotations

import numpy as np

from ...errors import UserInputError
from .common import Scheduler, as_f32, predict_epsilon, spaced_timesteps


class PNDMScheduler(Scheduler):
    name = "pndm"
    defaults = dict(  # diffusers' PNDMScheduler.__init__
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        trained_betas=None,
        skip_prk_steps=False,
        set_alpha_to_one=False,
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=0,
    )
    prediction_types = ("epsilon", "v_prediction")
    pndm_order = 4

    def __init__(self, config: dict | None = None):
        super().__init__(config)
        self.final_alpha_cumprod = np.float32(1.0) if self.config.set_alpha_to_one else self.alphas_cumprod[0]
        self._reset()

    def _reset(self) -> None:
        self.ets: list[np.ndarray] = []  # past model outputs, newest last
        self.counter = 0  # steps taken
        self.cur_model_output = 0  # running Runge-Kutta sum
        self.cur_sample = None  # the sample a (Runge-Kutta or warm-up) step starts from

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self.num_inference_steps = self._check_steps(num_inference_steps)
        ts = spaced_timesteps(self.config, n)[::-1]  # ascending, as diffusers' _timesteps
        if self.config.skip_prk_steps:
            # PLMS: every timestep once, but the second twice (the warm-up step is evaluated at both ends)
            self.prk_timesteps = np.zeros(0, dtype=np.int64)
            self.plms_timesteps = np.concatenate([ts[:-1], ts[-2:-1], ts[-1:]])[::-1]
        else:
            if n < self.pndm_order:
                raise UserInputError(
                    f"the pndm sampler with Runge-Kutta steps (skip_prk_steps=False) needs at least 4 steps, got {n}"
                )
            # three Runge-Kutta steps on the four largest timesteps, each evaluated at t, t-δ/2, t-δ/2, t-δ
            half = self.config.num_train_timesteps // n // 2
            prk_timesteps = ts[-self.pndm_order :].repeat(2) + np.tile([0, half], self.pndm_order)
            self.prk_timesteps = prk_timesteps[:-1].repeat(2)[1:-1][::-1]
            self.plms_timesteps = ts[:-3][::-1]
        self.timesteps = np.concatenate([self.prk_timesteps, self.plms_timesteps]).astype(np.int64)
        self._reset()

    def step(self, model_output: np.ndarray, t, sample: np.ndarray) -> np.ndarray:
        self._check_ready()
        model_output, sample, t = as_f32(model_output), as_f32(sample), int(t)
        if self.counter < len(self.prk_timesteps) and not self.config.skip_prk_steps:
            return self._step_prk(model_output, t, sample)
        return self._step_plms(model_output, t, sample)

    def _step_prk(self, model_output: np.ndarray, t: int, sample: np.ndarray) -> np.ndarray:
        # 1. get previous step value: t-δ/2 on even calls, t itself on odd ones; the step starts at its first t
        diff_to_prev = 0 if self.counter % 2 else self.config.num_train_timesteps // self.num_inference_steps // 2
        prev_t = t - diff_to_prev
        t = int(self.prk_timesteps[self.counter // 4 * 4])

        # 2. accumulate ε with the classic Runge-Kutta weights 1/6, 1/3, 1/3, 1/6 (the paper's pseudo RK method)
        k = self.counter % 4
        if k == 0:
            self.cur_model_output += 1 / 6 * model_output
            self.ets.append(model_output)
            self.cur_sample = sample
        elif k in (1, 2):
            self.cur_model_output += 1 / 3 * model_output
        else:
            model_output = self.cur_model_output + 1 / 6 * model_output
            self.cur_model_output = 0

        # 3. transfer the step's first sample with formula (9)
        cur_sample = self.cur_sample if self.cur_sample is not None else sample
        self.counter += 1
        return self._get_prev_sample(cur_sample, t, prev_t, model_output)

    def _step_plms(self, model_output: np.ndarray, t: int, sample: np.ndarray) -> np.ndarray:
        # 1. get previous step value; the second call re-does the first step (t+δ → t) with the averaged ε
        prev_t = t - self.config.num_train_timesteps // self.num_inference_steps
        if self.counter != 1:
            self.ets = self.ets[-3:] + [model_output]
        else:
            prev_t, t = t, t + self.config.num_train_timesteps // self.num_inference_steps

        # 2. combine the past outputs: pseudo linear multistep (Adams-Bashforth) of order 1..4
        ets = self.ets
        if len(ets) == 1 and self.counter == 0:
            self.cur_sample = sample  # an Euler step, undone on the next call
        elif len(ets) == 1 and self.counter == 1:
            model_output = (model_output + ets[-1]) / 2  # Heun: the mean of both ends
            sample, self.cur_sample = self.cur_sample, None
        elif len(ets) == 2:
            model_output = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            model_output = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            model_output = (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])

        # 3. transfer x_t to x_t-δ with formula (9)
        self.counter += 1
        return self._get_prev_sample(sample, t, prev_t, model_output)

    def _get_prev_sample(self, sample: np.ndarray, t: int, prev_t: int, model_output: np.ndarray) -> np.ndarray:
        """Formula (9): x_t-δ from x_t and ε (for v_prediction the *combined* v is turned into ε, as diffusers)."""
        # 1. compute alphas, betas
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev

        # 2. the model output as ε
        eps = predict_epsilon(self.prediction_type, model_output, sample, np.sqrt(alpha_prod_t), np.sqrt(beta_prod_t))

        # 3. coefficient of x_t: (ᾱ_t-δ − ᾱ_t) / (√ᾱ_t·(√ᾱ_t-δ + √ᾱ_t)) + 1 = √(ᾱ_t-δ / ᾱ_t)
        sample_coeff = np.sqrt(alpha_prod_t_prev / alpha_prod_t)

        # 4. denominator of ε: ᾱ_t·√(1−ᾱ_t-δ) + √(ᾱ_t·(1−ᾱ_t)·ᾱ_t-δ)
        model_output_denom_coeff = alpha_prod_t * np.sqrt(beta_prod_t_prev) + np.sqrt(
            alpha_prod_t * beta_prod_t * alpha_prod_t_prev
        )

        # 5. full formula (9)
        return sample_coeff * sample - (alpha_prod_t_prev - alpha_prod_t) * eps / model_output_denom_coeff
