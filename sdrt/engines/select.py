"""Choosing an engine for a run from the manifest's records, and saying what to build when none fits.

Plain functions over engine records, so the choice and its messages are the same with or without a GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..components import CHUNK_TOKENS, run_components
from ..manifest import Manifest
from .profiles import Profile, component_shapes, static_profile


def record_covers(record: dict, shapes: dict[str, tuple[int, ...]]) -> bool:
    """Do the input shapes of one run lie inside the engine's profile?"""
    ranges = record["shapes"]
    return all(all(lo <= v <= hi for lo, v, hi in zip(ranges[name][0], shape, ranges[name][2]))
               for name, shape in shapes.items() if name in ranges)


def profile_width(record: dict) -> int:
    """How wide an engine's profile is: the narrowest fitting one (a static one first) is the best tuned."""
    return sum(int(np.prod(s[2])) - int(np.prod(s[0])) for s in record["shapes"].values())


def pick(records: list[dict], component: str, shapes: dict[str, tuple[int, ...]]) -> dict | None:
    fitting = [r for r in records if r["component"] == component and record_covers(r, shapes)]
    return min(fitting, key=profile_width) if fitting else None


def profile_for(shape) -> Profile:
    """The static profile of exactly one pipeline call (``RunShape``): what auto-build builds for it."""
    return static_profile(shape.height, shape.width, shape.batch, shape.chunks * CHUNK_TOKENS)


def uncovered(records: list[dict], manifest: Manifest, shape) -> list[str]:
    """The components of a pipeline call (``RunShape``) that no engine covers, judged on the component's own
    input shapes (a text encoder engine serves every image size), with and without guidance's doubled batch."""
    wanted = profile_for(shape)
    missing = []
    for component in run_components(manifest, shape):
        ranges = component_shapes(manifest, component, wanted)
        ends = [{name: r[i] for name, r in ranges.items()} for i in (0, 2)]
        if not any(r["component"] == component and all(record_covers(r, e) for e in ends) for r in records):
            missing.append(component)
    return missing


def build_command(folder: Path, flavour: str, shape=None) -> str:
    if shape is None:
        return f"sdrt build {folder} --backend {flavour} --static HEIGHTxWIDTH --batch N"
    tokens = f" --max-tokens {shape.chunks * CHUNK_TOKENS}" if shape.chunks > 1 else ""
    return f"sdrt build {folder} --backend {flavour} --static {shape.height}x{shape.width} --batch {shape.batch}{tokens}"


def no_engine_message(folder: Path, flavour: str, component: str, records: list[dict], shape=None) -> str:
    """Never "no valid profile" alone: what was asked, what is built, and the command that builds it."""
    built = sorted({Profile.from_json(r["profile"]).describe() for r in records if r["component"] == component})
    wanted = "these shapes" if shape is None else (
        f"batch {shape.batch} at {shape.height}x{shape.width}"
        + (f" with {shape.chunks * CHUNK_TOKENS} prompt tokens" if shape.chunks > 1 else ""))
    return (f"no {flavour} engine for {component} covers {wanted} (built profiles: {'; '.join(built) or 'none'}). "
            f"Build one: {build_command(folder, flavour, shape)} (or --min/--opt/--max for a range), "
            f"or load the backend as '{flavour}:auto-build'")
