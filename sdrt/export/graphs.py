"""Each exported component: a torch module with the fixed IO names of the export-folder contract,
its symbolic shapes, and how to make inputs of a given shape for tracing and validation."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Callable

import torch

from ..components import (UNET, UNET_SHALLOW, VAE_DECODER, VAE_ENCODER, WINDOW, ControlNet, Denoiser, TextEncoder,
                          VaeDecoder, VaeEncoder, is_residual, level_sides, residual_specs)
from ..families import Family, TextEncoderSpec
from ..lora.sites import is_factor
from ..manifest import TensorSpec
from . import deepcache, lora_sites


@dataclass(frozen=True)
class Shape:
    """One concrete shape to trace or validate at: images per batch, latent height/width, tokens."""

    batch: int
    latent_h: int
    latent_w: int
    tokens: int = WINDOW
    lora_rank: int = lora_sites.TRACE_RANK  # the rank of the LoRA factors fed to the sites
    vectors: int = 3  # textual-inversion vectors fed to the text encoders


@dataclass(frozen=True)
class ComponentGraph:
    name: str
    source: str  # the pipeline's network it wraps: "unet", "vae", "text_encoder", ...
    module: torch.nn.Module
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    make_inputs: Callable[[Shape, torch.Generator], dict[str, torch.Tensor]]
    # Node-name prefixes kept in fp32 by --fp16 (besides the normalisation ops, see onnx_io).
    fp32_scopes: tuple[str, ...] = ()
    latent_multiple: int = 1  # what the latent's sides must be a multiple of (a transformer's patch)
    fp32_always: bool = False  # kept in fp32 by --fp16 as a whole (T5 overflows in fp16)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: {i: _onnx_axis(t.name, d) for i, d in enumerate(t.shape) if isinstance(d, str)}
                for t in self.inputs + self.outputs}


def _onnx_axis(tensor: str, axis: str) -> str:
    """The graph's name of a dynamic axis: the manifest's, but each LoRA site's rank an axis of its own. ONNX Runtime
    plans its buffers by these names, and sites differ in rank (a LoRA's layers; rank-1 zeros elsewhere): one shared
    name let it reuse a rank-1 buffer for a rank-4 branch (Flux's guidance embedder, "Shape mismatch attempting to
    re-use buffer")."""
    if axis == lora_sites.RANK and is_factor(tensor):
        return tensor.rsplit(".", 1)[0] + "." + axis
    return axis


class TokenTable(torch.nn.Module):
    """The encoder's token embedding, extended by the textual-inversion vectors of a call: token id −k−1 reads row k
    of ``vectors``. Negative ids leave the EOS token the highest id, so the pooled output stays at EOS (as
    AUTOMATIC1111's placeholder tokens do)."""

    def __init__(self, table: torch.nn.Embedding, vectors: torch.Tensor):
        super().__init__()
        self.table, self.vectors = table, vectors

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        own = self.table(ids.clamp(min=0))
        rows = (-ids - 1).clamp(0, self.vectors.shape[0] - 1)
        return torch.where((ids < 0).unsqueeze(-1), self.vectors.to(own.dtype)[rows], own)


class TextEncoderGraph(torch.nn.Module):
    """The hidden state that conditions the U-Net. ``clip_skip`` ([1] int32, AUTOMATIC1111's numbering: 1 = the
    family's own layer, 2 = one layer before it, …) picks it at run time, so one graph serves every CLIP skip: the
    layer that many from the end, through the final LayerNorm where the family uses it (as A1111's and diffusers'
    ``clip_skip``; at 1 this is exactly ``last_hidden_state``). ``embedding_vectors`` [V, D]: the call's
    textual-inversion vectors, which ids −1, −2, … stand for (one unused row when the prompts have none)."""

    def __init__(self, encoder: torch.nn.Module, spec: TextEncoderSpec):
        super().__init__()
        self.encoder, self.spec = encoder, spec

    def forward(self, input_ids: torch.Tensor, clip_skip: torch.Tensor, embedding_vectors: torch.Tensor):
        embeddings = _text_model(self.encoder).embeddings
        plain = embeddings.token_embedding  # swapped for this call only: the network stays diffusers' own
        embeddings.token_embedding = TokenTable(plain, embedding_vectors)
        try:
            out = self.encoder(input_ids.to(torch.int64), output_hidden_states=True)
        finally:
            embeddings.token_embedding = plain
        layers = torch.stack(out.hidden_states[1:])  # [layers, B, T, D], each before the final LayerNorm
        from_end = clip_skip.to(torch.int64) + (0 if self.spec.hidden_state == "last" else 1)
        index = (layers.shape[0] - from_end).clamp(0, layers.shape[0] - 1)
        hidden = torch.index_select(layers, 0, index).squeeze(0)
        if self.spec.final_layer_norm:
            hidden = _text_model(self.encoder).final_layer_norm(hidden)
        if self.spec.pooled:
            return hidden, out[0 if hasattr(out, "text_embeds") else 1]
        return hidden


def _text_model(encoder: torch.nn.Module) -> torch.nn.Module:
    # transformers 5 flattened CLIPTextModel (no .text_model); 4.x nests it
    return getattr(encoder, "text_model", encoder)


class UNetGraph(torch.nn.Module):
    """The U-Net with the conditioning bundle as named inputs: ``encoder_hidden_states`` and the family's extras
    (SDXL's ``text_embeds`` and ``time_ids``, diffusers' ``added_cond_kwargs``), then the ControlNet residuals
    (diffusers' ``down_block_additional_residuals`` and ``mid_block_additional_residual``)."""

    def __init__(self, unet: torch.nn.Module, extra_names: tuple[str, ...] = (), deep_features: bool = False):
        super().__init__()
        self.unet, self.extra_names, self.deep_features = unet, extra_names, deep_features

    def forward(self, sample, timestep, encoder_hidden_states, *rest):
        extras, residuals = rest[:len(self.extra_names)], rest[len(self.extra_names):]
        added = dict(zip(self.extra_names, extras)) or None
        tap = deepcache.DeepFeatureTap(self.unet) if self.deep_features else contextlib.nullcontext()
        with tap:
            noise_pred = self.unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=added,
                                   down_block_additional_residuals=tuple(residuals[:-1]) or None,
                                   mid_block_additional_residual=residuals[-1] if residuals else None,
                                   return_dict=False)[0]
        return (noise_pred, tap.features) if self.deep_features else noise_pred


class ControlNetGraph(torch.nn.Module):
    """A ControlNet's residuals for the U-Net, unscaled (conditioning scale 1: the runtime scales them per step)."""

    def __init__(self, controlnet: torch.nn.Module, extra_names: tuple[str, ...] = ()):
        super().__init__()
        self.controlnet, self.extra_names = controlnet, extra_names

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, *extras):
        added = dict(zip(self.extra_names, extras)) or None
        down, mid = self.controlnet(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale=1.0,
                                    added_cond_kwargs=added, return_dict=False)
        return (*down, mid)


