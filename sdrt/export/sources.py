"""Where a model comes from: a built-in name, a diffusers folder, or a single-file checkpoint."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelSourceError
from ..fileio import sha256_file
from .builtin import BUILTIN_MODELS, NETWORKS, build_builtin, builtin_hash

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
OPTIONAL_T5 = ("text_encoder_3", "tokenizer_3")  # SD 3 runs without T5 (zeros in its place), as diffusers allows


@dataclass
class LoadedModel:
    pipe: object  # a diffusers pipeline on the CPU
    kind: str  # "builtin" | "diffusers" | "single_file"
    name: str  # as the user gave it
    model_hash: str  # AUTOMATIC1111-style short hash (first 10 hex digits of a sha256)
    size_range: tuple[int, int] | None = None  # a built-in model's own size range


def pickle_refusal(what: str) -> ModelSourceError:
    return ModelSourceError(
        f"{what} is a pickle file, and loading a pickle can run arbitrary code. Prefer a .safetensors "
        "version of the model; if you trust this file, pass --allow-pickle."
    )


def _folder_hash(folder: Path) -> str:
    """Hash of a diffusers folder's network weight files (names and bytes): the same whatever precision the
    networks are loaded in."""
    digest = hashlib.sha256()
    for part in NETWORKS:
        for path in sorted(p for p in (folder / part).glob("*") if p.suffix in (".safetensors",) + PICKLE_SUFFIXES):
            digest.update(path.relative_to(folder).as_posix().encode())
            digest.update(bytes.fromhex(sha256_file(path)))
    return digest.hexdigest()[:10]


def _load_diffusers_folder(folder: Path, allow_pickle: bool, dtype, without: tuple[str, ...] = ()):
    from diffusers import DiffusionPipeline

    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    options = {name: None for name in without if name in index}  # left out: not even loaded
    if index.get("_class_name", "").startswith("StableDiffusion") and "safety_checker" in index:
        options |= {"safety_checker": None, "requires_safety_checker": False}
    has_safetensors = any(folder.rglob("*.safetensors"))
    if not has_safetensors and any(p.suffix in PICKLE_SUFFIXES for p in folder.rglob("*")) and not allow_pickle:
        raise pickle_refusal(f"{folder} holds only pickle weights (.bin/.ckpt), which")
    try:
        return DiffusionPipeline.from_pretrained(
            folder,
            local_files_only=True,
            use_safetensors=None if allow_pickle else True,
            dtype=dtype,
            **options,
        )
    except Exception as e:  # diffusers raises OSError, ValueError, EnvironmentError, ...
        raise ModelSourceError(f"could not load the diffusers folder {folder}: {e}") from e


def load_model(model: str, allow_pickle: bool = False, arch: str | None = None, dtype=None,
               without: tuple[str, ...] = ()) -> LoadedModel:
    """Load ``model`` (a built-in name, a diffusers folder or a checkpoint file) as a diffusers pipeline, its
    weights in ``dtype`` (default fp32; an fp16 export loads them in fp16, half the memory).

    ``arch`` names the architecture config (``sdrt/data/arch``) of a single-file checkpoint when its
    keys cannot tell it. ``without``: optional components to leave out (set to None), where the model has them.
    """
    if model in BUILTIN_MODELS:
        pipe = build_builtin(model, dtype)
        for name in without:
            if getattr(pipe, name, None) is not None:
                pipe.register_modules(**{name: None})
        return LoadedModel(pipe, "builtin", model, builtin_hash(model), BUILTIN_MODELS[model].size_range)

    path = Path(model).expanduser()
    if not path.exists():
        raise ModelSourceError(
            f"{model!r} is neither a built-in model ({', '.join(BUILTIN_MODELS)}) nor an existing path. "
            "Give a diffusers folder (with model_index.json), a .safetensors checkpoint, or a built-in name."
        )
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelSourceError(f"{path} has no model_index.json, so it is not a diffusers pipeline folder.")
        pipe = _load_diffusers_folder(path, allow_pickle, dtype, without)
        return LoadedModel(pipe, "diffusers", model, _folder_hash(path))

    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise pickle_refusal(str(path))
    if suffix != ".safetensors" and suffix not in PICKLE_SUFFIXES:
        raise ModelSourceError(f"{path} is not a .safetensors checkpoint or a diffusers folder.")
    from .single_file import load_single_file

    pipe = load_single_file(path, arch, allow_pickle=allow_pickle, dtype=dtype)
    # AUTOMATIC1111 names a checkpoint by the first 10 hex digits of the file's sha256.
    return LoadedModel(pipe, "single_file", model, sha256_file(path)[:10])
