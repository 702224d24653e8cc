"""Single-file checkpoints in the original Stable Diffusion (LDM / CompVis) key layout.

diffusers' single-file loader does the key conversion. By default it would fetch the matching
diffusers configs from the Hugging Face hub; here every config comes from ``sdrt/data/arch`` and
the tokenizer from the vocabulary stored in the repo, so loading never touches the network.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ModelSourceError
from .builtin import ARCH_DIR, pipeline_kwargs

# diffusers' name for a checkpoint's model type -> our config folder
_MODEL_TYPE_TO_ARCH = {"v1": "sd15", "v2": "sd21", "inpainting": "sd15-inpaint", "inpainting_v2": "sd2-inpaint",
                       "xl_base": "sdxl", "xl_refiner": "sdxl-refiner"}
_UNSUPPORTED_SDXL = {"xl_inpaint", "playground-v2-5"}
_PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


def load_single_file(path: Path, arch: str | None = None, *, allow_pickle: bool = False, dtype=None):
    """Load an LDM-layout checkpoint (SGM for SDXL) as a diffusers pipeline on the CPU, in ``dtype`` (default fp32): the class its
    architecture's ``model_index.json`` names (StableDiffusionPipeline, StableDiffusionXLPipeline, or the refiner's
    StableDiffusionXLImg2ImgPipeline).

    ``arch`` names a config folder in ``sdrt/data/arch`` and skips detection: use it for
    checkpoints the keys cannot tell apart (an SD 2.x 512 epsilon model looks like SD 2.1 768-v).
    Pickle checkpoints are refused unless ``allow_pickle``; diffusers then reads them with
    ``torch.load(weights_only=True)``.
    """
    import diffusers

    path = Path(path)
    is_pickle = _check_file(path, allow_pickle)
    if arch is None:
        arch = detect_arch(path, allow_pickle=allow_pickle)
    elif not is_pickle:
        read_shapes(path, allow_pickle)  # a corrupt file gets a clear message, not a diffusers traceback
    config_dir = _arch_dir(arch)
    index = json.loads((config_dir / "model_index.json").read_text(encoding="utf-8"))
    pipeline_class = getattr(diffusers, index["_class_name"])
    try:
        pipe = pipeline_class.from_single_file(
            str(path),
            config=str(config_dir),  # a local folder: diffusers reads every component config from it
            local_files_only=True,  # and never falls back to the hub
            torch_dtype=dtype,
            **pipeline_kwargs(config_dir, index),
        )
    except Exception as e:  # diffusers raises ValueError, OSError, KeyError, SingleFileComponentError, ...
        raise _load_error(e, path, arch, is_pickle) from e
    _check_complete(pipe, path, arch)
    return pipe


def _load_error(e: Exception, path: Path, arch: str, is_pickle: bool) -> ModelSourceError:
    text = str(e).strip()
    # diffusers' first line says what is wrong; what follows advises on its own API, not ours.
    detail = text.splitlines()[0].split(" If you want to instead")[0] if text else repr(e)
    # A tensor the file lacks stays on the meta device and fails when moved; a whole missing
    # component gets diffusers' SingleFileComponentError.
    if "meta tensor" in text:
        detail = "some weights are missing from the file."
    if "meta tensor" in text or type(e).__name__ == "SingleFileComponentError":
        return ModelSourceError(f"{path} is incomplete: {detail} Use a full checkpoint (UNet, VAE and text encoder in one file).")
    kind = "pickle checkpoint" if is_pickle else "checkpoint"
    return ModelSourceError(
        f"could not load the {kind} {path} as the {arch!r} architecture: {detail} If it is another Stable "
        f"Diffusion variant, choose its architecture explicitly (one of: {', '.join(_known_archs())})."
    )


def detect_arch(path: Path, *, allow_pickle: bool = False) -> str:
    """The config folder name for the checkpoint at ``path``, from its tensor names and shapes."""
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES, infer_diffusers_model_type

    path = Path(path)
    shapes = read_shapes(path, allow_pickle)
    checkpoint = _ShapeOnly(shapes)
    try:
        model_type = infer_diffusers_model_type(checkpoint)
    except Exception:  # some non-SD branches look at tensor values we do not load
        model_type = None
    if model_type in _UNSUPPORTED_SDXL:
        raise ModelSourceError(
            f"{path} is an SDXL variant sdrt does not export yet ({model_type}); SDXL base and refiner checkpoints "
            "and Stable Diffusion 1.x / 2.x ones are."
        )
    # diffusers answers "v1" for anything it does not recognise, so check the v1 marker is there.
    if model_type in ("v1", "inpainting") and CHECKPOINT_KEY_NAMES["v1"] not in shapes:
        model_type = None
    if model_type in _MODEL_TYPE_TO_ARCH:
        return _MODEL_TYPE_TO_ARCH[model_type]
    if model_type is None and any(k.startswith("model.diffusion_model.") for k in shapes):
        raise ModelSourceError(
            f"{path} is in the original (LDM) layout, but its shapes match none of Stable Diffusion 1.x, 2.x or XL. "
            f"If you know its architecture, choose it explicitly (one of: {', '.join(_known_archs())})."
        )
    what = f"a {model_type!r} checkpoint" if model_type else "not a Stable Diffusion checkpoint in the original (LDM) layout"
    raise ModelSourceError(
        f"{path} is {what}; only text-to-image Stable Diffusion 1.x / 2.x / XL checkpoints can be exported. "
        "For a diffusers-format model, give its folder (with model_index.json) instead."
    )


class _ShapeOnly(dict):
    """key -> meta tensor: enough for diffusers' detection, which only reads shapes."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        import torch

        super().__init__({k: torch.empty(s, device="meta") for k, s in shapes.items()})


