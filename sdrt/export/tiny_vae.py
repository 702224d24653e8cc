"""The tiny VAE decoder of an export (``vae_decoder_tiny``): diffusers' ``AutoencoderTiny`` (TAESD's architecture),
a decoder about 40× cheaper than the VAE's, for live previews and, when asked, the image (``--vae tiny``).

It takes the VAE decoder's input (the latents divided by the VAE's scaling factor) and gives its output ([-1, 1]),
so the runtime swaps one for the other; inside, the latents are scaled as diffusers' pipelines feed a TAESD
(``latents / taesd.scaling_factor``). Sources: a diffusers AutoencoderTiny folder (``madebyollin/taesd`` for SD 1.x
and 2.x, ``taesdxl`` for SDXL), ``random`` (random weights of the right shape: benchmarks and tests), or the one a
built-in ships (``shapes``: trained here by ``scripts/train_shapes_tiny_vae.py``); with the model
(``sdrt export --tiny-vae``) or into an existing export (``sdrt add-tiny-vae``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from ..components import TINY_VAE_DECODER, VAE_DECODER, TinyVaeDecoder
from ..errors import ExportError, ModelSourceError
from ..manifest import Manifest
from .additions import add_to_folder
from .graphs import ComponentGraph, Shape

RANDOM = "random"


class TinyVaeDecoderGraph(torch.nn.Module):
    def __init__(self, taesd: torch.nn.Module, vae_scaling_factor: float):
        super().__init__()
        self.taesd = taesd
        self.scale = vae_scaling_factor / taesd.config.scaling_factor

    def forward(self, latent):
        return self.taesd.decode(latent * self.scale, return_dict=False)[0]


def random_tiny_vae(latent_channels: int, vae_scale: int, seed: int = 0, channels: int = 64, blocks: int = 3):
    """An ``AutoencoderTiny`` with random weights whose decoder upsamples ``vae_scale``× (TAESD's layout: ``blocks``
    blocks per level, one at the last)."""
    from diffusers import AutoencoderTiny

    levels = int(math.log2(vae_scale)) + 1
    torch.manual_seed(seed)
    return AutoencoderTiny(latent_channels=latent_channels, encoder_block_out_channels=(channels,) * levels,
                           decoder_block_out_channels=(channels,) * levels,
                           num_encoder_blocks=(1,) + (blocks,) * (levels - 1),
                           num_decoder_blocks=(blocks,) * (levels - 1) + (1,)).eval()


def load_tiny_vae(source: str | Path, latent_channels: int, vae_scale: int):
    """The ``AutoencoderTiny`` of ``source`` (a diffusers folder, or ``random``), checked against the model's
    latents (channels and the decoder's upsampling)."""
    from diffusers import AutoencoderTiny

    if str(source) == RANDOM:
        return random_tiny_vae(latent_channels, vae_scale)
    path = Path(source)
    if not (path / "config.json").is_file():
        raise ModelSourceError(f"{path} is not a diffusers AutoencoderTiny folder (config.json and weights, as "
                               "madebyollin/taesd); give one, or 'random' for random weights")
    try:
        taesd = AutoencoderTiny.from_pretrained(path, torch_dtype=torch.float32).eval()
    except (OSError, ValueError, TypeError) as e:
        raise ModelSourceError(f"{path} cannot be read as an AutoencoderTiny ({e})") from None
    config = taesd.config
    upsampling = config.upsampling_scaling_factor ** (len(config.decoder_block_out_channels) - 1)
    if config.latent_channels != latent_channels or upsampling != vae_scale:
        raise ExportError(f"the tiny VAE {path} decodes {config.latent_channels}-channel latents {upsampling}× and "
                          f"this model's are {latent_channels}-channel, {vae_scale}×: it is for another family "
                          "(taesd: SD 1.x/2.x, taesdxl: SDXL)")
    return taesd


def tiny_vae_graph(taesd, vae_scaling_factor: float, latent_channels: int) -> ComponentGraph:
    def latent(s: Shape, g):
        return {"latent": torch.randn(s.batch, latent_channels, s.latent_h, s.latent_w, generator=g)}

    return ComponentGraph(TINY_VAE_DECODER.name, "tiny_vae", TinyVaeDecoderGraph(taesd, vae_scaling_factor),
                          *TinyVaeDecoder.io(latent_channels), latent)


def add_tiny_vae(folder: Path, manifest: Manifest, taesd, validate: bool = True) -> tuple[Manifest, list]:
    """Export ``taesd`` (from ``load_tiny_vae``) into ``folder`` beside the export's graphs; the manifest with it
    (the caller saves it) and the validation checks."""
    from .exporter import export_graph  # the exporter imports this module

    precision = manifest.components[VAE_DECODER.name].precision  # as the VAE (kept fp32 where its fp16 overflows)
    spec, checks = export_graph(tiny_vae_graph(taesd, manifest.vae_scaling_factor, manifest.latent_channels), folder,
                                precision, manifest.size_range, manifest.vae_scale_factor, validate, release=None)
    failed = [c for c in checks if not c.passed]
    if failed:
        raise ExportError(f"the tiny VAE's graph does not match PyTorch ({len(failed)} check(s) past tolerance)")
    engines = {k: v for k, v in manifest.engines.items() if v.get("component") != TINY_VAE_DECODER.name}
    components = {**manifest.components, TINY_VAE_DECODER.name: spec}
    return dataclasses.replace(manifest, components=components, engines=engines), checks


def add_to_export(folder: str | Path, source: str | Path, validate: bool = True) -> Manifest:
    """``sdrt add-tiny-vae``: a tiny VAE decoder into an existing export (replacing one it has)."""
    def add(scratch: Path, manifest: Manifest) -> tuple[Manifest, list]:
        taesd = load_tiny_vae(source, manifest.latent_channels, manifest.vae_scale_factor)
        return add_tiny_vae(scratch, manifest, taesd, validate)

    return add_to_folder(folder, add)
