"""The original (LDM / SGM) names of diffusers' U-Net layers: kohya's SDXL LoRAs, and some SD 1.x ones, name their
layers as the original checkpoints do (``input_blocks.4.1.transformer_blocks.0.attn1.to_q``). This is the inverse of
the mapping diffusers applies to single-file checkpoints; the tests also use it to write checkpoints."""

from __future__ import annotations

import re

UNET_FIXED = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",  # SDXL's pooled-text and time-id embedding
    "add_embedding.linear_2.": "label_emb.0.2.",
}
UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def unet_key(key: str, layers_per_block: int, up_blocks_with_attention: set[int]) -> str:
    """The LDM name of the diffusers U-Net weight ``key`` (``down_blocks.0.resnets.0.conv1.weight`` →
    ``input_blocks.1.0.in_layers.2.weight``)."""
    for old, new in UNET_FIXED.items():
        if key.startswith(old):
            return new + key[len(old):]
    per = layers_per_block + 1  # LDM numbers resnets and resamplers in one flat list per level
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = 1 + b * per + i
        return f"input_blocks.{idx}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{idx}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{1 + int(m[1]) * per + per - 1}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = b * per + i
        return f"output_blocks.{idx}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{idx}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        b = int(m[1])
        # up blocks with attention put their upsampler at index 2, after the attention at index 1
        return f"output_blocks.{b * per + per - 1}.{2 if b in up_blocks_with_attention else 1}.conv.{m[2]}"
    raise KeyError(f"no LDM name for U-Net key {key!r}")


def _resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{UNET_RESNET.get(head, head)}.{tail}"


def unet_module(path: str, layers_per_block: int, up_blocks_with_attention: set[int]) -> str:
    """The LDM name of the U-Net layer at module ``path``."""
    return unet_key(path + ".weight", layers_per_block, up_blocks_with_attention).removesuffix(".weight")
