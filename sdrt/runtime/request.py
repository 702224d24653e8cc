"""A generation request checked and completed before any graph runs: the mode (text to image, image to image,
inpainting) and its input arrays at the output size, the size, the seeds and their generators, the sampler and its
settings. Every user mistake is a UserInputError raised here, before any work, with what to do."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
from PIL import Image

from ..components import TEXT_ENCODER, TEXT_ENCODER_2, UNET
from ..errors import ManifestError, UserInputError
from ..families import FAMILIES
from . import images as imageio
from .noise import MAX_SEED, PerImageGenerators, make_generator, random_seed
from .schedulers import make_scheduler, model_sampler

if TYPE_CHECKING:
    from .control import Control
    from .preview import Preview
    from .pipeline import Pipeline

StepCallback = Callable[[int, int], "bool | None"]  # (step index, total steps); True stops the loop
INPAINT_MODES = ("auto", "model", "blend")
DEFAULT_STRENGTH = {"txt2img": 1.0, "img2img": 0.8, "inpaint": 1.0}


@dataclass(frozen=True)
class Job:
    """One checked request, as the mode functions need it."""

    prompts: list[str]
    negatives: list[str]  # "" where none was given
    num_images: int
    steps: int
    guidance_scale: float
    sampler: str
    height: int
    width: int
    generator: object  # noise.TorchCompatibleGenerator | noise.NumpyGenerator | noise.PerImageGenerators
    callback: StepCallback | None
    weighting: bool
    eta: float | None  # None: the sampler's own
    s_noise: float | None
    clip_skip: int
    mode: str  # "txt2img" | "img2img" | "inpaint"
    seed: int
    seeds: list[int]  # one per image
    noise: str  # "torch" | "numpy"
    strength: float
    use_model: bool  # the U-Net is an inpainting one (it sees the mask)
    init: np.ndarray | None = None  # the input image [1, 3, H, W] in [-1, 1]
    mask: np.ndarray | None = None  # [1, 1, H, W], 1 = repaint
    latents: np.ndarray | None = None  # text to image's initial noise, when given
    outpaint: tuple[int, int, int, int] | None = None
    source: Image.Image | None = field(default=None, repr=False)  # the input image as given (for its hash)
    prompts_2: list[str] = field(default_factory=list)  # the second text encoder's (SDXL), else the prompts
    negatives_2: list[str] = field(default_factory=list)
    aesthetic_score: float = 6.0  # an SDXL refiner's time ids (diffusers' defaults)
    negative_aesthetic_score: float = 2.5
    control: Control | None = None  # ControlNets and their images (runtime/control.py)
    preview: Preview | None = None  # live previews (runtime/preview.py)
    vae: str = "full"  # the decoder of the images: "full", or "tiny" (the export's vae_decoder_tiny)
    distilled_guidance: float | None = None  # Flux dev's guidance input (guidance_scale is then its true CFG)
    prompts_3: list[str] = field(default_factory=list)  # SD 3's T5 prompts (prompt_3), else the prompts
    negatives_3: list[str] = field(default_factory=list)
    deepcache: int = 1  # the whole U-Net every this many steps, the shallow one between (runtime/deepcache.py)

    @property
    def batch(self) -> int:
        return len(self.prompts) * self.num_images

    @property
    def do_cfg(self) -> bool:
        return self.guidance_scale > 1.0  # as diffusers: guidance 1 (or less) is one plain U-Net pass


def make_job(pipe: Pipeline, prompt, negative_prompt, num_inference_steps, guidance_scale, height, width, seed,
             scheduler, num_images, latents, callback, noise, image, mask_image, strength, outpaint, inpaint_mode,
             weighting, eta, s_noise, clip_skip, prompt_2=None, negative_prompt_2=None, aesthetic_score=6.0,
             negative_aesthetic_score=2.5, true_cfg_scale=1.0, prompt_3=None, negative_prompt_3=None) -> Job:
    """The Job of a ``Pipeline.__call__`` (same arguments), every value checked and every default filled in."""
    m = pipe.manifest
    guidance_scale, distilled = _guidance(m, guidance_scale, true_cfg_scale, negative_prompt)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    sampler = model_sampler(scheduler or pipe.default_sampler, m.scheduler_config)
    negatives = _negatives(negative_prompt, len(prompts))
    prompts_2, negatives_2 = _encoder_prompts(pipe, 2, prompt_2, negative_prompt_2, prompts, negatives)
    prompts_3, negatives_3 = _encoder_prompts(pipe, 3, prompt_3, negative_prompt_3, prompts, negatives)

    source = None if image is None else imageio.load_image(image)
    mode, picture, mask_picture = _read_images(source, mask_image, outpaint, m.vae_scale_factor)
    if mode == "txt2img" and strength is not None:
        raise UserInputError("strength applies to an input image (img2img, inpainting); give one with image=... / --init-image")
    if mode != "txt2img" and latents is not None:
        raise UserInputError("latents= replaces the noise of text to image only; img2img and inpainting draw theirs from the seed")
    strength = _check_strength(DEFAULT_STRENGTH[mode] if strength is None else strength)
    use_model = _inpaint_with_model(pipe, inpaint_mode) if mode == "inpaint" else pipe.is_inpainting_model
    auto_w, auto_h = (m.default_size,) * 2 if picture is None else imageio.default_size(picture, m.vae_scale_factor)
    width, height = auto_w if width is None else width, auto_h if height is None else height
    seeds = list(seed) if isinstance(seed, (list, tuple)) else None
    if seeds is not None and (mode != "txt2img" or len(seeds) != len(prompts) * num_images):
        raise UserInputError(f"a list of seeds gives one seed per image of text to image: {len(prompts) * num_images} "
                             f"image(s) here, {len(seeds)} seed(s)" if mode == "txt2img" else
                             "a list of seeds is for text to image; give img2img and inpainting one seed")
    for value in seeds or [seed]:
        _check(pipe, prompts, num_inference_steps, guidance_scale, height, width, num_images, value)
    _check_clip_skip(pipe, clip_skip)
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
    return Job(prompts, negatives, num_images, num_inference_steps, guidance_scale, sampler, height, width, generator,
               callback, weighting, eta, s_noise, clip_skip, mode, seed, seeds, noise, strength, use_model, init, mask,
               latents, outpaint, source, prompts_2, negatives_2, _number(aesthetic_score, "aesthetic_score"),
               _number(negative_aesthetic_score, "negative_aesthetic_score"), distilled_guidance=distilled,
               prompts_3=prompts_3, negatives_3=negatives_3)


def _guidance(m, guidance_scale, true_cfg_scale, negative_prompt) -> tuple[float, float | None]:
    """The classifier-free guidance scale of the loop, and the guidance a distilled model (Flux dev) takes as an
    input: as diffusers' FluxPipeline, there guidance_scale is the input and true_cfg_scale the loop's, which runs
    only with a negative prompt. ``guidance_scale`` None: the family's default (7.5, SD 3's 7, Flux's 3.5)."""
    family = FAMILIES[m.family]
    guidance_scale = family.default_guidance if guidance_scale is None else guidance_scale
    _number(guidance_scale, "guidance_scale")
    if not family.distilled_guidance:
        if true_cfg_scale != 1.0:
            raise UserInputError("true_cfg_scale is for models with distilled guidance (Flux); this model's "
                                 "classifier-free guidance is guidance_scale")
        return guidance_scale, None
    takes = any(t.name == "guidance" for t in m.components[UNET.name].inputs)  # dev does, schnell does not
    cfg = _number(true_cfg_scale, "true_cfg_scale") if negative_prompt is not None else 1.0
    return cfg, float(guidance_scale) if takes else None


