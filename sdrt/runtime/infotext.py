"""The PNG ``parameters`` text of each image, in AUTOMATIC1111's format (what its PNG Info tab and other readers
understand): the prompt, the negative prompt, then ``Key: value`` fields, enough to make the image again."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import images as imageio
from .schedulers import SCHEDULERS, a1111_name

if TYPE_CHECKING:
    from ..manifest import Manifest
    from .request import Job


def infotext(
    prompt: str,
    negative_prompt: str,
    *,
    steps: int,
    sampler: str,
    cfg_scale: float,
    seed: int,
    width: int,
    height: int,
    model_hash: str,
    model: str | None = None,
    extra: dict[str, object] | None = None,
) -> str:
    """The generation parameters in AUTOMATIC1111's text format."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    fields: dict[str, object] = {
        "Steps": steps,
        "Sampler": sampler,
        "CFG scale": f"{cfg_scale:g}",
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model hash": model_hash,
    }
    if model:
        fields["Model"] = model
    fields.update(extra or {})
    lines.append(", ".join(f"{k}: {v}" for k, v in fields.items()))
    return "\n".join(lines)


def image_parameters(job: Job, manifest: Manifest, more: dict[str, object] | None = None) -> list[str]:
    """One infotext per image of ``job``, in the order of its images (each prompt's images side by side)."""
    extra = mode_infotext(job) | sampling_infotext(job.sampler, job.eta, job.s_noise, job.clip_skip) | (more or {})
    pairs = [(p, n) for p, n in zip(job.prompts, job.negatives) for _ in range(job.num_images)]
    return [
        infotext(p, n, steps=job.steps, sampler=a1111_name(job.sampler), cfg_scale=job.guidance_scale, seed=s,
                 width=job.width, height=job.height, model_hash=manifest.model_hash, model=manifest.source.get("model"),
                 extra=extra)
        for (p, n), s in zip(pairs, job.seeds)
    ]


def mode_infotext(job: Job) -> dict[str, object]:
    """What the infotext needs beyond the txt2img fields to reproduce an image of the image modes."""
    extra: dict[str, object] = {}
    if job.mode != "txt2img":
        extra["Denoising strength"] = f"{job.strength:g}"
    if job.mode == "inpaint":
        extra["Inpainting"] = "model" if job.use_model else "latent blend"
    if job.outpaint is not None:
        extra["Outpaint"] = ",".join(str(v) for v in job.outpaint)
    if job.source is not None:
        extra["Init image hash"] = imageio.image_hash(job.source)
    if not job.weighting:
        extra["Emphasis"] = "None"
    # "RNG: CPU" is AUTOMATIC1111's name for torch's CPU generator, which "torch" noise reproduces
    extra.update({"RNG": "CPU" if job.noise == "torch" else "NumPy", "Version": f"sdrt {_version()}"})
    return extra


def sampling_infotext(sampler: str, eta, s_noise, clip_skip: int) -> dict[str, object]:
    """η, s_noise and CLIP skip as AUTOMATIC1111 writes them: only where they apply and differ from the default
    (DDIM's η is "Eta DDIM", the k-diffusion samplers' "Eta")."""
    cls, extra = SCHEDULERS[sampler], {}
    if eta is not None and cls.eta_default is not None and eta != cls.eta_default:
        extra["Eta DDIM" if sampler == "ddim" else "Eta"] = float(eta)
    if s_noise is not None and cls.takes_s_noise and s_noise != 1:
        extra["Sigma noise"] = float(s_noise)
    if clip_skip > 1:
        extra["Clip skip"] = clip_skip
    return extra


def _version() -> str:
    from .. import __version__

    return __version__


def lora_parameters(chosen) -> dict[str, object]:
    """AUTOMATIC1111's ``Lora hashes: "name: hash, …"`` of a call's LoRAs (``lora.factors.LoraChoice``)."""
    if not chosen:
        return {}
    return {"Lora hashes": '"' + ", ".join(f"{c.lora.name}: {c.lora.short_hash}" for c in chosen) + '"'}


def embedding_parameters(embeddings) -> dict[str, object]:
    """AUTOMATIC1111's ``TI hashes: "name: hash, …"`` of the textual-inversion embeddings a call's prompts use."""
    if not embeddings:
        return {}
    return {"TI hashes": '"' + ", ".join(f"{e.name}: {e.short_hash}" for e in embeddings) + '"'}


def control_parameters(control) -> dict[str, object]:
    """AUTOMATIC1111's ControlNet extension's ``ControlNet N: "Model: …, Weight: …, …"`` per unit
    (``control.Control``)."""
    if control is None:
        return {}
    from .control import CONTROL_MODES

    return {f"ControlNet {i}": f'"Model: {u.name}, Weight: {u.scale:g}, Guidance Start: {u.start:g}, '
                               f'Guidance End: {u.end:g}, Control Mode: {CONTROL_MODES[u.mode]}"'
            for i, u in enumerate(control.units)}
