"""Reading a textual-inversion embedding file into its vectors, in the formats AUTOMATIC1111 reads:

- AUTOMATIC1111's own ``.pt`` (``string_to_param: {"*": [n, D]}``; pickle, read only when allowed);
- one tensor, ``[n, D]`` or ``[D]``, under any key (diffusers' ``learned_embeds``, ``emb_params``), in
  ``.safetensors`` or, when pickle is allowed, ``.bin`` / ``.pt``;
- SDXL's pair ``clip_l`` [n, 768] and ``clip_g`` [n, 1280], one set of vectors per text encoder.

Embeddings stored inside PNG images (AUTOMATIC1111 can write those) are not read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserInputError
from ..fileio import load_pickle, sha256_file

PICKLE_SUFFIXES = (".pt", ".bin")
SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES
ANY_ENCODER = ""  # the key of a single-tensor embedding's vectors: it fits any one text encoder of its width


@dataclass(frozen=True)
class Embedding:
    name: str  # the file's stem: what prompts call it
    path: Path
    vectors: dict[str, np.ndarray]  # "clip_l" / "clip_g", or ANY_ENCODER → float32 [n, D]
    step: int | None  # training steps, where the file says
    short_hash: str  # AUTOMATIC1111's: the first 12 hex digits of the file's sha256

    @property
    def count(self) -> int:
        """Vectors per use (every encoder's set has as many)."""
        return len(next(iter(self.vectors.values())))

    def vectors_for(self, encoder_key: str, width: int) -> np.ndarray | None:
        """The vectors for a text encoder (its key: "clip_l", "clip_g", or ANY_ENCODER for a family with one) of
        ``width``, or None where this embedding has none that fit."""
        found = self.vectors.get(encoder_key, self.vectors.get(ANY_ENCODER))
        return found if found is not None and found.shape[1] == width else None


def read_embedding(path: str | Path, allow_pickle: bool = False) -> Embedding:
    path = Path(path)
    data = _read(path, allow_pickle)
    step = data.get("step") if isinstance(data.get("step"), int) else None
    if "string_to_param" in data:  # AUTOMATIC1111's own files
        data = dict(getattr(data["string_to_param"], "_parameters", data["string_to_param"]))
    tensors = {k: np.asarray(_numpy(v), np.float32) for k, v in data.items() if _numpy(v) is not None}
    if "clip_l" in tensors and "clip_g" in tensors:
        vectors = {"clip_l": tensors["clip_l"], "clip_g": tensors["clip_g"]}
    elif len(tensors) == 1:
        vectors = {ANY_ENCODER: next(iter(tensors.values()))}
    else:
        raise UserInputError(f"{path.name} is not a textual-inversion embedding: it holds {len(tensors)} tensors "
                             f"({', '.join(list(tensors)[:5]) or 'none'}); an embedding holds one, or clip_l and clip_g")
    vectors = {k: v.reshape(1, -1) if v.ndim == 1 else v for k, v in vectors.items()}
    counts = {v.shape[0] for v in vectors.values()}
    if any(v.ndim != 2 for v in vectors.values()) or len(counts) != 1 or not 0 < min(counts) <= 75:
        shapes = ", ".join(f"{k or 'vectors'} {list(v.shape)}" for k, v in vectors.items())
        raise UserInputError(f"{path.name}: an embedding is 1 to 75 vectors, as many for each text encoder ({shapes})")
    return Embedding(path.stem, path, vectors, step, sha256_file(path)[:12])


def _numpy(value) -> np.ndarray | None:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # a torch tensor, from a pickle file
        return value.detach().float().numpy()
    return None


def _read(path: Path, allow_pickle: bool) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for a damaged file
            raise UserInputError(f"cannot read embedding {path} ({e}); is it a complete .safetensors file?") from e
    if path.suffix not in PICKLE_SUFFIXES:
        raise UserInputError(f"{path.name}: embedding files are {', '.join(SUFFIXES)}")
    data = load_pickle(path, allow_pickle)
    if not isinstance(data, dict):
        raise UserInputError(f"{path.name} is not a textual-inversion embedding (it holds a {type(data).__name__})")
    return data

