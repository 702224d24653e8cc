"""The numpy samplers agree with diffusers' schedulers: same timesteps, same samples step by step (to 1e-5).

torch and diffusers are imported here only as the reference.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler
from scheduler_reference import ATOL, CONFIGS, SD15, SHAPE, fake_model, make_reference, run_both

from sdrt.errors import UserInputError
from sdrt.runtime.schedulers import SCHEDULER_NAMES, a1111_name, canonical_name, make_scheduler

# The samplers this file covers (the others: test_samplers_extra.py).
NAMES = ("ddim", "pndm", "dpm++2m")


@pytest.mark.parametrize("steps", [1, 7, 25, 50])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("name", NAMES)
def test_loop_matches_diffusers(name, prediction_type, spacing, steps):
    run_both(name, {**CONFIGS[spacing], "prediction_type": prediction_type}, steps)


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 20, 61, 1000])  # 61 trailing: 62 steps, the last t = -1 (!)
@pytest.mark.parametrize("spacing", list(CONFIGS))
@pytest.mark.parametrize("name", NAMES)
def test_timesteps_match_diffusers(name, spacing, steps):
    ours, ref = make_scheduler(name, CONFIGS[spacing]), make_reference(name, CONFIGS[spacing])
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_noise_schedule_matches_diffusers(name, schedule):
    config = {**SD15, "beta_schedule": schedule}
    ours, ref = make_scheduler(name, config), make_reference(name, config)
    assert ours.betas.dtype == ours.alphas_cumprod.dtype == np.float32
    # bit for bit on the machines tried; allow one float32 ulp for CPUs whose torch.linspace rounds differently
    np.testing.assert_array_max_ulp(ours.betas, ref.betas.numpy(), maxulp=1)
    np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "name, config, steps",
    [
        ("ddim", {"prediction_type": "epsilon"}, 10),  # DDIMScheduler's defaults: clip_sample, set_alpha_to_one
        ("ddim", {**SD15, "prediction_type": "sample", "clip_sample": True, "clip_sample_range": 2.0}, 10),
        ("ddim", {**CONFIGS["trailing"], "prediction_type": "v_prediction", "rescale_betas_zero_snr": True}, 12),
        ("ddim", {**SD15, "beta_schedule": "squaredcos_cap_v2"}, 9),  # (at t=999 the cosine ᾱ is ~0: x0 ~ 1e3)
        ("pndm", {**CONFIGS["linspace"], "set_alpha_to_one": True}, 9),
        ("dpm++2m", {**CONFIGS["linspace"], "prediction_type": "sample"}, 10),
        ("dpm++2m", {**SD15, "solver_type": "heun", "final_sigmas_type": "sigma_min"}, 20),
        ("dpm++2m", {**SD15, "solver_order": 1}, 8),
        ("dpm++2m", {**SD15, "lower_order_final": False, "final_sigmas_type": "sigma_min"}, 10),
        ("dpm++2m", {**CONFIGS["trailing"], "prediction_type": "v_prediction", "rescale_betas_zero_snr": True}, 12),
        ("dpm++2m", {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1}, 12),
        ("dpm++2m", {**SD15, "use_karras_sigmas": True}, 25),
        ("dpm++2m", {**SD15, "use_karras_sigmas": True, "prediction_type": "v_prediction"}, 7),
    ],
)
def test_other_configs_match_diffusers(name, config, steps):
    run_both(name, config, steps)


@pytest.mark.parametrize("steps", [1, 12, 40])
def test_karras_constructor_flag(steps):
    ours, _ = run_both("dpm++2m", SD15, steps, use_karras_sigmas=True)
    assert ours.config.use_karras_sigmas


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [4, 7, 25])
def test_pndm_runge_kutta_warmup_matches_diffusers(prediction_type, steps):
    ours, _ = run_both("pndm", {**SD15, "skip_prk_steps": False, "prediction_type": prediction_type}, steps)
    assert len(ours.timesteps) == steps + 9  # 3 Runge-Kutta steps of 4 evaluations, then n - 3 PLMS steps


def test_pndm_runge_kutta_needs_four_steps():
    scheduler = make_scheduler("pndm", {**SD15, "skip_prk_steps": False})
    with pytest.raises(UserInputError, match="at least 4 steps"):
        scheduler.set_timesteps(3)


@pytest.mark.parametrize("name", NAMES)
def test_add_noise_matches_diffusers(name):
    ours, ref = make_scheduler(name, SD15), make_reference(name, SD15)
    ours.set_timesteps(20)
    ref.set_timesteps(20)
    rng = np.random.default_rng(1)
    original, noise = rng.standard_normal((2, *SHAPE), dtype=np.float32)
    timesteps = ours.timesteps[[3, 11]]
    expected = ref.add_noise(torch.from_numpy(original), torch.from_numpy(noise), torch.from_numpy(timesteps)).numpy()
    got = ours.add_noise(original, noise, timesteps)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_dpm_add_noise_with_begin_index_matches_diffusers():
    ours, ref = make_scheduler("dpm++2m", SD15), DPMSolverMultistepScheduler.from_config(SD15)
    for s in (ours, ref):
        s.set_timesteps(30)
        s.set_begin_index(9)
    rng = np.random.default_rng(2)
    original, noise = rng.standard_normal((2, *SHAPE), dtype=np.float32)
    t = ours.timesteps[9:10]
    expected = ref.add_noise(torch.from_numpy(original), torch.from_numpy(noise), torch.from_numpy(t)).numpy()
    np.testing.assert_allclose(ours.add_noise(original, noise, t), expected, rtol=0, atol=1e-6)


def test_img2img_loop_from_the_middle_matches_diffusers():
    """img2img: start at timesteps[begin]; DPM-Solver counts its steps from there."""
    for name in NAMES:
        ours, ref = make_scheduler(name, SD15), make_reference(name, SD15)
        ours.set_timesteps(20)
        ref.set_timesteps(20)
        begin = 8
        ours.set_begin_index(begin)
        if hasattr(ref, "set_begin_index"):
            ref.set_begin_index(begin)
        rng = np.random.default_rng(3)
        x0 = rng.standard_normal(SHAPE)
        x = rng.standard_normal(SHAPE, dtype=np.float32)
        x_ref = torch.from_numpy(x.copy())
        for t, t_ref in zip(ours.timesteps[begin:], ref.timesteps[begin:]):
            z = rng.standard_normal(SHAPE)
            x = ours.step(fake_model(ref, "epsilon", t, x, x0, z), t, x)
            out_ref = torch.from_numpy(fake_model(ref, "epsilon", t, x_ref.numpy(), x0, z))
            x_ref = ref.step(out_ref, t_ref, x_ref).prev_sample
            np.testing.assert_allclose(x, x_ref.numpy(), rtol=0, atol=ATOL, err_msg=name)


def test_unknown_config_keys_are_ignored_and_missing_ones_default():
    ours = make_scheduler("ddim", {"beta_schedule": "scaled_linear", "not_a_key": 3, "skip_prk_steps": True})
    assert ours.config.clip_sample is True and ours.config.set_alpha_to_one is True  # DDIMScheduler's defaults
    assert not hasattr(ours.config, "not_a_key")
    assert make_scheduler("dpm++2m", {}).config.timestep_spacing == "linspace"
    assert make_scheduler("pndm", None).config.skip_prk_steps is False


@pytest.mark.parametrize(
    "alias, canonical",
    [
        ("ddim", "ddim"), ("DDIM", "ddim"), ("pndm", "pndm"), ("plms", "pndm"), ("PLMS", "pndm"),
        ("dpm++2m", "dpm++2m"), ("DPM++2M", "dpm++2m"), ("dpm", "dpm++2m"), ("dpmsolver++", "dpm++2m"),
        ("DPM++ 2M", "dpm++2m"), (" DPM++ 2M ", "dpm++2m"), ("dpmpp_2m", "dpm++2m"),
        ("DPMSolverMultistepScheduler", "dpm++2m"), ("PNDMScheduler", "pndm"), ("DDIMScheduler", "ddim"),
    ],
)
def test_aliases_resolve(alias, canonical):
    assert canonical_name(alias) == canonical
    assert type(make_scheduler(alias, SD15)) is type(make_scheduler(canonical, SD15))


def test_a1111_names():
    assert [a1111_name(n) for n in NAMES] == ["DDIM", "PLMS", "DPM++ 2M"]
    assert a1111_name("plms") == "PLMS"


@pytest.mark.parametrize("bad", ["dpm fast", "", "dpm++3m", None, 3])
def test_unknown_names_raise_user_input_error_listing_the_names(bad):
    with pytest.raises(UserInputError) as info:
        canonical_name(bad)
    assert isinstance(info.value, ValueError)
    for name in SCHEDULER_NAMES:
        assert name in str(info.value)
    with pytest.raises(UserInputError):
        make_scheduler(bad, SD15)


@pytest.mark.parametrize(
    "name, config, match",
    [
        ("pndm", {"prediction_type": "sample"}, "prediction_type"),
        ("ddim", {"prediction_type": "x0"}, "prediction_type"),
        ("ddim", {"timestep_spacing": "middle"}, "timestep_spacing"),
        ("ddim", {"beta_schedule": "cubic"}, "beta_schedule"),
        ("ddim", {"thresholding": True}, "thresholding"),
        ("dpm++2m", {"solver_order": 3}, "solver_order"),
        ("dpm++2m", {"algorithm_type": "sde-dpmsolver++"}, "algorithm_type"),
        ("dpm++2m", {"use_exponential_sigmas": True}, "use_exponential_sigmas"),
    ],
)
def test_unsupported_configs_raise_user_input_error(name, config, match):
    with pytest.raises(UserInputError, match=match):
        make_scheduler(name, config)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", [0, -1, 1001, 2.5, "7", True])
def test_bad_step_counts_raise_user_input_error(name, steps):
    with pytest.raises(UserInputError, match="number of steps"):
        make_scheduler(name, SD15).set_timesteps(steps)


def test_importing_the_samplers_does_not_import_torch():
    script = (
        "import sys\n"
        "import sdrt.runtime.schedulers as s\n"
        "for name in s.SCHEDULER_NAMES:\n"
        "    s.make_scheduler(name, {}).set_timesteps(4)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers'))\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout
