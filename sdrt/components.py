"""Each component of an export described once: its graph's inputs and outputs (names, dtypes, named axes), how
those axes follow from a pipeline call (images, size, prompt chunks), and when a call runs it.

The exporter (``export/graphs.py`` adds the torch module and sample inputs), ``sdrt build``'s profiles, engine
selection, the runtime and ``sdrt bench`` all read these descriptions, so none of them repeats a component name,
an axis rule or CLIP's token window. A family with other components (SDXL's second text encoder, a ControlNet)
describes them here and in its own code, without new branches elsewhere. Torch-free: the runtime imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .manifest import Manifest, TensorSpec

CHUNK_TOKENS = 75  # AUTOMATIC1111's prompt chunk: CLIP's window less BOS and EOS
WINDOW = CHUNK_TOKENS + 2  # CLIP's 77 tokens

Range = tuple[int, int, int]  # min, opt, max
# The rank axis of the LoRA factors (export/lora_sites.py): 1 is no LoRA; a site's LoRAs' ranks add up.
LORA_RANKS: Range = (1, 1, 256)
# The rows of a call's textual-inversion vectors (1: none; AUTOMATIC1111 allows 75 per prompt chunk).
EMBEDDING_VECTORS: Range = (1, 1, 150)


@dataclass(frozen=True)
class RunShape:
    """What one pipeline call runs, in the user's terms: told to the backend before any graph runs."""
    batch: int  # images
    height: int
    width: int
    chunks: int = 1  # 75-token prompt chunks
    encodes_image: bool = False  # img2img / inpainting also run the VAE encoder
    controlnets: tuple[str, ...] = ()  # the ControlNet components the call runs
    tiny_vae: bool = False  # the call may run the tiny VAE decoder (its image, or live previews)
    deepcache: bool = False  # the call reuses the U-Net's deep features (runs the shallow U-Net)


class Bounds(Protocol):
    """A range of pipeline calls, per quantity (min, opt, max): an engine profile (``engines.profiles.Profile``)."""
    batch: Range
    height: Range
    width: Range
    chunks: Range


class Component:
    """One graph of an export. ``stage`` groups components for timing ("text_encoder" for every text encoder)."""

    name = ""
    stage = ""
    on_demand = False  # backends load it when a call first runs it, not with the export (ControlNets)

    def axes(self, bounds: Bounds, vae_factor: int) -> dict[str, Range]:
        """Each named axis of the graph's inputs as (min, opt, max) over ``bounds``."""
        raise NotImplementedError

    def runs_in(self, shape: RunShape) -> bool:
        """Whether a pipeline call of this shape runs this component."""
        return True

    def input_shapes(self, spec, bounds: Bounds, vae_factor: int) -> dict[str, tuple[tuple[int, ...], ...]]:
        """Input name → (min, opt, max) shape under ``bounds``, from the graph's named axes (``spec`` is the
        manifest's ComponentSpec; fixed dimensions stay as they are)."""
        axes = self.axes(bounds, vae_factor)
        shapes = {}
        for t in spec.inputs:
            dims = [axes[d] if isinstance(d, str) else (d, d, d) for d in t.shape]
            shapes[t.name] = tuple(tuple(d[i] for d in dims) for i in range(3))
        return shapes


