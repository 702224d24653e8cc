"""The pipeline: numpy around a backend, shaped like diffusers' StableDiffusion(Img2Img|Inpaint)Pipeline.

One function per mode, each read top to bottom: ``_txt2img``, ``_img2img``, ``_inpaint``: encode prompts → initial
latents → loop (U-Net with classifier-free guidance, scheduler step) → decode. Every random number comes from one
generator in diffusers' order, so a seed gives diffusers' image in every mode.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from PIL import Image

from ..errors import ManifestError, SdrtError, UserInputError
from ..manifest import Manifest, load_manifest
from . import images as imageio
from .backends import Backend, create_backend
from .backends.base import RunShape
from .noise import MAX_SEED, GeneratorKind, PerImageGenerators, make_generator, random_seed
from .prompts import apply_weights, tokenize_prompt
from .schedulers import SCHEDULERS, Scheduler, a1111_name, canonical_name, default_sampler, make_scheduler
from .tokenizer import ClipTokenizer

log = logging.getLogger("sdrt")

StepCallback = Callable[[int, int], "bool | None"]  # (step index, total steps); True stops the loop
InpaintMode = Literal["auto", "model", "blend"]
INPAINT_MODES = ("auto", "model", "blend")


@dataclass(frozen=True)
class GenerationResult:
    images: list[Image.Image]
    latents: np.ndarray  # final latents, before the VAE decoder (unscaled)
    seed: int
    parameters: list[str]  # one AUTOMATIC1111 infotext per image, as written into the PNGs
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    mode: str = "txt2img"  # "txt2img" | "img2img" | "inpaint"
    seeds: list[int] = field(default_factory=list)  # each image's seed (all ``seed`` unless a list was given)

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
        engine = create_backend(backend, manifest) if isinstance(backend, str) else backend
        engine.load(folder, manifest)
        log.debug("backend: %s on %s", engine.name, engine.device)
        return cls(folder, manifest, engine)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def is_inpainting_model(self) -> bool:
        """Whether the U-Net is an inpainting one: latents + mask + masked-image latents in (9 channels for SD)."""
        channels = self.manifest.components["unet"].input("sample").shape[1]
        return channels == 2 * self.manifest.latent_channels + 1

    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        height: int | None = None,
        width: int | None = None,
        seed: int | list[int] | None = None,
        scheduler: str | None = None,
        num_images: int = 1,
        latents: np.ndarray | None = None,
        callback: StepCallback | None = None,
        noise: GeneratorKind = "torch",
        image: imageio.ImageInput | None = None,
        mask_image: imageio.ImageInput | None = None,
        strength: float | None = None,
        outpaint: tuple[int, int, int, int] | None = None,
        inpaint_mode: InpaintMode = "auto",
        weighting: bool = True,
        eta: float | None = None,
        s_noise: float | None = None,
        clip_skip: int = 1,
    ) -> GenerationResult:
        """Generate images: text to image; with ``image``, image to image (``strength`` 0..1 of the schedule is run,
        default 0.8); with ``image`` and ``mask_image`` (white = repaint), inpainting (default strength 1); with
        ``image`` and ``outpaint=(left, top, right, bottom)`` pixels, outpainting. ``inpaint_mode``: "model" needs an
        inpainting U-Net, "blend" blends latents under the mask with any ordinary model, "auto" picks what the model
        has. ``height``/``width`` default to the model's size, or the image's (rounded down to a multiple of 8).

        Prompts take AUTOMATIC1111's weights ``(word:1.3)``, ``(word)``, ``[word]`` and may be longer than 75 tokens
        (``weighting=False`` reads brackets as text, as diffusers does). ``noise="torch"`` draws the same numbers as
        diffusers' CPU ``torch.Generator().manual_seed(seed)``, in diffusers' order, so a seed gives diffusers'
        image; ``"numpy"`` uses numpy's PCG64. ``latents`` replaces the initial noise of text to image. A list of
        seeds, one per image (text to image), gives each image its own generator, as AUTOMATIC1111's batches: each
        image is then the one its seed gives alone.

        ``eta`` is η where the sampler has one: DDIM's (default 0, deterministic; diffusers' ``eta``) and the scale of
        the fresh noise of Euler a and DPM++ SDE (default 1; k-diffusion's ``eta``); ``s_noise`` scales that noise
        (default 1). Samplers without them ignore them, as diffusers and AUTOMATIC1111 do. ``clip_skip`` counts as
        AUTOMATIC1111 does: 1 = the text encoder's last layer, 2 = the one before (diffusers' ``clip_skip=1``)."""
        m = self.manifest
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        sampler = canonical_name(scheduler or self.default_sampler)
        negatives = self._negatives(negative_prompt, len(prompts))

        source = None if image is None else imageio.load_image(image)
        mode, picture, mask_picture = self._read_images(source, mask_image, outpaint)
        if mode == "txt2img" and strength is not None:
            raise UserInputError("strength applies to an input image (img2img, inpainting); give one with image=... / --init-image")
        if mode != "txt2img" and latents is not None:
            raise UserInputError("latents= replaces the noise of text to image only; img2img and inpainting draw theirs from the seed")
        strength = _check_strength({"txt2img": 1.0, "img2img": 0.8, "inpaint": 1.0}[mode] if strength is None else strength)
        use_model = self._inpaint_with_model(inpaint_mode) if mode == "inpaint" else self.is_inpainting_model
        auto_w, auto_h = (m.default_size,) * 2 if picture is None else imageio.default_size(picture, m.vae_scale_factor)
        width, height = auto_w if width is None else width, auto_h if height is None else height
        seeds = list(seed) if isinstance(seed, (list, tuple)) else None
        if seeds is not None and (mode != "txt2img" or len(seeds) != len(prompts) * num_images):
            raise UserInputError(f"a list of seeds gives one seed per image of text to image: {len(prompts) * num_images} "
                                 f"image(s) here, {len(seeds)} seed(s)" if mode == "txt2img" else
                                 "a list of seeds is for text to image; give img2img and inpainting one seed")
        for value in seeds or [seed]:
            self._check(prompts, num_inference_steps, guidance_scale, height, width, num_images, value)
        self._check_clip_skip(clip_skip)
        make_scheduler(sampler, m.scheduler_config).set_noise_scales(eta, s_noise)  # bad values fail before any work

        # the input image and mask as arrays at the output size
        init = None if picture is None else imageio.image_to_array(picture, width, height)
        mask = None if mask_picture is None else imageio.mask_to_array(mask_picture, width, height)
        if use_model and mode != "inpaint":
            # an inpainting U-Net always wants a mask: repaint everything, over a gray image for text to image
            # (what AUTOMATIC1111 does with inpainting checkpoints)
            init = np.zeros((1, 3, height, width), np.float32) if init is None else init
            mask = np.ones((1, 1, height, width), np.float32)

        if noise not in ("torch", "numpy"):
            raise UserInputError(f"noise must be 'torch' or 'numpy', got {noise!r}")
        if seeds is None:
            seed = random_seed() if seed is None else int(seed)
            seeds, generator = [seed] * (len(prompts) * num_images), make_generator(seed, noise)
        else:
            seeds = [int(s) for s in seeds]
            seed, generator = seeds[0], PerImageGenerators([make_generator(s, noise) for s in seeds])
        job = _Job(prompts, negatives, num_images, num_inference_steps, guidance_scale, sampler, height, width,
                   generator, callback, weighting, eta, s_noise, clip_skip)
        if mask is not None:
            final, timings = self._inpaint(job, init, mask, strength, use_model)
        elif init is not None:
            final, timings = self._img2img(job, init, strength)
        else:
            final, timings = self._txt2img(job, latents)
        images = self._decode(final, timings)

        extra = _infotext_extras(mode, strength, use_model, outpaint, source, weighting, noise)
        extra |= sampling_infotext(sampler, eta, s_noise, clip_skip)
        pairs = [(p, n) for p, n in zip(prompts, negatives) for _ in range(num_images)]
        parameters = [
            imageio.infotext(
                p, n, steps=num_inference_steps, sampler=a1111_name(sampler), cfg_scale=guidance_scale, seed=s,
                width=width, height=height, model_hash=m.model_hash, model=m.source.get("model"), extra=extra,
            )
            for (p, n), s in zip(pairs, seeds)
        ]
        return GenerationResult(images, final, seed, parameters, timings, mode, seeds)

    def _read_images(self, image: Image.Image | None, mask_image,
                     outpaint) -> tuple[str, Image.Image | None, Image.Image | None]:
        """The mode, and the input image and mask as PIL images (an outpainting canvas and its mask)."""
        if outpaint is not None:
            if image is None:
                raise UserInputError("outpainting extends an image: give one (image=..., --init-image)")
            if mask_image is not None:
                raise UserInputError("give a mask or outpaint margins, not both")
            canvas, mask = imageio.outpaint_canvas(image, *_margins(outpaint), self.manifest.vae_scale_factor)
            return "inpaint", canvas, mask
        if mask_image is not None and image is None:
            raise UserInputError("a mask needs the image it applies to (image=..., --init-image)")
        if image is None:
            return "txt2img", None, None
        if mask_image is None:
            return "img2img", image, None
        mask = imageio.load_image(mask_image, "mask", mode="L")
        if mask.size != image.size:
            raise UserInputError(
                f"the mask is {mask.width}x{mask.height} but the image is {image.width}x{image.height}; "
                "give a mask of the image's size (white = repaint)"
            )
        return "inpaint", image, mask

    # -- the modes ---------------------------------------------------------------------------------------

    def _txt2img(self, job: _Job, latents: np.ndarray | None):
        timings: dict[str, float] = {}
        # 1. encode the prompts
        embeddings = self._encode_prompts(job, timings)

        # 2. the sampler and the initial noise
        scheduler = self._scheduler(job)
        shape = self._latent_shape(job)
        if latents is None:
            latents = job.generator.randn(shape)
        else:
            latents = np.asarray(latents, dtype=np.float32)
            if latents.shape != shape:
                raise UserInputError(f"latents must have shape {shape} for this request, got {latents.shape}")
        latents = latents * np.float32(scheduler.init_noise_sigma)

        # 3. the denoising loop
        return self._denoise(job, latents, embeddings, scheduler, scheduler.timesteps, timings), timings

    def _img2img(self, job: _Job, init: np.ndarray, strength: float):
        timings: dict[str, float] = {}
        # 1. encode the prompts
        embeddings = self._encode_prompts(job, timings, encodes_image=True)

        # 2. the sampler, its schedule cut to the last ``strength`` part (diffusers' get_timesteps)
        scheduler = self._scheduler(job)
        timesteps = _strength_timesteps(scheduler, job.steps, strength)

        # 3. the image's latents (a sample of the VAE posterior, as diffusers), noised to the first timestep left
        image_latents = np.repeat(self._encode_image(init, job.generator, timings), job.batch, axis=0)
        noise = job.generator.randn(image_latents.shape)
        latents = scheduler.add_noise(image_latents, noise, np.repeat(timesteps[:1], job.batch))

        # 4. the denoising loop over the rest of the schedule
        return self._denoise(job, latents, embeddings, scheduler, timesteps, timings), timings

    def _inpaint(self, job: _Job, init: np.ndarray, mask: np.ndarray, strength: float, use_model: bool):
        m, timings = self.manifest, {}
        # 1. encode the prompts
        embeddings = self._encode_prompts(job, timings, encodes_image=True)

        # 2. the sampler, its schedule cut to the last ``strength`` part
        scheduler = self._scheduler(job)
        timesteps = _strength_timesteps(scheduler, job.steps, strength)

        # 3. initial latents: pure noise at full strength, else the image's latents noised to the first timestep.
        #    Latent blending needs the image's latents in any case (diffusers encodes it before drawing the noise).
        image_latents = None
        if not use_model or strength < 1.0:
            image_latents = np.repeat(self._encode_image(init, job.generator, timings), job.batch, axis=0)
        shape = self._latent_shape(job)
        noise = job.generator.randn(shape)
        if strength == 1.0:
            latents = noise * np.float32(scheduler.init_noise_sigma)
        else:
            latents = scheduler.add_noise(image_latents, noise, np.repeat(timesteps[:1], job.batch))

        # 4. the mask at latent resolution (the nearest pixel, as torch's interpolate)
        f = m.vae_scale_factor
        mask_latent = np.repeat(mask[:, :, ::f, ::f], job.batch, axis=0)

        # 5a. an inpainting U-Net sees the mask and the latents of the kept part beside the noisy latents
        if use_model:
            masked_latents = self._encode_image(init * (mask < 0.5), job.generator, timings)
            conditioning = np.concatenate([mask_latent, np.repeat(masked_latents, job.batch, axis=0)], axis=1)
            if job.do_cfg:
                conditioning = np.concatenate([conditioning] * 2)
            return self._denoise(job, latents, embeddings, scheduler, timesteps, timings, conditioning), timings

        # 5b. an ordinary U-Net: after each step, the kept part is put back as the image's latents noised to the
        #     next timestep (diffusers encodes the masked image here too, unused: draw its numbers to stay in step)
        job.generator.randn((1, *shape[1:]))

        def blend(i: int, latents: np.ndarray) -> np.ndarray:
            kept = image_latents
            if i < len(timesteps) - 1:
                kept = scheduler.add_noise(image_latents, noise, timesteps[i + 1 : i + 2])
            return (1 - mask_latent) * kept + mask_latent * latents

        return self._denoise(job, latents, embeddings, scheduler, timesteps, timings, after_step=blend), timings

    # -- the stages the modes share ----------------------------------------------------------------------

    def _encode_prompts(self, job: _Job, timings: dict, encodes_image: bool = False) -> np.ndarray:
        """Hidden states ``[U-Net batch, 77·chunks, D]``: negatives first ([uncond..., cond...]), each prompt's
        images side by side, as diffusers; prompts of fewer chunks padded with the empty prompt's, as AUTOMATIC1111."""
        t0 = time.perf_counter()
        texts = (job.negatives + job.prompts) if job.do_cfg else job.prompts
        chunks = [tokenize_prompt(self.tokenizer, text, job.weighting) for text in texts]
        n = max(len(c) for c in chunks)
        self.backend.prepare(RunShape(job.batch, job.height, job.width, n, encodes_image=encodes_image))
        if n > 1:
            empty = tokenize_prompt(self.tokenizer, "", job.weighting)
            chunks = [c.padded(n, empty) for c in chunks]
        inputs = {"input_ids": np.concatenate([c.ids for c in chunks])}
        if self._takes_clip_skip:
            inputs["clip_skip"] = np.array([job.clip_skip], dtype=np.int32)
        hidden = self.backend.run("text_encoder", inputs)["last_hidden_state"].astype(np.float32)
        hidden = hidden.reshape(len(texts), n, *hidden.shape[1:])
        hidden = np.stack([apply_weights(h, c.weights) for h, c in zip(hidden, chunks)])
        hidden = hidden.reshape(len(texts), n * hidden.shape[2], hidden.shape[3])
        timings["text_encoder"] = time.perf_counter() - t0
        return np.repeat(hidden, job.num_images, axis=0)

    def _latent_shape(self, job: _Job) -> tuple[int, int, int, int]:
        m = self.manifest
        return job.batch, m.latent_channels, job.height // m.vae_scale_factor, job.width // m.vae_scale_factor

    def _scheduler(self, job: _Job) -> Scheduler:
        scheduler = make_scheduler(job.sampler, self.manifest.scheduler_config)
        scheduler.set_noise_scales(job.eta, job.s_noise)
        scheduler.set_noise_source(job.generator.randn)  # stochastic samplers continue the seed's stream
        scheduler.set_timesteps(job.steps)
        return scheduler

    def _encode_image(self, image: np.ndarray, generator, timings: dict) -> np.ndarray:
        """Scaled latents of ``image``: a sample of the VAE posterior (mean + std·noise), as diffusers' pipelines."""
        t0 = time.perf_counter()
        out = self.backend.run("vae_encoder", {"image": image})
        if "latent_std" not in out:
            raise ManifestError(
                f"the VAE encoder of {self.folder} has no latent_std output (an older sdrt exported it); "
                f"export the model again to use images"
            )
        mean, std = out["latent"].astype(np.float32), out["latent_std"].astype(np.float32)
        latents = (mean + std * generator.randn(mean.shape)) * np.float32(self.manifest.vae_scaling_factor)
        timings["vae_encoder"] = timings.get("vae_encoder", 0.0) + time.perf_counter() - t0
        return latents

    def _denoise(self, job: _Job, latents, embeddings, scheduler: Scheduler, timesteps, timings: dict,
                 conditioning: np.ndarray | None = None, after_step: Callable | None = None) -> np.ndarray:
        t0 = time.perf_counter()
        for i, t in enumerate(timesteps):
            model_input = np.concatenate([latents] * 2) if job.do_cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            if conditioning is not None:
                model_input = np.concatenate([model_input, conditioning], axis=1)
            timestep = np.full(len(model_input), t, dtype=np.float32)
            noise_pred = self.backend.run(
                "unet", {"sample": model_input, "timestep": timestep, "encoder_hidden_states": embeddings}
            )["noise_pred"]
            if job.do_cfg:
                uncond, cond = np.split(noise_pred.astype(np.float32), 2)
                noise_pred = uncond + np.float32(job.guidance_scale) * (cond - uncond)
            latents = scheduler.step(noise_pred, t, latents)
            if after_step is not None:
                latents = after_step(i, latents)
            if job.callback and job.callback(i, len(timesteps)) is True:
                break  # the caller stopped early (AUTOMATIC1111's interrupt): the latents so far are decoded
        timings["denoise"] = time.perf_counter() - t0
        _check_finite(latents, "the denoising loop")
        return latents

    def _decode(self, latents: np.ndarray, timings: dict) -> list[Image.Image]:
        t0 = time.perf_counter()
        decoded = self.backend.run("vae_decoder", {"latent": latents / np.float32(self.manifest.vae_scaling_factor)})["image"]
        timings["vae_decoder"] = time.perf_counter() - t0
        _check_finite(decoded, "the VAE decoder")
        return imageio.to_pil(decoded.astype(np.float32))

    # -- checks ------------------------------------------------------------------------------------------

    def _inpaint_with_model(self, inpaint_mode: str) -> bool:
        if inpaint_mode not in INPAINT_MODES:
            raise UserInputError(f"inpaint mode must be one of {', '.join(INPAINT_MODES)}, got {inpaint_mode!r}")
        if inpaint_mode == "model" and not self.is_inpainting_model:
            channels = self.manifest.components["unet"].input("sample").shape[1]
            raise UserInputError(
                f"this model's U-Net takes {channels} channels, not the {2 * self.manifest.latent_channels + 1} of an "
                "inpainting model; export an inpainting checkpoint, or use inpaint mode 'blend' (or 'auto')"
            )
        if inpaint_mode == "blend" and self.is_inpainting_model:
            raise UserInputError(
                "this is an inpainting model: its U-Net needs the mask as input, so latent blending does not apply; "
                "use inpaint mode 'model' (or 'auto')"
            )
        return self.is_inpainting_model

    @property
    def _takes_clip_skip(self) -> bool:
        return any(t.name == "clip_skip" for t in self.manifest.components["text_encoder"].inputs)

    def _check_clip_skip(self, clip_skip) -> None:
        layers = self.manifest.text_layers
        if isinstance(clip_skip, bool) or not isinstance(clip_skip, (int, np.integer)) or clip_skip < 1:
            raise UserInputError(f"clip skip is a whole number of at least 1 (1 = the last layer, as AUTOMATIC1111), "
                                 f"got {clip_skip!r}")
        if clip_skip > 1 and not self._takes_clip_skip:
            raise ManifestError(f"the text encoder of {self.folder} was exported without CLIP skip (an older sdrt); "
                                "export the model again to use it")
        if layers and clip_skip > layers:
            raise UserInputError(f"clip skip {clip_skip} is more than the {layers} layers of this text encoder")

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



