"""LoRAs on the transformer families (SD 3 / 3.5, Flux) against diffusers' own LoRA loading, from a seed alone:
PEFT files saved by diffusers (every linear layer of the transformer, SD 3's patch convolution, the CLIP encoders;
alphas in the metadata), kohya's Flux files in Black Forest Labs' names read by diffusers' own converter (q, k and v
fused, the final modulation's halves swapped, CLIP-L as ``lora_te1_``), the single blocks' fused ``linear1``, and
SD 3's original (MMDiT) names; OpenVINO; files that do not fit."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sdrt.errors import UserInputError
from sdrt.runtime import Pipeline

from parity_helpers import assert_matches, psnr
from transformer_variants import diffusers_flux, diffusers_sd3

PROMPT = "a red circle on a blue background"
FLUX_KW = dict(num_inference_steps=3, height=64, width=96, guidance_scale=3.5)
SD3_KW = dict(num_inference_steps=3, height=64, width=96, guidance_scale=5.0)
# PEFT's targets: every linear layer of both transformers (``linear``: the modulations) and SD 3's patch convolution
TRANSFORMER_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                       "proj_mlp", "proj_out", "linear", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                       "ff_context.net.2", "x_embedder", "context_embedder", "linear_1", "linear_2", "pos_embed.proj"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def _add_peft_adapter(network, targets, rank: int, alpha: float, seed: int):
    """A random LoRA adapter on ``network`` (diffusers' way of training one); its B factors small, as trained."""
    from peft import LoraConfig

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=False, target_modules=targets)
    network.add_adapter(config)
    with torch.no_grad():
        for name, p in network.named_parameters():
            if "lora_B" in name:
                p.mul_(0.05)
    return config.to_dict()


def _peft_lora(reference, folder, name: str, text_encoders: tuple[str, ...]):
    """``reference`` with a PEFT LoRA on its transformer and ``text_encoders``, saved by diffusers as
    ``folder/name.safetensors``; the pipeline with the adapters on, for diffusers' image."""
    from peft.utils import get_peft_model_state_dict

    pipe = copy.deepcopy(reference)
    files = {"transformer_lora_adapter_metadata": _add_peft_adapter(pipe.transformer, TRANSFORMER_TARGETS, 4, 8, 0)}
    files["transformer_lora_layers"] = get_peft_model_state_dict(pipe.transformer)
    for i, component in enumerate(text_encoders):
        key = component.removeprefix("text_")  # encoder, encoder_2
        files[f"text_{key}_lora_adapter_metadata"] = _add_peft_adapter(getattr(pipe, component), TEXT_TARGETS, 2, 1, i + 1)
        files[f"text_{key}_lora_layers"] = get_peft_model_state_dict(getattr(pipe, component))
    type(pipe).save_lora_weights(folder, weight_name=f"{name}.safetensors", **files)
    return pipe


def _kohya_layers(folder, name: str, layers: dict[str, tuple[int, int]], seed: int, rank: int = 4, alpha: float = 2.0):
    """A kohya file of random factors: ``layers`` {key prefix: (out, in)}; returns its state (torch tensors)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, (out, inner) in layers.items():
        state[f"{key}.lora_down.weight"] = torch.randn(rank, inner, generator=g) / inner ** 0.5
        state[f"{key}.lora_up.weight"] = torch.randn(out, rank, generator=g) * 0.05
        state[f"{key}.alpha"] = torch.tensor(alpha)
    save_file(state, str(folder / f"{name}.safetensors"))
    return state


def _shape(network, path: str) -> tuple[int, int]:
    layer = network.get_submodule(path)
    return layer.out_features, layer.in_features


def _fused_shapes(network, parts: dict[str, list[str]]) -> dict[str, tuple[int, int]]:
    """(out, in) of each original layer that fuses the diffusers layers ``parts[key]`` along its outputs."""
    return {key: (sum(_shape(network, p)[0] for p in paths), _shape(network, paths[0])[1]) for key, paths in parts.items()}


def _split_as_diffusers(network, kohya: dict, parts: dict[str, list[str]], swapped=()) -> dict[str, tuple]:
    """Each kohya layer's factors as the diffusers layers it stands for, as diffusers' converters split them: the
    down factor copied to each, the up factor's rows split in order (a modulation's halves exchanged first:
    diffusers' ``swap_scale_shift``). diffusers path -> (down, up)."""
    out = {}
    for key, paths in parts.items():
        up = kohya[f"{key}.lora_up.weight"]
        if key in swapped:
            up = torch.cat(up.chunk(2)[::-1])
        for path, rows in zip(paths, up.split([_shape(network, p)[0] for p in paths])):
            out[path] = (kohya[f"{key}.lora_down.weight"].clone(), rows.contiguous())
    return out


