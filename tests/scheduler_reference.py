"""Shared by the sampler tests: the reference diffusers schedulers, the configs, a fake U-Net, and ``run_both``, which
runs one of our samplers beside diffusers' and compares them step by step.

torch and diffusers are imported here only as the reference. diffusers' DPMSolverSDEScheduler needs torchsde (for
its Brownian tree) and LMSDiscreteScheduler needs scipy (to integrate its coefficients); neither is a dependency of
sdrt, so when they are missing the reference is loaded with a stand-in (``reference_class``): the tests replace the
Brownian tree anyway, and the stand-in ``quad`` integrates diffusers' own integrand.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from contextlib import ExitStack
from unittest import mock

import numpy as np
import torch

from sdrt.runtime.schedulers import canonical_name, make_scheduler

# Stable Diffusion 1.5's scheduler_config (PNDMScheduler); SD 2.1 is the same with v_prediction (DDIMScheduler).
SD15 = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}
CONFIGS = {
    "leading": SD15,
    "trailing": {**SD15, "timestep_spacing": "trailing", "steps_offset": 0},
    "linspace": {**SD15, "timestep_spacing": "linspace"},
}
SHAPE = (2, 4, 8, 8)
ATOL = 1e-5

# canonical name → (diffusers module, class, options the name implies)
REFERENCE = {
    "ddim": ("scheduling_ddim", "DDIMScheduler", {}),
    "pndm": ("scheduling_pndm", "PNDMScheduler", {}),
    "dpm++2m": ("scheduling_dpmsolver_multistep", "DPMSolverMultistepScheduler", {}),
    "dpm++2m-karras": ("scheduling_dpmsolver_multistep", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpm++sde": ("scheduling_dpmsolver_sde", "DPMSolverSDEScheduler", {}),
    "dpm++sde-karras": ("scheduling_dpmsolver_sde", "DPMSolverSDEScheduler", {"use_karras_sigmas": True}),
    "euler": ("scheduling_euler_discrete", "EulerDiscreteScheduler", {}),
    "euler-a": ("scheduling_euler_ancestral_discrete", "EulerAncestralDiscreteScheduler", {}),
    "heun": ("scheduling_heun_discrete", "HeunDiscreteScheduler", {}),
    "lms": ("scheduling_lms_discrete", "LMSDiscreteScheduler", {}),
    "unipc": ("scheduling_unipc_multistep", "UniPCMultistepScheduler", {}),
    "ddpm": ("scheduling_ddpm", "DDPMScheduler", {}),
    "lcm": ("scheduling_lcm", "LCMScheduler", {}),
}


class _GaussLegendre:
    """Stand-in for ``scipy.integrate`` in diffusers' LMS when scipy is missing: ``quad`` by 16-point Gauss–Legendre,
    exact (to rounding) for the polynomials of degree < 4 that LMS integrates."""

    @staticmethod
    def quad(f, a, b, epsrel=None):
        nodes, weights = np.polynomial.legendre.leggauss(16)
        a, b = float(a), float(b)
        mid, half = (a + b) / 2, (b - a) / 2
        return half * sum(w * float(f(mid + half * x)) for x, w in zip(nodes, weights)), 0.0


def _module(name: str):
    full = f"diffusers.schedulers.{name}"
    if full in sys.modules:
        return sys.modules[full]
    importlib.import_module("diffusers.schedulers")  # diffusers first: it looks for torchsde as it loads
    stub = name == "scheduling_dpmsolver_sde" and importlib.util.find_spec("torchsde") is None
    if stub:  # only its Brownian tree needs torchsde, and the tests replace that
        sys.modules["torchsde"] = types.ModuleType("torchsde")
    try:
        module = importlib.import_module(full)
    finally:
        if stub:
            del sys.modules["torchsde"]
    if name == "scheduling_lms_discrete" and not hasattr(module, "integrate"):
        module.integrate = _GaussLegendre
    return module


def reference_class(name: str):
    module, cls, _ = REFERENCE[canonical_name(name)]
    return getattr(_module(module), cls)


def make_reference(name: str, config: dict):
    """diffusers' scheduler for our sampler ``name``, from the same config (as ``from_config``)."""
    _, _, implied = REFERENCE[canonical_name(name)]
    return reference_class(name).from_config({**config, **implied})


