"""Built-in models: diffusers pipelines made from config JSON stored in ``sdrt/data/arch``.

Nothing is downloaded. ``shapes`` carries weights trained by ``scripts/train_shapes.py`` (stored
as fp16 safetensors in ``sdrt/data/weights/shapes``): it draws what it is told. The others have
random weights drawn from a seed: ``tiny``, ``tiny-sd2``, ``tiny-inpaint`` and ``tiny-sdxl`` are small enough
for structural tests; ``sd15-arch``, ``sd21-arch`` and ``sdxl-arch`` have full-size configs so benchmarks do
real-sized work.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
ARCH_DIR = DATA_DIR / "arch"
WEIGHTS_DIR = DATA_DIR / "weights"
LORAS_DIR = DATA_DIR / "loras"  # LoRAs trained for a built-in (shapes-star: scripts/train_shapes_lora.py)
CONTROLNETS_DIR = DATA_DIR / "controlnets"  # ControlNets trained for a built-in (silhouette: scripts/train_shapes_controlnet.py)
CLIP_VOCAB_DIR = DATA_DIR / "clip"
T5_VOCAB = DATA_DIR / "t5" / "vocab.json"  # the T5 built-ins' unigram pieces and scores (sdrt.shapes' words and more)
NETWORKS = ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")


@dataclass(frozen=True)
class BuiltinModel:
    arch: str  # config folder in sdrt/data/arch
    size_range: tuple[int, int]  # image sides (pixels) the export declares
    trained: bool = False  # weights in sdrt/data/weights/<arch>, else random from a seed


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "shapes": BuiltinModel("shapes", (32, 128), trained=True),
    "tiny": BuiltinModel("tiny", (64, 512)),
    "tiny-sd2": BuiltinModel("tiny-sd2", (64, 512)),
    "tiny-inpaint": BuiltinModel("tiny-inpaint", (64, 512)),  # a 9-channel inpainting U-Net
    "tiny-sdxl": BuiltinModel("tiny-sdxl", (64, 512)),  # two text encoders (of other widths), pooled embeds, time ids
    "tiny-sdxl-refiner": BuiltinModel("tiny-sdxl-refiner", (64, 512)),  # the second encoder alone, aesthetic scores
    "sd15-arch": BuiltinModel("sd15", (256, 1024)),
    "sd21-arch": BuiltinModel("sd21", (256, 1024)),
    "sdxl-arch": BuiltinModel("sdxl", (512, 1536)),
    # SD 3.5: an MMDiT transformer (dual attention and RMS-normed q/k, as 3.5 medium), CLIP-L, CLIP-G and T5
    "tiny-sd3": BuiltinModel("tiny-sd3", (64, 512)),
    # SD 3.5 medium's transformer, VAE and CLIPs; T5-XXL's width with 2 of its 24 layers (0.5 B parameters instead
    # of 4.8 B: the full T5 alone would need 19 GB in fp32), and the built-ins' small T5 vocabulary
    "sd35m-arch": BuiltinModel("sd35m", (256, 1440)),
    # Flux.1 dev: double- and single-stream blocks, rotary ids, the guidance embedding; CLIP-L pooled and T5
    "tiny-flux": BuiltinModel("tiny-flux", (64, 512)),
}
DEFAULT_SEED = 0


def shipped_loras(name: str) -> list[Path]:
    """The LoRA files (each with its model card beside it, NAME.md) shipped for the built-in model ``name``."""
    model = BUILTIN_MODELS.get(name)
    return sorted((LORAS_DIR / model.arch).glob("*.safetensors")) if model else []


def shipped_controlnets(name: str) -> list[tuple[str, Path]]:
    """The ControlNets (diffusers folders, each with its model card README.md) shipped for the built-in ``name``."""
    model = BUILTIN_MODELS.get(name)
    folder = CONTROLNETS_DIR / model.arch if model else None
    return [(p.name, p) for p in sorted(folder.iterdir()) if (p / "config.json").is_file()] if folder and folder.is_dir() else []


def shipped_tiny_vae(name: str) -> Path | None:
    """The tiny VAE decoder (a diffusers AutoencoderTiny folder) shipped for the built-in ``name``, if any."""
    model = BUILTIN_MODELS.get(name)
    folder = WEIGHTS_DIR / f"{model.arch}-tiny-vae" if model else None
    return folder if folder and (folder / "config.json").is_file() else None


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def clip_tokenizer(tokenizer_config: dict):
    """The real CLIP BPE tokenizer, from the vocabulary stored in the repo."""
    from transformers import CLIPTokenizer

    kwargs = {k: v for k, v in tokenizer_config.items() if k in ("model_max_length", "bos_token", "eos_token", "unk_token", "pad_token")}
    return CLIPTokenizer(str(CLIP_VOCAB_DIR / "vocab.json"), str(CLIP_VOCAB_DIR / "merges.txt"), **kwargs)


def t5_tokenizer(folder: Path):
    """A T5 (SentencePiece unigram) tokenizer configured by ``folder/tokenizer_config.json``, from the pieces and
    scores stored in the repo (``T5_VOCAB``): the built-ins' small vocabulary of prompt words and characters."""
    from transformers import T5TokenizerFast

    config = _json(folder / "tokenizer_config.json")
    kwargs = {k: v for k, v in config.items() if k in ("model_max_length", "eos_token", "unk_token", "pad_token",
                                                         "extra_ids")}
    return T5TokenizerFast(vocab=[tuple(piece) for piece in _json(T5_VOCAB)], **kwargs)


