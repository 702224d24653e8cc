"""The other samplers (DPM++ 2M Karras, DPM++ SDE (Karras), Euler, Euler a, Heun, LMS, UniPC, DDPM, LCM) agree with
diffusers' schedulers: same timesteps and σ, same samples step by step (to 1e-5), the stochastic ones given the same
noise. And every sampler name resolves. The machinery (reference classes, fake U-Net, ``run_both``) is in
scheduler_reference.py; DDIM, PLMS and DPM++ 2M are in test_schedulers.py.
"""

import numpy as np
import pytest
import torch
from scheduler_reference import ATOL, CONFIGS, SD15, SHAPE, fake_model, make_reference, run_both

from sdrt.errors import UserInputError
from sdrt.runtime.schedulers import (
    A1111_NAMES,
    FLOW_SAMPLERS,
    SCHEDULER_NAMES,
    a1111_name,
    canonical_name,
    default_sampler,
    make_scheduler,
    model_sampler,
)
from sdrt.runtime.schedulers.common import predict_x0
from sdrt.runtime.schedulers.dpm_sde import BrownianNoise
from sdrt.runtime.schedulers.sigmas import alpha_sigma

EXTRA = ("dpm++2m-karras", "dpm++sde", "dpm++sde-karras", "euler", "euler-a", "heun", "lms", "unipc", "ddpm", "lcm")
STOCHASTIC = {"dpm++sde", "dpm++sde-karras", "euler-a", "ddpm", "lcm"}
ZERO_SNR = {**CONFIGS["trailing"], "prediction_type": "v_prediction", "rescale_betas_zero_snr": True}


def config_for(name: str, variant: str, prediction_type: str) -> dict:
    """"sd15": SD 1.5's config; "alt": trailing spacing, or for LCM (which has no spacing) LCMScheduler's defaults."""
    if variant == "sd15":
        return {**SD15, "prediction_type": prediction_type}
    if name == "lcm":
        return {"prediction_type": prediction_type}
    return {**CONFIGS["trailing"], "prediction_type": prediction_type}


