"""LoRAs per request, against diffusers' own LoRA loading (peft) with the LoRAs fused, from a seed alone: kohya files
(U-Net with LoCon convolutions, text encoders; diffusers' and the original module names), diffusers / PEFT files,
several LoRAs with their weights, SD 1.x and SDXL, ONNX Runtime and OpenVINO; switching leaves nothing behind."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sdrt.errors import UserInputError
from sdrt.lora.tags import read_tags, remove_tags
from sdrt.runtime import Pipeline

from lora_files import kohya_lora
from parity_helpers import psnr, use_sampler

PROMPT = "a red circle on a blue background"
KW = dict(num_inference_steps=4, height=64, width=64, guidance_scale=6.0)


@pytest.fixture(scope="module")
def loras(tmp_path_factory, reference_pipeline):
    """a: rank 4 with LoCon; b: rank 8, no LoCon, and b_ldm the same with the original (LDM) names; xl: tiny-sdxl's,
    in the original (SGM) names as kohya writes SDXL LoRAs."""
    folder = tmp_path_factory.mktemp("loras")
    kohya_lora(reference_pipeline("tiny"), folder / "a.safetensors", seed=1)
    kohya_lora(reference_pipeline("tiny"), folder / "b.safetensors", seed=2, rank=8, alpha=8, locon=False)
    kohya_lora(reference_pipeline("tiny"), folder / "b_ldm.safetensors", seed=2, rank=8, alpha=8, locon=False,
               ldm_names_for_unet=True)
    kohya_lora(reference_pipeline("tiny-sdxl"), folder / "xl.safetensors", seed=3, ldm_names_for_unet=True)
    return folder


@pytest.fixture(scope="module")
def tiny(export_dir, loras):
    with Pipeline.load(export_dir("tiny"), lora_dir=loras) as pipe:
        yield pipe


def _diffusers_image(pipe, seed: int, prompt: str = PROMPT, **kwargs) -> np.ndarray:
    use_sampler(pipe, "euler")
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        image = pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **{**KW, **kwargs})
    return (image.images[0] * 255).round().astype(np.uint8)


def _with_loras(reference, folder, weights: dict[str, float]):
    """A copy of ``reference`` with diffusers' LoRA loading of ``weights`` ({name: weight}), fused."""
    pipe = copy.deepcopy(reference)
    for name in weights:
        pipe.load_lora_weights(str(folder / f"{name}.safetensors"), adapter_name=name)
    pipe.set_adapters(list(weights), list(weights.values()))
    pipe.fuse_lora(adapter_names=list(weights))
    return pipe


@pytest.mark.parametrize("weights, prompt, loras_arg", [
    ({"a": 0.8}, PROMPT + " <lora:a:0.8>", None),
    ({"a": 0.7, "b": 1.2}, PROMPT + " <lora:b:1.2>", {"a": 0.7}),
])
def test_kohya_loras_match_diffusers_fused(tiny, reference_pipeline, loras, weights, prompt, loras_arg):
    expected = _diffusers_image(_with_loras(reference_pipeline("tiny"), loras, weights), seed=5)
    ours = tiny(prompt, seed=5, scheduler="euler", loras=loras_arg, **KW)
    assert psnr(np.asarray(ours.images[0]), expected) > 45
    plain = _diffusers_image(reference_pipeline("tiny"), seed=5)
    assert psnr(plain, expected) < 35  # the LoRA changes the image
    assert "Lora hashes: \"" in ours.parameters[0] and "<lora:" in ours.parameters[0].splitlines()[0]


def test_switching_leaves_nothing_behind(tiny):
    run = lambda **kw: tiny(PROMPT, seed=9, **KW, **kw).latents  # noqa: E731
    plain, a = run(), run(loras={"a": 1.0})
    b, a_again, plain_again = run(loras={"b": 0.5}), run(loras={"a": 1.0}), run()
    assert np.array_equal(a, a_again) and np.array_equal(plain, plain_again)
    assert not np.allclose(a, b) and not np.allclose(a, plain)
    # diffusers reads SD 1.x LoRAs in the original names only for SDXL; AUTOMATIC1111 (and sdrt) read both
    assert np.array_equal(b, run(loras={"b_ldm": 0.5}))


def test_sdxl_lora_with_original_names_and_both_text_encoders(export_dir, reference_pipeline, loras):
    reference = _with_loras(reference_pipeline("tiny-sdxl"), loras, {"xl": 0.9})
    expected = _diffusers_image(reference, seed=4, height=64, width=96)
    with Pipeline.load(export_dir("tiny-sdxl"), lora_dir=loras) as pipe:
        ours = pipe(PROMPT + " <lora:xl:0.9>", seed=4, scheduler="euler", **{**KW, "width": 96})
    assert psnr(np.asarray(ours.images[0]), expected) > 45


