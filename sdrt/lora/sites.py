"""The export's LoRA sites (the ``PATH.lora_down`` / ``PATH.lora_up`` inputs of its graphs, see
``export/lora_sites.py``) and the names a LoRA file may give each: diffusers' module path, kohya's underscored form
of it, and the original checkpoint's name (LDM / SGM for U-Nets, MMDiT / Flux for transformers:
``transformer_names``) and its underscored form."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np

from ..errors import UserInputError
from ..manifest import Manifest, TensorSpec
from . import ldm_names, transformer_names
from .files import LoraFile, LoraLayer
from .transformer_names import Block

log = logging.getLogger("sdrt")

DOWN, UP = ".lora_down", ".lora_up"  # a site's two inputs: PATH.lora_down, PATH.lora_up


def is_factor(name: str) -> bool:
    return name.endswith((DOWN, UP))


@dataclass(frozen=True)
class Site:
    component: str
    path: str
    down: TensorSpec  # Linear: [in, rank]; Conv2d: [kh, kw, rank, in]
    up: TensorSpec  # Linear: [rank, out]; Conv2d: [out, rank]

    @property
    def is_conv(self) -> bool:
        return len(self.down.shape) == 4

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The layer's weight: [out, in] or [out, in, kh, kw]."""
        if self.is_conv:
            kh, kw, _, inner = self.down.shape
            return (self.up.shape[0], inner, kh, kw)
        return (self.up.shape[1], self.down.shape[0])


def export_sites(manifest: Manifest) -> dict[str, dict[str, Site]]:
    """component -> path -> site, for the graphs that have LoRA inputs."""
    out: dict[str, dict[str, Site]] = {}
    for component, spec in manifest.components.items():
        ups = {t.name: t for t in spec.inputs if t.name.endswith(UP)}
        for t in spec.inputs:
            if t.name.endswith(DOWN):
                path = t.name[: -len(DOWN)]
                out.setdefault(component, {})[path] = Site(component, path, t, ups[path + UP])
    return out


class SiteIndex:
    """Finds the sites a LoRA file's layer names, in any of the namings it may use. A name stands for blocks
    (``transformer_names.Block``): one site, or the parts of several where the original layer fused them."""

    def __init__(self, manifest: Manifest):
        self.sites = export_sites(manifest)
        self.family = manifest.family
        self._names: dict[tuple[str, str], dict[str, list[Block]]] = {}  # (component, naming) -> name -> blocks
        for component, sites in self.sites.items():
            dotted = _other_names(self.family, component, list(sites)) | {path: [(path, 0, 1)] for path in sites}
            self._names[(component, "dotted")] = dotted
            self._names[(component, "kohya")] = {name.replace(".", "_"): blocks for name, blocks in dotted.items()}

    def match(self, lora: LoraFile) -> dict[tuple[str, str], LoraLayer]:
        """(component, path) -> the layer of ``lora`` that changes it; a clear error where the file does not fit."""
        matched, missed = {}, []
        for (component, naming, name), layer in lora.layers.items():
            blocks = self._names.get((component, naming), {}).get(name)
            if blocks is None:
                missed.append(f"{component}: {name}")
                continue
            for path, part in _split(lora, layer, blocks, self.sites[component]).items():
                _check_fit(lora, self.sites[component][path], part)
                matched[(component, path)] = part
        if not matched:
            raise UserInputError(
                f"LoRA {lora.path.name} fits none of this model's layers (e.g. {missed[0]}); it is for another model "
                f"family or architecture than this export ({self.family})")
        if missed:
            log.warning("LoRA %s: %d of its %d layers matched this model (not matched, e.g. %s)", lora.name,
                        len(lora.layers) - len(missed), len(lora.layers), ", ".join(missed[:3]))
        return matched


def _other_names(family: str, component: str, paths: list[str]) -> dict[str, list[Block]]:
    """The names besides diffusers' that LoRA files give a component's sites: the original checkpoints'."""
    if component != "unet":
        others = _text_model_names(paths)
    elif family in ("sd3", "flux"):
        return transformer_names.original_names(family, paths)
    else:
        others = _ldm_names(paths)
    return {other: [(path, 0, 1)] for path, other in zip(paths, others) if other is not None}


def _split(lora: LoraFile, layer: LoraLayer, blocks: list[Block], sites: dict[str, Site]) -> dict[str, LoraLayer]:
    """The layer for each site of ``blocks``: the same ``down``, and the rows of ``up`` that are that site's."""
    if len(blocks) == 1 and blocks[0][1:] == (0, 1):
        return {blocks[0][0]: layer}
    sizes = [sites[path].weight_shape[0] // parts for path, _, parts in blocks]
    if sum(sizes) != layer.up.shape[0]:
        raise UserInputError(
            f"LoRA {lora.path.name} does not fit this model: a layer of it changes {layer.up.shape[0]} outputs where "
            f"the model's {', '.join(dict.fromkeys(p for p, _, _ in blocks))} have {sum(sizes)}; is it for another "
            "model (Flux, SD 3, their sizes)?")
    ends = np.cumsum(sizes)
    parts: dict[str, dict[int, np.ndarray]] = {}
    for (path, part, _), end, size in zip(blocks, ends, sizes):
        parts.setdefault(path, {})[part] = layer.up[end - size:end]
    return {path: LoraLayer(layer.down, np.concatenate([rows[i] for i in sorted(rows)]), layer.alpha)
            for path, rows in parts.items()}


def _text_model_names(paths: list[str]) -> list[str]:
    return ["text_model." + path for path in paths]


def _ldm_names(paths: list[str]) -> list[str | None]:
    """Each U-Net site's original (LDM) name, None where that naming has no such layer; the U-Net's layers per block
    and its up blocks with attention are read from the paths once."""
    resnets = {int(m[1]) for p in paths if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", p))}
    attention = {int(m[1]) for p in paths if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", p))}
    per = max(resnets, default=0) + 1
    names = []
    for path in paths:
        try:
            names.append(ldm_names.unet_module(path, per, attention))
        except KeyError:
            names.append(None)
    return names


def _check_fit(lora: LoraFile, site: Site, layer: LoraLayer) -> None:
    out, inner = layer.up.shape[0], layer.down.shape[1]
    kernel = tuple(layer.down.shape[2:]) or (1, 1)
    want = site.weight_shape
    want_kernel = tuple(want[2:]) or (1, 1)
    if (out, inner) != want[:2] or kernel != want_kernel or layer.up.shape[1] != layer.rank:
        raise UserInputError(
            f"LoRA {lora.path.name} does not fit this model: its layer for {site.component} {site.path} changes a "
            f"{out}x{inner} weight (kernel {kernel}), the model's is {want[0]}x{want[1]} (kernel {want_kernel}); "
            "is it for another model family (SD 1.x, 2.x, SDXL, SD 3, Flux)?")

