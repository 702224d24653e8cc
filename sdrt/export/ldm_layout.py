"""diffusers-format state dicts renamed to the original LDM (CompVis) single-file layout.

This is the inverse of the key mapping diffusers applies when it reads a single-file checkpoint: tests write a
realistic checkpoint from a tiny random pipeline and check that loading it back gives the very same weights, and
the benchmark hands the same weights to peers that read single files only (stable-diffusion.cpp). The plain text-to-image Stable Diffusion layout (SD 1.x, 2.x) and SDXL's (SGM:
``conditioner.embedders.N``) are covered.
"""

import re

import torch

from sdrt.lora import ldm_names

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."  # SD 1.x: HF CLIP weights, wrapped
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD 2.x: OpenCLIP weights


def unet_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    # Up blocks with attention put their upsampler at index 2, after the attention at index 1.
    up_has_attn = {int(k.split(".")[1]) for k in state if re.match(r"up_blocks\.\d+\.attentions\.", k)}
    return {UNET_PREFIX + ldm_names.unet_key(k, config["layers_per_block"], up_has_attn): v for k, v in state.items()}


_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    n = len(config["block_out_channels"])
    out = {}
    for key, value in state.items():
        new_key = key.replace("conv_norm_out.", "norm_out.")
        if m := re.fullmatch(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)", key):
            part, updown, b, kind, i, rest = m.groups()
            # The LDM decoder counts its up blocks from the lowest resolution's end.
            b = int(b) if updown == "down" else n - 1 - int(b)
            if kind == "resnets":
                new_key = f"{part}.{updown}.{b}.block.{i}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
            else:
                new_key = f"{part}.{updown}.{b}.{updown}sample.{rest}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            new_key = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)", key):
            new_key = f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
            if m[2] != "group_norm" and m[3] == "weight":
                value = value[:, :, None, None]  # LDM uses 1x1 convolutions here, diffusers Linear
        out[VAE_PREFIX + new_key] = value
    return out


def clip_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {CLIP_PREFIX + k: v for k, v in state.items()}
    # Original SD 1.x checkpoints carry this buffer; loaders must tolerate it.
    n = state["embeddings.position_embedding.weight"].shape[0]
    out[CLIP_PREFIX + "embeddings.position_ids"] = torch.arange(n)[None]
    return out


def open_clip_to_ldm(state: dict[str, torch.Tensor], prefix: str = OPEN_CLIP_PREFIX,
                     projection: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """OpenCLIP's layout; ``projection`` is a CLIPTextModelWithProjection's ``text_projection.weight`` (SDXL)."""
    out = {
        "token_embedding.weight": state["embeddings.token_embedding.weight"],
        "positional_embedding": state["embeddings.position_embedding.weight"],
        "ln_final.weight": state["final_layer_norm.weight"],
        "ln_final.bias": state["final_layer_norm.bias"],
    }
    hidden = state["final_layer_norm.weight"].shape[0]
    # OpenCLIP's projection is [hidden, projection] (x @ P); present in SD 2.x files too, unused there
    out["text_projection"] = torch.zeros(hidden, hidden) if projection is None else projection.T.contiguous()
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
    for key, value in state.items():
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if not m:
            continue
        block, name, kind = f"transformer.resblocks.{m[1]}", m[2], m[3]
        if name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            if name.endswith("q_proj"):  # OpenCLIP packs q, k, v into one matrix
                packed = [state[f"encoder.layers.{m[1]}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
                out[f"{block}.attn.in_proj_{kind}"] = torch.cat(packed)
            continue
        out[f"{block}.{names[name]}.{kind}"] = value
    return {prefix + k: v for k, v in out.items()}


def sd_to_ldm(pipe) -> dict[str, torch.Tensor]:
    """An SD 1.x / 2.x pipeline's weights under the names an original single-file checkpoint uses."""
    sd2 = pipe.text_encoder.config.hidden_act == "gelu"  # OpenCLIP, as in SD 2.x
    text = open_clip_to_ldm if sd2 else clip_to_ldm
    state = {
        **unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config),
        **vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config),
        **text(pipe.text_encoder.state_dict()),
    }
    return {k: v.contiguous() for k, v in state.items()}


def write_single_file(pipe, path) -> None:
    """``pipe`` (SD 1.x / 2.x) as one .safetensors checkpoint in the original layout, written atomically."""
    from safetensors.torch import save_file

    from ..fileio import atomic_path

    with atomic_path(path) as tmp:
        save_file(sd_to_ldm(pipe), str(tmp))


SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."  # CLIP ViT-L in HF layout, wrapped
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."  # OpenCLIP ViT-bigG (the refiner's is embedders.0)


def sdxl_to_ldm(pipe) -> dict[str, torch.Tensor]:
    """An SDXL base or refiner pipeline as one SGM-layout state dict, as Stability's single files hold it (the
    refiner has OpenCLIP alone, as ``embedders.0``)."""
    text_2 = {k.removeprefix("text_model."): v for k, v in pipe.text_encoder_2.state_dict().items()}
    state = {**unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config), **vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config)}
    projection = pipe.text_encoder_2.state_dict()["text_projection.weight"]
    if pipe.text_encoder is None:
        return state | open_clip_to_ldm(text_2, "conditioner.embedders.0.model.", projection)
    return state | {SDXL_CLIP_PREFIX + "text_model." + k.removeprefix("text_model."): v
                    for k, v in pipe.text_encoder.state_dict().items()} | \
        open_clip_to_ldm(text_2, SDXL_OPEN_CLIP_PREFIX, projection)
