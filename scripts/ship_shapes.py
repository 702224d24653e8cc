"""Copy a trained `shapes` model (a diffusers folder from train_shapes.py) into the package.

Writes the configs to sdrt/data/arch/shapes/ and the weights, as fp16 safetensors, to
sdrt/data/weights/shapes/, with the model card. The built-in model `shapes` loads them back
into fp32 (sdrt.export.builtin). Refuses weights that fp16 cannot hold (overflow or NaN).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sdrt.export.builtin import ARCH_DIR, NETWORKS, WEIGHTS_DIR  # noqa: E402
from sdrt.fileio import atomic_path, write_json  # noqa: E402

CONFIGS = {
    "model_index.json": "model_index.json",
    "unet/config.json": "unet/config.json",
    "vae/config.json": "vae/config.json",
    "text_encoder/config.json": "text_encoder/config.json",
    "scheduler/scheduler_config.json": "scheduler/scheduler_config.json",
    "tokenizer/tokenizer_config.json": "tokenizer/tokenizer_config.json",
}
DROP_KEYS = ("_diffusers_version", "_name_or_path", "transformers_version", "torch_dtype", "dtype")


def weights_file(model: Path, network: str) -> Path:
    found = sorted((model / network).glob("*.safetensors"))
    if len(found) != 1:
        raise SystemExit(f"expected one .safetensors file in {model / network}, found {len(found)}")
    return found[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="diffusers folder written by train_shapes.py (OUT/model)")
    args = parser.parse_args()
    arch, weights = ARCH_DIR / "shapes", WEIGHTS_DIR / "shapes"
    for src, dst in CONFIGS.items():
        config = json.loads((args.model / src).read_text(encoding="utf-8"))
        write_json(arch / dst, {k: v for k, v in config.items() if k not in DROP_KEYS})
    total = 0
    for network in NETWORKS:
        state = load_file(str(weights_file(args.model, network)))
        half = {k: v.to(torch.float16).contiguous() for k, v in state.items()}
        bad = [k for k, v in half.items() if not torch.isfinite(v).all()]
        if bad:
            raise SystemExit(f"{network}: fp16 cannot hold {bad[:3]}…; ship fp32 instead")
        with atomic_path(weights / f"{network}.safetensors") as tmp:
            save_file(half, str(tmp))
            tmp.chmod(0o644)  # safetensors writes 0600
        total += (weights / f"{network}.safetensors").stat().st_size
    shutil.copyfile(args.model / "MODEL_CARD.md", weights / "MODEL_CARD.md")
    print(f"shipped {args.model} to {arch} and {weights} ({total / 1e6:.1f} MB of fp16 weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
