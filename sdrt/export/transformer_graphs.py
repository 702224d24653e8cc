"""The graphs of the transformer families (SD 3 / 3.5): the MMDiT denoiser, T5's encoder, and the CLIP encoders
and VAE graphs the U-Net families have too.

The denoiser keeps the export's contract (``sample``, ``timestep``, ``encoder_hidden_states`` and the family's extras →
``noise_pred``, here the flow's velocity), so the runtime's loop is the same for every family: the transformer's
patching happens inside the graph, and its timestep is the sampler's t = 1000·σ.
"""

from __future__ import annotations

import torch

from ..components import T5_ENCODER, UNET, WINDOW, Denoiser, T5Encoder
from ..families import Family
from ..manifest import TensorSpec
from .graphs import ComponentGraph, Shape, text_encoder_graph, vae_graphs

T5_LENGTH = 256  # T5's tokens per prompt: diffusers' max_sequence_length for SD 3


class Sd3TransformerGraph(torch.nn.Module):
    """SD3Transformer2DModel with the contract's names: the pooled CLIP embeddings are ``pooled_projections``."""

    def __init__(self, transformer: torch.nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(self, sample, timestep, encoder_hidden_states, pooled_projections):
        return self.transformer(hidden_states=sample, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                                pooled_projections=pooled_projections, return_dict=False)[0]


class T5Graph(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids):
        return self.encoder(input_ids=input_ids.to(torch.int64), return_dict=False)[0]


def t5_graph(encoder: torch.nn.Module, source: str, length: int = T5_LENGTH) -> ComponentGraph:
    """T5's encoder at a fixed sequence length; kept in fp32 by --fp16 (its activations overflow fp16)."""
    config = encoder.config

    def ids(s: Shape, g):
        tokens = torch.randint(2, config.vocab_size, (s.batch, length), generator=g, dtype=torch.int32)
        tokens[:, length // 3] = 1  # EOS, then padding, as a short prompt
        tokens[:, length // 3 + 1:] = 0
        return {"input_ids": tokens}

    return ComponentGraph(T5_ENCODER.name, source, T5Graph(encoder), *T5Encoder.io(config.d_model, length), ids,
                          fp32_always=True)


def sd3_denoiser_graph(transformer: torch.nn.Module, length: int = T5_LENGTH) -> ComponentGraph:
    config = transformer.config
    channels, text_dim, pooled = config.in_channels, config.joint_attention_dim, config.pooled_projection_dim
    tokens = WINDOW + length  # CLIP's 77, then T5's
    extras = (TensorSpec("pooled_projections", "float32", ("2B", pooled)),)

    def make_inputs(s: Shape, g):
        b = 2 * s.batch
        return {"sample": torch.randn(b, channels, s.latent_h, s.latent_w, generator=g),
                "timestep": torch.rand(b, generator=g) * 1000,
                "encoder_hidden_states": torch.randn(b, tokens, text_dim, generator=g),
                "pooled_projections": torch.randn(b, pooled, generator=g)}

    return ComponentGraph(UNET.name, "transformer", Sd3TransformerGraph(transformer),
                          *Denoiser.io(channels, config.out_channels, text_dim, extras, tokens=tokens), make_inputs,
                          # the sinusoidal embedding of t up to 1000 loses whole radians in fp16, as the U-Net's
                          fp32_scopes=("/transformer/time_text_embed/time_proj/",),
                          latent_multiple=config.patch_size)


def transformer_family_graphs(pipe, family: Family) -> list[ComponentGraph]:
    """SD 3's graphs: CLIP-L and CLIP-G (penultimate states and pooled), T5 (where the pipeline has it), the VAE's,
    the transformer last."""
    graphs = [text_encoder_graph(pipe, spec, lora=False) for spec in family.text_encoders
              if spec.kind == "clip" and getattr(pipe, spec.component, None) is not None]
    graphs += [t5_graph(getattr(pipe, spec.component), spec.component) for spec in family.text_encoders
               if spec.kind == "t5" and getattr(pipe, spec.component, None) is not None]
    return graphs + vae_graphs(pipe.vae) + [sd3_denoiser_graph(pipe.transformer)]