def _read_images(image: Image.Image | None, mask_image, outpaint,
                 vae_factor: int) -> tuple[str, Image.Image | None, Image.Image | None]:
    """The mode, and the input image and mask as PIL images (an outpainting canvas and its mask)."""
    if outpaint is not None:
        if image is None:
            raise UserInputError("outpainting extends an image: give one (image=..., --init-image)")
        if mask_image is not None:
            raise UserInputError("give a mask or outpaint margins, not both")
        canvas, mask = imageio.outpaint_canvas(image, *_margins(outpaint), vae_factor)
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


def _inpaint_with_model(pipe: Pipeline, inpaint_mode: str) -> bool:
    if inpaint_mode not in INPAINT_MODES:
        raise UserInputError(f"inpaint mode must be one of {', '.join(INPAINT_MODES)}, got {inpaint_mode!r}")
    if inpaint_mode == "model" and not pipe.is_inpainting_model:
        channels = pipe.manifest.components[UNET.name].input("sample").shape[1]
        raise UserInputError(
            f"this model's U-Net takes {channels} channels, not the {2 * pipe.manifest.latent_channels + 1} of an "
            "inpainting model; export an inpainting checkpoint, or use inpaint mode 'blend' (or 'auto')"
        )
    if inpaint_mode == "blend" and pipe.is_inpainting_model:
        raise UserInputError(
            "this is an inpainting model: its U-Net needs the mask as input, so latent blending does not apply; "
            "use inpaint mode 'model' (or 'auto')"
        )
    return pipe.is_inpainting_model


