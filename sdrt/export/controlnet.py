"""ControlNets in an export: each one its own graph (``controlnet.NAME``), traced, validated against PyTorch and
added to the manifest — with the base model (``sdrt export MODEL OUT --controlnet PATH``) or later, without
exporting the base again (``sdrt add-controlnet OUT PATH``).

A ControlNet comes as a diffusers folder (``config.json`` + weights) or as one file (AUTOMATIC1111's
``control_*.safetensors``, original layout with or without the ``control_model.`` prefix, or diffusers' key names).
A single file has no config: its architecture is the base U-Net's (recorded in the export), as for every ControlNet
made from a base model; ``global_pool_conditions`` (the shuffle models) cannot be told from the weights and is off.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
from pathlib import Path

from ..components import UNET, is_residual
from ..errors import ExportError, ModelSourceError
from ..manifest import Manifest
from .additions import add_to_folder
from .graphs import controlnet_graph
from .sources import PICKLE_SUFFIXES, pickle_refusal

log = logging.getLogger("sdrt.export")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def parse_source(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (named after its folder or file) → (name, path)."""
    name, sep, path = text.partition("=")
    if not sep or "/" in name:  # a path holding "=" further on, or no name given
        name, path = "", text
    path = Path(path).expanduser()
    name = name or (path.stem if path.is_file() else path.name)
    if not _NAME.fullmatch(name):
        raise ExportError(f"{name!r} cannot name a ControlNet (letters, digits, '_', '-' and '.'); "
                          f"name it yourself: --controlnet NAME={path}")
    return name, path


def load_controlnet(path: Path, unet_config: dict, latent_channels: int, allow_pickle: bool = False):
    """The ControlNet at ``path`` as a diffusers ControlNetModel in fp32; a single file is read with the base
    U-Net's architecture."""
    if not path.exists():
        raise ModelSourceError(f"the ControlNet {path} does not exist; give a diffusers ControlNet folder or a "
                               ".safetensors ControlNet file")
    from diffusers import ControlNetModel

    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{path} has no config.json, so it is not a diffusers ControlNet folder")
        if not any(path.glob("*.safetensors")) and not allow_pickle:
            raise pickle_refusal(f"the ControlNet {path} holds only pickle weights, which")
        try:
            return ControlNetModel.from_pretrained(path, local_files_only=True, use_safetensors=None if allow_pickle else True)
        except Exception as e:  # diffusers raises OSError, ValueError, EnvironmentError, ...
            raise ModelSourceError(f"could not load the ControlNet folder {path}: {e}") from e
    return _load_single_file(path, unet_config, latent_channels, allow_pickle)


def _load_single_file(path: Path, unet_config: dict, latent_channels: int, allow_pickle: bool):
    from diffusers import ControlNetModel

    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise pickle_refusal(str(path))
    if suffix != ".safetensors" and suffix not in PICKLE_SUFFIXES:
        raise ModelSourceError(f"{path} is not a .safetensors ControlNet file or a diffusers ControlNet folder")
    if not unet_config:
        raise ExportError("this export does not record its U-Net's architecture (an older sdrt made it), which a "
                          "single-file ControlNet needs; export the model again, or give a diffusers ControlNet folder")
    state = _read_state(path)
    accepted = inspect.signature(ControlNetModel.__init__).parameters
    config = {k: v for k, v in unet_config.items() if k in accepted}
    config["in_channels"] = latent_channels  # an inpainting U-Net's extra channels are not the ControlNet's
    try:
        network = ControlNetModel.from_config(config)
        network.load_state_dict(_converted(state, config), strict=True)
    except Exception as e:
        raise ModelSourceError(f"{path} is not a ControlNet for this model ({str(e).splitlines()[0][:300]}); "
                               "a ControlNet must be made for the base model's family (SD 1.x, 2.x or XL)") from e
    return network


def _converted(state: dict, config: dict) -> dict:
    """diffusers' conversion of an original-layout ControlNet, and the SDXL ControlNet's added embedding
    (``label_emb``), which that conversion leaves out."""
    from diffusers.loaders.single_file_utils import (DIFFUSERS_TO_LDM_MAPPING, LDM_CONTROLNET_KEY,
                                                     convert_controlnet_checkpoint)

    converted = convert_controlnet_checkpoint(state, config)
    if config.get("addition_embed_type") and "add_embedding.linear_1.weight" not in converted:
        for new, old in DIFFUSERS_TO_LDM_MAPPING["controlnet"]["addition_embed_type"].items():
            for key in (old, LDM_CONTROLNET_KEY + old):
                if key in state:
                    converted[new] = state[key]
    return converted