@pytest.mark.parametrize("steps", [1, 7, 25])
@pytest.mark.parametrize("variant", ["sd15", "alt"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("name", EXTRA)
def test_loop_matches_diffusers(name, prediction_type, variant, steps):
    run_both(name, config_for(name, variant, prediction_type), steps)


@pytest.mark.parametrize(
    "name, config, steps, tolerance",
    [
        ("euler", {**SD15, "use_karras_sigmas": True}, 25, {}),
        ("euler", {**SD15, "use_karras_sigmas": True, "prediction_type": "v_prediction"}, 7, {}),
        ("euler", {**SD15, "use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0}, 10, {}),
        ("euler", {**CONFIGS["linspace"], "final_sigmas_type": "sigma_min"}, 10, {}),
        ("euler", {**SD15, "prediction_type": "sample"}, 10, {}),
        ("euler", ZERO_SNR, 12, {"per_input_scale": True}),
        ("euler-a", CONFIGS["linspace"], 20, {}),
        ("euler-a", ZERO_SNR, 12, {"per_input_scale": True}),
        ("heun", {**SD15, "use_karras_sigmas": True}, 12, {}),
        ("heun", {**CONFIGS["linspace"], "prediction_type": "sample", "clip_sample": True, "clip_sample_range": 2.0},
         10, {}),
        ("heun", {}, 10, {}),  # HeunDiscreteScheduler's defaults: linear β from 0.00085
        ("lms", {**SD15, "use_karras_sigmas": True}, 15, {}),
        ("lms", {**CONFIGS["linspace"], "prediction_type": "sample"}, 10, {}),
        ("dpm++sde", CONFIGS["linspace"], 10, {}),
        ("dpm++sde-karras", {**CONFIGS["linspace"], "prediction_type": "v_prediction"}, 10, {}),
        ("dpm++2m-karras", {**SD15, "final_sigmas_type": "sigma_min"}, 20, {}),
        ("unipc", {**SD15, "use_karras_sigmas": True}, 20, {}),
        ("unipc", {**SD15, "use_karras_sigmas": True, "final_sigmas_type": "sigma_min"}, 20, {}),
        ("unipc", {**SD15, "solver_type": "bh1", "final_sigmas_type": "sigma_min"}, 10, {}),
        ("unipc", {**SD15, "predict_x0": False, "final_sigmas_type": "sigma_min"}, 10, {}),
        ("unipc", {**SD15, "solver_order": 3}, 12, {}),
        ("unipc", {**SD15, "solver_order": 3, "lower_order_final": False, "final_sigmas_type": "sigma_min"}, 12,
         {"rtol": 1e-6}),  # order 3: see UniPCMultistepScheduler's docstring
        ("unipc", {**SD15, "disable_corrector": [0, 2]}, 10, {}),
        ("unipc", ZERO_SNR, 12, {}),
        ("unipc", {**CONFIGS["linspace"], "prediction_type": "sample"}, 10, {}),
        ("ddpm", {}, 10, {}),  # DDPMScheduler's defaults: linear β, clip_sample
        ("ddpm", {**SD15, "variance_type": "fixed_large"}, 10, {}),
        ("ddpm", {**SD15, "variance_type": "fixed_small_log"}, 10, {}),
        ("ddpm", {**CONFIGS["linspace"], "prediction_type": "sample"}, 10, {}),
        ("ddpm", ZERO_SNR, 12, {}),
        ("lcm", {**SD15, "original_inference_steps": 20, "clip_sample": True}, 8, {}),
        ("lcm", {**SD15, "prediction_type": "sample"}, 6, {}),
    ],
)
def test_other_configs_match_diffusers(name, config, steps, tolerance):
    run_both(name, config, steps, **tolerance)


@pytest.mark.parametrize("option", [{"solver_type": "bh1"}, {"predict_x0": False}])
def test_unipc_step_to_sigma_zero_is_finite(option):
    """diffusers 0.42's UniPC returns NaN on the last step (to σ = 0) with bh1 (B(h) = −inf times a zero term) or the
    noise prediction (σ_t·(e^h − 1) = 0·inf); sdrt takes the limits there, so the last sample is the x0 estimate.
    Every other step is diffusers' (and with final_sigmas_type "sigma_min" all are: test_other_configs_…)."""
    config = {**SD15, **option}
    ours, ref = make_scheduler("unipc", config), make_reference("unipc", config)
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal(SHAPE)
    x_ref = torch.from_numpy(rng.standard_normal(SHAPE, dtype=np.float32))
    for i, (t, t_ref) in enumerate(zip(ours.timesteps, ref.timesteps)):
        x_in = x_ref.numpy().copy()
        out = fake_model(ref, "epsilon", t, x_in, x0, rng.standard_normal(SHAPE))
        x = ours.step(out, t, x_in)
        x_ref = ref.step(torch.from_numpy(out), t_ref, x_ref).prev_sample
        if not torch.isnan(x_ref).any():  # diffusers' last step: NaN
            np.testing.assert_allclose(x, x_ref.numpy(), rtol=0, atol=ATOL, err_msg=f"step {i}")
    # the last step lands on the x0 estimate: of the step's input (data prediction: m0), or of the corrected sample
    alpha, sigma = alpha_sigma(ours.sigmas[-2])
    x_from = x_in if option.get("predict_x0", True) else ours.last_sample
    np.testing.assert_allclose(x, predict_x0("epsilon", out, x_from, alpha, sigma), rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", ["euler", "heun", "lms", "unipc", "dpm++sde"])
@pytest.mark.parametrize("steps", [3, 25])
def test_karras_constructor_flag(name, steps):
    ours, _ = run_both(name, SD15, steps, use_karras_sigmas=True)
    assert ours.config.use_karras_sigmas


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 20, 61, 1000])  # 61 trailing: 62 timesteps, the last t = -1
@pytest.mark.parametrize("spacing", list(CONFIGS))
@pytest.mark.parametrize("name", EXTRA)
def test_timesteps_and_sigmas_match_diffusers(name, spacing, steps):
    ours, ref = make_scheduler(name, CONFIGS[spacing]), make_reference(name, CONFIGS[spacing])
    if name == "lcm" and steps > 50:  # at most original_inference_steps
        with pytest.raises(UserInputError, match="at most 50 steps"):
            ours.set_timesteps(steps)
        with pytest.raises(ValueError):
            ref.set_timesteps(steps)
        return
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    np.testing.assert_allclose(ours.timesteps, ref.timesteps.numpy(), rtol=1e-6, atol=1e-4)
    assert ours.timesteps.dtype == ref.timesteps.numpy().dtype
    if hasattr(ref, "sigmas"):
        np.testing.assert_allclose(ours.sigmas, ref.sigmas.numpy(), rtol=1e-6, atol=0)
    assert np.isclose(ours.init_noise_sigma, float(ref.init_noise_sigma), rtol=1e-6, atol=0)


def test_euler_continuous_timesteps_match_diffusers():
    """v-prediction with ``timestep_type="continuous"``: the U-Net takes ¼·log σ, the steps are Euler's."""
    config = {**CONFIGS["linspace"], "prediction_type": "v_prediction", "timestep_type": "continuous"}
    ours, ref = make_scheduler("euler", config), make_reference("euler", config)
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    np.testing.assert_allclose(ours.timesteps, ref.timesteps.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours.sigmas, ref.sigmas.numpy(), rtol=1e-6)


@pytest.mark.parametrize("name", EXTRA)
def test_add_noise_matches_diffusers(name):
    ours, ref = make_scheduler(name, SD15), make_reference(name, SD15)
    ours.set_timesteps(20)
    ref.set_timesteps(20)
    rng = np.random.default_rng(1)
    original, noise = rng.standard_normal((2, *SHAPE), dtype=np.float32)
    i = [3, 11]
    expected = ref.add_noise(torch.from_numpy(original), torch.from_numpy(noise), ref.timesteps[i]).numpy()
    got = ours.add_noise(original, noise, ours.timesteps[i])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", EXTRA)
def test_img2img_loop_from_the_middle_matches_diffusers(name):
    """img2img: the loop starts at timesteps[begin] (set_begin_index), as diffusers' img2img pipelines do."""
    run_both(name, SD15, 10, begin=6)  # for Heun and DPM++ SDE (order 2) index 6 is a step's first evaluation


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_stochastic_samplers_draw_from_their_noise_source(name):
    def run(seed):
        scheduler = make_scheduler(name, SD15)
        scheduler.set_timesteps(6)
        rng = np.random.default_rng(seed)
        scheduler.set_noise_source(lambda shape: rng.standard_normal(shape, dtype=np.float32))
        x = np.ones(SHAPE, dtype=np.float32)
        for t in scheduler.timesteps:
            x = scheduler.step(np.full(SHAPE, 0.1, dtype=np.float32), t, scheduler.scale_model_input(x, t))
        return x

    assert make_scheduler(name, SD15).stochastic
    np.testing.assert_array_equal(run(5), run(5))
    assert np.abs(run(5) - run(6)).max() > 1e-3


@pytest.mark.parametrize("name", sorted(set(SCHEDULER_NAMES) - STOCHASTIC))
def test_deterministic_samplers_never_draw_noise(name):
    scheduler = make_scheduler(name, SD15)
    assert not scheduler.stochastic
    scheduler.set_timesteps(5)

    def forbidden(shape):
        raise AssertionError("a deterministic sampler drew noise")

    scheduler.set_noise_source(forbidden)
    x = np.ones(SHAPE, dtype=np.float32)
    for t in scheduler.timesteps:
        x = scheduler.step(np.full(SHAPE, 0.1, dtype=np.float32), t, scheduler.scale_model_input(x, t))


def test_stochastic_samplers_run_with_the_default_noise_source():
    for name in sorted(STOCHASTIC):
        results = []
        for _ in range(2):
            scheduler = make_scheduler(name, SD15)
            scheduler.set_timesteps(4)
            x = np.ones(SHAPE, dtype=np.float32)
            for t in scheduler.timesteps:
                x = scheduler.step(np.zeros(SHAPE, dtype=np.float32), t, scheduler.scale_model_input(x, t))
            results.append(x)
        np.testing.assert_array_equal(*results, err_msg=name)  # a fresh scheduler: the same default seed


def test_brownian_noise_is_one_brownian_path():
    """DPM++ SDE's noise: the increments over [σ_mid, σ_0] and [σ_1, σ_0] of one path, normalised; so they are
    correlated by √((σ_0 − σ_mid)/(σ_0 − σ_1)), and the increment over [σ_1, σ_mid] is independent of the first."""
    rng = np.random.default_rng(0)
    n = 200_000
    path = BrownianNoise(lambda shape: rng.standard_normal(shape, dtype=np.float32), (n,))
    s0, s_mid, s1 = 10.0, 6.0, 2.0
    a = path(s0, s_mid)  # W(σ_mid) − W(σ_0), normalised
    b = path(s0, s1)
    for noise in (a, b):
        assert noise.dtype == np.float32 and abs(noise.mean()) < 0.01 and abs(noise.std() - 1) < 0.01
    assert abs(np.corrcoef(a, b)[0, 1] - ((s0 - s_mid) / (s0 - s1)) ** 0.5) < 0.01
    c = path(s_mid, s1)  # known points only: no new draw, the rest of the same path
    np.testing.assert_allclose(c * (s_mid - s1) ** 0.5, b * (s0 - s1) ** 0.5 - a * (s0 - s_mid) ** 0.5, atol=1e-4)
    assert abs(np.corrcoef(a, c)[0, 1]) < 0.01
    d = path(8.0, s_mid)  # a point between two known ones: the Brownian bridge
    assert abs(d.std() - 1) < 0.01 and abs(np.corrcoef(a, d)[0, 1] - (2 / 4) ** 0.5) < 0.01


@pytest.mark.parametrize("canonical, display", list(A1111_NAMES.items()))
def test_every_a1111_name_resolves(canonical, display):
    """On a flow-matching model (SD 3, Flux) "Euler" and "Heun" are its flow samplers, as Forge names them."""
    config = {"_class_name": "FlowMatchEulerDiscreteScheduler"} if canonical in FLOW_SAMPLERS.values() else None
    assert model_sampler(display, config) == canonical
    assert model_sampler(display.upper(), config) == canonical
    assert a1111_name(canonical) == display


def test_a1111_names_cover_every_sampler():
    assert set(A1111_NAMES) == set(SCHEDULER_NAMES)
    assert [a1111_name(n) for n in EXTRA] == [
        "DPM++ 2M Karras", "DPM++ SDE", "DPM++ SDE Karras", "Euler", "Euler a", "Heun", "LMS", "UniPC", "DDPM", "LCM",
    ]


@pytest.mark.parametrize(
    "alias, canonical",
    [
        ("k_euler_a", "euler-a"), ("k_euler_ancestral", "euler-a"), ("euler_a", "euler-a"), ("Euler A", "euler-a"),
        ("euler_ancestral", "euler-a"), ("k_euler", "euler"), ("k_heun", "heun"), ("k_lms", "lms"),
        ("k_dpmpp_2m", "dpm++2m"), ("k_dpmpp_2m_ka", "dpm++2m-karras"), ("dpmpp_2m_karras", "dpm++2m-karras"),
        ("DPM++2M Karras", "dpm++2m-karras"), ("k_dpmpp_sde_ka", "dpm++sde-karras"), ("dpmpp_sde", "dpm++sde"),
        ("uni_pc", "unipc"), ("uni_pc_bh2", "unipc"), ("Euler-a", "euler-a"), ("unipc", "unipc"),
        ("EulerDiscreteScheduler", "euler"), ("EulerAncestralDiscreteScheduler", "euler-a"),
        ("HeunDiscreteScheduler", "heun"), ("LMSDiscreteScheduler", "lms"), ("UniPCMultistepScheduler", "unipc"),
        ("DDPMScheduler", "ddpm"), ("LCMScheduler", "lcm"), ("DPMSolverSDEScheduler", "dpm++sde"),
    ],
)
def test_aliases_resolve(alias, canonical):
    assert canonical_name(alias) == canonical
    assert type(make_scheduler(alias, SD15)) is type(make_scheduler(canonical, SD15))


@pytest.mark.parametrize("bad", ["euler b", "k_dpm_fast", "dpm++ 3m sde", "lcm2", None])
def test_unknown_names_list_every_sampler(bad):
    with pytest.raises(UserInputError) as info:
        canonical_name(bad)
    for name in SCHEDULER_NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"_class_name": "EulerDiscreteScheduler"}, "euler"),
        ({"_class_name": "EulerAncestralDiscreteScheduler"}, "euler-a"),
        ({"_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": True}, "dpm++2m-karras"),
        ({"_class_name": "DPMSolverSDEScheduler", "use_karras_sigmas": True}, "dpm++sde-karras"),
        ({"_class_name": "LCMScheduler"}, "lcm"),
        ({"_class_name": "UniPCMultistepScheduler", "use_karras_sigmas": True}, "unipc"),
        ({"_class_name": "PNDMScheduler"}, "pndm"),
        ({"_class_name": "FlowMatchEulerDiscreteScheduler"}, "flow-euler"),
        ({"_class_name": "KDPM2DiscreteScheduler"}, "ddim"),  # one sdrt does not have
        (None, "ddim"),
    ],
)
def test_default_sampler_follows_the_scheduler_config(config, expected):
    assert default_sampler(config) == expected


