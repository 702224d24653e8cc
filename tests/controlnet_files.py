"""Test helper: random ControlNets for the tiny models, and AUTOMATIC1111's single-file layout of one."""

from __future__ import annotations

import torch

from sdrt.export.controlnet import random_controlnet
from sdrt.lora import ldm_names

LDM_PREFIX = "control_model."


def make_controlnet(unet, seed: int, vae_scale: int, embedding_channels: tuple[int, ...] | None = None,
                    scale: float = 1.0):
    """A random ControlNet for ``unet`` (see ``sdrt.export.controlnet.random_controlnet``)."""
    return random_controlnet(dict(unet.config), unet.config.in_channels, seed, scale, embedding_channels, vae_scale)


def controlnet_to_ldm(net) -> dict[str, torch.Tensor]:
    """The ControlNet's weights in the original ControlNet layout (``control_model.input_blocks…``,
    ``zero_convs.N.0``, ``input_hint_block.K``, ``middle_block_out.0``) that AUTOMATIC1111's files use."""
    config = net.config
    levels = len(config.conditioning_embedding_out_channels)
    out = {}
    for key, value in net.state_dict().items():
        head, _, rest = key.partition(".")
        if head == "controlnet_down_blocks":
            i, _, param = rest.partition(".")
            new = f"zero_convs.{i}.0.{param}"
        elif head == "controlnet_mid_block":
            new = f"middle_block_out.0.{rest}"
        elif head == "controlnet_cond_embedding":
            part, _, param = rest.partition(".")
            if part == "conv_in":
                new = f"input_hint_block.0.{param}"
            elif part == "conv_out":
                new = f"input_hint_block.{2 * (2 * (levels - 1) + 1)}.{param}"
            else:  # blocks.j
                j, _, param = param.partition(".")
                new = f"input_hint_block.{2 * (int(j) + 1)}.{param}"
        else:
            new = ldm_names.unet_key(key, config.layers_per_block, set())
        out[LDM_PREFIX + new] = value.detach().clone().contiguous()
    return out
