"""The multistep solvers' flow-matching forms, for SD 3 and Flux: diffusers' DPMSolverMultistepScheduler and
UniPCMultistepScheduler with ``use_flow_sigmas``, ``prediction_type="flow_prediction"`` and the model's shift as
``flow_shift`` (``flow_solver_config`` turns a model's FlowMatch config into theirs, for diffusers too).

Noise levels σ ∈ (0, 1]: x_σ = (1 − σ)·x0 + σ·ε, so α_t = 1 − σ and σ_t = σ in the solvers' formulas; the model
predicts the velocity v = ε − x0, so x0 = x − σ·v; the timestep fed is int(1000·σ), as diffusers feeds it. With
the dynamic shift (Flux) the schedule is shifted by e^μ of the image's size.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import UserInputError
from .common import index_for_timestep
from .dpm_solver import DPMSolverMultistepScheduler
from .flow_match import shifted
from .unipc import UniPCMultistepScheduler


def flow_solver_config(model_config: dict | None) -> dict:
    """What turns a multistep solver into its flow form for a model whose scheduler is FlowMatch (``shift`` →
    ``flow_shift``; the dynamic shift and its kind carry over by name), as one would write it for diffusers:
    ``DPMSolverMultistepScheduler.from_config(config, **flow_solver_config(config))``."""
    return {"use_flow_sigmas": True, "prediction_type": "flow_prediction",
            "flow_shift": float((model_config or {}).get("shift", 1.0))}


class FlowSolver:
    """What the flow forms share (before the solver in the bases)."""

    prediction_types = ("flow_prediction",)
    flow_form = True
    custom_sigmas = False  # diffusers' Flux pipeline gives a flow-sigma solver no σ list of its own

    def __init__(self, config: dict | None = None, **options):
        super().__init__({**(config or {}), **flow_solver_config(config)}, **options)

    @property
    def prediction_type(self) -> str:
        return "flow"  # the runtime's name for a velocity prediction (flow_match.py)

    @staticmethod
    def _alpha_sigma(sigma):
        return 1 - sigma, sigma

    def _shift(self, mu: float | None) -> float:
        if self.config.use_dynamic_shifting and mu is None:
            raise UserInputError("this model's sampler shifts its schedule by the image size: give the image's "
                                 "token count (mu)")
        return math.exp(mu) if mu is not None else self.config.flow_shift

    def predict_x0(self, model_output: np.ndarray, sample: np.ndarray, t) -> np.ndarray:
        """x0 = x − σ·v at the model's input timestep ``t`` (previews)."""
        sigma = self.sigmas[index_for_timestep(self.timesteps, t, missing=len(self.timesteps) - 1)]
        return sample - sigma * model_output


class FlowDPMSolverMultistepScheduler(FlowSolver, DPMSolverMultistepScheduler):
    """DPM++ 2M: diffusers' flow sigmas, linspace(1, 1/T, n + 1) shifted, the first n of them."""

    name = "flow-dpm++2m"

    def set_timesteps(self, num_inference_steps: int, mu: float | None = None) -> None:
        n, T, shift = self._check_steps(num_inference_steps), self.config.num_train_timesteps, self._shift(mu)
        sigmas = 1.0 - np.linspace(1, 1 / T, n + 1)
        sigmas = np.flip(shifted(sigmas, shift))[:-1].copy()
        self._set_schedule(sigmas, sigmas * T)


class FlowUniPCMultistepScheduler(FlowSolver, UniPCMultistepScheduler):
    """UniPC: diffusers' flow sigmas for it, linspace(1, 1/T, n + 1) without the last, shifted (the first one moved
    off 1 by 1e-6, where λ would be −∞), the last σ kept for final_sigmas_type "sigma_min"."""

    name = "flow-unipc"

    def __init__(self, config: dict | None = None, **options):
        super().__init__(config, **options)
        if not self.config.predict_x0:
            raise UserInputError("UniPC on a flow-matching model integrates the data prediction only (predict_x0)")

    def set_timesteps(self, num_inference_steps: int, mu: float | None = None) -> None:
        n, T = self._check_steps(num_inference_steps), self.config.num_train_timesteps
        sigmas = np.linspace(1, 1 / T, n + 1)[:-1]
        if self.config.use_dynamic_shifting:
            shift = self._shift(mu)
            sigmas = shift / (shift + (1 / sigmas - 1))
        else:
            sigmas = shifted(sigmas, self.config.flow_shift)
        if abs(sigmas[0] - 1) < 1e-6:
            sigmas[0] -= 1e-6
        self._set_schedule(sigmas, sigmas * T, sigmas[-1])