class NoiseTape:
    """One sequence of standard normal arrays that both samplers replay in order: ours through its noise source,
    diffusers' through a patched ``randn_tensor`` (or, for DPM++ SDE, its ``noise_sampler``)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.arrays: list[np.ndarray] = []
        self.used = {"ours": 0, "ref": 0}
        self.intervals: dict[str, list] = {"ours": [], "ref": []}

    def draw(self, who: str, shape) -> np.ndarray:
        i = self.used[who]
        if i == len(self.arrays):
            self.arrays.append(self.rng.standard_normal(tuple(shape), dtype=np.float32))
        assert self.arrays[i].shape == tuple(shape), (who, self.arrays[i].shape, shape)
        self.used[who] += 1
        return self.arrays[i].copy()

    def randn_tensor(self, shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(self.draw("ref", shape))

    def sampler(self, who: str):
        """A DPM++ SDE noise sampler (σ, σ_next) → noise, recording the intervals it is asked for."""

        def sample(sigma, sigma_next):
            self.intervals[who].append((float(sigma), float(sigma_next)))
            noise = self.draw(who, SHAPE)
            return noise if who == "ours" else torch.from_numpy(noise)

        return sample

    def attach(self, ours, ref, stack: ExitStack) -> None:
        ours.set_noise_source(lambda shape: self.draw("ours", shape))
        if hasattr(ref, "noise_sampler"):  # DPM++ SDE: set after set_timesteps, which resets it
            ours.noise_sampler, ref.noise_sampler = self.sampler("ours"), self.sampler("ref")
        module = sys.modules[type(ref).__module__]
        if hasattr(module, "randn_tensor"):
            stack.enter_context(mock.patch.object(module, "randn_tensor", self.randn_tensor))


def fake_model(ref, prediction_type, t, x, x0, z):
    """A U-Net stand-in: the ε (or v, or x0) that points from ``x`` at a fixed ``x0``, plus the random ``z``.
    ``x`` is the U-Net's input (after ``scale_model_input``); t may be fractional (σ samplers)."""
    alpha_prod = float(ref.alphas_cumprod[int(t)])
    if prediction_type == "sample":
        return (x0 + 0.3 * z).astype(np.float32)
    eps = (x - alpha_prod**0.5 * x0) / (1 - alpha_prod) ** 0.5 + 0.3 * z
    if prediction_type == "v_prediction":
        return (alpha_prod**0.5 * eps - (1 - alpha_prod) ** 0.5 * x0).astype(np.float32)
    return eps.astype(np.float32)


def assert_schedule_matches(ours, ref) -> None:
    """Same timesteps (integer ones exactly; fractional ones to float32 rounding of σ), σ and initial noise σ.

    torch's float32 ``sqrt`` is not correctly rounded on every CPU (on AVX-512 one in five σ is an ulp off numpy's),
    and a fractional t = σ⁻¹(σ) inherits that, so those compare to 1e-6 relative.
    """
    ref_timesteps = ref.timesteps.numpy()
    assert ours.timesteps.dtype == ref_timesteps.dtype, (ours.timesteps.dtype, ref_timesteps.dtype)
    if ours.timesteps.dtype == np.int64:
        np.testing.assert_array_equal(ours.timesteps, ref_timesteps)
    else:
        np.testing.assert_allclose(ours.timesteps, ref_timesteps, rtol=1e-6, atol=1e-4)
    if hasattr(ours, "sigmas"):
        assert ours.sigmas.dtype == np.float32
        np.testing.assert_allclose(ours.sigmas, ref.sigmas.numpy(), rtol=1e-6, atol=0)
    assert np.isclose(ours.init_noise_sigma, float(ref.init_noise_sigma), rtol=1e-6, atol=0)
    assert ours.order == ref.order