def build_builtin(name: str, dtype=None):
    """The diffusers pipeline of the built-in model ``name``, its weights in ``dtype`` (default fp32)."""
    model = BUILTIN_MODELS[name]
    pipe = build_random_pipeline(model.arch, dtype=dtype)
    if model.trained:
        load_weights(pipe, WEIGHTS_DIR / model.arch)
    return pipe


def builtin_hash(name: str) -> str:
    """A built-in's short hash: of what its weights follow from (configs, seed, trained weights), so that it does
    not depend on the precision they are loaded in."""
    model = BUILTIN_MODELS[name]
    digest = hashlib.sha256(f"{model.arch} seed {DEFAULT_SEED}".encode())
    folders = [ARCH_DIR / model.arch] + ([WEIGHTS_DIR / model.arch] if model.trained else [])
    for path in sorted(p for folder in folders for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(DATA_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def load_weights(pipe, folder: Path) -> None:
    """Load ``<network>.safetensors`` (fp16 on disk) into the pipeline's networks (in their own dtype), strictly."""
    from safetensors.torch import load_file

    for name in ("unet", "vae", "text_encoder"):
        getattr(pipe, name).load_state_dict(load_file(str(folder / f"{name}.safetensors")), strict=True)


def build_random_pipeline(arch: str, seed: int = DEFAULT_SEED, dtype=None):
    """The diffusers pipeline ``model_index.json`` of ``sdrt/data/arch/<arch>`` names, each network made from its
    config with weights drawn from ``seed`` (in fp32, the same numbers whatever ``dtype``), then cast to ``dtype``
    before the next is made: SDXL's U-Net alone is 10 GB in fp32."""
    import diffusers
    import torch

    root = ARCH_DIR / arch
    index = _json(root / "model_index.json")
    parts: dict = {}
    # fork_rng keeps the caller's global torch RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in networks_in(index):
            parts[name] = make_network(root, index, name).eval()
            if dtype is not None:  # torch's own .to: diffusers' warns about modules to keep in fp32 (SD has none)
                torch.nn.Module.to(parts[name], dtype)
    scheduler_config = _json(root / "scheduler" / "scheduler_config.json")
    parts["scheduler"] = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
    return getattr(diffusers, index["_class_name"])(**parts, **pipeline_kwargs(root, index))


def networks_in(index: dict) -> list[str]:
    """The networks a pipeline's ``model_index.json`` has (a refiner has no first text encoder)."""
    return [name for name in NETWORKS if index.get(name, [None])[0] is not None]


def make_network(root: Path, index: dict, name: str):
    """The network ``name`` of the arch folder ``root`` made from its config, with freshly initialised weights
    (on the meta device under ``torch.device("meta")``)."""
    import diffusers
    import transformers

    config = _json(root / name / "config.json")
    if name.startswith("text_encoder"):  # CLIPTextModel, CLIPTextModelWithProjection (pooled output), T5EncoderModel
        fields = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}
        kind = transformers.T5Config if config["model_type"] == "t5" else transformers.CLIPTextConfig
        return getattr(transformers, config["architectures"][0])(kind(**fields))
    return getattr(diffusers, index[name][1]).from_config(config)


def pipeline_kwargs(root: Path, index: dict) -> dict:
    """What the pipeline ``index`` (an arch folder's model_index.json) takes besides its networks and scheduler: the
    tokenizers (from the vocabulary in the repo: the folders hold only their configs), None for the components it
    lists as absent (a refiner's first text encoder), its flags, and no safety checker or watermarker."""
    kwargs: dict = {}
    for name in ("text_encoder", "tokenizer", "tokenizer_2", "tokenizer_3"):
        if name in index and index[name][0] is None:
            kwargs[name] = None
        elif name.startswith("tokenizer") and name in index:
            config = _json(root / name / "tokenizer_config.json")
            t5 = config["tokenizer_class"].startswith("T5")
            kwargs[name] = t5_tokenizer(root / name) if t5 else clip_tokenizer(config)
    if index["_class_name"].startswith("StableDiffusionXL"):
        flags = {k: index[k] for k in ("force_zeros_for_empty_prompt", "requires_aesthetics_score") if k in index}
        return kwargs | flags | {"add_watermarker": False}
    if index["_class_name"].startswith(("StableDiffusion3", "Flux")):
        return kwargs
    return kwargs | {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
