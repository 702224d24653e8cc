"""UniPC (Zhao et al., https://arxiv.org/abs/2302.04867): diffusers' UniPCMultistepScheduler, by default UniPC-2
with B(h) = e^h − 1 ("bh2") on the data prediction x0 (like DPM-Solver++), the corrector UniC after every step but
the first.

Notation as DPM-Solver++: α_t = 1/√(σ²+1), σ_t = σ·α_t, λ_t = log(α_t/σ_t), h = λ_t − λ_s. Each call to ``step``
first corrects the previous step's result with the new model output (UniC), then predicts the next sample (UniP);
one model evaluation per step.

Precision: from order 3 on, the coefficients b_i = φ_i+1(h)·i!/B(h) come from a recursion that divides by h once per
order (cancellation in float32, as diffusers computes them), so ulp-level differences between numpy's and torch's
log/expm1 grow to ~1e-4 relative in ρ, and the samples agree with diffusers' to ~3e-5 rather than 1e-5. Order 2
(the default) is unaffected: its predictor weight is ½ and its corrector needs only φ_2.
"""

from __future__ import annotations

import numpy as np

from .common import Scheduler, as_f32, check_unsupported, index_for_timestep, predict_epsilon, predict_x0
from .sigmas import NoiseLevels, karras_sigmas, sigma_to_t, solver_timesteps, train_sigmas

_UNSUPPORTED = dict(
    thresholding=False,
    solver_p=None,
    use_exponential_sigmas=False,
    use_beta_sigmas=False,
    shift_terminal=None,
)


