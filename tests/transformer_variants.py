"""What the SD 3 and Flux tests share: models of other configurations than the built-ins (an arch folder copied and
edited, its random pipeline saved as a diffusers folder: what a user exports), and the OpenVINO and fp16 checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np


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


def assert_openvino_matches(folder: Path, ours, prompt: str, **kwargs) -> None:
    """OpenVINO's image of ``prompt`` against ONNX Runtime's (``ours``, a Pipeline): fp32 ≥ 45 dB, bf16 ≥ 25 dB."""
    from sdrt.runtime import Pipeline

    from parity_helpers import psnr

    expected = np.asarray(ours(prompt, **kwargs).images[0])
    for backend, floor in (("openvino", 45), ("openvino:bf16", 25)):
        with Pipeline.load(folder, backend=backend) as ov:
            assert psnr(np.asarray(ov(prompt, **kwargs).images[0]), expected) > floor, backend


def assert_fp16_export_close(folder: Path, ours, prompt: str, **kwargs) -> None:
    """An --fp16 export (``folder``): T5 kept in fp32, the denoiser in fp16, its image ≥ 25 dB from the fp32
    export's (``ours``, a Pipeline)."""
    from sdrt.manifest import load_manifest
    from sdrt.runtime import Pipeline

    from parity_helpers import psnr

    m = load_manifest(folder)
    assert m.components["t5_encoder"].precision == "fp32" and m.components["unet"].precision == "fp16"
    with Pipeline.load(folder) as half:
        image = np.asarray(half(prompt, **kwargs).images[0])
    assert psnr(image, np.asarray(ours(prompt, **kwargs).images[0])) > 25