@dataclass(frozen=True)
class _Job:
    """One checked request, as the mode functions need it."""

    prompts: list[str]
    negatives: list[str]
    num_images: int
    steps: int
    guidance_scale: float
    sampler: str
    height: int
    width: int
    generator: object  # noise.TorchCompatibleGenerator | noise.NumpyGenerator
    callback: StepCallback | None
    weighting: bool
    eta: float | None = None  # None: the sampler's own
    s_noise: float | None = None
    clip_skip: int = 1

    @property
    def batch(self) -> int:
        return len(self.prompts) * self.num_images

    @property
    def do_cfg(self) -> bool:
        return self.guidance_scale > 1.0  # as diffusers: guidance 1 (or less) is one plain U-Net pass


def _margins(outpaint) -> tuple[int, int, int, int]:
    try:
        left, top, right, bottom = outpaint
    except (TypeError, ValueError):
        raise UserInputError(f"outpaint takes four pixel margins (left, top, right, bottom), got {outpaint!r}") from None
    return left, top, right, bottom


def _check_strength(strength) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
        raise UserInputError(f"strength must be a number from 0 to 1 (the part of the schedule that is run), got {strength!r}")
    return float(strength)


def _infotext_extras(mode, strength, use_model, outpaint, source: Image.Image | None, weighting,
                     noise) -> dict[str, object]:
    """What the infotext needs beyond the txt2img fields to reproduce an image."""
    extra: dict[str, object] = {}
    if mode != "txt2img":
        extra["Denoising strength"] = f"{strength:g}"
    if mode == "inpaint":
        extra["Inpainting"] = "model" if use_model else "latent blend"
    if outpaint is not None:
        extra["Outpaint"] = ",".join(str(v) for v in outpaint)
    if source is not None:
        extra["Init image hash"] = imageio.image_hash(source)
    if not weighting:
        extra["Emphasis"] = "None"
    # "RNG: CPU" is AUTOMATIC1111's name for torch's CPU generator, which "torch" noise reproduces
    extra.update({"RNG": "CPU" if noise == "torch" else "NumPy", "Version": f"sdrt {_version()}"})
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


def _strength_timesteps(scheduler: Scheduler, steps: int, strength: float) -> np.ndarray:
    """The last ``strength`` part of the schedule, and the sampler told where it starts (diffusers' get_timesteps)."""
    init_timestep = min(int(steps * strength), steps)
    t_start = max(steps - init_timestep, 0)
    if init_timestep < 1:
        raise UserInputError(
            f"strength {strength:g} of {steps} steps leaves no step to run; raise the strength or the number of steps"
        )
    scheduler.set_begin_index(t_start * scheduler.order)
    return scheduler.timesteps[t_start * scheduler.order :]


def _check_finite(array: np.ndarray, where: str) -> None:
    if not np.isfinite(array).all():
        raise SdrtError(
            f"{where} produced NaN or infinite values, so the image would be wrong. If this is an fp16 export, "
            "export the model again in fp32 (without --fp16)."
        )


def _version() -> str:
    from .. import __version__

    return __version__
