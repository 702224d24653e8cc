"""Test helper: random LoRA files for a diffusers pipeline, in kohya / AUTOMATIC1111's layout (module names as
diffusers' paths underscored, or as the original LDM / SGM checkpoints name them) with LoCon convolutions, the way
real LoRAs for SD 1.x and SDXL are written."""

from __future__ import annotations

import re

import torch
from safetensors.torch import save_file

from sdrt.lora import ldm_names

# kohya's targets: the transformer blocks' Linear layers (and SD 1.x's 1x1 proj_in/out), and with LoCon the
# resnets' and resamplers' convolutions
UNET_TARGETS = r"(attentions\.\d+\.(proj_in|proj_out|transformer_blocks\.\d+\.(attn\d\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2))))"
LOCON_TARGETS = r"(resnets\.\d+\.(conv1|conv2|time_emb_proj|conv_shortcut)|downsamplers\.0\.conv|upsamplers\.0\.conv)"
TE_TARGETS = r"encoder\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))"


def _layers(network: torch.nn.Module, pattern: str):
    for path, module in network.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and re.search(pattern + "$", path):
            yield path, module


def _factors(module: torch.nn.Module, rank: int, g: torch.Generator):
    if isinstance(module, torch.nn.Linear):
        down = torch.randn(rank, module.in_features, generator=g) / module.in_features ** 0.5
        up = torch.randn(module.out_features, rank, generator=g) * 0.3
    else:
        kh, kw = module.kernel_size
        down = torch.randn(rank, module.in_channels, kh, kw, generator=g) / (module.in_channels * kh * kw) ** 0.5
        up = torch.randn(module.out_channels, rank, 1, 1, generator=g) * 0.3
    return down, up


def kohya_lora(pipe, path, seed: int, rank: int = 4, alpha: float = 2.0, locon: bool = True, text: bool = True,
               ldm_names_for_unet: bool = False) -> None:
    """Write a random LoRA for ``pipe`` to ``path``: every kohya target of the U-Net (LoCon: its convolutions too)
    and of the text encoder(s)."""
    g = torch.Generator().manual_seed(seed)
    unet_pattern = UNET_TARGETS + ("|" + LOCON_TARGETS if locon else "")
    networks = [("lora_unet_", pipe.unet, unet_pattern)]
    if text:
        encoders = [e for e in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)) if e]
        prefixes = ["lora_te_"] if len(encoders) == 1 else ["lora_te1_", "lora_te2_"]
        networks += [(p, e, TE_TARGETS) for p, e in zip(prefixes, encoders)]
    config = pipe.unet.config
    up_attention = {i for i, kind in enumerate(config.up_block_types) if "CrossAttn" in kind}
    state = {}
    for prefix, network, pattern in networks:
        for module_path, module in _layers(network, pattern):
            name = module_path.removeprefix("text_model.")
            if prefix == "lora_unet_" and ldm_names_for_unet:
                name = ldm_names.unet_module(name, config.layers_per_block, up_attention)
            elif prefix != "lora_unet_":
                name = "text_model." + name
            key = prefix + name.replace(".", "_")
            down, up = _factors(module, rank, g)
            state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"] = down, up
            state[f"{key}.alpha"] = torch.tensor(alpha)
    save_file(state, str(path))