def _check_file(path: Path, allow_pickle: bool) -> bool:
    """Refuse what we will not read; returns whether ``path`` is a (permitted) pickle."""
    if not path.is_file():
        raise ModelSourceError(f"{path} does not exist or is not a file.")
    # diffusers picks its reader by the exact extension: anything but ".safetensors" goes to torch.load.
    if path.suffix == ".safetensors":
        return False
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        if allow_pickle:
            return True
        raise ModelSourceError(
            f"{path} is a pickle checkpoint, and loading a pickle can run arbitrary code. Use a .safetensors "
            "version of the model instead; if you trust this file, allow pickles explicitly."
        )
    if path.suffix.lower() == ".safetensors":
        raise ModelSourceError(f"{path}: rename the file so that it ends in a lowercase '.safetensors'.")
    raise ModelSourceError(f"{path} is not a .safetensors checkpoint; give a .safetensors file or a diffusers folder.")


def read_shapes(path: Path, allow_pickle: bool) -> dict[str, tuple[int, ...]]:
    if _check_file(path, allow_pickle):
        from diffusers.loaders.single_file_utils import load_single_file_checkpoint

        try:  # a pickle has no header to peek at: load it (weights_only) to see its tensors
            state = load_single_file_checkpoint(str(path), local_files_only=True)
        except Exception as e:
            raise ModelSourceError(f"cannot read the pickle checkpoint {path}: {e}") from e
        return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}

    from safetensors import safe_open

    try:  # reads the header only: cheap even for multi-GB files
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:
        raise ModelSourceError(
            f"{path} is not a readable safetensors file ({e}); it may be truncated or corrupt: download it again."
        ) from e


def _known_archs() -> list[str]:
    return sorted(p.name for p in ARCH_DIR.iterdir() if (p / "model_index.json").is_file())


def _arch_dir(arch: str) -> Path:
    if arch not in _known_archs():  # a name, never a path
        raise ModelSourceError(f"unknown architecture {arch!r}; choose one of: {', '.join(_known_archs())}.")
    return ARCH_DIR / arch


def _check_complete(pipe, path: Path, arch: str) -> None:
    # diffusers loads into meta-device models and leaves tensors the file lacks on "meta", silently.
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        if module is None:
            continue
        missing = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
        if missing:
            raise ModelSourceError(
                f"{path} has no weights for {len(missing)} {name} tensors (e.g. {missing[0]}), so it is incomplete "
                f"or not a {arch!r} model. Use a full checkpoint (UNet, VAE and text encoder in one file)."
            )
