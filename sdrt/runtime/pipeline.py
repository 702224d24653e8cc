"""The text-to-image pipeline: numpy around a backend, shaped like diffusers' StableDiffusionPipeline.

Read ``Pipeline._txt2img`` top to bottom: encode prompts → noise → loop (U-Net with classifier-free
guidance, scheduler step) → decode → images.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..errors import SdrtError, UserInputError
from ..manifest import Manifest, load_manifest
from . import images as imageio
from .backends import Backend, create_backend
from .noise import MAX_SEED, GeneratorKind, make_generator, random_seed
from .schedulers import a1111_name, canonical_name, default_sampler, make_scheduler
from .tokenizer import ClipTokenizer

log = logging.getLogger("sdrt")

StepCallback = Callable[[int, int], None]  # (step index, total steps)


@dataclass(frozen=True)
class GenerationResult:
    images: list[Image.Image]
    latents: np.ndarray  # final latents, before the VAE decoder (unscaled)
    seed: int
    parameters: list[str]  # one AUTOMATIC1111 infotext per image, as written into the PNGs
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    def save(self, path: str | Path) -> list[Path]:
        """Write the images as PNGs with their parameters; ``a.png`` becomes ``a-0.png``, ``a-1.png``… for a batch."""
        path = Path(path)
        if len(self.images) == 1:
            targets = [path]
        else:
            targets = [path.with_name(f"{path.stem}-{i}{path.suffix or '.png'}") for i in range(len(self.images))]
        return [imageio.save_png(img, p, info) for img, p, info in zip(self.images, targets, self.parameters)]


class Pipeline:
    """``Pipeline.load(folder, backend=...)`` then call it like a diffusers pipeline."""

    def __init__(self, folder: Path, manifest: Manifest, backend: Backend):
        self.folder, self.manifest, self.backend = folder, manifest, backend
        self.tokenizer = ClipTokenizer(folder, manifest.tokenizers["tokenizer"])
        # the scheduler the model ships with (its scheduler_config class) names the default sampler
        self.default_sampler = default_sampler(manifest.scheduler_config)

    @classmethod
    def load(cls, folder: str | Path, backend: str | Backend = "onnxruntime") -> Pipeline:
        folder = Path(folder)
        manifest = load_manifest(folder)
        engine = create_backend(backend) if isinstance(backend, str) else backend
        engine.load(folder, manifest)
        log.debug("backend: %s on %s", engine.name, engine.device)
        return cls(folder, manifest, engine)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        height: int | None = None,
        width: int | None = None,
        seed: int | None = None,
        scheduler: str | None = None,
        num_images: int = 1,
        latents: np.ndarray | None = None,
        callback: StepCallback | None = None,
        noise: GeneratorKind = "torch",
    ) -> GenerationResult:
        """Generate images. ``noise="torch"`` draws the same numbers as diffusers' CPU
        ``torch.Generator().manual_seed(seed)`` (initial latents, then the stochastic samplers' step
        noise, from one generator), so a seed gives diffusers' image; ``"numpy"`` uses numpy's PCG64."""
        m = self.manifest
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        height = m.default_size if height is None else height
        width = m.default_size if width is None else width
        sampler = canonical_name(scheduler or self.default_sampler)
        negatives = self._negatives(negative_prompt, len(prompts))
        self._check(prompts, num_inference_steps, guidance_scale, height, width, num_images, seed)
        seed = random_seed() if seed is None else int(seed)
        if noise not in ("torch", "numpy"):
            raise UserInputError(f"noise must be 'torch' or 'numpy', got {noise!r}")
        generator = make_generator(seed, noise)
        batch = len(prompts) * num_images
        shape = (batch, m.latent_channels, height // m.vae_scale_factor, width // m.vae_scale_factor)
        if latents is not None:
            latents = np.asarray(latents, dtype=np.float32)
            if latents.shape != shape:
                raise UserInputError(f"latents must have shape {shape} for this request, got {latents.shape}")
        else:
            latents = generator.randn(shape)

        images, final, timings = self._txt2img(
            prompts, negatives, num_images, num_inference_steps, guidance_scale, sampler, latents, generator, callback
        )
        parameters = [
            imageio.infotext(
                p, n, steps=num_inference_steps, sampler=a1111_name(sampler), cfg_scale=guidance_scale, seed=seed,
                width=width, height=height, model_hash=m.model_hash, model=m.source.get("model"),
                # "RNG: CPU" is AUTOMATIC1111's name for torch's CPU generator, which "torch" noise reproduces
                extra={"RNG": "CPU" if noise == "torch" else "NumPy", "Version": f"sdrt {_version()}"},
            )
            for p, n in zip(prompts, negatives)
            for _ in range(num_images)
        ]
        return GenerationResult(images, final, seed, parameters, timings)

    def _txt2img(self, prompts, negatives, num_images, steps, guidance_scale, sampler, latents, generator, callback):
        m, timings = self.manifest, {}
        do_cfg = guidance_scale > 1.0  # as diffusers: guidance 1 (or less) is one plain U-Net pass

        # 1. encode the prompts (negatives first: the U-Net batch is [uncond..., cond...])
        t0 = time.perf_counter()
        texts = (negatives + prompts) if do_cfg else prompts
        embeddings = self.backend.run("text_encoder", {"input_ids": self.tokenizer(texts)})["last_hidden_state"]
        embeddings = np.repeat(embeddings, num_images, axis=0)  # each prompt's images side by side, as diffusers
        timings["text_encoder"] = time.perf_counter() - t0

        # 2. prepare the sampler and the initial noise
        scheduler = make_scheduler(sampler, m.scheduler_config)
        scheduler.set_noise_source(generator.randn)  # stochastic samplers continue the seed's stream
        scheduler.set_timesteps(steps)
        latents = latents * np.float32(scheduler.init_noise_sigma)

        # 3. denoising loop
        t0 = time.perf_counter()
        for i, t in enumerate(scheduler.timesteps):
            model_input = np.concatenate([latents] * 2) if do_cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            timestep = np.full(len(model_input), t, dtype=np.float32)
            noise_pred = self.backend.run(
                "unet", {"sample": model_input, "timestep": timestep, "encoder_hidden_states": embeddings}
            )["noise_pred"]
            if do_cfg:
                uncond, cond = np.split(noise_pred.astype(np.float32), 2)
                noise_pred = uncond + np.float32(guidance_scale) * (cond - uncond)
            latents = scheduler.step(noise_pred, t, latents)
            if callback:
                callback(i, len(scheduler.timesteps))
        timings["denoise"] = time.perf_counter() - t0
        _check_finite(latents, "the denoising loop")

        # 4. decode
        t0 = time.perf_counter()
        decoded = self.backend.run("vae_decoder", {"latent": latents / np.float32(m.vae_scaling_factor)})["image"]
        timings["vae_decoder"] = time.perf_counter() - t0
        _check_finite(decoded, "the VAE decoder")
        return imageio.to_pil(decoded.astype(np.float32)), latents, timings

    def _negatives(self, negative_prompt, n: int) -> list[str]:
        if negative_prompt is None:
            return [""] * n
        if isinstance(negative_prompt, str):
            return [negative_prompt] * n
        negatives = list(negative_prompt)
        if len(negatives) != n:
            raise UserInputError(f"got {len(negatives)} negative prompts for {n} prompts; give one per prompt, or one string for all")
        return negatives

    def _check(self, prompts, steps, guidance_scale, height, width, num_images, seed) -> None:
        m = self.manifest
        lo, hi = m.size_range
        if not prompts:
            raise UserInputError("no prompt given; pass a string (an empty one is allowed) or a list of strings")
        if not all(isinstance(p, str) for p in prompts):
            raise UserInputError("prompts must be strings")
        if not isinstance(steps, int) or steps < 1:
            raise UserInputError(f"the number of steps must be a whole number of at least 1, got {steps!r}")
        if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale):
            raise UserInputError(f"the guidance scale must be a finite number, got {guidance_scale!r}")
        for label, v in (("height", height), ("width", width)):
            if not isinstance(v, int) or v % m.vae_scale_factor:
                raise UserInputError(f"{label} must be a multiple of {m.vae_scale_factor}, got {v!r}")
            if not lo <= v <= hi:
                raise UserInputError(f"{label} {v} is outside the range this model was exported for: {lo} to {hi} pixels")
        if not isinstance(num_images, int) or num_images < 1:
            raise UserInputError(f"the number of images per prompt must be at least 1, got {num_images!r}")
        if len(prompts) * num_images > m.max_batch:
            raise UserInputError(
                f"{len(prompts) * num_images} images in one batch is more than the {m.max_batch} this export declares; "
                f"generate fewer at once, or export again with a larger --max-batch"
            )
        if seed is not None and not (isinstance(seed, (int, np.integer)) and 0 <= seed <= MAX_SEED):
            raise UserInputError(f"the seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}")


def _check_finite(array: np.ndarray, where: str) -> None:
    if not np.isfinite(array).all():
        raise SdrtError(
            f"{where} produced NaN or infinite values, so the image would be wrong. If this is an fp16 export, "
            "export the model again in fp32 (without --fp16)."
        )


def _version() -> str:
    from .. import __version__

    return __version__