@pytest.fixture(scope="module")
def flux(export_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("flux-loras")
    with Pipeline.load(export_dir("tiny-flux"), lora_dir=folder) as pipe:
        yield pipe, folder


@pytest.fixture(scope="module")
def flux_peft(flux, reference_pipeline):
    """diffusers' tiny-flux with a PEFT LoRA on its transformer and CLIP-L, saved as ``peft``."""
    return _peft_lora(reference_pipeline("tiny-flux"), flux[1], "peft", ("text_encoder",))


def test_flux_peft_lora_with_text_encoder_matches_diffusers(flux, flux_peft):
    pipe, folder = flux
    ours = pipe(PROMPT + " <lora:peft:1>", seed=2, **FLUX_KW)
    assert_matches(ours, diffusers_flux(flux_peft, 2, prompt=PROMPT, **FLUX_KW))
    plain = pipe(PROMPT, seed=2, **FLUX_KW)
    assert np.abs(plain.latents - ours.latents).max() > 1e-2, "the LoRA changed nothing"
    assert "Lora hashes: \"peft: " in ours.parameters[0]


def test_flux_kohya_loras_in_original_names_match_diffusers(flux, reference_pipeline):
    """kohya's names (Black Forest Labs' layout): the double blocks (q, k and v fused) and CLIP-L read by diffusers'
    own converter; the single blocks (q, k, v and the MLP's input fused in linear1), the embedders and the final
    layer (its modulation's halves swapped) against the same factors split as that converter splits them — it
    cannot read those here: its single blocks' sizes are Flux-dev's, and diffusers 0.42 drops the other layers."""
    pipe, folder = flux
    reference = copy.deepcopy(reference_pipeline("tiny-flux"))
    t, te = reference.transformer, reference.text_encoder
    double = {}
    for i in range(len(t.transformer_blocks)):
        b, q = f"transformer_blocks.{i}.", f"lora_unet_double_blocks_{i}_"
        double |= {q + "img_attn_qkv": (3 * _shape(t, b + "attn.to_q")[0], _shape(t, b + "attn.to_q")[1]),
                   q + "txt_attn_qkv": (3 * _shape(t, b + "attn.add_q_proj")[0], _shape(t, b + "attn.add_q_proj")[1]),
                   q + "img_attn_proj": _shape(t, b + "attn.to_out.0"), q + "txt_attn_proj": _shape(t, b + "attn.to_add_out"),
                   q + "img_mlp_0": _shape(t, b + "ff.net.0.proj"), q + "txt_mlp_2": _shape(t, b + "ff_context.net.2"),
                   q + "img_mod_lin": _shape(t, b + "norm1.linear"), q + "txt_mod_lin": _shape(t, b + "norm1_context.linear")}
    double |= {f"lora_te1_text_model_encoder_layers_0_self_attn_{x}_proj": _shape(te, f"encoder.layers.0.self_attn.{x}_proj")
               for x in ("q", "k", "v", "out")}
    _kohya_layers(folder, "kohya-double", double, seed=3)
    reference.load_lora_weights(str(folder / "kohya-double.safetensors"), adapter_name="k_double")

    parts = {"lora_unet_img_in": ["x_embedder"], "lora_unet_txt_in": ["context_embedder"],
             "lora_unet_guidance_in_in_layer": ["time_text_embed.guidance_embedder.linear_1"],
             "lora_unet_final_layer_linear": ["proj_out"], "lora_unet_final_layer_adaLN_modulation_1": ["norm_out.linear"]}
    for i in range(len(t.single_transformer_blocks)):
        b, k = f"single_transformer_blocks.{i}.", f"lora_unet_single_blocks_{i}_"
        parts |= {k + "linear1": [b + p for p in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")],
                  k + "linear2": [b + "proj_out"]}
    state = _kohya_layers(folder, "kohya-single", _fused_shapes(t, parts), seed=4, alpha=8.0)
    split = _split_as_diffusers(t, state, parts, swapped={"lora_unet_final_layer_adaLN_modulation_1"})
    peft = {f"transformer.{path}.lora_{ab}.weight": factor * (2.0 if ab == "B" else 1.0)  # alpha / rank
            for path, factors in split.items() for ab, factor in zip("AB", factors)}
    save_file(peft, str(folder / "single-peft.safetensors"))
    reference.load_lora_weights(str(folder / "single-peft.safetensors"), adapter_name="k_single")
    reference.set_adapters(["k_double", "k_single"], [0.8, 1.2])
    reference.fuse_lora(adapter_names=["k_double", "k_single"])

    ours = pipe(PROMPT, seed=6, loras={"kohya-double": 0.8, "kohya-single": 1.2}, **FLUX_KW)
    assert_matches(ours, diffusers_flux(reference, 6, prompt=PROMPT, **FLUX_KW))
    for name in ("kohya-double", "kohya-single"):
        alone = pipe(PROMPT, seed=6, loras={name: 1.0}, **FLUX_KW).latents
        assert np.abs(alone - pipe(PROMPT, seed=6, **FLUX_KW).latents).max() > 1e-3, f"{name} changed nothing"


def test_flux_loras_on_openvino(flux, flux_peft, export_dir):
    pipe, folder = flux
    want = pipe(PROMPT, seed=3, loras={"peft": 0.7}, **FLUX_KW).images[0]
    with Pipeline.load(export_dir("tiny-flux"), backend="openvino", lora_dir=folder) as ov:
        got = ov(PROMPT, seed=3, loras={"peft": 0.7}, **FLUX_KW).images[0]
    assert psnr(np.asarray(got), np.asarray(want)) > 45


@pytest.fixture(scope="module")
def sd3(export_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd3-loras")
    with Pipeline.load(export_dir("tiny-sd3"), lora_dir=folder) as pipe:
        yield pipe, folder


def test_sd3_peft_lora_with_both_clip_encoders_matches_diffusers(sd3, reference_pipeline):
    pipe, folder = sd3
    with_lora = _peft_lora(reference_pipeline("tiny-sd3"), folder, "peft", ("text_encoder", "text_encoder_2"))
    ours = pipe(PROMPT, negative_prompt="blurry", seed=4, loras={"peft": 1.0}, scheduler="euler", **SD3_KW)
    assert_matches(ours, diffusers_sd3(with_lora, "euler", 4, prompt=PROMPT, negative_prompt="blurry", **SD3_KW))


def test_sd3_kohya_lora_in_mmdit_names_equals_its_diffusers_names(sd3, reference_pipeline):
    """The same factors in the original checkpoint's names, laid out as diffusers' single-file conversion reads them
    (q, k, v fused in qkv; the last block's context modulation and the final one as (shift, scale)), and in
    diffusers' names split accordingly (diffusers reads no kohya SD 3 LoRA): the same image."""
    pipe, folder = sd3
    t = reference_pipeline("tiny-sd3").transformer
    last = len(t.transformer_blocks) - 1
    parts = {f"lora_unet_joint_blocks_{last}_x_block_attn_qkv": [f"transformer_blocks.{last}.attn.to_{x}" for x in "qkv"],
             "lora_unet_joint_blocks_0_context_block_attn_qkv": [f"transformer_blocks.0.attn.add_{x}_proj" for x in "qkv"],
             "lora_unet_joint_blocks_0_x_block_attn2_qkv": [f"transformer_blocks.0.attn2.to_{x}" for x in "qkv"],
             "lora_unet_joint_blocks_0_x_block_mlp_fc1": ["transformer_blocks.0.ff.net.0.proj"],
             "lora_unet_t_embedder_mlp_0": ["time_text_embed.timestep_embedder.linear_1"],
             f"lora_unet_joint_blocks_{last}_context_block_adaLN_modulation_1": [f"transformer_blocks.{last}.norm1_context.linear"],
             "lora_unet_final_layer_adaLN_modulation_1": ["norm_out.linear"]}
    swapped = {f"lora_unet_joint_blocks_{last}_context_block_adaLN_modulation_1", "lora_unet_final_layer_adaLN_modulation_1"}
    kohya = _kohya_layers(folder, "mmdit", _fused_shapes(t, parts), seed=5, rank=2, alpha=2.0)
    split = {}
    for path, (down, up) in _split_as_diffusers(t, kohya, parts, swapped).items():
        key = "lora_transformer_" + path.replace(".", "_")  # kohya's way of writing diffusers' names
        split |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(2.0)}
    save_file(split, str(folder / "mmdit-diffusers.safetensors"))
    kw = dict(seed=8, scheduler="euler", **SD3_KW)
    ours, same = pipe(PROMPT + " <lora:mmdit:1>", **kw), pipe(PROMPT + " <lora:mmdit-diffusers:1>", **kw)
    assert np.abs(ours.latents - same.latents).max() <= 1e-5 * np.abs(same.latents).max()
    assert np.abs(pipe(PROMPT, **kw).latents - ours.latents).max() > 1e-3, "the LoRA changed nothing"


def test_t5_layers_are_named_as_not_matched(sd3, caplog):
    """T5 has no LoRA sites: a file's T5 layers (kohya's lora_te3_) are named in the warning, the rest applied."""
    pipe, folder = sd3
    _kohya_layers(folder, "with-t5", {"lora_unet_context_embedder": (32, 64),
                                      "lora_te3_encoder_block_0_layer_0_SelfAttention_q": (64, 64)}, seed=2)
    with caplog.at_level("WARNING", logger="sdrt"):
        pipe(PROMPT, seed=1, loras={"with-t5": 1}, **SD3_KW)
    assert "1 of its 2 layers matched" in caplog.text and "text_encoder_3: encoder_block_0" in caplog.text


def test_loras_that_do_not_fit_the_transformer_say_why(flux, sd3, reference_pipeline, tmp_path):
    pipe, folder = flux
    _kohya_layers(folder, "wide", {"lora_unet_double_blocks_0_img_attn_qkv": (3 * 3072, 3072)}, seed=1)
    with pytest.raises(UserInputError, match="wide.safetensors does not fit this model: a layer of it changes 9216 "
                                             "outputs where the model's transformer_blocks.0.attn.to_q"):
        pipe(PROMPT, seed=1, loras={"wide": 1}, **FLUX_KW)
    sd3_pipe, sd3_folder = sd3
    _kohya_layers(sd3_folder, "for-flux", {"lora_unet_single_blocks_0_linear2": (64, 64)}, seed=1)
    with pytest.raises(UserInputError, match="for-flux.safetensors fits none of this model's layers.*\\(sd3\\)"):
        sd3_pipe(PROMPT, seed=1, loras={"for-flux": 1}, **SD3_KW)
