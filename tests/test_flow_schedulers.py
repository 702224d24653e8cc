"""The flow-matching samplers against diffusers' FlowMatchEuler/HeunDiscreteScheduler, and DPMSolverMultistep and
UniPCMultistep schedulers with flow sigmas, step for step: the schedule (timesteps and sigmas bit for bit, with the
shift, the dynamic shift and Flux's sigmas, shift_terminal), each step to 1e-6, and img2img's forward process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdrt.runtime.schedulers import make_scheduler
from sdrt.runtime.schedulers.flow_match import calculate_shift

CONFIGS = [
    ("flow-euler", {"shift": 3.0}, {}),
    ("flow-euler", {"shift": 1.0, "use_dynamic_shifting": True}, {"mu": calculate_shift(64 * 48)}),
    ("flow-euler", {"use_dynamic_shifting": True}, {"sigmas": np.linspace(1.0, 1 / 7, 7), "mu": 0.9}),  # Flux's
    ("flow-euler", {"shift": 3.0, "shift_terminal": 0.1}, {}),
    ("flow-heun", {"shift": 3.0}, {}),
    ("flow-dpm++2m", {"shift": 3.0}, {}),  # SD 3's
    ("flow-dpm++2m", {"shift": 1.0, "use_dynamic_shifting": True}, {"mu": calculate_shift(64 * 48)}),  # Flux's
    ("flow-unipc", {"shift": 3.0}, {}),
    ("flow-unipc", {"shift": 1.0, "use_dynamic_shifting": True}, {"mu": calculate_shift(64 * 48)}),
]
SOLVERS = {"flow-dpm++2m": "DPMSolverMultistepScheduler", "flow-unipc": "UniPCMultistepScheduler"}


def _diffusers(name: str, config: dict):
    """diffusers' scheduler, written as its documentation says for flow models (the solver: flow sigmas, flow
    prediction, the model's shift as flow_shift)."""
    import diffusers

    if name in SOLVERS:
        return getattr(diffusers, SOLVERS[name])(use_flow_sigmas=True, prediction_type="flow_prediction",
                                                 flow_shift=config.get("shift", 1.0),
                                                 **{k: v for k, v in config.items() if k != "shift"})
    cls = {"flow-euler": "FlowMatchEulerDiscreteScheduler", "flow-heun": "FlowMatchHeunDiscreteScheduler"}[name]
    return getattr(diffusers, cls)(**config)


@pytest.mark.parametrize("name, config, options", CONFIGS)
def test_steps_match_diffusers(name, config, options):
    ours, theirs = make_scheduler(name, config), _diffusers(name, config)
    ours.set_timesteps(7, **options)
    theirs.set_timesteps(7, **options)
    assert np.array_equal(ours.timesteps, theirs.timesteps.numpy())
    assert np.array_equal(ours.sigmas, theirs.sigmas.numpy())
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    expected = torch.from_numpy(sample)
    for t in ours.timesteps:
        velocity = rng.standard_normal(sample.shape).astype(np.float32)
        sample = ours.step(velocity, t, sample)
        expected = theirs.step(torch.from_numpy(velocity), torch.tensor(t), expected).prev_sample
        np.testing.assert_allclose(sample, expected.numpy(), rtol=1e-6, atol=1e-6)  # float32: a few ulp


@pytest.mark.parametrize("name", ["flow-euler", "flow-dpm++2m", "flow-unipc"])
def test_img2img_noise_matches_diffusers(name):
    ours, theirs = make_scheduler(name, {"shift": 3.0}), _diffusers(name, {"shift": 3.0})
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    ours.set_begin_index(4)
    theirs.set_begin_index(4)
    x, noise = np.ones((1, 4, 2, 2), np.float32), np.full((1, 4, 2, 2), 0.5, np.float32)
    t = ours.timesteps[4:5]
    noising = theirs.scale_noise if name == "flow-euler" else lambda a, b, c: theirs.add_noise(a, c, b)
    expected = noising(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(noise)).numpy()
    np.testing.assert_array_equal(ours.add_noise(x, noise, t), expected)
