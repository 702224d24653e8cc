"""Transformer-family models of other configurations than the built-ins: an arch folder copied and edited, its
random pipeline saved as a diffusers folder (what a user exports)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def variant_folder(arch: str, tmp: Path, edits: dict[str, dict]) -> tuple[Path, object]:
    """``sdrt/data/arch/<arch>`` with ``edits`` ({network: {config key: value}}) applied, as a diffusers folder in
    ``tmp``; and the diffusers pipeline itself."""
    from sdrt.export.builtin import ARCH_DIR, build_random_pipeline

    arch_copy = tmp / "arch"
    shutil.copytree(ARCH_DIR / arch, arch_copy)
    for network, values in edits.items():
        path = arch_copy / network / ("scheduler_config.json" if network == "scheduler" else "config.json")
        path.write_text(json.dumps({**json.loads(path.read_text()), **values}))
    pipe = build_random_pipeline(str(arch_copy))
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp / "folder")
    return tmp / "folder", pipe
