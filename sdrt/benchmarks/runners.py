"""One full generation per call, with per-stage timings, for each backend: ``torch`` (diffusers'
StableDiffusionPipeline, the reference) and sdrt's own backends (the runtime ``Pipeline``).

Stage times come from the component calls: the backend's observer hook for sdrt, the U-Net's (and the other
modules') forward wrapped for torch; nothing else is changed, so what is timed is what runs in production.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..components import TEXT_ENCODER, UNET, VAE_DECODER, describe
from ..runtime.schedulers import diffusers_equivalent, model_sampler
from .kernels import kernel_mix

STAGES = (TEXT_ENCODER.stage, UNET.stage, VAE_DECODER.stage)


@dataclass(frozen=True)
class Request:
    prompt: str
    negative_prompt: str
    height: int
    width: int
    batch: int  # images per call
    steps: int
    guidance: float
    sampler: str
    seed: int
    latents: np.ndarray  # the same starting latents for every backend


@dataclass
class Output:
    latents: np.ndarray  # final latents, before the VAE decoder
    images: np.ndarray  # uint8 [B, H, W, 3]
    timings: dict[str, float]  # seconds: total, per stage, unet_step, overhead


def summarise(total: float, stages: dict[str, float], unet_calls: int) -> dict[str, float]:
    timings = {"total": total, **{s: stages.get(s, 0.0) for s in STAGES}}
    timings["unet_step"] = timings["unet"] / max(unet_calls, 1)
    # the time outside the component calls: the sampler loop, tokenizing, image conversion (for torch: diffusers')
    timings["overhead"] = total - sum(stages.values())
    timings["overhead_per_step"] = timings["overhead"] / max(unet_calls, 1)
    return timings


class StageTimer:
    """Seconds and calls per stage, from component calls (``observe``, or wrapped by ``wrap``); ``reset`` before
    each run."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def observe(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds
        self.calls[stage] += 1

    def wrap(self, call, stage: str):
        """``call`` timed as ``stage`` (instrumentation only: the same call)."""
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = call(*args, **kwargs)
            self.observe(stage, time.perf_counter() - t0)
            return out

        return timed

    def summary(self, total: float) -> dict[str, float]:
        return summarise(total, dict(self.seconds), self.calls[UNET.stage])


class SdrtRunner:
    """The runtime Pipeline on one backend; ``run`` times every backend call by component."""

    def __init__(self, folder: Path, backend: str):
        from ..runtime import Pipeline

        self.pipe = Pipeline.load(folder, backend=backend)
        self.name = backend
        self.device = self.pipe.backend.device
        self.timer = StageTimer()
        self.pipe.backend.observers.append(lambda component, seconds: self.timer.observe(describe(component).stage,
                                                                                         seconds))

    def __call__(self, r: Request) -> Output:
        self.timer.reset()
        t0 = time.perf_counter()
        result = self.pipe([r.prompt] * r.batch, negative_prompt=[r.negative_prompt] * r.batch, num_inference_steps=r.steps,
                           guidance_scale=r.guidance, height=r.height, width=r.width, seed=r.seed,
                           scheduler=r.sampler, latents=r.latents, weighting=False)
        total = time.perf_counter() - t0
        images = np.stack([np.asarray(im) for im in result.images])
        return Output(result.latents, images, self.timer.summary(total))

    def unet_kernels(self) -> dict[str, int] | None:
        """OpenVINO's kernels for the U-Net as it last ran (None on the other backends)."""
        compiled = getattr(self.pipe.backend, "compiled_model", lambda _: None)(UNET.name)
        return None if compiled is None else kernel_mix(compiled)

    def close(self) -> None:
        self.pipe.close()


def diffusers_scheduler(config, sampler: str):
    """diffusers' scheduler for an sdrt sampler name, from a model's scheduler config."""
    import diffusers

    cls, extra = diffusers_equivalent(model_sampler(sampler, {"_class_name": config.get("_class_name", "")}), config)
    return getattr(diffusers, cls).from_config(config, **extra)


class TorchRunner:
    """diffusers' pipeline (StableDiffusion, StableDiffusionXL, StableDiffusion3 pipelines) in fp32 on the CPU: the
    reference every figure is compared with."""

    name = "torch"

    def __init__(self, pipe, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.pipe = pipe
        self.pipe.set_progress_bar_config(disable=True)
        self.device = f"cpu ({torch.get_num_threads()} threads)"
        self._original_config = pipe.scheduler.config
        self.timer = StageTimer()
        denoiser = getattr(pipe, "unet", None) or pipe.transformer  # SD 3's and Flux's
        timed = ((TEXT_ENCODER.stage, getattr(pipe, "text_encoder", None), "forward"),
                 (TEXT_ENCODER.stage, getattr(pipe, "text_encoder_2", None), "forward"),  # SDXL's second, Flux's T5
                 (TEXT_ENCODER.stage, getattr(pipe, "text_encoder_3", None), "forward"),  # SD 3's T5
                 (UNET.stage, denoiser, "forward"), (VAE_DECODER.stage, pipe.vae, "decode"))
        for stage, module, attr in timed:
            if module is not None:
                setattr(module, attr, self.timer.wrap(getattr(module, attr), stage))

    def __call__(self, r: Request) -> Output:
        import torch

        self.pipe.scheduler = diffusers_scheduler(self._original_config, r.sampler)
        final = {}

        def keep_latents(pipe, i, t, kwargs):
            final["latents"] = kwargs["latents"]
            return {}

        self.timer.reset()
        t0 = time.perf_counter()
        with torch.no_grad():
            images = self.pipe(
                [r.prompt] * r.batch, negative_prompt=[r.negative_prompt] * r.batch, num_inference_steps=r.steps,
                guidance_scale=r.guidance, height=r.height, width=r.width, latents=torch.from_numpy(r.latents),
                generator=torch.Generator().manual_seed(r.seed), output_type="np",
                callback_on_step_end=keep_latents, callback_on_step_end_tensor_inputs=["latents"],
            ).images
        total = time.perf_counter() - t0
        images = (images * 255).round().astype(np.uint8)
        return Output(final["latents"].numpy(), images, self.timer.summary(total))

    def close(self) -> None:
        # the pipeline goes now, not when the last reference to the runner does: the next backend of a one-at-a-time
        # run loads while a loop variable may still hold this runner (sdxl-arch: 14 GB more, killed for memory)
        self.pipe = None
