"""Test helper: random ControlNets for the tiny models, as diffusers folders and as AUTOMATIC1111's single files.

``ControlNetModel.from_unet`` copies the U-Net's encoder and zero-initialises the layers that make the residuals,
so a ControlNet fresh from it changes nothing; these get random values there too, at a scale that changes the
image visibly without swamping it."""

from __future__ import annotations

import torch

from sdrt.lora import ldm_names

LDM_PREFIX = "control_model."


def make_controlnet(unet, seed: int, vae_scale: int, embedding_channels: tuple[int, ...] | None = None,
                    scale: float = 1.0):
    """A ControlNet for ``unet`` (its encoder copied), every weight that starts at zero made random; its control
    image embedding downsamples ``vae_scale``× (``embedding_channels``: one width per level, the last used twice)."""
    from diffusers import ControlNetModel

    levels = vae_scale.bit_length()  # 8 → 4 widths (3 halvings), 4 → 3
    channels = embedding_channels or (16, 32, 96, 256)[:levels]  # diffusers' default at 8×
    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels)
    g = torch.Generator().manual_seed(seed)
    zeros = [net.controlnet_cond_embedding.conv_out, *net.controlnet_down_blocks, net.controlnet_mid_block]
    with torch.no_grad():
        for layer in zeros:
            for p in layer.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * scale / max(1, p[0].numel()) ** 0.5)
    return net.eval()


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