def _read_state(path: Path) -> dict:
    import torch

    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelSourceError(f"{path} cannot be read as a ControlNet ({e}); the file may be damaged") from e


def check_fits(name: str, graph, manifest: Manifest) -> None:
    """The ControlNet's residuals and text width must be what this export's U-Net takes."""
    unet = manifest.components[UNET.name]
    takes = {t.name: t.shape[1] for t in unet.inputs if is_residual(t.name)}
    if not takes:
        raise ExportError("this export's U-Net takes no ControlNet residuals (an older sdrt made it); "
                          "export the model again to add ControlNets")
    gives = {t.name: t.shape[1] for t in graph.outputs}
    text, unet_text = (next(t.shape[-1] for t in c.inputs if t.name == "encoder_hidden_states")
                       for c in (graph, unet))
    if gives != takes or text != unet_text:
        raise ExportError(
            f"the ControlNet {name} does not fit this {manifest.family} model: it gives residuals of "
            f"{list(gives.values())} channels and reads text {text} wide; the U-Net takes {list(takes.values())} "
            f"and {unet_text}. Use a ControlNet made for this model's family")


def add_controlnets(folder: Path, manifest: Manifest, sources: list[tuple[str, Path]], allow_pickle: bool = False,
                    validate: bool = True) -> tuple[Manifest, list]:
    """Export each ControlNet into ``folder`` (beside the export's graphs); the manifest with them (the caller saves
    it) and the validation checks. A ControlNet already there under the same name is replaced (its engines
    forgotten)."""
    from .exporter import export_graph  # the exporter imports this module

    all_checks = []
    for name, path in sources:
        network = load_controlnet(path, manifest.unet_config, manifest.latent_channels, allow_pickle)
        extras = tuple(t for t in manifest.components[UNET.name].inputs if t.name in ("text_embeds", "time_ids"))
        graph = controlnet_graph(name, network, extras, manifest.vae_scale_factor)
        check_fits(name, graph, manifest)
        spec, checks = export_graph(graph, folder, manifest.precision, manifest.size_range, manifest.vae_scale_factor,
                                    validate, release=None)
        failed = [c for c in checks if not c.passed]
        if failed:
            raise ExportError(f"the ControlNet {name}'s graph does not match PyTorch ({len(failed)} check(s) past "
                              "tolerance): " + "; ".join(f"{c.output} {c.relative_error:.2e}" for c in failed[:3]))
        components = {**manifest.components, graph.name: spec}
        engines = {k: v for k, v in manifest.engines.items() if v.get("component") != graph.name}
        validation = dict(manifest.validation)
        validation.setdefault("controlnets", {})[name] = {"checks": len(checks), "passed": bool(checks) or not validate,
                                                          "source": str(path)}
        manifest = dataclasses.replace(manifest, components=components, engines=engines, validation=validation)
        all_checks += checks
        log.info("added the ControlNet %s", name)
    return manifest, all_checks


def add_to_export(folder: str | Path, sources: list[str], allow_pickle: bool = False, validate: bool = True) -> Manifest:
    """``sdrt add-controlnet``: the ControlNets into an existing export (``additions.add_to_folder``)."""
    named = [parse_source(s) for s in sources]
    return add_to_folder(folder, lambda scratch, manifest: add_controlnets(scratch, manifest, named, allow_pickle,
                                                                           validate))


def random_controlnet(unet_config: dict, latent_channels: int, seed: int, scale: float = 1.0,
                      embedding_channels: tuple[int, ...] | None = None, vae_scale: int = 8):
    """A ControlNet with random weights for a U-Net of ``unet_config`` (benchmarks and tests: no weights can be
    downloaded). The layers a trained ControlNet starts from zero (its residual outputs and the control image
    embedding's last convolution) get random values too, ``scale`` / √fan-in, so that it changes the image; the
    control image is embedded down ``vae_scale``× (``embedding_channels``: one width per level)."""
    import torch
    from diffusers import ControlNetModel

    accepted = inspect.signature(ControlNetModel.__init__).parameters
    config = {k: v for k, v in unet_config.items() if k in accepted}
    levels = vae_scale.bit_length()  # 8 → 4 widths (3 halvings), 4 → 3
    config |= {"in_channels": latent_channels,
               "conditioning_embedding_out_channels": embedding_channels or (16, 32, 96, 256)[:levels]}
    torch.manual_seed(seed)
    net = ControlNetModel.from_config(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (net.controlnet_cond_embedding.conv_out, *net.controlnet_down_blocks, net.controlnet_mid_block):
            for p in layer.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * scale / max(1, p[0].numel()) ** 0.5)
    return net.eval()
