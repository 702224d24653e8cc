"""What the SD 3 and Flux tests share: models of other configurations than the built-ins (an arch folder copied and
edited, its random pipeline saved as a diffusers folder: what a user exports), and the OpenVINO and fp16 checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

SD3_SAMPLERS = {"euler": "FlowMatchEulerDiscreteScheduler", "heun": "FlowMatchHeunDiscreteScheduler",
                "dpm++2m": "DPMSolverMultistepScheduler", "unipc": "UniPCMultistepScheduler"}
# the solvers' flow form, as diffusers' documentation writes it for SD 3 (its shift: 3.0)
FLOW_FORM = {s: dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0) for s in ("dpm++2m", "unipc")}


def diffusers_flux(pipe, seed: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """diffusers' FluxPipeline (or its img2img) from a seed: final latents (unpacked) and 8-bit images."""
    with torch.no_grad():
        packed = pipe(generator=torch.Generator().manual_seed(seed), output_type="latent", **kwargs).images
        latents = pipe._unpack_latents(packed, kwargs["height"], kwargs["width"], pipe.vae_scale_factor)
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor,
                                return_dict=False)[0]
    images = (pipe.image_processor.postprocess(image, output_type="np") * 255).round().astype(np.uint8)
    return latents.numpy(), images


def diffusers_sd3(pipe, sampler: str, seed: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """diffusers' StableDiffusion3 pipeline (or its img2img) with the flow ``sampler``, from a seed: final latents
    and 8-bit images."""
    import diffusers

    config = pipe.scheduler.config
    scheduler = getattr(diffusers, SD3_SAMPLERS[sampler]).from_config(config, **FLOW_FORM.get(sampler, {}))
    pipe = type(pipe)(**{**pipe.components, "scheduler": scheduler})  # the shared pipeline keeps its own
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        out = pipe(generator=torch.Generator().manual_seed(seed), output_type="latent", **kwargs).images
        latents = out / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        image = pipe.vae.decode(latents, return_dict=False)[0]
    images = (pipe.image_processor.postprocess(image, output_type="np") * 255).round().astype(np.uint8)
    return out.numpy(), images


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
    """OpenVINO's image of ``prompt`` against ONNX Runtime's (``ours``, a Pipeline): fp32 ≥ 45 dB, bf16 ≥ 25 dB, int8
    weights (fp32 compute) ≥ 30 dB."""
    from sdrt.runtime import Pipeline

    from parity_helpers import psnr

    expected = np.asarray(ours(prompt, **kwargs).images[0])
    for backend, floor in (("openvino", 45), ("openvino:bf16", 25), ("openvino:int8", 30)):
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
