"""int8 compute for the U-Net on OpenVINO: ``sdrt quantize OUT``, then the backend ``openvino:bf16:w8a8``.

NNCF's post-training quantization, calibrated on the U-Net inputs of real generations (prompts × steps, the
sampler's own latents and timesteps), the way optimum-intel's "hybrid" mode treats diffusion models: the
convolutions — 62 % of SD 1.5's U-Net FLOPs at 256² — compute in int8 with int8 activations; the linear layers get
int8 weights and keep their activations' precision; attention and normalisations are untouched. The quantized
graph is OpenVINO IR in ``OUT/quantized/``, named by the U-Net graph's hash, so a re-export never meets a stale one.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from ..components import UNET
from ..errors import BackendError, UserInputError
from ..fileio import atomic_path
from ..manifest import Manifest, load_manifest

# Varied subjects, styles and compositions, so activation ranges cover more than one kind of image.
CALIBRATION_PROMPTS = (
    "a photograph of a red fox in a snowy forest, golden hour",
    "an oil painting of a harbour with sailing boats, impressionist",
    "a portrait of an old man with a white beard, studio lighting",
    "a futuristic city skyline at night, neon lights, rain",
    "a bowl of fruit on a wooden table, still life",
    "a watercolour of mountains and a lake, soft colours",
    "a cartoon robot waving, flat colours, white background",
    "a close-up of a blue butterfly on a flower, macro photograph",
)
NEGATIVE = "blurry, low quality"


def quantized_path(folder: Path, manifest: Manifest) -> Path:
    return folder / "quantized" / f"{UNET.name}-w8a8-{manifest.components[UNET.name].sha256[:12]}.xml"


def unet_feeds(pipe, prompts: tuple[str, ...], size: int, steps: int, guidance: float) -> list[dict]:
    """The U-Net's inputs at every step of a generation per prompt (seeds 0, 1, …), on ``pipe`` as it runs."""
    captured: list[dict] = []
    run = pipe.backend.run

    def capturing(component, feeds):
        if component == UNET.name:
            captured.append({k: np.array(v) for k, v in feeds.items()})
        return run(component, feeds)

    pipe.backend.run = capturing
    try:
        for seed, prompt in enumerate(prompts):
            pipe(prompt, negative_prompt=NEGATIVE, height=size, width=size, num_inference_steps=steps,
                 guidance_scale=guidance, seed=seed)
    finally:
        pipe.backend.run = run
    return captured


def quantize(folder: str | Path, prompts: tuple[str, ...] = CALIBRATION_PROMPTS, size: int | None = None,
             steps: int = 10, guidance: float = 7.5, log: Callable = print) -> Path:
    """Calibrate on ``prompts`` (``steps`` each at ``size``², the model's default size when None) and write the
    U-Net's quantized graph; its path."""
    import nncf
    import openvino as ov

    from .pipeline import Pipeline

    folder = Path(folder)
    if not prompts:
        raise UserInputError("calibration needs at least one prompt")
    manifest = load_manifest(folder)
    if manifest.family not in ("sd1", "sd2", "sdxl"):
        raise UserInputError(f"int8 compute is for U-Net models (SD 1.x, 2.x, SDXL); this export is {manifest.family}")
    pipe = Pipeline.load(folder, backend="openvino")  # fp32: the statistics of the graph as exported
    size = size or manifest.default_size
    log(f"calibrating: {len(prompts)} prompts × {steps} steps at {size}×{size}")
    feeds = unet_feeds(pipe, prompts, size, steps, guidance)
    pipe.close()
    nncf.set_log_level(logging.WARNING)
    model = ov.Core().read_model(str(folder / manifest.components[UNET.name].file))
    log("int8 weights for the linear layers, then int8 convolutions calibrated on "
        f"{len(feeds)} U-Net inputs (NNCF {nncf.__version__})")
    model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM,
                                  ignored_scope=nncf.IgnoredScope(types=["Convolution"]))
    model = nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER,
                          subset_size=len(feeds), ignored_scope=nncf.IgnoredScope(types=["MatMul"]),
                          advanced_parameters=nncf.AdvancedQuantizationParameters(smooth_quant_alpha=-1))
    path = quantized_path(folder, manifest)
    _save(ov, model, path)
    return path


def _save(ov, model, path: Path) -> None:
    """IR (.xml and .bin) written to a temporary folder and moved into place, the .bin first."""
    tmp = path.parent / f".{path.stem}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        ov.save_model(model, str(tmp / path.name), compress_to_fp16=False)
        for suffix in (".bin", ".xml"):  # the .xml names a whole graph: it lands last
            with atomic_path(path.with_suffix(suffix)) as final:
                shutil.move(str(tmp / path.with_suffix(suffix).name), final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def require_quantized(folder: Path, manifest: Manifest) -> Path:
    path = quantized_path(folder, manifest)
    if not path.is_file():
        raise BackendError(f"no int8 U-Net for this export: run `sdrt quantize {folder}` first (minutes; "
                           "it calibrates on a few generations), then use openvino:bf16:w8a8")
    return path
