"""sdrt serve driven by webuiapi, the most used AUTOMATIC1111 client, with its own default payloads: every listed
sampler answers txt2img and img2img with the image the Python API and the CLI give for the seed; η and CLIP skip
through the request, override_settings and the options; the endpoints clients probe at start; what A1111 would use
and sdrt cannot run is a 422 naming it."""

from __future__ import annotations

import base64
import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

webuiapi = pytest.importorskip("webuiapi", reason="the test extra (webuiapi) is not installed")
pytest.importorskip("fastapi", reason="the serve extra is not installed")

from sdrt.runtime.schedulers import canonical_name  # noqa: E402

from test_serve import Server, folder, python_api  # noqa: E402,F401 (the tiny export and its Pipeline: fixtures)

SIZE, STEPS = 64, 3


@pytest.fixture(scope="module")
def server(folder):
    s = Server(folder)
    yield s
    s.close()


def _client(server: Server, **kwargs) -> webuiapi.WebUIApi:
    host, port = server.url.removeprefix("http://").split(":")
    return webuiapi.WebUIApi(host=host, port=int(port), steps=STEPS, **kwargs)


def _same(a: Image.Image, b: Image.Image) -> bool:
    return np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


def _decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def _init_image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(2).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def test_every_sampler_with_webuiapis_default_payloads(server, python_api):
    """webuiapi sends eta 1.0, s_noise 1, s_churn/s_tmin/s_tmax 0, scheduler "automatic" with every request and
    image_cfg_scale 1.5, mask_blur 4 with img2img: A1111 uses η where the sampler has one and ignores the rest."""
    names = _client(server).util_get_sampler_names()
    assert len(names) == 13
    init = _init_image()
    for name in names:
        api = _client(server, sampler=name)
        made = api.txt2img(prompt="a red circle", negative_prompt="dark", seed=31, width=SIZE, height=SIZE)
        expected = python_api("a red circle", negative_prompt="dark", seed=31, scheduler=name, num_inference_steps=STEPS,
                              height=SIZE, width=SIZE, guidance_scale=7.0, eta=1.0)
        assert _same(made.image, expected.images[0]), name
        assert made.info["infotexts"][0] == expected.parameters[0] == made.image.info["parameters"], name
        if canonical_name(name) == "ddim":  # webuiapi's eta 1.0 is used by DDIM, as A1111 does
            assert "Eta DDIM: 1" in made.info["infotexts"][0]

        edited = api.img2img(images=[init], prompt="a blue square", seed=32, width=SIZE, height=SIZE)
        expected = python_api("a blue square", image=init, strength=0.75, seed=32, scheduler=name,
                              num_inference_steps=STEPS, height=SIZE, width=SIZE, guidance_scale=7.0, eta=1.0)
        assert _same(edited.image, expected.images[0]), name


def test_the_cli_gives_the_served_image(server, folder, tmp_path):
    made = _client(server, sampler="DDIM").txt2img(prompt="a green square", seed=12, width=SIZE, height=SIZE,
                                                   override_settings={"CLIP_stop_at_last_layers": 2})
    out = tmp_path / "cli.png"
    subprocess.run([sys.executable, "-m", "sdrt.cli", "generate", str(folder), "--prompt", "a green square",
                    "--sampler", "DDIM", "--seed", "12", "--steps", str(STEPS), "--guidance", "7", "--width", str(SIZE),
                    "--height", str(SIZE), "--eta", "1", "--clip-skip", "2", "--out", str(out), "-q"], check=True)
    with Image.open(out) as cli:
        assert _same(made.image, cli) and made.image.info["parameters"] == cli.info["parameters"]
    assert "Clip skip: 2" in cli.info["parameters"] and made.info["clip_skip"] == 2


def test_eta_and_clip_skip_from_requests_overrides_and_options(server, python_api):
    common = dict(prompt="a red square", seed=8, width=SIZE, height=SIZE, steps=STEPS, cfg_scale=7.0)
    expected = python_api("a red square", seed=8, num_inference_steps=STEPS, height=SIZE, width=SIZE, guidance_scale=7.0,
                          scheduler="euler-a", eta=0.4, clip_skip=2)
    api = _client(server, sampler="Euler a")
    made = api.txt2img(eta=0.4, override_settings={"CLIP_stop_at_last_layers": 2}, **common)
    assert _same(made.image, expected.images[0])
    assert made.info["extra_generation_params"] == {"Eta": 0.4}
    assert "Eta: 0.4" in made.info["infotexts"][0] and "Clip skip: 2" in made.info["infotexts"][0]

    c = server.client
    try:  # the options hold until changed, as A1111's; a request without eta takes eta_ddim / eta_ancestral
        assert c.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2, "eta_ddim": 0.6,
                                                 "eta_ancestral": 0.4, "samples_save": False}).json() == {}
        options = api.get_options()
        assert options["CLIP_stop_at_last_layers"] == 2 and options["eta_ddim"] == 0.6
        answer = c.post("/sdapi/v1/txt2img", json={**common, "sampler_name": "Euler a"})
        assert _same(_decoded(answer.json()["images"][0]), expected.images[0])
        answer = c.post("/sdapi/v1/txt2img", json={**common, "sampler_name": "DDIM"})
        assert "Eta DDIM: 0.6" in answer.json()["parameters"]["prompt"] + answer.json()["info"]
    finally:
        c.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1, "eta_ddim": 0.0, "eta_ancestral": 1.0})


