"""ControlNet on the runtime against diffusers' ControlNet pipelines, from a seed alone: one ControlNet and several
(MultiControlNet) with guidance start/end, non-square, with a negative prompt, guess mode, image to image, SDXL; the
plain image when no control is asked for; ControlNets of two configurations, from diffusers folders and from
AUTOMATIC1111's single files (original layout), added to an existing export; OpenVINO; the canny preprocessor; the
mistakes a user makes."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sdrt.errors import ExportError, UserInputError
from sdrt.export.controlnet import add_to_export
from sdrt.manifest import load_manifest
from sdrt.runtime import Pipeline
from sdrt.runtime.preprocessors import preprocess

from controlnet_files import controlnet_to_ldm, make_controlnet
from parity_helpers import psnr, use_sampler

PROMPT = "a red circle on a blue background"
NEGATIVE = "blurry, dark"


def _boxes(width: int, height: int, seed: int) -> Image.Image:
    """A control map: white rectangles on black."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((height, width, 3), np.uint8)
    for _ in range(3):
        x, y = rng.integers(0, width - 16), rng.integers(0, height - 16)
        pixels[y:y + int(rng.integers(8, 32)), x:x + int(rng.integers(8, 32))] = 255
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def nets(reference_pipeline, tmp_path_factory):
    """Two ControlNets for tiny of different configurations, as diffusers folders (and the models themselves)."""
    unet = reference_pipeline("tiny").unet
    folder = tmp_path_factory.mktemp("controlnets")
    made = {"edges": make_controlnet(unet, 1, 8), "depthish": make_controlnet(unet, 2, 8, (8, 16, 32, 32), scale=1.5)}
    for name, net in made.items():
        net.save_pretrained(folder / name)
    return folder, made


@pytest.fixture(scope="module")
def controlled(export_dir, nets, tmp_path_factory):
    """The session's tiny export, copied, with both ControlNets added to it (the base is not exported again)."""
    out = tmp_path_factory.mktemp("tiny-controlnet") / "export"
    shutil.copytree(export_dir("tiny"), out)
    folder, _ = nets
    add_to_export(out, [str(folder / "edges"), f"depthish={folder / 'depthish'}"])
    with Pipeline.load(out) as pipe:
        yield pipe


