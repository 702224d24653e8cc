"""The flow-matching samplers against diffusers' FlowMatchEuler/HeunDiscreteScheduler step for step: the schedule
(timesteps and sigmas bit for bit, with the shift, the dynamic shift and Flux's sigmas, shift_terminal), each step
to 1e-6, and img2img's forward process."""

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
]


def _diffusers(name: str, config: dict):
    import diffusers

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
        np.testing.assert_allclose(sample, expected.numpy(), rtol=0, atol=1e-6)


def test_img2img_noise_matches_scale_noise():
    ours, theirs = make_scheduler("flow-euler", {"shift": 3.0}), _diffusers("flow-euler", {"shift": 3.0})
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    ours.set_begin_index(4)
    theirs.set_begin_index(4)
    x, noise = np.ones((1, 4, 2, 2), np.float32), np.full((1, 4, 2, 2), 0.5, np.float32)
    t = ours.timesteps[4:5]
    expected = theirs.scale_noise(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(noise)).numpy()
    np.testing.assert_array_equal(ours.add_noise(x, noise, t), expected)