def unet_residuals(config) -> tuple[TensorSpec, ...]:
    """The ControlNet residuals of a U-Net (or ControlNet) of this diffusers config."""
    layers = config.layers_per_block
    if not isinstance(layers, int):
        if len(set(layers)) != 1:
            raise ValueError(f"ControlNet residuals for down blocks of unequal depth {layers} are not supported")
        layers = layers[0]
    return residual_specs(tuple(config.block_out_channels), layers)


def _random_residuals(specs: tuple[TensorSpec, ...], s: Shape, batch: int, g) -> dict[str, torch.Tensor]:
    """Residuals of the size each level has at ``s``, at a ControlNet's usual scale."""
    sides = level_sides(s.latent_h, s.latent_w)
    return {t.name: torch.randn(batch, t.shape[1], sides[t.shape[2]], sides[t.shape[3]], generator=g) * 0.1
            for t in specs}


class VaeDecoderGraph(torch.nn.Module):
    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latent):
        return self.vae.decode(latent, return_dict=False)[0]


class VaeEncoderGraph(torch.nn.Module):
    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, image):
        # mean and std of the posterior: img2img and inpainting sample it (mean + std·noise) as diffusers does
        posterior = self.vae.encode(image, return_dict=False)[0]
        return posterior.mean, posterior.std


def component_graphs(pipe, family: Family, lora: bool = True, deep_cache: bool = False) -> list[ComponentGraph]:
    """The graphs of a pipeline of ``family``, wrapped with the contract's IO names: its text encoders, the VAE
    decoder and encoder, and the denoiser (with the family's extra conditioning inputs) last, so that an export can
    free each network once it is done with it before the biggest one is traced. ``lora``: the text encoders and
    the U-Net with LoRA sites; ``deep_cache``: the U-Net also outputs its deep features, and DeepCache's shallow
    U-Net comes before it (``export/deepcache.py``)."""
    if family.denoiser == "transformer":
        from .transformer_graphs import transformer_family_graphs

        return transformer_family_graphs(pipe, family, lora)
    unet = pipe.unet
    channels = unet.config.in_channels
    scale = vae_scale(pipe.vae)
    text_dim = unet.config.cross_attention_dim
    extras = unet_extras(pipe, family)
    residuals = unet_residuals(unet.config)

    def unet_inputs(s: Shape, g):
        b = 2 * s.batch  # classifier-free guidance: negative and positive in one call
        inputs = {
            "sample": torch.randn(b, channels, s.latent_h, s.latent_w, generator=g),
            "timestep": torch.randint(0, 1000, (b,), generator=g).float(),
            "encoder_hidden_states": torch.randn(b, s.tokens, text_dim, generator=g),
        }
        return inputs | _extra_inputs(extras, s, scale, b, g) | _random_residuals(residuals, s, b, g)

    features = deepcache.feature_channels(unet) if deep_cache else 0
    unet_graph = ComponentGraph(
        UNET.name, "unet", UNetGraph(unet, tuple(t.name for t in extras), deep_cache),
        *Denoiser.io(channels, unet.config.out_channels, text_dim, extras, residuals, deep_features=features),
        unet_inputs,
        # The sinusoidal timestep embedding of t up to 999 loses whole radians in fp16;
        # diffusers computes it in fp32 for fp16 models too.
        fp32_scopes=("/unet/time_proj/",),
    )
    denoisers = [with_lora_sites(unet_graph, unet) if lora else unet_graph]
    if deep_cache:  # before the U-Net: the export frees the network after its last graph
        denoisers.insert(0, _shallow_graph(unet_graph, unet, extras, features, lora))
    return [
        *(text_encoder_graph(pipe, spec, lora) for spec in family.text_encoders),
        *vae_graphs(pipe.vae),
        *denoisers,
    ]


def _shallow_graph(unet_graph: ComponentGraph, unet: torch.nn.Module, extras: tuple[TensorSpec, ...], features: int,
                   lora: bool) -> ComponentGraph:
    """DeepCache's shallow U-Net (``export/deepcache.py``): the U-Net's inputs less the residuals, and the deep
    features; LoRA sites on the layers it runs."""
    def make_inputs(s: Shape, g):
        inputs = {k: v for k, v in unet_graph.make_inputs(s, g).items() if not is_residual(k)}
        return inputs | {UNET_SHALLOW.FEATURES: torch.randn(2 * s.batch, features, s.latent_h, s.latent_w, generator=g)}

    graph = ComponentGraph(UNET_SHALLOW.name, "unet", deepcache.ShallowUNet(unet, tuple(t.name for t in extras)),
                           *deepcache.shallow_io(unet_graph.inputs, unet_graph.outputs, features), make_inputs,
                           fp32_scopes=unet_graph.fp32_scopes)
    return with_lora_sites(graph, unet, only=deepcache.shallow_paths(unet)) if lora else graph


def vae_scale(vae) -> int:
    """Image pixels per latent pixel."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def vae_graphs(vae) -> list[ComponentGraph]:
    """The VAE decoder's and encoder's graphs."""
    latent_channels, scale = vae.config.latent_channels, vae_scale(vae)

    def latent(s: Shape, g):
        return {"latent": torch.randn(s.batch, latent_channels, s.latent_h, s.latent_w, generator=g)}

    def image(s: Shape, g):
        return {"image": torch.rand(s.batch, 3, s.latent_h * scale, s.latent_w * scale, generator=g) * 2 - 1}

    return [ComponentGraph(VAE_DECODER.name, "vae", VaeDecoderGraph(vae), *VaeDecoder.io(latent_channels), latent),
            ComponentGraph(VAE_ENCODER.name, "vae", VaeEncoderGraph(vae), *VaeEncoder.io(latent_channels), image)]


def with_lora_sites(graph: ComponentGraph, network: torch.nn.Module, under: str = "",
                    only: tuple[str, ...] = ()) -> ComponentGraph:
    """``graph`` with a LoRA site on every targetable layer of ``network`` under ``under`` (see ``lora_sites``):
    their factors follow the graph's own inputs. ``only``: the sites under these paths alone are inputs (the graph
    runs no other layer of ``network``)."""
    sites = lora_sites.add_sites(network, under)
    if only:
        sites = {path: site for path, site in sites.items() if path.startswith(only)}

    def make_inputs(s: Shape, g):
        inputs = graph.make_inputs(s, g)
        for path, site in sites.items():
            inputs[path + lora_sites.DOWN], inputs[path + lora_sites.UP] = site.sample_factors(s.lora_rank, g)
        return inputs

    # the wrapper puts the graph's own nodes under /graph
    return replace(graph, module=lora_sites.WithLoraInputs(graph.module, sites, len(graph.inputs)),
                   inputs=graph.inputs + lora_sites.factor_inputs(sites), make_inputs=make_inputs,
                   fp32_scopes=tuple("/graph" + scope for scope in graph.fp32_scopes))


def controlnet_graph(name: str, controlnet: torch.nn.Module, extras: tuple[TensorSpec, ...], vae_scale: int
                     ) -> ComponentGraph:
    """The graph of one ControlNet, named ``controlnet.NAME``; ``extras``: the U-Net's (SDXL's ``text_embeds``
    and ``time_ids``), which it takes too."""
    config = controlnet.config
    channels, text_dim = config.in_channels, config.cross_attention_dim
    inputs, outputs = ControlNet.io(channels, text_dim, extras, unet_residuals(config))

    def make_inputs(s: Shape, g):
        b = 2 * s.batch
        values = {"sample": torch.randn(b, channels, s.latent_h, s.latent_w, generator=g),
                  "timestep": torch.randint(0, 1000, (b,), generator=g).float(),
                  "encoder_hidden_states": torch.randn(b, s.tokens, text_dim, generator=g),
                  "controlnet_cond": torch.rand(b, 3, s.latent_h * vae_scale, s.latent_w * vae_scale, generator=g)}
        return values | _extra_inputs(extras, s, vae_scale, b, g)

    return ComponentGraph(ControlNet.PREFIX + name, "controlnet", ControlNetGraph(controlnet, tuple(t.name for t in extras)),
                          inputs, outputs, make_inputs, fp32_scopes=("/controlnet/time_proj/",))


def _extra_inputs(extras: tuple[TensorSpec, ...], s: Shape, scale: int, batch: int, g) -> dict[str, torch.Tensor]:
    """SDXL's extras: pooled text embeddings, and time ids as diffusers makes them."""
    return {spec.name: (_time_ids(s, scale, spec.shape[1]).repeat(batch, 1) if spec.name == "time_ids"
                        else torch.randn(batch, spec.shape[1], generator=g)) for spec in extras}