def _reference(reference_pipeline, nets, names, cls="StableDiffusionControlNetPipeline"):
    import diffusers

    base = reference_pipeline("tiny")
    models = [nets[1][n] for n in names]
    parts = {k: getattr(base, k) for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    pipe = getattr(diffusers, cls)(**parts, controlnet=models[0] if len(models) == 1 else models,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _diffusers(pipe, sampler: str, seed: int, **kwargs) -> np.ndarray:
    use_sampler(pipe, sampler)
    with torch.no_grad():
        image = pipe(generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images[0]
    return (image * 255).round().astype(np.uint8)


def test_export_records_controlnets_and_residual_inputs(controlled):
    m = controlled.manifest
    assert {"controlnet.edges", "controlnet.depthish"} <= set(m.components)
    residuals = [t for t in m.components["unet"].inputs if "residual" in t.name]
    assert len(residuals) == 7 and residuals[-1].name == "mid_block_residual"  # tiny: conv_in, 3 blocks of 1 + 2 downsamplers, mid
    assert residuals[-1].shape == ("2B", 64, "h_4", "w_4")
    assert [t.name for t in m.components["controlnet.edges"].outputs] == [t.name for t in residuals]
    assert m.validation["controlnets"]["edges"]["passed"]


def test_one_controlnet_matches_diffusers(controlled, reference_pipeline, nets):
    control = _boxes(128, 96, 0)  # non-square: the call takes the control image's size, as diffusers
    kw = dict(negative_prompt=NEGATIVE, num_inference_steps=5, guidance_scale=6.0, control_guidance_start=0.2,
              control_guidance_end=0.8, controlnet_conditioning_scale=0.8)
    ours = controlled(PROMPT, control_image=control, controlnet="edges", scheduler="dpm++2m", seed=7, **kw)
    ref = _diffusers(_reference(reference_pipeline, nets, ["edges"]), "dpm++2m", 7, prompt=PROMPT, image=control, **kw)
    assert ours.images[0].size == (128, 96)
    assert psnr(ours.images[0], ref) > 45
    assert 'ControlNet 0: "Model: edges, Weight: 0.8, Guidance Start: 0.2, Guidance End: 0.8, Control Mode: Balanced"' in ours.parameters[0]
    plain = controlled(PROMPT, scheduler="dpm++2m", seed=7, height=96, width=128, **{k: kw[k] for k in ("negative_prompt", "num_inference_steps", "guidance_scale")})
    assert psnr(plain.images[0], ours.images[0]) < 35  # the control changed the image


def test_several_controlnets_add_up_as_diffusers(controlled, reference_pipeline, nets):
    images = [_boxes(96, 64, 1), _boxes(128, 80, 2).resize((96, 64))]  # the second resized to the call's size
    kw = dict(num_inference_steps=6, guidance_scale=5.0, height=64, width=96,
              controlnet_conditioning_scale=[1.0, 0.6], control_guidance_start=[0.0, 0.3],
              control_guidance_end=[0.7, 1.0])
    ours = controlled([PROMPT, "a green square"], negative_prompt=NEGATIVE, control_image=images, controlnet=["edges", "depthish"],
                      scheduler="euler", seed=3, **kw)
    ref = _reference(reference_pipeline, nets, ["edges", "depthish"])
    use_sampler(ref, "euler")
    with torch.no_grad():
        expected = ref([PROMPT, "a green square"], negative_prompt=[NEGATIVE] * 2, image=images, generator=torch.Generator().manual_seed(3),
                       output_type="np", **kw).images
    for mine, theirs in zip(ours.images, expected):
        assert psnr(mine, (theirs * 255).round().astype(np.uint8)) > 45


def test_a_control_image_per_prompt_matches_diffusers(controlled, reference_pipeline, nets):
    """One ControlNet, a batch of two prompts with an image each and two images per prompt (diffusers: the image
    batch follows the prompts, each repeated per image)."""
    images = [_boxes(64, 64, 23), _boxes(64, 64, 24)]
    prompts = [PROMPT, "a green square"]
    kw = dict(num_inference_steps=3, guidance_scale=5.0, height=64, width=64)
    ours = controlled(prompts, control_image=images, controlnet="edges", num_images=2, scheduler="euler", seed=25, **kw)
    ref = _reference(reference_pipeline, nets, ["edges"])
    use_sampler(ref, "euler")
    with torch.no_grad():
        expected = ref(prompts, image=images, num_images_per_prompt=2, generator=torch.Generator().manual_seed(25),
                       output_type="np", **kw).images
    assert len(ours.images) == 4
    for mine, theirs in zip(ours.images, expected):
        assert psnr(mine, (theirs * 255).round().astype(np.uint8)) > 45


def test_guess_mode_and_image_to_image_match_diffusers(controlled, reference_pipeline, nets):
    control = _boxes(96, 96, 4)
    kw = dict(num_inference_steps=4, guidance_scale=4.0, height=96, width=96)
    ours = controlled(PROMPT, control_image=control, controlnet="depthish", guess_mode=True, scheduler="ddim", seed=11, **kw)
    ref = _diffusers(_reference(reference_pipeline, nets, ["depthish"]), "ddim", 11, prompt=PROMPT, image=control,
                     guess_mode=True, **kw)
    assert psnr(ours.images[0], ref) > 45

    init = Image.fromarray(np.random.default_rng(5).integers(0, 255, (96, 96, 3), dtype=np.uint8))
    ours = controlled(PROMPT, image=init, strength=0.7, control_image=control, controlnet="edges",
                      negative_prompt=NEGATIVE, scheduler="euler-a", seed=12, **kw)
    ref = _diffusers(_reference(reference_pipeline, nets, ["edges"], "StableDiffusionControlNetImg2ImgPipeline"),
                     "euler-a", 12, prompt=PROMPT, image=init, control_image=control, strength=0.7,
                     negative_prompt=NEGATIVE, controlnet_conditioning_scale=1.0, **kw)  # diffusers' default here: 0.8
    assert psnr(ours.images[0], ref) > 45


def test_a_controlnet_with_a_lora_matches_diffusers_with_the_lora_fused(controlled, reference_pipeline, nets, tmp_path):
    """The LoRA changes the U-Net and the text encoder, not the ControlNet (as diffusers' load_lora_weights)."""
    import copy

    from lora_files import kohya_lora

    kohya_lora(reference_pipeline("tiny"), tmp_path / "a.safetensors", seed=1)
    control = _boxes(64, 64, 18)
    kw = dict(num_inference_steps=4, guidance_scale=5.0, controlnet_conditioning_scale=0.9)
    ours = controlled(PROMPT, control_image=control, controlnet="edges", loras={str(tmp_path / "a.safetensors"): 0.8},
                      scheduler="euler", seed=19, **kw)
    ref = copy.deepcopy(_reference(reference_pipeline, nets, ["edges"]))
    ref.load_lora_weights(str(tmp_path / "a.safetensors"), adapter_name="a")
    ref.set_adapters(["a"], [0.8])
    ref.fuse_lora(adapter_names=["a"])
    assert psnr(ours.images[0], _diffusers(ref, "euler", 19, prompt=PROMPT, image=control, **kw)) > 45


def test_inpainting_with_a_controlnet_matches_diffusers(controlled, reference_pipeline, nets):
    rng = np.random.default_rng(13)
    init = Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    mask = np.zeros((64, 96), np.uint8)
    mask[16:48, 24:72] = 255
    control, mask = _boxes(96, 64, 14), Image.fromarray(mask)
    kw = dict(num_inference_steps=4, guidance_scale=5.0, height=64, width=96, strength=0.8)
    ours = controlled(PROMPT, image=init, mask_image=mask, control_image=control, controlnet="edges", scheduler="ddim",
                      seed=15, **kw)
    ref = _diffusers(_reference(reference_pipeline, nets, ["edges"], "StableDiffusionControlNetInpaintPipeline"),
                     "ddim", 15, prompt=PROMPT, image=init, mask_image=mask, control_image=control,
                     controlnet_conditioning_scale=1.0, **kw)  # diffusers' default here: 0.5
    assert psnr(ours.images[0], ref) > 45


def test_no_control_gives_the_plain_image(controlled, export_dir):
    kw = dict(negative_prompt=NEGATIVE, num_inference_steps=4, height=64, width=64, seed=9)
    with Pipeline.load(export_dir("tiny")) as plain:
        expected = plain(PROMPT, **kw)
    ours = controlled(PROMPT, **kw)
    np.testing.assert_array_equal(ours.latents, expected.latents)  # the same graphs: zeros add nothing


def test_openvino_runs_controlnets_as_onnxruntime(controlled):
    kw = dict(control_image=_boxes(64, 96, 6), controlnet="edges", num_inference_steps=3, seed=2)
    expected = controlled(PROMPT, **kw)
    with Pipeline.load(controlled.folder, backend="openvino") as pipe:
        assert psnr(pipe(PROMPT, **kw).images[0], expected.images[0]) > 45


def test_single_file_controlnet_from_the_cli_equals_its_diffusers_folder(controlled, nets, tmp_path):
    from safetensors.torch import save_file

    _, made = nets
    single = tmp_path / "control_edges.safetensors"
    save_file(controlnet_to_ldm(made["edges"]), str(single))
    out = tmp_path / "export"
    control = tmp_path / "control.png"
    _boxes(64, 64, 8).save(control)
    cli = [sys.executable, "-m", "sdrt.cli"]
    run = subprocess.run(cli + ["export", "tiny", str(out), "--no-lora", "--controlnet", str(single)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    run = subprocess.run(cli + ["generate", str(out), "--prompt", PROMPT, "--control-image", str(control), "--steps",
                                "3", "--seed", "4", "--out", str(tmp_path / "x.png"), "-q"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    expected = controlled(PROMPT, control_image=control, controlnet="edges", num_inference_steps=3, seed=4)
    assert "control_edges" in load_manifest(out).validation["controlnets"]
    assert psnr(Image.open(tmp_path / "x.png"), expected.images[0]) > 45


def test_controlnet_mistakes_are_clear(controlled, tmp_path, reference_pipeline):
    box = _boxes(64, 64, 0)
    cases = [
        (dict(control_image=box, controlnet="nope"), "no ControlNet nope in this export; it has"),
        (dict(control_image=box), "say which ControlNet"),
        (dict(control_image=[box, box], controlnet="edges"), "one per prompt \\(1\\), per ControlNet; got 2"),
        (dict(control_image=box, controlnet=["edges", "depthish"]), "one list of them\\) per ControlNet: 2"),
        (dict(control_image=box, controlnet="edges", controlnet_conditioning_scale=[1, 2]), "one per ControlNet"),
        (dict(control_image=box, controlnet="edges", control_guidance_start=0.8, control_guidance_end=0.2), "before its end"),
        (dict(control_image=tmp_path / "missing.png", controlnet="edges"), "does not exist"),
        (dict(controlnet="edges"), "needs its control image"),
    ]
    for kwargs, message in cases:
        with pytest.raises(UserInputError, match=message):
            controlled(PROMPT, num_inference_steps=2, **kwargs)
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"not a safetensors file")
    with pytest.raises(Exception, match="cannot be read as a ControlNet"):
        add_to_export(controlled.folder, [str(damaged)])
    other = make_controlnet(reference_pipeline("tiny-sdxl").unet, 3, 8)  # SDXL's: does not fit tiny
    other.save_pretrained(tmp_path / "sd2net")
    with pytest.raises(ExportError, match="does not fit this sd1 model"):
        add_to_export(controlled.folder, [str(tmp_path / "sd2net")])
    assert set(load_manifest(controlled.folder).components) == set(controlled.manifest.components)  # nothing half-added


def test_canny_finds_the_edges_of_a_box():
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[16:48, 20:44] = (200, 40, 40)
    edges = np.asarray(preprocess("canny", Image.fromarray(pixels)))
    assert edges.shape == (64, 64, 3) and set(np.unique(edges)) == {0, 255}
    ys, xs = np.nonzero(edges[:, :, 0])
    assert ys.min() in (15, 16) and ys.max() in (47, 48) and xs.min() in (19, 20) and xs.max() in (43, 44)
    assert edges[30, 30, 0] == 0  # inside the box: no edge
    with pytest.raises(UserInputError, match="no preprocessor"):
        preprocess("depth", Image.fromarray(pixels))


def test_sd2_controlnet_matches_diffusers(export_dir, reference_pipeline, tmp_path):
    """SD 2.x: v-prediction, OpenCLIP-style text encoder; a ControlNet added to a copy of its export."""
    import diffusers

    base = reference_pipeline("tiny-sd2")
    net = make_controlnet(base.unet, 6, 8, (8, 16, 32, 32))
    net.save_pretrained(tmp_path / "v")
    out = tmp_path / "export"
    shutil.copytree(export_dir("tiny-sd2"), out)
    add_to_export(out, [f"v={tmp_path / 'v'}"])
    control = _boxes(64, 96, 20)
    kw = dict(negative_prompt=NEGATIVE, num_inference_steps=4, guidance_scale=5.0, control_guidance_start=0.25)
    with Pipeline.load(out) as pipe:
        ours = pipe(PROMPT, control_image=control, scheduler="dpm++2m", seed=22, **kw)
    parts = {k: getattr(base, k) for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    ref = diffusers.StableDiffusionControlNetPipeline(**parts, controlnet=net, safety_checker=None,
                                                      feature_extractor=None, requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    assert psnr(ours.images[0], _diffusers(ref, "dpm++2m", 22, prompt=PROMPT, image=control, **kw)) > 45


def test_sdxl_controlnet_matches_diffusers(export_dir, reference_pipeline, tmp_path):
    import diffusers

    base = reference_pipeline("tiny-sdxl")
    net = make_controlnet(base.unet, 5, 8)
    net.save_pretrained(tmp_path / "xl")
    from safetensors.torch import save_file

    save_file(controlnet_to_ldm(net), str(tmp_path / "xl_single.safetensors"))  # the original (SGM) layout
    out = tmp_path / "export"
    shutil.copytree(export_dir("tiny-sdxl"), out)
    add_to_export(out, [f"xl={tmp_path / 'xl'}", str(tmp_path / "xl_single.safetensors")])
    control = _boxes(96, 64, 9)
    kw = dict(negative_prompt=NEGATIVE, num_inference_steps=4, guidance_scale=5.0, controlnet_conditioning_scale=0.7)
    with Pipeline.load(out) as pipe:
        ours = pipe(PROMPT, control_image=control, controlnet="xl", scheduler="euler", seed=21, **kw)
        single = pipe(PROMPT, control_image=control, controlnet="xl_single", scheduler="euler", seed=21, **kw)
    np.testing.assert_array_equal(single.latents, ours.latents)
    parts = {k: getattr(base, k) for k in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet",
                                           "scheduler")}
    ref = diffusers.StableDiffusionXLControlNetPipeline(**parts, controlnet=net)
    ref.set_progress_bar_config(disable=True)
    assert psnr(ours.images[0], _diffusers(ref, "euler", 21, prompt=PROMPT, image=control, **kw)) > 45


def test_served_controlnet_through_webuiapi(controlled):
    """webuiapi's ControlNetUnit with its defaults (Resize and Fill, canny thresholds 64/64 where canny is asked),
    on txt2img and img2img: the Python API's image for the same map; the extension's model and module lists; unknown
    models and modules are 422s naming what there is."""
    webuiapi = pytest.importorskip("webuiapi")
    from sdrt.serve.controlnet_api import fit
    from test_serve import Server

    server = Server(controlled.folder)
    control = _boxes(96, 64, 16)  # fitted into 64x64 by "Resize and Fill"
    photo = Image.fromarray(np.random.default_rng(17).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    try:
        host, port = server.url.removeprefix("http://").split(":")
        api = webuiapi.WebUIApi(host=host, port=int(port), steps=3)
        models, modules = api.controlnet_model_list(), api.controlnet_module_list()
        edges = next(m for m in models if m.startswith("edges ["))
        unit = webuiapi.ControlNetUnit(image=control, model=edges, weight=0.9, guidance_end=0.8, control_mode=1)
        # a fresh alwayson_scripts each call: webuiapi writes the units into its mutable default, and every later
        # call of the process (other tests' too) would send them again
        served = api.txt2img(prompt=PROMPT, seed=5, width=64, height=64, cfg_scale=6, sampler_name="Euler",
                             controlnet_units=[unit], alwayson_scripts={})
        canny = webuiapi.ControlNetUnit(module="canny", model="depthish", control_mode=2)  # img2img's image, canny'd
        served_i2i = api.img2img(images=[photo], prompt=PROMPT, seed=6, width=64, height=64, cfg_scale=6,
                                 sampler_name="Euler", denoising_strength=0.6, controlnet_units=[canny],
                                 alwayson_scripts={})
        bad_model = api.session.post(f"{api.baseurl}/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64,
                                     "alwayson_scripts": {"controlnet": {"args": [{"image": webuiapi.raw_b64_img(control),
                                                                                  "model": "nope"}]}}})
        bad_module = api.session.post(f"{api.baseurl}/txt2img", json={"prompt": "x", "steps": 2, "width": 64,
                                      "height": 64, "alwayson_scripts": {"ControlNet": {"args": [
                                          {"image": webuiapi.raw_b64_img(control), "model": "edges", "module": "depth"}]}}})
        detected = api.controlnet_detect([photo], module="canny", processor_res=64, threshold_a=100, threshold_b=200)
        other_script = api.session.post(f"{api.baseurl}/txt2img", json={"prompt": "x", "steps": 2, "width": 64,
                                        "height": 64, "alwayson_scripts": {"ADetailer": {"args": [True]}}})
    finally:
        server.close()
    assert sorted(models) == sorted(f"{n} [{controlled.manifest.components['controlnet.' + n].sha256[:8]}]"
                                    for n in ("edges", "depthish"))
    assert modules == ["none", "canny"]
    kw = dict(num_inference_steps=3, height=64, width=64, guidance_scale=6, scheduler="euler")
    want = controlled(PROMPT, seed=5, control_image=fit(control, 64, 64, "Resize and Fill"), controlnet="edges",
                      controlnet_conditioning_scale=0.9, control_guidance_end=0.8, control_mode="prompt", **kw)
    assert np.array_equal(np.asarray(served.image.convert("RGB")), np.asarray(want.images[0]))
    assert "Control Mode: My prompt is more important" in served.info["infotexts"][0]
    edges_map = preprocess("canny", photo.resize((512, 512), Image.LANCZOS), low=64, high=64)
    want = controlled(PROMPT, seed=6, image=photo, strength=0.6, control_image=edges_map.resize((64, 64), Image.LANCZOS),
                      controlnet="depthish", control_mode="controlnet", **kw)
    assert np.array_equal(np.asarray(served_i2i.image.convert("RGB")), np.asarray(want.images[0]))
    assert detected.info == "Success" and np.array_equal(  # webuiapi's detect: the preprocessor alone
        np.asarray(detected.images[0].convert("RGB")), np.asarray(preprocess("canny", photo)))
    assert bad_model.status_code == 422 and "no model 'nope'" in bad_model.json()["detail"]
    assert "edges [" in bad_model.json()["detail"]
    assert bad_module.status_code == 422 and "no module 'depth'; available: none, canny" in bad_module.json()["detail"]
    assert other_script.status_code == 422 and "alwayson_scripts.ADetailer" in other_script.json()["detail"]