def takes_clip_skip(manifest) -> bool:
    """Whether the export's text encoders take CLIP skip (exports from before it do not)."""
    encoders = [c for name, c in manifest.components.items() if name in (TEXT_ENCODER.name, TEXT_ENCODER_2.name)]
    return all(any(t.name == "clip_skip" for t in c.inputs) for c in encoders)


def _check_clip_skip(pipe: Pipeline, clip_skip) -> None:
    layers = pipe.manifest.text_layers
    if isinstance(clip_skip, bool) or not isinstance(clip_skip, (int, np.integer)) or clip_skip < 1:
        raise UserInputError(f"clip skip is a whole number of at least 1 (1 = the last layer, as AUTOMATIC1111), "
                             f"got {clip_skip!r}")
    if clip_skip > 1 and not takes_clip_skip(pipe.manifest):
        raise ManifestError(f"the text encoder of {pipe.folder} was exported without CLIP skip (an older sdrt); "
                            "export the model again to use it")
    if layers and clip_skip > layers:
        raise UserInputError(f"clip skip {clip_skip} is more than the {layers} layers of this text encoder")


def _encoder_prompts(pipe: Pipeline, n: int, prompt, negative_prompt, prompts, negatives
                     ) -> tuple[list[str], list[str]]:
    """The prompts of the pipeline's ``text_encoder_{n}`` (``prompt_{n}``, ``negative_prompt_{n}``, as diffusers:
    SDXL's and SD 3's second CLIP, SD 3's T5 as the third, Flux's T5 as the second): the first ones by default."""
    if prompt is None and negative_prompt is None:
        return prompts, negatives
    m = pipe.manifest
    encoders = [t for t in FAMILIES[m.family].text_encoders if t.component == f"text_encoder_{n}"]
    if not any(t.graph in m.components for t in encoders):
        which = {2: "second text encoder (SDXL's and SD 3's second CLIP, Flux's T5)", 3: "third text encoder (SD 3's T5)"}
        raise UserInputError(f"prompt_{n} and negative_prompt_{n} are for models with a {which[n]} in their export; "
                             "put everything in prompt and negative_prompt")
    return _other_prompts(f"prompt_{n}", prompt, negative_prompt, prompts, negatives)


def _other_prompts(label: str, prompt, negative_prompt, prompts, negatives) -> tuple[list[str], list[str]]:
    """Another encoder's prompts and negatives, each one string or one per prompt; the first ones where not given."""
    other = prompts if prompt is None else ([prompt] * len(prompts) if isinstance(prompt, str) else list(prompt))
    if len(other) != len(prompts) or not all(isinstance(p, str) for p in other):
        raise UserInputError(f"give {label} as one string or one per prompt ({len(prompts)}), got {prompt!r}")
    return other, negatives if negative_prompt is None else _negatives(negative_prompt, len(prompts))


def _negatives(negative_prompt, n: int) -> list[str]:
    if negative_prompt is None:
        return [""] * n
    if isinstance(negative_prompt, str):
        return [negative_prompt] * n
    negatives = list(negative_prompt)
    if len(negatives) != n:
        raise UserInputError(f"got {len(negatives)} negative prompts for {n} prompts; give one per prompt, or one string for all")
    return negatives


def _check(pipe: Pipeline, prompts, steps, guidance_scale, height, width, num_images, seed) -> None:
    m = pipe.manifest
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
        if not isinstance(v, int) or v % m.size_multiple:
            raise UserInputError(f"{label} must be a multiple of {m.size_multiple}, got {v!r}")
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


def _margins(outpaint) -> tuple[int, int, int, int]:
    try:
        left, top, right, bottom = outpaint
    except (TypeError, ValueError):
        raise UserInputError(f"outpaint takes four pixel margins (left, top, right, bottom), got {outpaint!r}") from None
    return left, top, right, bottom


def _number(value, label: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserInputError(f"{label} must be a finite number, got {value!r}")
    return float(value)


def _check_strength(strength) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
        raise UserInputError(f"strength must be a number from 0 to 1 (the part of the schedule that is run), got {strength!r}")
    return float(strength)
