"""The export folder's ``manifest.json``: the only thing the runtime trusts about a model.

Plain dataclasses and JSON, no heavy imports: the exporter writes it, engine builders add to it,
the runtime reads it. A new field gets a default so older manifests keep loading; a manifest of an
unknown format version is refused.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ManifestError
from .fileio import write_json

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DEFAULT_MAX_BATCH = 8  # images per call an export declares unless told otherwise


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "float16", "int32", "int64"
    shape: tuple[int | str, ...]  # ints are fixed, strings name dynamic axes ("B", "2B", "T", "h", "w", "H", "W")


@dataclass(frozen=True)
class ComponentSpec:
    file: str  # ONNX file, relative to the export folder
    sha256: str  # content hash of the graph (and of its external data, if any)
    precision: str  # "fp32" | "fp16"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    external_data: str | None = None  # one external-data file, for graphs over 2 GB

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)


@dataclass(frozen=True)
class TokenizerSpec:
    dir: str  # folder holding tokenizer.json, relative to the export folder
    model_max_length: int  # 77 for CLIP: one chunk of 75 tokens plus BOS and EOS
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int


@dataclass(frozen=True)
class Manifest:
    family: str
    precision: str
    components: dict[str, ComponentSpec]
    tokenizers: dict[str, TokenizerSpec]
    scheduler_config: dict[str, Any]  # diffusers scheduler_config values
    prediction_type: str  # "epsilon" | "v_prediction"
    latent_channels: int
    vae_scale_factor: int  # image pixels per latent pixel (8 for every SD family)
    vae_scaling_factor: float  # latents are divided by this before decoding
    default_size: int  # image side the model was trained at
    size_range: tuple[int, int]  # image sides (pixels) the export supports, inclusive
    max_batch: int  # images per prompt batch the export declares (the U-Net sees 2x with CFG)
    model_hash: str  # AUTOMATIC1111-style short hash of the source weights
    source: dict[str, Any]
    tools: dict[str, str]
    text_layers: int = 0  # hidden layers of the text encoder, the most CLIP skip can count back (0: not recorded)
    zero_empty_negative: bool = False  # no negative prompt conditions with zeros (SDXL's force_zeros_for_empty_prompt)
    unet_config: dict[str, Any] = field(default_factory=dict)  # diffusers' U-Net (or transformer) config: a single-file ControlNet's
    vae_shift_factor: float = 0.0  # added to the unscaled latents before decoding (SD 3's and Flux's VAE)
    latent_multiple: int = 1  # what the latent's sides must be a multiple of (a transformer's patch, Flux's packing)
    validation: dict[str, Any] = field(default_factory=dict)
    engines: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def size_multiple(self) -> int:
        """What image sides must be a multiple of: the VAE's factor, times a transformer's patch (SD 3 and Flux: 16)."""
        return self.vae_scale_factor * self.latent_multiple

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, folder: str | Path) -> None:
        write_json(Path(folder) / MANIFEST_NAME, self.to_json())

    def with_engines(self, engines: dict[str, Any]) -> Manifest:
        return replace(self, engines=engines)


def _tensor(d: dict) -> TensorSpec:
    return TensorSpec(d["name"], d["dtype"], tuple(d["shape"]))


def _component(d: dict) -> ComponentSpec:
    return ComponentSpec(
        file=d["file"],
        sha256=d["sha256"],
        precision=d["precision"],
        inputs=tuple(_tensor(t) for t in d["inputs"]),
        outputs=tuple(_tensor(t) for t in d["outputs"]),
        external_data=d.get("external_data"),
    )


def load_manifest(folder: str | Path) -> Manifest:
    """Read and check ``folder/manifest.json``; every failure says what to do."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise ManifestError(f"{folder} is not a folder. Export a model first: sdrt export MODEL {folder}")
    if not path.is_file():
        raise ManifestError(
            f"{folder} has no {MANIFEST_NAME}, so it is not an sdrt export folder. "
            f"Export a model into it first: sdrt export MODEL {folder}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path} is unreadable or corrupt ({e}). Export the model again: sdrt export MODEL {folder}")
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise ManifestError(
            f"{path} has format version {version!r}, but this sdrt reads version {FORMAT_VERSION}. "
            f"Export the model again with this sdrt (sdrt export MODEL {folder}), or use the sdrt that wrote it."
        )
    known = {f.name for f in fields(Manifest)}
    try:
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["components"] = {name: _component(c) for name, c in data["components"].items()}
        kwargs["tokenizers"] = {name: TokenizerSpec(**t) for name, t in data["tokenizers"].items()}
        kwargs["size_range"] = tuple(data["size_range"])
        manifest = Manifest(**kwargs)
    except (KeyError, TypeError, AttributeError) as e:
        raise ManifestError(f"{path} is missing or has malformed fields ({e!r}). Export the model again: sdrt export MODEL {folder}")
    for name, comp in manifest.components.items():
        for file in filter(None, (comp.file, comp.external_data)):
            if not (folder / file).is_file():
                raise ManifestError(f"{folder / file} ({name}) is missing. Export the model again: sdrt export MODEL {folder}")
    return manifest
