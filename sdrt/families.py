"""What differs between Stable Diffusion families, in one place.

Export, engine building and the runtime all read these descriptions instead of branching on
family names, so a new family (SDXL: two text encoders, pooled embeddings, time ids) is a new
entry here plus the code for its extra inputs, not a redesign.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .components import T5_ENCODER

FamilyName = Literal["sd1", "sd2", "sdxl", "sdxl-refiner", "sd3", "flux"]


@dataclass(frozen=True)
class TextEncoderSpec:
    component: str  # the pipeline's network: "text_encoder", "text_encoder_2", "text_encoder_3"
    tokenizer: str  # tokenizer folder in the export folder
    hidden_state: Literal["last", "penultimate"]  # which hidden state conditions the U-Net
    final_layer_norm: bool  # whether that hidden state goes through the final LayerNorm
    pooled: bool  # whether the family also needs the pooled (projected) embedding
    kind: Literal["clip", "t5"] = "clip"  # T5: the last hidden state of a fixed-length sequence, no chunks

    @property
    def graph(self) -> str:
        """The component's name in the export: the pipeline's, or ``t5_encoder`` for T5 in every family."""
        return T5_ENCODER.name if self.kind == "t5" else self.component


@dataclass(frozen=True)
class Family:
    name: FamilyName
    description: str
    text_encoders: tuple[TextEncoderSpec, ...]
    unet_extra_inputs: tuple[str, ...]  # inputs beyond sample/timestep/encoder_hidden_states
    default_size: int  # native image side in pixels
    size_range: tuple[int, int]  # image sides the export declares (pixels)
    exportable: bool  # whether `sdrt export` supports the family yet
    denoiser: Literal["unet", "transformer"] = "unet"  # the pipeline's denoising network (exported as ``unet``)
    t5_tokens: int = 256  # T5's sequence length (diffusers' max_sequence_length)
    default_guidance: float = 7.5  # the pipeline's guidance_scale unless given (Flux: its distilled guidance)
    linear_sigmas: bool = False  # a flow schedule spaced as linspace(1, 1/n, n) before the shift (Flux's pipeline)
    # guidance_scale is an input of the model (Flux: guidance distillation); classifier-free guidance is then
    # true_cfg_scale, run only with a negative prompt (diffusers' FluxPipeline)
    distilled_guidance: bool = False


_CLIP = TextEncoderSpec("text_encoder", "tokenizer", "last", True, False)

FAMILIES: dict[str, Family] = {
    "sd1": Family("sd1", "Stable Diffusion 1.x (CLIP ViT-L/14, epsilon)", (_CLIP,), (), 512, (256, 1024), True),
    # SD 2.x's "penultimate layer" is baked into its config: the text encoder has 23 of
    # OpenCLIP-H's 24 layers and its output still goes through the final LayerNorm.
    "sd2": Family("sd2", "Stable Diffusion 2.x (OpenCLIP ViT-H/14, v-prediction or epsilon)", (_CLIP,), (), 768,
                  (256, 1024), True),
    "sdxl": Family(
        "sdxl",
        "Stable Diffusion XL (CLIP ViT-L + OpenCLIP ViT-bigG, pooled embeddings, time ids)",
        (
            TextEncoderSpec("text_encoder", "tokenizer", "penultimate", False, False),
            TextEncoderSpec("text_encoder_2", "tokenizer_2", "penultimate", False, True),
        ),
        ("text_embeds", "time_ids"),
        1024,
        (512, 1536),
        True,
    ),
    # The refiner: OpenCLIP ViT-bigG alone, and aesthetic scores in its time ids (5 instead of 6)
    "sdxl-refiner": Family(
        "sdxl-refiner",
        "Stable Diffusion XL refiner (OpenCLIP ViT-bigG, pooled embeddings, time ids with aesthetic scores)",
        (TextEncoderSpec("text_encoder_2", "tokenizer_2", "penultimate", False, True),),
        ("text_embeds", "time_ids"),
        1024,
        (512, 1536),
        True,
    ),
    # SD 3 / 3.5: an MMDiT transformer on CLIP-L's and CLIP-G's penultimate states (and both pooled) beside T5's
    "sd3": Family(
        "sd3",
        "Stable Diffusion 3 / 3.5 (MMDiT; CLIP ViT-L, OpenCLIP ViT-bigG and T5-XXL; flow matching)",
        (
            TextEncoderSpec("text_encoder", "tokenizer", "penultimate", False, True),
            TextEncoderSpec("text_encoder_2", "tokenizer_2", "penultimate", False, True),
            TextEncoderSpec("text_encoder_3", "tokenizer_3", "last", True, False, kind="t5"),
        ),
        ("pooled_projections",),
        1024,
        (256, 1536),
        True,
        denoiser="transformer",
        default_guidance=7.0,
    ),
    # Flux.1: an MMDiT on T5's hidden states and CLIP-L's pooled output; latents packed 2×2 (in the graph), rotary
    # position ids, the distilled guidance as an input (dev; schnell has none); classifier-free guidance only as
    # diffusers' true_cfg_scale with a negative prompt
    "flux": Family(
        "flux",
        "Flux.1 dev / schnell (MMDiT; CLIP ViT-L pooled and T5-XXL; flow matching, guidance distilled)",
        (
            TextEncoderSpec("text_encoder", "tokenizer", "last", True, True),
            TextEncoderSpec("text_encoder_2", "tokenizer_2", "last", True, False, kind="t5"),
        ),
        ("pooled_projections", "guidance"),
        1024,
        (256, 1536),
        True,
        denoiser="transformer",
        t5_tokens=512,
        default_guidance=3.5,
        linear_sigmas=True,
        distilled_guidance=True,
    ),
}


def detect_family(pipeline_class: str, text_hidden_size: int | None, prediction_type: str) -> Family:
    """Tell the family from facts every diffusers folder states (model_index.json and configs);
    ``text_hidden_size`` is None where the pipeline has no first text encoder (the SDXL refiner)."""
    if pipeline_class.startswith("StableDiffusion3"):
        return FAMILIES["sd3"]
    if pipeline_class.startswith("Flux"):
        return FAMILIES["flux"]
    if "XL" in pipeline_class:
        return FAMILIES["sdxl"] if text_hidden_size else FAMILIES["sdxl-refiner"]
    if text_hidden_size == 1024 or prediction_type == "v_prediction":
        return FAMILIES["sd2"]
    return FAMILIES["sd1"]
