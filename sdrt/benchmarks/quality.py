"""Quality figures on real images: the trained ``shapes`` model's nine check prompts on every backend and precision,
with prompt adherence (read back by ``sdrt.shapes``) and each lower-precision run's PSNR/SSIM against the first sdrt
backend's fp32 images. Random-weight models make noise, on which such figures say little."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .. import shapes
from . import metrics

STEPS, GUIDANCE, SAMPLER = 25, 5.0, "dpm++2m"  # as tests/test_shapes_model.py


def _sdrt_images(folder: Path, backend: str) -> list[np.ndarray]:
    from ..runtime import Pipeline

    with Pipeline.load(folder, backend=backend) as pipe:
        return [np.asarray(pipe(shapes.caption(*t), num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                                scheduler=SAMPLER, seed=1 + i).images[0]) for i, t in enumerate(shapes.CHECKS)]


def _torch_images() -> list[np.ndarray]:
    import torch

    from ..export.sources import load_model
    from .runners import diffusers_scheduler

    pipe = load_model("shapes").pipe
    pipe.scheduler = diffusers_scheduler(pipe.scheduler.config, SAMPLER)
    pipe.set_progress_bar_config(disable=True)
    out = []
    with torch.no_grad():
        for i, t in enumerate(shapes.CHECKS):
            image = pipe(shapes.caption(*t), num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=64, width=64,
                         generator=torch.Generator().manual_seed(1 + i), output_type="np").images[0]
            out.append((image * 255).round().astype(np.uint8))
    return out


def shapes_quality(backends: tuple[str, ...], folders: dict[str, Path], log: Callable) -> dict:
    """``folders``: precision -> export folder of ``shapes``. Returns rows of backend, precision, adherence and
    similarity to the same backend's fp32 images."""
    rows, exact = [], None  # exact: the first sdrt backend's images from fp32 graphs in fp32, what others are held to
    for backend in backends:
        runs = {"fp32": _torch_images()} if backend == "torch" else {
            precision: _sdrt_images(folder, backend) for precision, folder in folders.items()}
        for precision, images in runs.items():
            right, details = shapes.adherence(images, shapes.CHECKS)
            row = {"backend": backend, "precision": precision, "adherence": right, "of": len(images),
                   "wrong": [{"expected": d["expected"], "read": d["read"]} for d in details if not d["right"]]}
            lossless = metrics.parity_class(backend, precision) == "fp32"
            if backend != "torch" and lossless and exact is None:
                exact = images
            elif backend != "torch" and exact is not None and not lossless:
                pairs = list(zip(images, exact))
                row["psnr_db_vs_fp32"] = min(metrics.psnr(a, b) for a, b in pairs)
                row["ssim_vs_fp32"] = min(metrics.ssim(a, b) for a, b in pairs)
            rows.append(row)
            log(f"  shapes on {backend} {precision}: {right}/{len(images)} prompts right")
    return {"steps": STEPS, "guidance": GUIDANCE, "sampler": SAMPLER, "seeds": list(range(1, len(shapes.CHECKS) + 1)),
            "rows": rows}