def run_both(name, config, steps, seed=0, rtol=0.0, per_input_scale=False, begin=0, eta=None, **options):
    """Run our sampler and diffusers' side by side and compare every step's model input and sample, in two loops:

    - "same input": at each step both get the same sample (diffusers') and the same model output;
    - "free-running": each runs its own loop; the model output is the same function of each one's own sample.

    Stochastic samplers get the same noise (a ``NoiseTape``). (Feeding one fixed output sequence to two
    free-running loops would not do: without a model that reacts to the sample, the sampler multiplies float32
    rounding by up to ~15× over a run: diffusers' float32 result is then itself ~1e-5 from its float64 one.)
    ``begin``: start at ``timesteps[begin]`` (img2img, ``set_begin_index``). ``rtol`` adds a relative tolerance.
    ``eta``: DDIM's η, given to ours and to each of diffusers' ``step`` calls.
    ``per_input_scale`` scales the 1e-5 by the largest |x| entering each step and runs the same-input loop only: for
    σ samplers with zero terminal SNR (σ_max = 4096), whose first step cancels x ~ 1e4 down to ~10, so that one ulp
    of the input (1e-3) is the float32 error of diffusers' own result.
    """
    for same_input in (True,) if per_input_scale else (True, False):
        ours = make_scheduler(name, config, **options)
        ours.set_noise_scales(eta=eta)
        ref = make_reference(name, {**config, **options})
        step_kwargs = {} if eta is None else {"eta": eta}
        ours.set_timesteps(steps)
        ref.set_timesteps(steps)
        assert_schedule_matches(ours, ref)
        if begin:
            ours.set_begin_index(begin)
            if hasattr(ref, "set_begin_index"):  # DDPM has none: it finds its step from t
                ref.set_begin_index(begin)

        rng = np.random.default_rng(seed)
        tape = NoiseTape(seed + 1)
        x0 = rng.standard_normal(SHAPE)
        x = rng.standard_normal(SHAPE, dtype=np.float32) * np.float32(ours.init_noise_sigma)
        x_ref = torch.from_numpy(x.copy())
        loop = "same input" if same_input else "free-running"
        with ExitStack() as stack:
            tape.attach(ours, ref, stack)
            for i, (t, t_ref) in enumerate(zip(ours.timesteps[begin:], ref.timesteps[begin:]), begin):
                z = rng.standard_normal(SHAPE)
                if same_input:
                    x = x_ref.numpy().copy()
                atol = ATOL * max(1.0, float(np.abs(x_ref.numpy()).max())) if per_input_scale else ATOL
                x_in, x_in_ref = ours.scale_model_input(x, t), ref.scale_model_input(x_ref, t_ref)
                where = f"{name}, {loop}, step {i}, t={t}"
                np.testing.assert_allclose(x_in, x_in_ref.numpy(), rtol=rtol, atol=ATOL, err_msg=f"input: {where}")
                out = fake_model(ref, ours.prediction_type, t, x_in, x0, z)
                out_ref = fake_model(ref, ours.prediction_type, t, x_in_ref.numpy(), x0, z)
                x = ours.step(out, t, x)
                x_ref = ref.step(torch.from_numpy(out_ref), t_ref, x_ref, **step_kwargs).prev_sample
                assert x.dtype == np.float32 and x.shape == SHAPE
                np.testing.assert_allclose(x, x_ref.numpy(), rtol=rtol, atol=atol, err_msg=where)
        assert tape.used["ours"] == tape.used["ref"], tape.used
        np.testing.assert_allclose(tape.intervals["ours"], tape.intervals["ref"], rtol=1e-6)
    return ours, ref
