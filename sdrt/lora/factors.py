"""The LoRA factors fed to the graphs for one LoRA set: per site, the set's layers concatenated along the rank axis,
each ``up`` scaled by its weight × alpha / rank, so that the branch adds ``Σ weight × alpha / rank × up · down``,
as AUTOMATIC1111 sums several LoRAs; sites no LoRA changes get a rank-1 zero branch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..manifest import Manifest
from .files import LoraFile, LoraLayer
from .sites import Site, SiteIndex

TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


@dataclass(frozen=True)
class LoraChoice:
    """A LoRA with its weights: AUTOMATIC1111's ``<lora:NAME:TE_WEIGHT:UNET_WEIGHT>`` (one weight: both)."""
    lora: LoraFile
    te_weight: float = 1.0
    unet_weight: float = 1.0

    def weight(self, component: str) -> float:
        return self.te_weight if component in TEXT_ENCODERS else self.unet_weight


Feeds = dict[str, dict[str, np.ndarray]]  # component -> input name -> array


class FactorMaker:
    """Makes the factor feeds of a LoRA set for one export; the last set's are kept (repeated requests)."""

    def __init__(self, manifest: Manifest):
        self.index = SiteIndex(manifest)
        self._zeros: Feeds = {c: {n: a for s in sites.values() for n, a in _zero_factors(s).items()}
                              for c, sites in self.index.sites.items()}
        self._last: tuple[tuple, Feeds] | None = None

    @property
    def has_sites(self) -> bool:
        return bool(self.index.sites)

    def feeds(self, choices: tuple[LoraChoice, ...]) -> Feeds:
        key = tuple((c.lora.path, c.lora.short_hash, c.te_weight, c.unet_weight) for c in choices)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        per_site: dict[tuple[str, str], list[tuple[LoraLayer, float]]] = {}
        for choice in choices:
            for (component, path), layer in self.index.match(choice.lora).items():
                per_site.setdefault((component, path), []).append((layer, choice.weight(component)))
        feeds = {component: dict(zeros) for component, zeros in self._zeros.items()}
        for (component, path), layers in per_site.items():
            feeds[component].update(_factors(self.index.sites[component][path], layers))
        self._last = (key, feeds)
        return feeds


def _zero_factors(site: Site) -> dict[str, np.ndarray]:
    shape = lambda spec: [1 if isinstance(d, str) else d for d in spec.shape]  # noqa: E731
    return {site.down.name: np.zeros(shape(site.down), np.float32), site.up.name: np.zeros(shape(site.up), np.float32)}


def _factors(site: Site, layers: list[tuple[LoraLayer, float]]) -> dict[str, np.ndarray]:
    """The site's inputs for ``layers`` (each with its weight), in the layout of ``export/lora_sites.py``."""
    out_features, in_features = site.weight_shape[:2]
    downs, ups = [], []
    for layer, weight in layers:
        scale = np.float32(weight * layer.alpha / layer.rank)
        downs.append(layer.down.reshape(layer.rank, in_features, *site.weight_shape[2:]))
        ups.append(layer.up.reshape(out_features, layer.rank) * scale)
    down, up = np.concatenate(downs), np.concatenate(ups, axis=1)
    if site.is_conv:  # the kernel tap by tap: [kh, kw, rank, in]
        return {site.down.name: np.ascontiguousarray(down.transpose(2, 3, 0, 1)), site.up.name: up}
    return {site.down.name: np.ascontiguousarray(down.T), site.up.name: np.ascontiguousarray(up.T)}