def test_diffusers_peft_lora_file(export_dir, reference_pipeline, tmp_path):
    """A LoRA trained with PEFT and saved by diffusers: lora_A/lora_B keys, its alpha in the file's metadata."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = copy.deepcopy(reference_pipeline("tiny"))
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                        target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "proj_in"])
    pipe.unet.add_adapter(config)
    StableDiffusionPipeline.save_lora_weights(tmp_path, unet_lora_layers=get_peft_model_state_dict(pipe.unet),
                                              unet_lora_adapter_metadata=config.to_dict(), weight_name="peft.safetensors")
    expected = _diffusers_image(pipe, seed=6)
    with Pipeline.load(export_dir("tiny"), lora_dir=tmp_path) as ours:
        image = ours(PROMPT + " <lora:peft:1>", seed=6, scheduler="euler", **KW).images[0]
    assert psnr(np.asarray(image), expected) > 45


def test_openvino_runs_loras(export_dir, tiny, loras):
    with Pipeline.load(export_dir("tiny"), backend="openvino", lora_dir=loras) as ov:
        got = ov(PROMPT, seed=3, loras={"a": 0.6, "b": 1.0}, **KW).latents
    want = tiny(PROMPT, seed=3, loras={"a": 0.6, "b": 1.0}, **KW).latents
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-4


def test_loras_that_do_not_fit_say_why(tiny, loras, tmp_path, caplog):
    with pytest.raises(UserInputError, match=r"xl.safetensors does not fit|xl.safetensors fits none"):
        tiny(PROMPT + " <lora:xl:1>", seed=1, **KW)
    with pytest.raises(UserInputError, match="no LoRA named 'c'.*a, b, b_ldm, xl"):
        tiny(PROMPT + " <lora:c:1>", seed=1, **KW)
    with pytest.raises(UserInputError, match="two weights"):
        tiny(PROMPT + " <lora:a:1>", loras={"a": 0.5}, seed=1, **KW)
    with pytest.raises(UserInputError, match="weight of LoRA a is 'strong'"):
        tiny(PROMPT, loras={"a": "strong"}, seed=1, **KW)
    (tmp_path / "old.pt").write_bytes(b"not read")
    with pytest.raises(UserInputError, match="pickle"):
        tiny(PROMPT, loras={str(tmp_path / "old.pt"): 1}, seed=1, **KW)
    save_file({"lora_unet_conv_in.hada_w1_a": torch.zeros(2, 2)}, str(tmp_path / "loha.safetensors"))
    with pytest.raises(UserInputError, match="LoHa"):
        tiny(PROMPT, loras={str(tmp_path / "loha.safetensors"): 1}, seed=1, **KW)
    partial = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 32, 1, 1),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 2, 1, 1),
               "lora_unet_no_such_layer.lora_down.weight": torch.zeros(2, 4),
               "lora_unet_no_such_layer.lora_up.weight": torch.zeros(4, 2)}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with caplog.at_level(logging.WARNING, logger="sdrt"):
        tiny(PROMPT, loras={str(tmp_path / "partial.safetensors"): 1}, seed=1, **KW)
    assert "1 of its 2 layers matched" in caplog.text


def test_prompt_tags_as_automatic1111_reads_them():
    text = "a cat <lora:one:0.5>, <lora:two:0.2:0.9> <lora:three> <lora:four:te=0.1:unet=0.3>"
    assert read_tags(text) == [("one", 0.5, 0.5), ("two", 0.2, 0.9), ("three", 1.0, 1.0), ("four", 0.1, 0.3)]
    assert remove_tags(text) == "a cat ,   "
    with pytest.raises(UserInputError, match="weights"):
        read_tags("<lora:x:strong>")


def test_served_loras_through_webuiapi(export_dir, tiny, loras):
    """webuiapi lists the LoRA folder; prompts' tags apply per request, and requests with other LoRA sets sent
    together are not joined into one run: each gets the Python API's image."""
    from concurrent.futures import ThreadPoolExecutor

    webuiapi = pytest.importorskip("webuiapi")
    from test_serve import Server

    server = Server(export_dir("tiny"), "--lora-dir", str(loras), "--max-batch", "4")
    try:
        host, port = server.url.removeprefix("http://").split(":")
        api = webuiapi.WebUIApi(host=host, port=int(port), steps=3)
        assert sorted(entry["name"] for entry in api.get_loras()) == ["a", "b", "b_ldm", "xl"]
        assert api.session.post(f"{api.baseurl}/refresh-loras").status_code == 200
        prompts = [PROMPT + " <lora:a:0.8>", PROMPT, PROMPT + " <lora:b:1.1>"]
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda p: api.txt2img(prompt=p, seed=7, width=64, height=64, cfg_scale=6,
                                                           sampler_name="Euler"), prompts))
    finally:
        server.close()
    for prompt, answer in zip(prompts, answers):
        want = tiny(prompt, seed=7, scheduler="euler", num_inference_steps=3, height=64, width=64, guidance_scale=6)
        assert np.array_equal(np.asarray(answer.image.convert("RGB")), np.asarray(want.images[0]))
    assert 'Lora hashes: "a: ' in answers[0].info["infotexts"][0]
