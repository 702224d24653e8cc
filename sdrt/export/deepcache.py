"""DeepCache (Ma et al., https://arxiv.org/abs/2312.00858): a U-Net's deep features change little from one sampler
step to the next, so most steps can reuse them and run only the U-Net's first level.

``sdrt export --deepcache`` adds it as two graphs: the U-Net also outputs ``deep_features``, the input of its last
up block (everything below the first level, brought back up to it); ``unet_shallow`` runs the time embedding,
``conv_in``, the first down block, the last up block on given ``deep_features`` and ``conv_out``. The runtime
(``deepcache_interval=N``) runs the whole U-Net every N-th step and the shallow graph in between, on the deep
features of the last whole step. No ControlNet residuals in the shallow graph: its calls refuse ControlNets.
"""

from __future__ import annotations

import torch

from ..components import UNET_SHALLOW, is_residual


def feature_channels(unet) -> int:
    """The channels of the last up block's input: the output of the block before it (block_out_channels[1])."""
    return unet.up_blocks[-1].resnets[0].conv1.in_channels - unet.config.block_out_channels[0]


def shallow_paths(unet) -> tuple[str, ...]:
    """The module paths the shallow graph runs (their LoRA sites are its inputs): not the first down block's
    downsampler."""
    return ("conv_in", "time_embedding.", "add_embedding.", "down_blocks.0.resnets.", "down_blocks.0.attentions.",
            f"up_blocks.{len(unet.up_blocks) - 1}.", "conv_out")


class DeepFeatureTap:
    """Catches the input of ``unet``'s last up block while the U-Net runs (a forward pre-hook, traced as a plain
    graph edge): ``with tap: ...; tap.features``."""

    def __init__(self, unet):
        self.block, self.features, self._handle = unet.up_blocks[-1], None, None

    def __enter__(self) -> DeepFeatureTap:
        self._handle = self.block.register_forward_pre_hook(self._catch, with_kwargs=True)
        return self

    def _catch(self, module, args, kwargs):
        self.features = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    def __exit__(self, *exc) -> None:
        self._handle.remove()


class ShallowUNet(torch.nn.Module):
    """diffusers' ``UNet2DConditionModel.forward`` with its down blocks past the first, its mid block and its up
    blocks but the last replaced by ``deep_features``; the same inputs as the U-Net's graph (less the ControlNet
    residuals), then ``deep_features``."""

    def __init__(self, unet: torch.nn.Module, extra_names: tuple[str, ...] = ()):
        super().__init__()
        self.unet, self.extra_names = unet, extra_names

    def forward(self, sample, timestep, encoder_hidden_states, *rest):
        u = self.unet
        extras, deep_features = rest[:-1], rest[-1]
        added = dict(zip(self.extra_names, extras)) or None
        if u.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = u.time_embedding(u.get_time_embed(sample=sample, timestep=timestep), None)
        aug = u.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added)
        emb = emb if aug is None else emb + aug
        if u.time_embed_act is not None:
            emb = u.time_embed_act(emb)
        context = u.process_encoder_hidden_states(encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added)
        h = u.conv_in(sample)
        first, last = u.down_blocks[0], u.up_blocks[-1]
        if getattr(first, "has_cross_attention", False):
            _, skips = first(hidden_states=h, temb=emb, encoder_hidden_states=context)
        else:
            _, skips = first(hidden_states=h, temb=emb)
        # the skips of the last up block: conv_in's output and the first level's layers (not its downsampler: the
        # tracer drops what no output needs)
        skips = ((h,) + tuple(skips))[:len(last.resnets)]
        if getattr(last, "has_cross_attention", False):
            h = last(hidden_states=deep_features, temb=emb, res_hidden_states_tuple=skips, encoder_hidden_states=context)
        else:
            h = last(hidden_states=deep_features, temb=emb, res_hidden_states_tuple=skips)
        if u.conv_norm_out is not None:
            h = u.conv_act(u.conv_norm_out(h))
        return u.conv_out(h)


def shallow_io(denoiser_inputs, outputs, channels: int):
    """The shallow graph's inputs (the U-Net's without the ControlNet residuals, then ``deep_features``) and
    outputs."""
    inputs = tuple(t for t in denoiser_inputs if not is_residual(t.name))
    return inputs + (UNET_SHALLOW.features_spec(channels),), outputs[:1]