def test_schedule_types(server, python_api):
    api = _client(server, sampler="DPM++ 2M", scheduler="Karras")
    made = api.txt2img(prompt="a circle", seed=3, width=SIZE, height=SIZE)
    assert made.info["sampler_name"] == "DPM++ 2M Karras"
    expected = python_api("a circle", seed=3, scheduler="dpm++2m-karras", num_inference_steps=STEPS, height=SIZE,
                          width=SIZE, guidance_scale=7.0)
    assert _same(made.image, expected.images[0])
    ddim = _client(server, sampler="DDIM", scheduler="Exponential").txt2img(prompt="x", seed=1, width=SIZE, height=SIZE)
    assert ddim.info["sampler_name"] == "DDIM"  # A1111's timesteps samplers take no schedule type: ignored
    with pytest.raises(RuntimeError, match="use one of: Automatic, Karras"):
        _client(server, sampler="DPM++ 2M", scheduler="Exponential").txt2img(prompt="x", width=SIZE, height=SIZE)
    with pytest.raises(RuntimeError, match="use one of: Automatic"):
        _client(server, sampler="Euler", scheduler="Karras").txt2img(prompt="x", width=SIZE, height=SIZE)
    assert _client(server).util_get_scheduler_names() == ["automatic", "karras"]


def test_what_clients_probe_at_start(server, folder):
    api = _client(server)
    assert api.get_upscalers() == [] and api.get_latent_upscale_modes() == [] and api.get_sd_vae() == []
    assert api.get_hypernetworks() == [] and api.get_face_restorers() == [] and api.get_realesrgan_models() == []
    assert api.get_prompt_styles() == [] and api.get_loras() == []
    assert api.get_embeddings() == {"loaded": {}, "skipped": {}}
    assert api.get_scripts() == {"txt2img": [], "img2img": []} and api.custom_get("script-info", baseurl=True) == []
    assert api.get_memory()["ram"]["total"] > api.get_memory()["ram"]["used"] > 0
    assert api.get_cmd_flags()["api"] is True
    options = api.get_options()
    for key in ("sd_model_checkpoint", "CLIP_stop_at_last_layers", "eta_ddim", "eta_ancestral", "sd_vae",
                "samples_format", "s_noise", "eta_noise_seed_delta"):
        assert key in options, key
    assert api.util_get_current_model() == options["sd_model_checkpoint"] in api.util_get_model_names()
    api.util_set_model(options["sd_model_checkpoint"])  # the served one: accepted
    api.util_wait_for_ready(check_interval=0.1)


def test_what_a1111_would_use_and_sdrt_cannot_run_is_a_422_naming_it(server):
    c = server.client
    small = {"width": SIZE, "height": SIZE, "steps": STEPS}
    cases = [
        ({"sampler_name": "Euler", "s_churn": 0.5}, "s_churn"),
        ({"sampler_name": "Heun", "override_settings": {"s_churn": 1.0}}, "s_churn"),
        ({"s_min_uncond": 0.3}, "s_min_uncond"),
        ({"override_settings": {"eta_noise_seed_delta": 31337}}, "eta_noise_seed_delta"),
        ({"override_settings": {"CLIP_stop_at_last_layers": 0}}, "CLIP_stop_at_last_layers"),
        ({"override_settings": {"emphasis": "No norm"}}, "emphasis"),
        ({"override_settings": {"sd_model_checkpoint": "other.safetensors"}}, "cannot load"),
        ({"sampler_name": "DDIM", "eta": 1.5}, "DDIM's eta"),
        ({"sampler_name": "Euler a", "eta": -1}, "eta"),
    ]
    for body, words in cases:
        answer = c.post("/sdapi/v1/txt2img", json={**small, **body})
        assert answer.status_code == 422 and words in answer.json()["detail"], (body, answer.text)
    for options, words in (({"randn_source": "GPU"}, "randn_source"), ({"eta_ddim": "high"}, "eta_ddim")):
        answer = c.post("/sdapi/v1/options", json=options)
        assert answer.status_code == 422 and words in answer.json()["detail"], answer.text
    # ignored where A1111 ignores them: η and s_noise for Euler, s_tmin/s_tmax without churn, image_cfg_scale
    for body in ({"sampler_name": "Euler", "eta": 0.3, "s_noise": 0.5, "s_tmin": 1, "s_tmax": 5},
                 {"sampler_name": "LMS", "s_churn": 2.0}, {"sampler_name": "DPM++ SDE", "s_noise": 0.0},
                 {"override_settings": {"samples_save": False, "sd_vae": "Automatic"}}):
        assert c.post("/sdapi/v1/txt2img", json={**small, **body}).status_code == 200, body
