"""Shape profiles: the range of batch, size and prompt length an engine accepts, and its input shapes.

A profile is said in the user's terms (images per call, pixels, 75-token prompt chunks); each component's
min/opt/max input shapes follow from the manifest's axis names, the U-Net's classifier-free-guidance doubling
included, so nobody has to know that the U-Net sees twice the batch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..components import CHUNK_TOKENS, describe
from ..errors import UserInputError
from ..manifest import Manifest

Range = tuple[int, int, int]  # min, opt, max


@dataclass(frozen=True)
class Profile:
    batch: Range  # images per pipeline call (prompts x images per prompt)
    height: Range  # pixels
    width: Range
    chunks: Range = (1, 1, 1)  # prompt chunks of 75 tokens (AUTOMATIC1111's long prompts): U-Net tokens = 77·chunks

    @property
    def static(self) -> bool:
        return all(r[0] == r[2] for r in (self.batch, self.height, self.width, self.chunks))

    @property
    def label(self) -> str:
        """``b1-512x512`` or ``b1-4-256-768x256-768-c1-3``: readable, and part of the engine file name."""
        def span(r: Range) -> str:
            return str(r[0]) if r[0] == r[2] else f"{r[0]}-{r[2]}"

        text = f"b{span(self.batch)}-{span(self.height)}x{span(self.width)}"
        return text + (f"-c{span(self.chunks)}" if self.chunks != (1, 1, 1) else "")

    def describe(self) -> str:
        def span(r: Range, unit: str = "") -> str:
            return f"{r[0]}{unit}" if r[0] == r[2] else f"{r[0]}..{r[2]}{unit} (opt {r[1]})"

        text = f"batch {span(self.batch)}, height {span(self.height)}, width {span(self.width)}"
        return text + (f", up to {self.chunks[2] * CHUNK_TOKENS} prompt tokens" if self.chunks[2] > 1 else "")

    def to_json(self) -> dict:
        return {"batch": list(self.batch), "height": list(self.height), "width": list(self.width),
                "chunks": list(self.chunks)}

    @classmethod
    def from_json(cls, d: dict) -> Profile:
        return cls(*(tuple(d[k]) for k in ("batch", "height", "width", "chunks")))


def static_profile(height: int, width: int, batch: int = 1, max_tokens: int = CHUNK_TOKENS) -> Profile:
    chunks = _chunks(max_tokens)
    return Profile((batch,) * 3, (height,) * 3, (width,) * 3, (1, 1, chunks))


def dynamic_profile(low: str, opt: str, high: str, max_tokens: int = 2 * CHUNK_TOKENS) -> Profile:
    """From ``--min 1x256x256 --opt 1x512x512 --max 4x768x768`` (BATCHxHEIGHTxWIDTH)."""
    parts = [parse_bhw(text, flag) for text, flag in ((low, "--min"), (opt, "--opt"), (high, "--max"))]
    ranges = tuple(tuple(p[i] for p in parts) for i in range(3))
    for name, r in zip(("batch", "height", "width"), ranges):
        if not r[0] <= r[1] <= r[2]:
            raise UserInputError(f"profile {name}: need --min <= --opt <= --max, got {r[0]}, {r[1]}, {r[2]}")
    return Profile(*ranges, chunks=(1, 1, _chunks(max_tokens)))


def parse_size(text: str) -> tuple[int, int]:
    """``512x768`` (HEIGHTxWIDTH) or ``512``."""
    m = re.fullmatch(r"(\d+)(?:x(\d+))?", text.strip().lower())
    if not m:
        raise UserInputError(f"size {text!r}: write HEIGHTxWIDTH, e.g. 512x512")
    h = int(m[1])
    return h, int(m[2] or h)


def parse_bhw(text: str, flag: str = "size") -> tuple[int, int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)x(\d+)", text.strip().lower())
    if not m:
        raise UserInputError(f"{flag} {text!r}: write BATCHxHEIGHTxWIDTH, e.g. 1x512x512")
    return int(m[1]), int(m[2]), int(m[3])


def _chunks(max_tokens: int) -> int:
    if max_tokens < 1:
        raise UserInputError(f"--max-tokens must be at least 1, got {max_tokens}")
    return math.ceil(max_tokens / CHUNK_TOKENS)


def check_profile(profile: Profile, manifest: Manifest) -> None:
    """Refuse a profile the export cannot serve, naming the export's own limits."""
    low, high = manifest.size_range
    factor = manifest.vae_scale_factor
    for name, r in (("height", profile.height), ("width", profile.width)):
        if r[0] < low or r[2] > high:
            raise UserInputError(f"profile {name} {r[0]}..{r[2]} is outside this export's sizes {low}..{high}")
        if any(v % factor for v in r):
            raise UserInputError(f"profile {name} {r}: sizes must be multiples of {factor}")
    if profile.batch[0] < 1 or profile.batch[2] > manifest.max_batch:
        raise UserInputError(f"profile batch {profile.batch[0]}..{profile.batch[2]} is outside this export's "
                             f"1..{manifest.max_batch}")


def component_shapes(manifest: Manifest, component: str, profile: Profile) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Input name -> (min, opt, max) shape of ``component`` under ``profile``, from its description's axis rules
    (the U-Net's batch doubled by guidance, the text encoder's chunks of every prompt: see ``sdrt.components``)."""
    return describe(component).input_shapes(manifest.components[component], profile, manifest.vae_scale_factor)