def _latent(bounds: Bounds, f: int) -> dict[str, Range]:
    """The latent's axes, and those of the U-Net's coarser levels, which the ControlNet residuals have."""
    sides = [level_sides(h // f, w // f) for h, w in zip(bounds.height, bounds.width)]
    return {axis: tuple(s[axis] for s in sides) for axis in sides[0]}


def level_sides(h: int, w: int) -> dict[str, int]:
    """The sides of an h × w latent at each U-Net level, by axis name: ``h``, ``w``, then ``h_2`` = ⌈h/2⌉ (a stride-2
    convolution with padding 1 halves an odd side upwards), ``w_2``, ``h_4``, …"""
    sides = {"h": h, "w": w}
    for level in (2, 4, 8):
        sides |= {f"h_{level}": -(-h // level), f"w_{level}": -(-w // level)}
    return sides


def level_axes(level: int) -> tuple[str, str]:
    """The named axes of the latent at U-Net level ``level`` (0: the latent's own; each level halves it)."""
    return ("h", "w") if level == 0 else (f"h_{2 ** level}", f"w_{2 ** level}")


def residual_specs(block_channels: tuple[int, ...], layers_per_block: int) -> tuple[TensorSpec, ...]:
    """The ControlNet residuals a U-Net of these down blocks adds (diffusers' ``down_block_additional_residuals`` and
    ``mid_block_additional_residual``): one after ``conv_in``, one after each resnet of each down block and after each
    downsampler, and the mid block's, each at its level's size."""
    levels = [(block_channels[0], 0)]
    for i, channels in enumerate(block_channels):
        levels += [(channels, i)] * layers_per_block
        if i < len(block_channels) - 1:
            levels.append((channels, i + 1))
    specs = tuple(TensorSpec(f"down_block_residual_{k}", "float32", ("2B", c, *level_axes(level)))
                  for k, (c, level) in enumerate(levels))
    return specs + (TensorSpec(MID_RESIDUAL, "float32", ("2B", block_channels[-1], *level_axes(len(block_channels) - 1))),)


MID_RESIDUAL = "mid_block_residual"


def is_residual(name: str) -> bool:
    return name.startswith("down_block_residual_") or name == MID_RESIDUAL


class TextEncoder(Component):
    """``input_ids`` [B, T], ``clip_skip`` [1] and ``embedding_vectors`` [V, D] (textual inversion: id −k−1 reads
    row k) → ``last_hidden_state`` [B, T, D] (+ ``pooled`` [B, E]). B counts token sequences: every chunk of every
    negative and positive prompt of a call in one run. Exports from before CLIP skip or textual inversion lack those
    inputs."""

    stage = "text_encoder"

    def __init__(self, name: str = "text_encoder"):
        self.name = name

    def axes(self, bounds: Bounds, vae_factor: int) -> dict[str, Range]:
        b, c = bounds.batch, bounds.chunks  # prompts <= images: one prompt alone at least, all of them at most
        return {"B": (1, 2 * c[1], 2 * b[2] * c[2]), "T": (WINDOW,) * 3, "rank": LORA_RANKS,
                "vectors": EMBEDDING_VECTORS}

    @staticmethod
    def io(hidden: int, pooled: int | None = None) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        outputs = (TensorSpec("last_hidden_state", "float32", ("B", "T", hidden)),)
        if pooled:
            outputs += (TensorSpec("pooled", "float32", ("B", pooled)),)
        return (TensorSpec("input_ids", "int32", ("B", "T")), TensorSpec("clip_skip", "int32", (1,)),
                TensorSpec("embedding_vectors", "float32", ("vectors", hidden))), outputs


class T5Encoder(Component):
    """T5's encoder (SD 3, Flux): ``input_ids`` [B, L] int32 (L: the export's fixed sequence length, EOS and padding
    included) → ``last_hidden_state`` [B, L, D]. B counts every negative and positive prompt of a call."""

    name = "t5_encoder"
    stage = "text_encoder"

    def axes(self, bounds: Bounds, vae_factor: int) -> dict[str, Range]:
        return {"B": (1, 2, 2 * bounds.batch[2])}

    @staticmethod
    def io(hidden: int, length: int) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        return ((TensorSpec("input_ids", "int32", ("B", length)),),
                (TensorSpec("last_hidden_state", "float32", ("B", length, hidden)),))


class Denoiser(Component):
    """``sample`` [2B, C, h, w], ``timestep`` [2B], the conditioning bundle (``encoder_hidden_states``
    [2B, T, D] and the family's extras, all batched as the sample) and the ControlNet residuals (zeros without
    control) → ``noise_pred``. 2B runs from the images of a call without guidance to twice them with it (negatives
    and positives in one call); T = 77 per prompt chunk. Exports from before ControlNet lack the residuals."""

    stage = "unet"

    def __init__(self, name: str = "unet"):
        self.name = name

    def axes(self, bounds: Bounds, vae_factor: int) -> dict[str, Range]:
        b = bounds.batch
        return {"2B": (b[0], 2 * b[1], 2 * b[2]), "T": tuple(WINDOW * n for n in bounds.chunks),
                "rank": LORA_RANKS, **_latent(bounds, vae_factor)}

    @staticmethod
    def io(channels: int, out_channels: int, text_dim: int, extras: tuple[TensorSpec, ...] = (),
           residuals: tuple[TensorSpec, ...] = (), tokens: int | str = "T", deep_features: int = 0
           ) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """``tokens``: the text sequence's length, fixed where the family's is (SD 3: CLIP's 77 + T5's);
        ``deep_features``: their channels where the U-Net also outputs them (DeepCache, ``ShallowDenoiser``)."""
        inputs = (TensorSpec("sample", "float32", ("2B", channels, "h", "w")),
                  TensorSpec("timestep", "float32", ("2B",)),
                  TensorSpec("encoder_hidden_states", "float32", ("2B", tokens, text_dim))) + tuple(extras)
        outputs = (TensorSpec("noise_pred", "float32", ("2B", out_channels, "h", "w")),)
        if deep_features:
            outputs += (ShallowDenoiser.features_spec(deep_features),)
        return inputs + tuple(residuals), outputs


class ShallowDenoiser(Denoiser):
    """DeepCache's shallow U-Net (``export/deepcache.py``): the U-Net's inputs less the ControlNet residuals, then
    ``deep_features`` [2B, C, h, w] (the U-Net's own output of the last whole step) → ``noise_pred``. Loaded when a
    call first reuses features."""

    on_demand = True
    FEATURES = "deep_features"

    def __init__(self):
        super().__init__("unet_shallow")

    def runs_in(self, shape: RunShape) -> bool:
        return shape.deepcache

    @classmethod
    def features_spec(cls, channels: int) -> TensorSpec:
        return TensorSpec(cls.FEATURES, "float32", ("2B", channels, "h", "w"))


class ControlNet(Denoiser):
    """One ControlNet (``controlnet.NAME``): the U-Net's ``sample``, ``timestep`` and conditioning bundle, and
    ``controlnet_cond`` [2B, 3, H, W] (the control image in [0, 1]) → the residuals the U-Net adds, unscaled (the
    runtime scales them per step). Loaded and run only by calls that use it."""

    stage = "controlnet"
    on_demand = True
    PREFIX = "controlnet."

    def __init__(self, name: str):
        self.name = name

    @property
    def model(self) -> str:
        return self.name[len(self.PREFIX):]

    def axes(self, bounds: Bounds, vae_factor: int) -> dict[str, Range]:
        return {**super().axes(bounds, vae_factor), "H": bounds.height, "W": bounds.width}

    def runs_in(self, shape: RunShape) -> bool:
        return self.name in shape.controlnets

    @staticmethod
    def io(channels: int, text_dim: int, extras: tuple[TensorSpec, ...],
           residuals: tuple[TensorSpec, ...]) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        inputs, _ = Denoiser.io(channels, channels, text_dim)
        return inputs + (TensorSpec("controlnet_cond", "float32", ("2B", 3, "H", "W")),) + tuple(extras), residuals


class VaeDecoder(Component):
    """``latent`` [B, C, h, w] (unscaled) → ``image`` [B, 3, H, W] in [-1, 1]."""

    name = stage = "vae_decoder"

    def axes(self, bounds: Bounds, vae_factor: int) -> dict[str, Range]:
        return {"B": bounds.batch, **_latent(bounds, vae_factor)}

    @staticmethod
    def io(latent_channels: int) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        return ((TensorSpec("latent", "float32", ("B", latent_channels, "h", "w")),),
                (TensorSpec("image", "float32", ("B", 3, "H", "W")),))


class TinyVaeDecoder(VaeDecoder):
    """An ``AutoencoderTiny`` (TAESD's architecture) decoder with the VAE decoder's IO: a cheap decoder for live
    previews and, when asked, for the image. Loaded when a call first runs it."""

    name = "vae_decoder_tiny"
    on_demand = True

    def runs_in(self, shape: RunShape) -> bool:
        return shape.tiny_vae


class VaeEncoder(Component):
    """``image`` [B, 3, H, W] → the posterior's ``latent`` (mean) and ``latent_std`` [B, C, h, w]; run only by
    image to image and inpainting, one image at a time."""

    name = stage = "vae_encoder"

    def axes(self, bounds: Bounds, vae_factor: int) -> dict[str, Range]:
        return {"B": bounds.batch, "H": bounds.height, "W": bounds.width}

    def runs_in(self, shape: RunShape) -> bool:
        return shape.encodes_image

    @staticmethod
    def io(latent_channels: int) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        latent = ("B", latent_channels, "h", "w")
        return ((TensorSpec("image", "float32", ("B", 3, "H", "W")),),
                (TensorSpec("latent", "float32", latent), TensorSpec("latent_std", "float32", latent)))


TEXT_ENCODER, UNET, VAE_DECODER, VAE_ENCODER = TextEncoder(), Denoiser(), VaeDecoder(), VaeEncoder()
TEXT_ENCODER_2 = TextEncoder("text_encoder_2")  # SDXL's OpenCLIP ViT-bigG, with the pooled output
TINY_VAE_DECODER = TinyVaeDecoder()
T5_ENCODER = T5Encoder()
UNET_SHALLOW = ShallowDenoiser()
COMPONENTS: dict[str, Component] = {c.name: c for c in (TEXT_ENCODER, TEXT_ENCODER_2, T5_ENCODER, UNET, UNET_SHALLOW,
                                                        VAE_DECODER, VAE_ENCODER, TINY_VAE_DECODER)}


def describe(name: str) -> Component:
    """The description of the component called ``name`` in a manifest."""
    if name.startswith(ControlNet.PREFIX):
        return ControlNet(name)
    try:
        return COMPONENTS[name]
    except KeyError:
        raise KeyError(f"no component description for {name!r} (known: {', '.join(COMPONENTS)})") from None


def controlnet_names(manifest: Manifest) -> list[str]:
    """The export's ControlNets, by name."""
    return [ControlNet(c).model for c in manifest.components if c.startswith(ControlNet.PREFIX)]


def run_components(manifest: Manifest, shape: RunShape) -> list[str]:
    """The components of ``manifest`` that a pipeline call of ``shape`` runs."""
    return [name for name in manifest.components if describe(name).runs_in(shape)]