@pytest.mark.parametrize(
    "name, config, match",
    [
        ("euler", {"interpolation_type": "log_linear"}, "interpolation_type"),
        ("euler", {"use_exponential_sigmas": True}, "use_exponential_sigmas"),
        ("euler-a", {"prediction_type": "sample"}, "prediction_type"),
        ("dpm++sde", {"prediction_type": "sample"}, "prediction_type"),
        ("heun", {"use_beta_sigmas": True}, "use_beta_sigmas"),
        ("unipc", {"thresholding": True}, "thresholding"),
        ("unipc", {"solver_type": "bh3"}, "solver_type"),
        ("unipc", {"use_flow_sigmas": True}, "use_flow_sigmas"),
        ("ddpm", {"variance_type": "learned_range"}, "variance_type"),
        ("lcm", {"thresholding": True}, "thresholding"),
        ("heun", {"beta_schedule": "exp"}, "beta_schedule"),
    ],
)
def test_unsupported_configs_raise_user_input_error(name, config, match):
    with pytest.raises(UserInputError, match=match):
        make_scheduler(name, config)


@pytest.mark.parametrize("name", EXTRA)
@pytest.mark.parametrize("steps", [0, 1001, 2.5, True])
def test_bad_step_counts_raise_user_input_error(name, steps):
    with pytest.raises(UserInputError, match="number of steps"):
        make_scheduler(name, SD15).set_timesteps(steps)
