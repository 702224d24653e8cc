"""Built-in models: diffusers pipelines with the real architecture and random weights.

Made deterministically from a seed and config JSON stored in ``sdrt/data/arch``; nothing is
downloaded. ``tiny`` and ``tiny-sd2`` are small enough for tests and the demo; ``sd15-arch`` and
``sd21-arch`` have full-size configs so benchmarks do real-sized work.
"""

from __future__ import annotations

import json
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
ARCH_DIR = DATA_DIR / "arch"
CLIP_VOCAB_DIR = DATA_DIR / "clip"

# built-in name -> (config folder, the side range the export declares, in pixels)
BUILTIN_MODELS: dict[str, tuple[str, tuple[int, int]]] = {
    "tiny": ("tiny", (64, 512)),
    "tiny-sd2": ("tiny-sd2", (64, 512)),
    "sd15-arch": ("sd15", (256, 1024)),
    "sd21-arch": ("sd21", (256, 1024)),
}
DEFAULT_SEED = 0


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def clip_tokenizer(tokenizer_config: dict):
    """The real CLIP BPE tokenizer, from the vocabulary stored in the repo."""
    from transformers import CLIPTokenizer

    kwargs = {k: v for k, v in tokenizer_config.items() if k in ("model_max_length", "bos_token", "eos_token", "unk_token", "pad_token")}
    return CLIPTokenizer(str(CLIP_VOCAB_DIR / "vocab.json"), str(CLIP_VOCAB_DIR / "merges.txt"), **kwargs)


def build_random_pipeline(arch: str, seed: int = DEFAULT_SEED):
    """A StableDiffusionPipeline from ``sdrt/data/arch/<arch>`` with weights drawn from ``seed``."""
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    root = ARCH_DIR / arch
    text_config = {k: v for k, v in _json(root / "text_encoder" / "config.json").items() if k not in ("architectures", "model_type")}
    scheduler_config = _json(root / "scheduler" / "scheduler_config.json")
    scheduler_cls = getattr(diffusers, scheduler_config["_class_name"])

    # fork_rng keeps the caller's global torch RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = diffusers.UNet2DConditionModel.from_config(_json(root / "unet" / "config.json"))
        vae = diffusers.AutoencoderKL.from_config(_json(root / "vae" / "config.json"))
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    return diffusers.StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=clip_tokenizer(_json(root / "tokenizer" / "tokenizer_config.json")),
        unet=unet.eval(),
        scheduler=scheduler_cls.from_config(scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
