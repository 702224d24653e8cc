"""The graphs of the transformer families (SD 3 / 3.5, Flux.1): the MMDiT denoiser, T5's encoder, and the CLIP
encoders and VAE graphs the U-Net families have too.

The denoiser keeps the export's contract (``sample`` [2B, C, h, w], ``timestep``, ``encoder_hidden_states`` and the
family's extras → ``noise_pred``, here the flow's velocity), so the runtime's loop is the same for every family: the
transformer's patching happens inside the graph (Flux's 2×2 packing and its rotary position ids too), and its
timestep is the sampler's t = 1000·σ.
"""

from __future__ import annotations

from unittest import mock

import torch
from diffusers.models.transformers import transformer_flux

from ..components import T5_ENCODER, UNET, WINDOW, Denoiser, T5Encoder
from ..families import Family
from ..manifest import TensorSpec
from .graphs import ComponentGraph, Shape, text_encoder_graph, vae_graphs, with_lora_sites


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


def t5_graph(encoder: torch.nn.Module, source: str, length: int) -> ComponentGraph:
    """T5's encoder at a fixed sequence length; kept in fp32 by --fp16 (its activations overflow fp16)."""
    config = encoder.config

    def ids(s: Shape, g):
        tokens = torch.randint(2, config.vocab_size, (s.batch, length), generator=g, dtype=torch.int32)
        tokens[:, length // 3] = 1  # EOS, then padding, as a short prompt
        tokens[:, length // 3 + 1:] = 0
        return {"input_ids": tokens}

    return ComponentGraph(T5_ENCODER.name, source, T5Graph(encoder), *T5Encoder.io(config.d_model, length), ids,
                          fp32_always=True)


def sd3_denoiser_graph(transformer: torch.nn.Module, length: int) -> ComponentGraph:
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


class TracedRmsNorm(torch.nn.Module):
    """torch.nn.RMSNorm in the ops it is made of: ``aten::rms_norm`` has no ONNX conversion at opset 17."""

    def __init__(self, norm: torch.nn.RMSNorm):
        super().__init__()
        self.weight, self.eps, self.dims = norm.weight, norm.eps, len(norm.normalized_shape)

    def forward(self, x):
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
        axes = tuple(range(-self.dims, 0))
        y = x * torch.rsqrt(x.pow(2).mean(axes, keepdim=True) + eps)
        return y if self.weight is None else y * self.weight


def trace_rms_norms(network: torch.nn.Module) -> torch.nn.Module:
    """``network`` with each torch.nn.RMSNorm replaced, in place, by a TracedRmsNorm of the same weights."""
    for path, module in list(network.named_modules()):
        if isinstance(module, torch.nn.RMSNorm):
            parent, _, attr = path.rpartition(".")
            setattr(network.get_submodule(parent), attr, TracedRmsNorm(module))
    return network


def _rotary(x, freqs_cis, use_real=True, use_real_unbind_dim=-1, sequence_dim=1):
    """diffusers' ``apply_rotary_emb`` as Flux calls it (real, pairs interleaved, sequence on axis 1), the pairs
    split with ``unflatten``: diffusers' ``x.reshape(*x.shape[:-1], -1, 2)`` traces to the traced sequence length
    as a constant."""
    cos, sin = (f[None, :, None, :] for f in freqs_cis)
    real, imag = x.unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(3)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class Thousandth(torch.nn.Module):
    """t / 1000, as its own module so that --fp16 can keep it in fp32 (by its node names, ``/fraction/``)."""

    def forward(self, t):
        return t / 1000


class FluxTransformerGraph(torch.nn.Module):
    """FluxTransformer2DModel on the unpacked latent: packed 2×2 into tokens, the image tokens' position ids (0, row,
    column) and the text's (zeros) made from the shapes, the timestep divided by 1000 (diffusers' pipeline), the
    output unpacked; ``guidance`` where the model embeds it (dev)."""

    def __init__(self, transformer: torch.nn.Module):
        super().__init__()
        self.transformer = trace_rms_norms(transformer)
        self.fraction = Thousandth()

    def forward(self, sample, timestep, encoder_hidden_states, pooled_projections, guidance=None):
        b, c, h, w = sample.shape
        packed = sample.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
        rows = torch.arange(h // 2, dtype=sample.dtype)[:, None].expand(h // 2, w // 2)
        cols = torch.arange(w // 2, dtype=sample.dtype)[None, :].expand(h // 2, w // 2)
        img_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)
        txt_ids = torch.zeros(encoder_hidden_states.shape[1], 3, dtype=sample.dtype)
        with mock.patch.object(transformer_flux, "apply_rotary_emb", _rotary):
            out = self.transformer(hidden_states=packed, timestep=self.fraction(timestep), guidance=guidance,
                                   pooled_projections=pooled_projections, encoder_hidden_states=encoder_hidden_states,
                                   txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def flux_denoiser_graph(transformer: torch.nn.Module, length: int) -> ComponentGraph:
    config = transformer.config
    channels = config.in_channels // 4  # the latent's, before packing
    text_dim, pooled = config.joint_attention_dim, config.pooled_projection_dim
    extras = (TensorSpec("pooled_projections", "float32", ("2B", pooled)),)
    extras += (TensorSpec("guidance", "float32", ("2B",)),) if config.guidance_embeds else ()

    def make_inputs(s: Shape, g):
        b = 2 * s.batch
        inputs = {"sample": torch.randn(b, channels, s.latent_h, s.latent_w, generator=g),
                  "timestep": torch.rand(b, generator=g) * 1000,
                  "encoder_hidden_states": torch.randn(b, length, text_dim, generator=g),
                  "pooled_projections": torch.randn(b, pooled, generator=g)}
        return inputs | ({"guidance": torch.rand(b, generator=g) * 5} if config.guidance_embeds else {})

    return ComponentGraph(UNET.name, "transformer", FluxTransformerGraph(transformer),
                          *Denoiser.io(channels, (config.out_channels or config.in_channels) // 4, text_dim, extras,
                                       tokens=length), make_inputs,
                          # the timestep and guidance (÷1000 here, ×1000 at the transformer's top) and their sinusoidal
                          # embeddings lose whole radians in fp16; the rotary angles too
                          fp32_scopes=("/fraction/", "/transformer/Cast", "/transformer/Mul", "/transformer/time_text_embed/",
                                       "/transformer/pos_embed/"), latent_multiple=2)


def transformer_family_graphs(pipe, family: Family, lora: bool = True) -> list[ComponentGraph]:
    """SD 3's and Flux's graphs: the CLIP encoders (SD 3: penultimate states and pooled; Flux: pooled), T5 (where the
    pipeline has it), the VAE's, the transformer last. ``lora``: LoRA sites on the CLIP encoders and on every linear
    layer (and SD 3's patch convolution) of the transformer; T5 gets none (LoRAs for it are rare)."""
    graphs = [text_encoder_graph(pipe, spec, lora) for spec in family.text_encoders
              if spec.kind == "clip" and getattr(pipe, spec.component, None) is not None]
    graphs += [t5_graph(getattr(pipe, spec.component), spec.component, family.t5_tokens)
               for spec in family.text_encoders if spec.kind == "t5" and getattr(pipe, spec.component, None) is not None]
    denoiser = flux_denoiser_graph(pipe.transformer, family.t5_tokens) if family.name == "flux" else \
        sd3_denoiser_graph(pipe.transformer, family.t5_tokens)
    return graphs + vae_graphs(pipe.vae) + [with_lora_sites(denoiser, pipe.transformer) if lora else denoiser]