class UniPCMultistepScheduler(NoiseLevels, Scheduler):
    flow_form = False  # the variance-preserving form; flow_solvers.py has the flow-matching one
    name = "unipc"
    defaults = dict(  # diffusers' UniPCMultistepScheduler.__init__
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        trained_betas=None,
        solver_order=2,
        prediction_type="epsilon",
        predict_x0=True,
        solver_type="bh2",
        lower_order_final=True,
        disable_corrector=(),
        use_karras_sigmas=False,
        sigma_min=None,
        sigma_max=None,
        timestep_spacing="linspace",
        steps_offset=0,
        final_sigmas_type="zero",
        rescale_betas_zero_snr=False,
        use_flow_sigmas=False,  # the flow-matching form: flow_solvers.py
        flow_shift=1.0,
        use_dynamic_shifting=False,
        time_shift_type="exponential",
        **_UNSUPPORTED,
    )

    def __init__(self, config: dict | None = None, *, use_karras_sigmas: bool | None = None):
        super().__init__(config)
        c = self.config
        if use_karras_sigmas is not None:
            c.use_karras_sigmas = bool(use_karras_sigmas)
        c.solver_type = "bh2" if c.solver_type in ("midpoint", "heun", "logrho") else c.solver_type  # as diffusers
        extra = []
        if c.solver_type not in ("bh1", "bh2"):
            extra.append(f"solver_type={c.solver_type!r} (only 'bh1' or 'bh2')")
        if not isinstance(c.solver_order, int) or c.solver_order < 1:
            extra.append(f"solver_order={c.solver_order!r} (a whole number from 1)")
        if c.final_sigmas_type not in ("zero", "sigma_min"):
            extra.append(f"final_sigmas_type={c.final_sigmas_type!r} (only 'zero' or 'sigma_min')")
        if c.use_flow_sigmas != self.flow_form:  # the flow form is its own sampler (flow_solvers.py)
            extra.append(f"use_flow_sigmas={c.use_flow_sigmas!r} (the flow form is {self.name} on a flow-matching model)")
        check_unsupported(c, _UNSUPPORTED, self.name, extra)
        if c.rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2**-24  # close to 0 without being 0, so the first σ is not inf (as diffusers)
        self.sigmas = np.zeros(0, dtype=np.float32)
        self._reset()

    def _reset(self) -> None:
        self.model_outputs: list[np.ndarray | None] = [None] * self.config.solver_order  # past converted outputs
        self.lower_order_nums = 0  # steps taken, up to solver_order
        self.last_sample = None  # the sample the last prediction started from (for the corrector)
        self.this_order = 1
        self.step_index: int | None = None
        self.begin_index: int | None = None

    def set_begin_index(self, begin_index: int = 0) -> None:
        self.begin_index = begin_index

    def set_timesteps(self, num_inference_steps: int) -> None:
        c, n = self.config, self._check_steps(num_inference_steps)
        # 1. the timesteps: n of n + 1 points (t = 0 is never one)
        timesteps = solver_timesteps(c, n)

        # 2. their noise levels σ; or Karras et al.'s σ spacing (or between the config's σ_min, σ_max), t from σ
        sigmas = train_sigmas(self.alphas_cumprod)
        if c.use_karras_sigmas:
            log_sigmas = np.log(sigmas)
            sigma_min = c.sigma_min if c.sigma_min is not None else sigmas[0].item()
            sigma_max = c.sigma_max if c.sigma_max is not None else sigmas[-1].item()
            sigmas = karras_sigmas(sigma_min, sigma_max, n)
            timesteps = sigma_to_t(sigmas, log_sigmas).round()
            sigma_last = sigmas[-1]
        else:
            sigmas = np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)
            sigma_last = train_sigmas(self.alphas_cumprod[:1])[0]

        self._set_schedule(sigmas, timesteps, sigma_last)

    def _set_schedule(self, sigmas: np.ndarray, timesteps: np.ndarray, sigma_last) -> None:
        # 3. the last step goes to σ = 0 (x0 itself) or to the smallest σ
        sigma_last = 0 if self.config.final_sigmas_type == "zero" else sigma_last
        self.sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)
        self.timesteps = timesteps.astype(np.int64)
        self.num_inference_steps = len(timesteps)
        self._reset()

    def step(self, model_output: np.ndarray, t, sample: np.ndarray) -> np.ndarray:
        self._check_ready()
        c = self.config
        model_output, sample = as_f32(model_output), as_f32(sample)
        if self.step_index is None:  # counted from the first call on, as diffusers
            self.step_index = self.begin_index
            if self.begin_index is None:
                self.step_index = index_for_timestep(self.timesteps, t, missing=len(self.timesteps) - 1)

        # 1. convert the model output to what is integrated: the data prediction x0 (or the noise ε)
        alpha_t, sigma_t, _ = self._alpha_sigma_lambda(self.sigmas[self.step_index])
        if c.predict_x0:
            model_output_convert = predict_x0(self.prediction_type, model_output, sample, alpha_t, sigma_t)
        else:
            model_output_convert = predict_epsilon(self.prediction_type, model_output, sample, alpha_t, sigma_t)

        # 2. corrector UniC: refine the sample the last step predicted, with the model output at it
        use_corrector = (
            self.step_index > 0 and self.step_index - 1 not in c.disable_corrector and self.last_sample is not None
        )
        if use_corrector:
            sample = self._corrector_update(model_output_convert, self.last_sample, sample, self.this_order)

        # 3. keep the last ``solver_order`` outputs; lower the order for the first steps and (lower_order_final)
        #    the last
        self.model_outputs = self.model_outputs[1:] + [model_output_convert]
        this_order = c.solver_order
        if c.lower_order_final:
            this_order = min(this_order, len(self.timesteps) - self.step_index)
        self.this_order = min(this_order, self.lower_order_nums + 1)

        # 4. predictor UniP: the next sample
        self.last_sample = sample
        prev_sample = self._predictor_update(sample, self.this_order)
        self.lower_order_nums = min(self.lower_order_nums + 1, c.solver_order)
        self.step_index += 1
        return prev_sample

    def _coefficients(self, h, rks: list, order: int):
        """hh = ∓h, φ_1 = e^hh − 1, B(h), and the order conditions R·ρ = b (Theorem 3.1 of the paper):
        R_ik = r_k^(i−1), b_i = φ_i+1(hh)·i!/B(h) with φ_k+1 = φ_k/hh − 1/k!."""
        hh = -h if self.config.predict_x0 else h
        h_phi_1 = np.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        factorial_i = 1
        B_h = hh if self.config.solver_type == "bh1" else np.expm1(hh)
        rks = np.array(rks + [1.0], dtype=np.float32)
        R, b = [], []
        for i in range(1, order + 1):
            R.append(rks ** (i - 1))
            b.append(h_phi_k * factorial_i / B_h)
            factorial_i *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial_i
        return h_phi_1, B_h, np.stack(R), np.array(b, dtype=np.float32)

    def _differences(self, lambda_s0, h, first: int, order: int):
        """r_k = (λ_s_k − λ_s0)/h and the scaled differences D_k = (m_k − m0)/r_k of the earlier outputs m_k."""
        m0, rks, D1s = self.model_outputs[-1], [], []
        for i in range(1, order):
            lambda_si = self._alpha_sigma_lambda(self.sigmas[first - i])[2]
            rk = (lambda_si - lambda_s0) / h
            rks.append(rk)
            D1s.append((self.model_outputs[-(i + 1)] - m0) / rk)
        return rks, D1s

    def _predictor_update(self, x: np.ndarray, order: int) -> np.ndarray:
        # 1. α, σ, λ of the next (t) and current (s0) noise levels
        i = self.step_index
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(self.sigmas[i + 1])
        alpha_s0, sigma_s0, lambda_s0 = self._alpha_sigma_lambda(self.sigmas[i])
        h = lambda_t - lambda_s0

        # 2. the differences of the earlier outputs and the coefficients ρ (½ for UniP-2, else the order conditions)
        rks, D1s = self._differences(lambda_s0, h, i, order)
        with np.errstate(divide="ignore", invalid="ignore"):  # h = inf on the step to σ = 0
            h_phi_1, B_h, R, b = self._coefficients(h, rks, order)
        rhos_p = [np.float32(0.5)] if order == 2 else (np.linalg.solve(R[:-1, :-1], b[:-1]) if D1s else [])
        pred_res = sum(rho * d for rho, d in zip(rhos_p, D1s))

        # 3. x_t = (σ_t/σ_s0)·x − α_t·φ_1·m0 − α_t·B(h)·Σ ρ_k·D_k  (data prediction; the noise one mirrors it)
        #    Unlike diffusers, a missing Σ term is left out rather than multiplied by B(h) (infinite on the step to
        #    σ = 0 with bh1: diffusers' sample is NaN there), and the noise prediction's step to σ = 0 takes the
        #    limit σ_t·φ_1 → α_t·σ_s0/α_s0 (diffusers: 0·inf = NaN). Both only where diffusers' result is NaN.
        m0 = self.model_outputs[-1]
        if self.config.predict_x0:
            x_t = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
            return x_t - alpha_t * B_h * pred_res if D1s else x_t
        sigma_t_phi_1 = sigma_t * h_phi_1 if sigma_t > 0 else alpha_t * sigma_s0 / alpha_s0
        x_t = alpha_t / alpha_s0 * x - sigma_t_phi_1 * m0
        return x_t - sigma_t * B_h * pred_res if D1s else x_t

    def _corrector_update(self, model_t: np.ndarray, x: np.ndarray, x_t: np.ndarray, order: int) -> np.ndarray:
        # 1. α, σ, λ of this (t) and the previous (s0) noise level: the step just taken
        i = self.step_index
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(self.sigmas[i])
        alpha_s0, sigma_s0, lambda_s0 = self._alpha_sigma_lambda(self.sigmas[i - 1])
        h = lambda_t - lambda_s0

        # 2. the differences of the earlier outputs and ρ (½ for UniC-1, else the order conditions)
        rks, D1s = self._differences(lambda_s0, h, i - 1, order)
        h_phi_1, B_h, R, b = self._coefficients(h, rks, order)
        rhos_c = np.array([0.5], dtype=np.float32) if order == 1 else np.linalg.solve(R, b)
        corr_res = sum(rho * d for rho, d in zip(rhos_c[:-1], D1s))

        # 3. redo the step with the new output's difference D1_t = m_t − m0 included
        m0 = self.model_outputs[-1]
        D1_t = model_t - m0
        if self.config.predict_x0:
            x_t_ = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
            return x_t_ - alpha_t * B_h * (corr_res + rhos_c[-1] * D1_t)
        x_t_ = alpha_t / alpha_s0 * x - sigma_t * h_phi_1 * m0
        return x_t_ - sigma_t * B_h * (corr_res + rhos_c[-1] * D1_t)