def _time_ids(s: Shape, scale: int, count: int) -> torch.Tensor:
    """SDXL's micro-conditioning: original size, crop corner, then the target size (6) or an aesthetic score (5)."""
    size = [s.latent_h * scale, s.latent_w * scale]
    return torch.tensor(size + [0, 0] + (size if count == 6 else [6.0]), dtype=torch.float32)


def text_encoder_graph(pipe, spec: TextEncoderSpec, lora: bool = True) -> ComponentGraph:
    encoder = getattr(pipe, spec.component)
    config = encoder.config
    # the pooled output: projected (CLIPTextModelWithProjection's text_embeds), or the final state at EOS (Flux's)
    projected = hasattr(encoder, "text_projection")
    pooled = (config.projection_dim if projected else config.hidden_size) if spec.pooled else None

    def ids(s: Shape, g):
        # validation runs at CLIP skip 2 where the encoder has the layers (1 is the same graph minus an offset)
        skip = torch.tensor([min(2, config.num_hidden_layers - (spec.hidden_state != "last"))], dtype=torch.int32)
        tokens = torch.randint(0, config.vocab_size, (s.batch, s.tokens), generator=g, dtype=torch.int32)
        tokens[:, 1:4] = -(torch.tensor([0, 2, 1], dtype=torch.int32) % s.vectors) - 1  # textual-inversion vectors
        return {"input_ids": tokens, "clip_skip": skip,
                "embedding_vectors": torch.randn(s.vectors, config.hidden_size, generator=g) * 0.02}

    graph = ComponentGraph(spec.component, spec.component, TextEncoderGraph(encoder, spec),
                           *TextEncoder.io(config.hidden_size, pooled), ids)
    if not lora:
        return graph
    # transformers 5 flattened CLIPTextModel (no .text_model); 4.x nests it
    return with_lora_sites(graph, encoder, "text_model.encoder.layers." if hasattr(encoder, "text_model") else "encoder.layers.")


def unet_extras(pipe, family: Family) -> tuple[TensorSpec, ...]:
    """The U-Net's conditioning inputs beyond encoder_hidden_states (SDXL: the pooled ``text_embeds`` and the
    ``time_ids``: 6 sizes, or the refiner's 5 with its aesthetic score), with their widths from the configs."""
    config = pipe.unet.config
    if "text_embeds" not in family.unet_extra_inputs:
        return ()
    pooled = pipe.text_encoder_2.config.projection_dim
    time_ids = (config.projection_class_embeddings_input_dim - pooled) // config.addition_time_embed_dim
    return (TensorSpec("text_embeds", "float32", ("2B", pooled)), TensorSpec("time_ids", "float32", ("2B", time_ids)))
