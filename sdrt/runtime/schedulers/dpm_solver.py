"""DPM-Solver++(2M) (Lu et al., https://arxiv.org/abs/2211.01095): diffusers' DPMSolverMultistepScheduler with
its defaults (algorithm_type "dpmsolver++", solver_order 2, solver_type "midpoint", lower_order_final,
final_sigmas_type "zero"); optionally with Karras sigmas (``use_karras_sigmas``).

Notation: σ = √((1−ᾱ)/ᾱ) is the noise level of a timestep, α_t = 1/√(σ²+1), σ_t = σ·α_t (so x_t = α_t·x0 + σ_t·ε)
and λ_t = log(α_t/σ_t) the half log-SNR.
"""

from __future__ import annotations

import numpy as np

from .common import Scheduler, as_f32, check_unsupported, index_for_timestep, predict_x0
from .sigmas import NoiseLevels, karras_sigmas, sigma_to_t, solver_timesteps, train_sigmas

# Options of diffusers' class that sdrt does not implement: each must keep its default.
_UNSUPPORTED = dict(
    thresholding=False,
    variance_type=None,
    use_exponential_sigmas=False,
    use_beta_sigmas=False,
    use_lu_lambdas=False,
)


class DPMSolverMultistepScheduler(NoiseLevels, Scheduler):
    flow_form = False  # the variance-preserving form; flow_solvers.py has the flow-matching one
    name = "dpm++2m"
    defaults = dict(  # diffusers' DPMSolverMultistepScheduler.__init__
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        trained_betas=None,
        solver_order=2,
        prediction_type="epsilon",
        algorithm_type="dpmsolver++",
        solver_type="midpoint",
        lower_order_final=True,
        euler_at_final=False,
        use_karras_sigmas=False,
        final_sigmas_type="zero",
        lambda_min_clipped=-float("inf"),
        timestep_spacing="linspace",
        steps_offset=0,
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
        c.algorithm_type = {"deis": "dpmsolver++"}.get(c.algorithm_type, c.algorithm_type)  # as diffusers
        c.solver_type = "midpoint" if c.solver_type in ("logrho", "bh1", "bh2") else c.solver_type  # as diffusers
        unsupported = []
        if c.algorithm_type != "dpmsolver++":
            unsupported.append(f"algorithm_type={c.algorithm_type!r} (only 'dpmsolver++')")
        if c.solver_order not in (1, 2):
            unsupported.append(f"solver_order={c.solver_order!r} (only 1 or 2)")
        if c.solver_type not in ("midpoint", "heun"):
            unsupported.append(f"solver_type={c.solver_type!r} (only 'midpoint' or 'heun')")
        if c.final_sigmas_type not in ("zero", "sigma_min"):
            unsupported.append(f"final_sigmas_type={c.final_sigmas_type!r} (only 'zero' or 'sigma_min')")
        if c.use_flow_sigmas != self.flow_form:  # the flow form is its own sampler (flow_solvers.py)
            unsupported.append(f"use_flow_sigmas={c.use_flow_sigmas!r} (the flow form is {self.name} on a "
                               "flow-matching model)")
        check_unsupported(c, _UNSUPPORTED, self.name, unsupported)
        if c.rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2**-24  # close to 0 without being 0, so the first σ is not inf (as diffusers)
        with np.errstate(divide="ignore"):
            self.lambda_t = np.log(np.sqrt(self.alphas_cumprod)) - np.log(np.sqrt(1 - self.alphas_cumprod))
        self.sigmas = np.zeros(0, dtype=np.float32)
        self._reset()

    def _reset(self) -> None:
        self.model_outputs: list[np.ndarray | None] = [None] * self.config.solver_order  # past x0 predictions
        self.lower_order_nums = 0  # steps taken, up to solver_order
        self.step_index: int | None = None
        self.begin_index: int | None = None

    def set_begin_index(self, begin_index: int = 0) -> None:
        self.begin_index = begin_index

    def set_timesteps(self, num_inference_steps: int) -> None:
        c, n = self.config, self._check_steps(num_inference_steps)
        # 1. the timesteps: n of n + 1 points (t = 0 is never one), spaced as Table 2 of
        #    https://arxiv.org/abs/2305.08891; λ(t) clipped from below for numerical stability (cosine schedule)
        last_timestep = c.num_train_timesteps - int(np.searchsorted(np.flip(self.lambda_t), c.lambda_min_clipped))
        timesteps = solver_timesteps(c, n, last_timestep)

        # 2. their noise levels σ; or Karras et al.'s σ spacing (https://arxiv.org/abs/2206.00364) and t from σ
        sigmas = train_sigmas(self.alphas_cumprod)
        log_sigmas = np.log(sigmas)
        if c.use_karras_sigmas:
            sigmas = karras_sigmas(sigmas[0].item(), sigmas[-1].item(), n)
            timesteps = sigma_to_t(sigmas, log_sigmas)
            if c.beta_schedule != "squaredcos_cap_v2":
                timesteps = timesteps.round()
        else:
            sigmas = np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)

        self._set_schedule(sigmas, timesteps)

    def _set_schedule(self, sigmas: np.ndarray, timesteps: np.ndarray) -> None:
        # 3. the last step goes to σ = 0 (x0 itself) or to the smallest trained σ
        if self.config.final_sigmas_type == "zero":
            sigma_last = 0
        else:
            sigma_last = np.sqrt((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0])
        self.sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)
        self.timesteps = timesteps.astype(np.int64)
        self.num_inference_steps = len(timesteps)
        self._reset()

    def step(self, model_output: np.ndarray, t, sample: np.ndarray) -> np.ndarray:
        self._check_ready()
        c, n = self.config, len(self.timesteps)
        model_output, sample = as_f32(model_output), as_f32(sample)

        # 1. find the step index (counted from the first call on, as diffusers)
        if self.step_index is None:
            self.step_index = self._index_for_timestep(t) if self.begin_index is None else self.begin_index

        # 2. lower the order for the last step: when it goes to σ = 0, and for stability with fewer than 15 steps
        lower_order_final = self.step_index == n - 1 and (
            c.euler_at_final or (c.lower_order_final and n < 15) or c.final_sigmas_type == "zero"
        )

        # 3. convert the model output to the data prediction x0_θ(x_t, t): DPM-Solver++ integrates x0, not ε
        alpha_t, sigma_t = self._alpha_sigma(self.sigmas[self.step_index])
        x0_pred = predict_x0(self.prediction_type, model_output, sample, alpha_t, sigma_t)
        self.model_outputs = self.model_outputs[1:] + [x0_pred]

        # 4. first-order update (DDIM), or the multistep second-order update of Algorithm 2
        if c.solver_order == 1 or self.lower_order_nums < 1 or lower_order_final:
            prev_sample = self._first_order_update(x0_pred, sample)
        else:
            prev_sample = self._second_order_update(self.model_outputs, sample)

        self.lower_order_nums = min(self.lower_order_nums + 1, c.solver_order)
        self.step_index += 1
        return prev_sample

    def _first_order_update(self, x0_pred: np.ndarray, sample: np.ndarray) -> np.ndarray:
        # 1. α, σ, λ of the current (s) and the next (t) noise level; λ_t = inf when σ_t = 0
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(self.sigmas[self.step_index + 1])
        alpha_s, sigma_s, lambda_s = self._alpha_sigma_lambda(self.sigmas[self.step_index])
        h = lambda_t - lambda_s

        # 2. x_t = (σ_t/σ_s)·x_s − α_t·(e^−h − 1)·x0_θ
        return (sigma_t / sigma_s) * sample - (alpha_t * (np.exp(-h) - 1.0)) * x0_pred

    def _second_order_update(self, model_outputs: list[np.ndarray], sample: np.ndarray) -> np.ndarray:
        # 1. α, σ, λ of the next (t), current (s0) and previous (s1) noise levels
        i = self.step_index
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(self.sigmas[i + 1])
        alpha_s0, sigma_s0, lambda_s0 = self._alpha_sigma_lambda(self.sigmas[i])
        alpha_s1, sigma_s1, lambda_s1 = self._alpha_sigma_lambda(self.sigmas[i - 1])

        # 2. step sizes in λ and the finite difference D1 of the x0 predictions
        m0, m1 = model_outputs[-1], model_outputs[-2]
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        with np.errstate(divide="ignore"):  # h = 0 when Karras σ end on σ_min and so does the final one: D1 = 0
            r0 = h_0 / h
        D0, D1 = m0, (1.0 / r0) * (m0 - m1)

        # 3. x_t = (σ_t/σ_s0)·x_s0 − α_t·(e^−h − 1)·D0 − ½·α_t·(e^−h − 1)·D1  (midpoint; heun weighs D1 differently)
        if self.config.solver_type == "midpoint":
            return (
                (sigma_t / sigma_s0) * sample
                - (alpha_t * (np.exp(-h) - 1.0)) * D0
                - 0.5 * (alpha_t * (np.exp(-h) - 1.0)) * D1
            )
        return (
            (sigma_t / sigma_s0) * sample
            - (alpha_t * (np.exp(-h) - 1.0)) * D0
            + (alpha_t * ((np.exp(-h) - 1.0) / h + 1.0)) * D1
        )

    def _index_for_timestep(self, t) -> int:
        return index_for_timestep(self.timesteps, t, missing=len(self.timesteps) - 1)


class DPMSolverMultistepKarrasScheduler(DPMSolverMultistepScheduler):
    """DPM++ 2M Karras (AUTOMATIC1111's name): DPM-Solver++(2M) on Karras et al.'s σ spacing."""

    name = "dpm++2m-karras"

    def __init__(self, config: dict | None = None, *, use_karras_sigmas: bool = True):
        super().__init__(config, use_karras_sigmas=use_karras_sigmas)
