"""The pipeline: numpy around a backend, shaped like diffusers' StableDiffusion(Img2Img|Inpaint)Pipeline.

``__call__`` tells the story: the request checked and completed (``request.make_job``), one function per mode, each
read top to bottom (``_txt2img``, ``_img2img``, ``_inpaint``: condition on the prompts → initial latents → loop
(U-Net with classifier-free guidance, sampler step) → decode), the images' PNG parameters (``infotext``). The loop
passes the family's conditioning bundle to the U-Net as it is (``conditioning``), so it never asks which family it
runs. Every random number comes from one generator in diffusers' order, so a seed gives diffusers' image in every
mode.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from PIL import Image

from ..components import TINY_VAE_DECODER, UNET, UNET_SHALLOW, VAE_DECODER, VAE_ENCODER, RunShape
from ..errors import ManifestError, SdrtError, UserInputError
from ..embeddings.files import Embedding
from ..embeddings.library import EmbeddingLibrary
from ..lora.factors import FactorMaker, LoraChoice
from ..lora.library import LoraLibrary
from ..integrity import verify_export
from ..memory import check_load_fits
from ..manifest import Manifest, load_manifest
from . import images as imageio
from .backends import Backend, create_backend
from .conditioning import Conditioning, conditioner_for
from .control import default_control_size, make_control, zero_residuals
from .deepcache import DeepCache, check_deepcache
from .infotext import control_parameters, embedding_parameters, image_parameters, lora_parameters
from .noise import GeneratorKind
from .preview import Preview, denoised
from .request import Job, StepCallback, make_job
from .schedulers import Scheduler, default_sampler, make_scheduler
from .schedulers.flow_match import flow_schedule

log = logging.getLogger("sdrt")

InpaintMode = Literal["auto", "model", "blend"]


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

    def __init__(self, folder: Path, manifest: Manifest, backend: Backend, refiner: Pipeline | None = None,
                 loras: LoraLibrary | None = None, embeddings: EmbeddingLibrary | None = None):
        self.folder, self.manifest, self.backend = folder, manifest, backend
        self.loras = loras or LoraLibrary()
        self._lora_factors = FactorMaker(manifest)
        self._bind_loras(())
        self.conditioner = conditioner_for(folder, manifest, backend, embeddings)
        self._tokenized = None  # (job, its tokens) of the running call: tokenized once for both uses
        self.refiner = refiner  # an SDXL refiner that can take over the end of the schedule
        # what decodes live previews: the tiny VAE where the export has one (sdrt export --tiny-vae)
        self.preview_decoder = (TINY_VAE_DECODER if self.has_tiny_vae else VAE_DECODER).name
        # the scheduler the model ships with (its scheduler_config class) names the default sampler
        self.default_sampler = default_sampler(manifest.scheduler_config)

    @classmethod
    def load(cls, folder: str | Path, backend: str | Backend = "onnxruntime", refiner: str | Path | None = None,
             lora_dir: str | Path | None = None, embeddings_dir: str | Path | None = None,
             allow_pickle: bool = False) -> Pipeline:
        """``refiner``: the export of an SDXL refiner, run on the same kind of backend, for ``refiner_switch_at``.
        ``lora_dir``: where ``<lora:NAME:WEIGHT>`` tags and ``loras={NAME: WEIGHT}`` find LoRAs (default: the export's
        ``loras`` folder, when it has one); ``embeddings_dir``: the textual-inversion embeddings that prompts name
        (default: the export's ``embeddings`` folder, when it has one); ``allow_pickle`` lets pickle LoRA and
        embedding files (.pt, .bin) be read."""
        folder = Path(folder)
        manifest = load_manifest(folder)
        verify_export(folder, manifest)  # a damaged graph is refused before a backend reads it
        if lora_dir is None and (folder / "loras").is_dir():
            lora_dir = folder / "loras"
        if embeddings_dir is None and (folder / "embeddings").is_dir():
            embeddings_dir = folder / "embeddings"
        library = LoraLibrary(lora_dir, allow_pickle)
        embeddings = EmbeddingLibrary(embeddings_dir, allow_pickle)
        engine = create_backend(backend, manifest) if isinstance(backend, str) else backend
        check_load_fits(folder, manifest, engine)  # refused before the backend reads a byte
        engine.load(folder, manifest)
        log.debug("backend: %s on %s", engine.name, engine.device)
        second = None
        if refiner is not None:
            second = cls.load(refiner, backend if isinstance(backend, str) else engine.name,
                              embeddings_dir=embeddings_dir, allow_pickle=allow_pickle)  # the refiner reads them too
            if second.manifest.latent_channels != manifest.latent_channels or second.refiner is not None:
                second.close()
                raise UserInputError(f"{refiner} cannot refine {folder}'s latents (an SDXL refiner refines an SDXL base)")
        return cls(folder, manifest, engine, second, library, embeddings)

    def textual_inversions(self) -> tuple[dict[str, Embedding], dict[str, Embedding]]:
        """The embeddings folder's embeddings by name: those that fit this model's text encoders, and the others."""
        text = self.conditioner.text
        found, _ = text.embeddings.scan()
        return ({n: e for n, e in found.items() if text.fits(e)}, {n: e for n, e in found.items() if not text.fits(e)})

    def close(self) -> None:
        self.backend.close()
        if self.refiner is not None:
            self.refiner.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def is_inpainting_model(self) -> bool:
        """Whether the U-Net is an inpainting one: latents + mask + masked-image latents in (9 channels for SD)."""
        channels = self.manifest.components[UNET.name].input("sample").shape[1]
        return channels == 2 * self.manifest.latent_channels + 1

    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float | None = None,
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
        prompt_2: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        prompt_3: str | list[str] | None = None,
        negative_prompt_3: str | list[str] | None = None,
        refiner_switch_at: float | None = None,
        aesthetic_score: float = 6.0,
        negative_aesthetic_score: float = 2.5,
        loras: dict[str, float] | None = None,
        control_image: imageio.ImageInput | list[imageio.ImageInput] | None = None,
        controlnet: str | list[str] | None = None,
        controlnet_conditioning_scale: float | list[float] = 1.0,
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
        guess_mode: bool = False,
        control_mode: str | int | list | None = None,
        preview: Preview | None = None,
        vae: str = "full",
        true_cfg_scale: float = 1.0,
        deepcache_interval: int = 1,
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
        AUTOMATIC1111 does: 1 = the text encoder's last layer, 2 = the one before (diffusers' ``clip_skip=1``); for
        SDXL, 1 is its own penultimate layer. ``prompt_2`` and ``negative_prompt_2`` go to SDXL's and SD 3's second
        text encoder and to Flux's T5, ``prompt_3`` and ``negative_prompt_3`` to SD 3's T5 (default: the same
        prompts), as diffusers'. ``refiner_switch_at`` (0..1, with a refiner loaded) runs
        the base down to that fraction of the schedule and the refiner from there, as diffusers' ``denoising_end`` /
        ``denoising_start`` hand-over; ``aesthetic_score`` / ``negative_aesthetic_score`` condition a refiner.

        ``loras`` ({name or file: weight}) and the prompts' ``<lora:NAME:WEIGHT>`` tags apply LoRAs to this call
        alone (the base model's, not a refiner's), as AUTOMATIC1111 computes them. The name of a textual-inversion
        embedding of the embeddings folder in a prompt stands for its vectors, as in AUTOMATIC1111.

        ``control_image`` with ``controlnet`` (the export's ControlNet name, or a list; optional when the export has
        one) adds spatial control: as diffusers, one ControlNet takes an image or one per prompt, a list of ControlNets
        a list with one entry per ControlNet (each an image or one per prompt), with diffusers' ``controlnet_conditioning_scale``,
        ``control_guidance_start`` / ``control_guidance_end`` (one number, or one per ControlNet) and ``guess_mode``,
        in every mode; text to image defaults to the control image's size, as diffusers. ``control_mode`` (instead of
        guess mode; one, or one per ControlNet) is AUTOMATIC1111's: "balanced", "prompt" (My prompt is more
        important), "controlnet" (ControlNet is more important).

        ``preview`` (``runtime.preview.Preview``) receives live previews of the batch while the loop runs (decoded by
        the tiny VAE where the export has one). ``vae="tiny"`` decodes the images with the export's tiny VAE decoder
        (``sdrt export --tiny-vae``): much cheaper, a little less exact.

        ``guidance_scale`` defaults to the family's (7.5; SD 3: 7; Flux: 3.5). On Flux, as diffusers' FluxPipeline, it
        is the guidance the model takes as an input (dev; schnell has none), and classifier-free guidance is
        ``true_cfg_scale``, run only where a negative prompt is given.

        ``deepcache_interval=N`` (N > 1; an export with ``sdrt export --deepcache``) runs the whole U-Net every N-th
        step only and, in between, its first level on the deep features of the last whole step (DeepCache): about
        N times fewer deep passes, a slightly different image. Not with ControlNets; a refiner runs whole steps."""
        if control_image is not None and image is None and (height, width) == (None, None):
            width, height = default_control_size(control_image, self.manifest.vae_scale_factor) or (None, None)
        job = make_job(self, prompt, negative_prompt, num_inference_steps, guidance_scale, height, width, seed,
                       scheduler, num_images, latents, callback, noise, image, mask_image, strength, outpaint,
                       inpaint_mode, weighting, eta, s_noise, clip_skip, prompt_2, negative_prompt_2, aesthetic_score,
                       negative_aesthetic_score, true_cfg_scale, prompt_3, negative_prompt_3)
        control = make_control(self.manifest, control_image, controlnet, controlnet_conditioning_scale,
                               control_guidance_start, control_guidance_end, guess_mode, job.width, job.height,
                               control_mode, len(job.prompts), job.num_images)
        job = replace(job, control=control, preview=preview, vae=vae,
                      deepcache=check_deepcache(self.manifest, deepcache_interval, control))
        switch, extra = self._check_refiner(refiner_switch_at, job)
        self._check_vae(vae, self.refiner if switch is not None else self)
        chosen = self.loras.choose(job.prompts, loras)
        self._bind_loras(chosen)
        extra |= lora_parameters(chosen) | embedding_parameters(self._tokens(job).embeddings)
        extra |= control_parameters(control) | ({"VAE": "tiny"} if vae == "tiny" else {})
        extra |= {"DeepCache interval": job.deepcache} if job.deepcache > 1 else {}
        if job.distilled_guidance is not None:  # as AUTOMATIC1111 Forge writes it
            extra["Distilled CFG Scale"] = job.distilled_guidance
        if switch is not None:  # the base down to the switch, the refiner from there, and its VAE
            final, timings = self._txt2img(job, end=switch)
            final, refined = self.refiner._refine(job, final, start=switch)
            timings |= {f"refiner_{stage}": seconds for stage, seconds in refined.items()}
            decoder = self.refiner
        else:
            mode = self._inpaint if job.mask is not None else self._img2img if job.init is not None else self._txt2img
            final, timings = mode(job)
            decoder = self
        images = decoder._decode(final, timings, tiny=vae == "tiny")
        self._tokenized = None
        return GenerationResult(images, final, job.seed, image_parameters(job, self.manifest, extra), timings,
                                job.mode, job.seeds)

    def _bind_loras(self, chosen: tuple[LoraChoice, ...]) -> None:
        """Feed the factors of the LoRA set ``chosen`` (none: zero) to the graphs from now on."""
        if chosen and not self._lora_factors.has_sites:
            raise UserInputError(f"the export {self.folder} has no LoRA inputs (it was made before sdrt read LoRAs); "
                                 "export the model again to use LoRAs")
        self.backend.bound = self._lora_factors.feeds(chosen)

    def _check_refiner(self, switch, job: Job) -> tuple[float | None, dict]:
        """The switch point, and what the PNG parameters say of the refiner (as AUTOMATIC1111 writes it)."""
        if switch is None:
            return None, {}
        if self.refiner is None:
            raise UserInputError("refiner_switch_at needs a refiner: Pipeline.load(BASE, refiner=REFINER), "
                                 "--refiner REFINER")
        if isinstance(switch, bool) or not isinstance(switch, (int, float)) or not 0 < switch < 1:
            raise UserInputError(f"refiner_switch_at is the fraction of the schedule the base runs, between 0 and 1 "
                                 f"(exclusive), got {switch!r}")
        if job.control is not None:
            raise UserInputError("a ControlNet guides the base model; run the refiner without control (leave out "
                                 "refiner_switch_at, or the control image)")
        if job.mode != "txt2img":
            raise UserInputError("the refiner takes over text to image; refine an image with the refiner's own export "
                                 "as image to image")
        m = self.refiner.manifest
        return float(switch), {"Refiner": f"{m.source.get('model')} [{m.model_hash}]", "Refiner switch at": switch}

    # -- the modes ---------------------------------------------------------------------------------------

    def _txt2img(self, job: Job, end: float | None = None):
        timings: dict[str, float] = {}
        # 1. the conditioning: the prompts encoded
        conditioning = self._condition(job, timings)

        # 2. the sampler and the initial noise
        scheduler = self._scheduler(job)
        shape = self._latent_shape(job)
        if job.latents is None:
            latents = job.generator.randn(shape)
        else:
            latents = np.asarray(job.latents, dtype=np.float32)
            if latents.shape != shape:
                raise UserInputError(f"latents must have shape {shape} for this request, got {latents.shape}")
        latents = latents * np.float32(scheduler.init_noise_sigma)

        # 3. the denoising loop (down to ``end`` of the schedule where a refiner takes over)
        timesteps = scheduler.timesteps if end is None else _timesteps_until(scheduler, end)
        return self._denoise(job, latents, conditioning, scheduler, timesteps, timings), timings

    def _refine(self, job: Job, latents: np.ndarray, start: float):
        """A refiner's part: the schedule from ``start`` on, from the base's latents as they are (no noise added,
        as diffusers' ``denoising_start``); stochastic samplers continue the seed's stream."""
        timings: dict[str, float] = {}
        conditioning = self._condition(job, timings)
        scheduler = self._scheduler(job)
        timesteps = _timesteps_from(scheduler, start)
        return self._denoise(job, latents, conditioning, scheduler, timesteps, timings), timings

    def _img2img(self, job: Job):
        timings: dict[str, float] = {}
        # 1. the conditioning: the prompts encoded
        conditioning = self._condition(job, timings, encodes_image=True)

        # 2. the sampler, its schedule cut to the last ``strength`` part (diffusers' get_timesteps)
        scheduler = self._scheduler(job)
        timesteps = _strength_timesteps(scheduler, job.steps, job.strength)

        # 3. the image's latents (a sample of the VAE posterior, as diffusers), noised to the first timestep left
        image_latents = np.repeat(self._encode_image(job.init, job.generator, timings), job.batch, axis=0)
        noise = job.generator.randn(image_latents.shape)
        latents = scheduler.add_noise(image_latents, noise, np.repeat(timesteps[:1], job.batch))

        # 4. the denoising loop over the rest of the schedule
        return self._denoise(job, latents, conditioning, scheduler, timesteps, timings), timings

    def _inpaint(self, job: Job):
        m, timings = self.manifest, {}
        init, mask, strength, use_model = job.init, job.mask, job.strength, job.use_model
        # 1. the conditioning: the prompts encoded
        conditioning = self._condition(job, timings, encodes_image=True)

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
            extra_channels = np.concatenate([mask_latent, np.repeat(masked_latents, job.batch, axis=0)], axis=1)
            if job.do_cfg:
                extra_channels = np.concatenate([extra_channels] * 2)
            return self._denoise(job, latents, conditioning, scheduler, timesteps, timings, extra_channels), timings

        # 5b. an ordinary U-Net: after each step, the kept part is put back as the image's latents noised to the
        #     next timestep (diffusers encodes the masked image here too, unused: draw its numbers to stay in step)
        job.generator.randn((1, *shape[1:]))

        def blend(i: int, latents: np.ndarray) -> np.ndarray:
            kept = image_latents
            if i < len(timesteps) - 1:
                kept = scheduler.add_noise(image_latents, noise, timesteps[i + 1 : i + 2])
            return (1 - mask_latent) * kept + mask_latent * latents

        return self._denoise(job, latents, conditioning, scheduler, timesteps, timings, after_step=blend), timings

    # -- the stages the modes share ----------------------------------------------------------------------

    def _condition(self, job: Job, timings: dict, encodes_image: bool = False) -> Conditioning:
        """The family's conditioning bundle for ``job`` (the backend told the call's shape first, so a fixed-shape
        backend refuses before any graph runs)."""
        t0 = time.perf_counter()
        tokens = self._tokens(job)
        controlnets = job.control.components if job.control else ()
        tiny = job.vae == "tiny" or (job.preview is not None and self.preview_decoder == TINY_VAE_DECODER.name)
        self.backend.prepare(RunShape(job.batch, job.height, job.width, tokens.chunks, encodes_image, controlnets,
                                      tiny, job.deepcache > 1))
        conditioning = self.conditioner.encode(tokens, job)
        timings["text_encoder"] = time.perf_counter() - t0
        return conditioning

    def _tokens(self, job: Job):
        """The prompts of ``job`` tokenized, once per call: the PNG parameters (which embeddings) and the conditioning
        both need them."""
        if self._tokenized is None or self._tokenized[0] is not job:
            self._tokenized = (job, self.conditioner.tokenize(job))
        return self._tokenized[1]

    def _latent_shape(self, job: Job) -> tuple[int, int, int, int]:
        m = self.manifest
        return job.batch, m.latent_channels, job.height // m.vae_scale_factor, job.width // m.vae_scale_factor

    def _scheduler(self, job: Job) -> Scheduler:
        scheduler = make_scheduler(job.sampler, self.manifest.scheduler_config)
        scheduler.set_noise_scales(job.eta, job.s_noise)
        scheduler.set_noise_source(job.generator.randn)  # stochastic samplers continue the seed's stream
        if scheduler.prediction_type == "flow":  # its schedule may follow the image's size (Flux)
            scheduler.set_timesteps(job.steps, **flow_schedule(self.manifest, job.steps, job.height, job.width,
                                                               scheduler.custom_sigmas))
        else:
            scheduler.set_timesteps(job.steps)
        return scheduler

    def _encode_image(self, image: np.ndarray, generator, timings: dict) -> np.ndarray:
        """Scaled latents of ``image``: a sample of the VAE posterior (mean + std·noise), as diffusers' pipelines."""
        t0 = time.perf_counter()
        out = self.backend.run(VAE_ENCODER.name, {"image": image})
        if "latent_std" not in out:
            raise ManifestError(
                f"the VAE encoder of {self.folder} has no latent_std output (an older sdrt exported it); "
                f"export the model again to use images"
            )
        mean, std = out["latent"].astype(np.float32), out["latent_std"].astype(np.float32)
        sample = mean + std * generator.randn(mean.shape) - np.float32(self.manifest.vae_shift_factor)
        latents = sample * np.float32(self.manifest.vae_scaling_factor)
        timings[VAE_ENCODER.stage] = timings.get(VAE_ENCODER.stage, 0.0) + time.perf_counter() - t0
        return latents

    def _denoise(self, job: Job, latents, conditioning: Conditioning, scheduler: Scheduler, timesteps, timings: dict,
                 extra_channels: np.ndarray | None = None, after_step: Callable | None = None) -> np.ndarray:
        """The sampler loop. ``conditioning`` goes to the U-Net as it is, batched as its sample (with guidance:
        negatives first), with the ControlNet residuals of the step (zeros without control); ``extra_channels`` join
        the sample (an inpainting U-Net's mask and kept latents; ControlNets see the latents alone)."""
        t0 = time.perf_counter()
        unet = self.manifest.components[UNET.name]
        no_control = zero_residuals(unet, 2 * job.batch if job.do_cfg else job.batch, *latents.shape[2:])
        run_controlnet = self._run_controlnet(timings)
        if job.preview is not None:
            job.preview.start(latents)
        reuse = DeepCache(self.backend, job.deepcache if UNET_SHALLOW.name in self.manifest.components else 1)
        for i, t in enumerate(timesteps):
            model_input = np.concatenate([latents] * 2) if job.do_cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            timestep = np.full(len(model_input), t, dtype=np.float32)
            residuals = job.control and job.control.residuals(run_controlnet, i, len(timesteps), model_input, timestep,
                                                              conditioning, job.do_cfg)
            scaled = model_input[: len(latents)]
            if extra_channels is not None:
                model_input = np.concatenate([model_input, extra_channels], axis=1)
            feeds = {"sample": model_input, "timestep": timestep, **conditioning}
            noise_pred = reuse.run(i, feeds, residuals or no_control)
            if job.do_cfg:
                uncond, cond = np.split(noise_pred.astype(np.float32), 2)
                noise_pred = uncond + np.float32(job.guidance_scale) * (cond - uncond)
            if job.preview is not None and job.preview.due(i):
                job.preview.render(i, lambda: self._decode_preview(denoised(scheduler, scaled, noise_pred, t)))
            latents = scheduler.step(noise_pred, t, latents)
            if after_step is not None:
                latents = after_step(i, latents)
            if job.callback and job.callback(i, len(timesteps)) is True:
                break  # the caller stopped early (AUTOMATIC1111's interrupt): the latents so far are decoded
        timings["denoise"] = time.perf_counter() - t0
        _check_finite(latents, "the denoising loop")
        return latents

    def _run_controlnet(self, timings: dict) -> Callable:
        """``run(component, feeds)`` for the ControlNets, their time counted apart from the U-Net's."""
        def run(component: str, feeds: dict) -> dict:
            t0 = time.perf_counter()
            out = self.backend.run(component, feeds)
            timings["controlnet"] = timings.get("controlnet", 0.0) + time.perf_counter() - t0
            return out
        return run

    def _decode(self, latents: np.ndarray, timings: dict, tiny: bool = False) -> list[Image.Image]:
        t0 = time.perf_counter()
        decoded = self.backend.run((TINY_VAE_DECODER if tiny else VAE_DECODER).name, {"latent": self._unscaled(latents)})["image"]
        timings[VAE_DECODER.stage] = time.perf_counter() - t0
        _check_finite(decoded, "the VAE decoder")
        return imageio.to_pil(decoded.astype(np.float32))

    def _unscaled(self, latents: np.ndarray) -> np.ndarray:
        """The VAE decoder's input: the sampler's latents unscaled (and shifted back: SD 3's and Flux's VAE)."""
        m = self.manifest
        return latents / np.float32(m.vae_scaling_factor) + np.float32(m.vae_shift_factor)

    @property
    def has_tiny_vae(self) -> bool:
        return TINY_VAE_DECODER.name in self.manifest.components

    def _check_vae(self, vae: str, decoder: Pipeline) -> None:
        if vae not in ("full", "tiny"):
            raise UserInputError(f"vae must be 'full' or 'tiny', got {vae!r}")
        if vae == "tiny" and not decoder.has_tiny_vae:
            raise UserInputError(f"{decoder.folder} has no tiny VAE decoder: add one with `sdrt add-tiny-vae "
                                 f"{decoder.folder} PATH` (a diffusers AutoencoderTiny folder such as "
                                 "madebyollin/taesd), or use the full VAE")

    def _decode_preview(self, latents: np.ndarray) -> list[Image.Image]:
        """A live preview of ``latents`` by ``preview_decoder`` (none where the estimate is not finite: a preview
        never fails a call)."""
        decoded = self.backend.run(self.preview_decoder, {"latent": self._unscaled(latents)})
        image = decoded["image"].astype(np.float32)
        return imageio.to_pil(image) if np.isfinite(image).all() else []

def _strength_timesteps(scheduler: Scheduler, steps: int, strength: float) -> np.ndarray:
    """The last ``strength`` part of the schedule, and the sampler told where it starts (diffusers' get_timesteps).
    The rounding differs as diffusers' pipelines do: SD 1.x/2.x/XL run ``int(steps × strength)`` steps, SD 3's and
    Flux's ``steps − int(steps − steps × strength)`` (4 of 5 at strength 0.7, where the others run 3)."""
    init_timestep = min(steps * strength if scheduler.prediction_type == "flow" else int(steps * strength), steps)
    t_start = int(max(steps - init_timestep, 0))
    if steps - t_start < 1 or init_timestep <= 0:
        raise UserInputError(
            f"strength {strength:g} of {steps} steps leaves no step to run; raise the strength or the number of steps"
        )
    scheduler.set_begin_index(t_start * scheduler.order)
    return scheduler.timesteps[t_start * scheduler.order :]


def _cutoff(scheduler: Scheduler, fraction: float) -> int:
    """The training timestep at ``fraction`` of the denoising, as diffusers' denoising_end / denoising_start."""
    T = scheduler.config.num_train_timesteps
    return int(round(T - fraction * T))


def _timesteps_until(scheduler: Scheduler, end: float) -> np.ndarray:
    timesteps = scheduler.timesteps
    return timesteps[: int((timesteps >= _cutoff(scheduler, end)).sum())]


def _timesteps_from(scheduler: Scheduler, start: float) -> np.ndarray:
    timesteps = scheduler.timesteps
    n = int((timesteps < _cutoff(scheduler, start)).sum())
    if scheduler.order == 2 and n % 2 == 0:
        n += 1  # a second-order sampler starts on a step's first evaluation
    begin = len(timesteps) - n
    scheduler.set_begin_index(begin)
    return timesteps[begin:]


def _check_finite(array: np.ndarray, where: str) -> None:
    if not np.isfinite(array).all():
        raise SdrtError(
            f"{where} produced NaN or infinite values, so the image would be wrong. If this is an fp16 export, "
            "export the model again in fp32 (without --fp16)."
        )
