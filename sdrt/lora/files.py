"""Reading a LoRA file into its layers: kohya / AUTOMATIC1111 (``lora_unet_…``, ``lora_te_…``, ``lora_te1_…``,
``lora_te2_…`` with ``lora_down``/``lora_up``/``alpha``, LoCon convolutions included), diffusers / PEFT
(``unet.…`` or, for SD 3 and Flux, ``transformer.….lora_A.weight`` / ``lora_B.weight``, alphas in the file's
``lora_adapter_metadata``) and ComfyUI's (``diffusion_model.…`` with the original checkpoint's names).
The denoiser is the component ``unet`` whatever its architecture (the export's contract)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserInputError
from ..fileio import load_pickle

# key prefix -> (component, how module names are written: "kohya" underscored, "dotted")
PREFIXES = {
    "lora_unet_": ("unet", "kohya"),
    "lora_transformer_": ("unet", "kohya"),  # diffusers' names underscored (some Flux trainers)
    "lora_te1_": ("text_encoder", "kohya"),
    "lora_te2_": ("text_encoder_2", "kohya"),
    "lora_te3_": ("text_encoder_3", "kohya"),  # SD 3's T5: it has no sites, so named among the layers not matched
    "lora_te_": ("text_encoder", "kohya"),
    "unet.": ("unet", "dotted"),
    "transformer.": ("unet", "dotted"),
    "diffusion_model.": ("unet", "dotted"),
    "text_encoder_3.": ("text_encoder_3", "dotted"),
    "text_encoder_2.": ("text_encoder_2", "dotted"),
    "text_encoder.": ("text_encoder", "dotted"),
}
PARTS = {  # key suffix -> the factor it holds
    ".lora_down.weight": "down", ".lora_A.weight": "down", ".lora.down.weight": "down",
    ".lora_up.weight": "up", ".lora_B.weight": "up", ".lora.up.weight": "up",
    ".alpha": "alpha",
}
# other LyCORIS kinds AUTOMATIC1111 also reads: named in the error rather than half-applied
OTHER_KINDS = {"hada_": "LoHa", "lokr_": "LoKr", "dora_scale": "DoRA", "lora_mid": "LoCon with a mid (Tucker) factor",
               "diff": "full-weight difference", "oft_": "OFT", "on_input": "IA3"}
PICKLE_SUFFIXES = (".pt", ".ckpt", ".bin", ".pth")
SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES


@dataclass(frozen=True)
class LoraLayer:
    """One changed layer: ``weight × alpha / rank × up · down`` is added to it."""
    down: np.ndarray  # [rank, in] or [rank, in, kh, kw]
    up: np.ndarray  # [out, rank] or [out, rank, 1, 1]
    alpha: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]


@dataclass(frozen=True)
class LoraFile:
    name: str  # the file's stem: what prompt tags and PNG parameters call it
    path: Path
    short_hash: str  # AUTOMATIC1111's: the first 12 hex digits of the sha256 of its tensors' bytes
    layers: dict[tuple[str, str, str], LoraLayer]  # (component, naming, module name) -> layer


def read_lora(path: str | Path, allow_pickle: bool = False) -> LoraFile:
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"LoRA file {path} does not exist")
    tensors, metadata = _read_tensors(path, allow_pickle)
    alphas = _metadata_alphas(metadata)
    factors: dict[tuple[str, str, str], dict[str, object]] = {}
    for key, value in tensors.items():
        for marker, kind in OTHER_KINDS.items():
            if any(segment.startswith(marker) for segment in key.split(".")[-2:]):
                raise UserInputError(f"{path.name} is a {kind} network ({key}); sdrt reads LoRA and LoCon only")
        located = _locate(key)
        if located is None:  # not a LoRA factor of any component
            continue
        module, part = located
        factors.setdefault(module, {})[part] = value
    layers = {}
    for module, parts in factors.items():
        if "down" not in parts or "up" not in parts:
            raise UserInputError(f"{path.name}: layer {module[2]} has no {'up' if 'down' in parts else 'down'} factor; "
                                 "the file is damaged or not a LoRA")
        down, up = np.asarray(parts["down"], np.float32), np.asarray(parts["up"], np.float32)
        alpha = float(np.asarray(parts["alpha"])) if "alpha" in parts else alphas.get(module[0], down.shape[0])
        layers[module] = LoraLayer(down, up, alpha)
    if not layers:
        raise UserInputError(f"{path.name} holds no LoRA layers (none of its {len(tensors)} keys is a LoRA factor of "
                             "a U-Net or text encoder); is it a LoRA file?")
    return LoraFile(path.stem, path, short_hash(path), layers)


def _locate(key: str) -> tuple[tuple[str, str, str], str] | None:
    """``(component, naming, module name), factor`` of a file key, or None where it is none."""
    for suffix, part in PARTS.items():
        if key.endswith(suffix):
            module = key[: -len(suffix)]
            break
    else:
        return None
    for prefix, (component, naming) in PREFIXES.items():
        if module.startswith(prefix):
            return (component, naming, module[len(prefix):]), part
    return None


def _read_tensors(path: Path, allow_pickle: bool) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
        except Exception as e:  # safetensors raises its own error types for a damaged file
            raise UserInputError(f"cannot read LoRA {path} ({e}); is it a complete .safetensors file?") from e
    if path.suffix in PICKLE_SUFFIXES:
        state = load_pickle(path, allow_pickle)
        return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy")}, {}
    raise UserInputError(f"{path.name}: LoRA files are {', '.join(SUFFIXES)}")


def _metadata_alphas(metadata: dict[str, str]) -> dict[str, float]:
    """diffusers' ``lora_adapter_metadata`` (PEFT's LoraConfig per component): component -> lora_alpha."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except ValueError:
        return {}
    out = {}
    for key, value in config.items():
        if m := re.fullmatch(r"(unet|transformer|text_encoder|text_encoder_2)\.lora_alpha", key):
            out["unet" if m[1] == "transformer" else m[1]] = float(value)
    return out


def short_hash(path: Path) -> str:
    """AUTOMATIC1111's LoRA hash: sha256 of a .safetensors file's tensors (after its header; the "addnet" hash, so
    that metadata edits keep it), of the whole file otherwise; 12 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if path.suffix == ".safetensors":
            f.seek(8 + int.from_bytes(f.read(8), "little"))
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()[:12]
