"""TensorRT engines from an export folder: ``build(OUT, "tensorrt-rtx", [static_profile(512, 512)], ...)``.

One engine per component and profile, in ``OUT/engines/``, found again by its content key (see ``store``), written
atomically, and recorded in the manifest with its build time, size and the builder's log summary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserInputError
from ..fileio import sha256_file, write_bytes
from ..manifest import Manifest, load_manifest
from .flavours import load_flavour, local_gpu, parse_compute_capabilities
from .profiles import Profile, check_profile, component_shapes, dynamic_profile, static_profile
from .store import ENGINES_DIR, EngineSpec, engine_records, trusted

log = logging.getLogger("sdrt")

__all__ = ["build", "BuildOutcome", "Profile", "static_profile", "dynamic_profile", "engine_records"]


@dataclass(frozen=True)
class BuildOutcome:
    component: str
    profile: Profile
    file: Path
    status: str  # "built" | "cached" | "rebuilt" (a cached file that failed its check)
    seconds: float
    bytes: int


def resolve_targets(flavour, compute_capabilities: str | tuple[str, ...] | None) -> tuple[str, ...]:
    """The compute capabilities to build for: the ones named (TensorRT-RTX), else the local GPU's."""
    named = parse_compute_capabilities(compute_capabilities) if isinstance(compute_capabilities, str) or \
        compute_capabilities is None else tuple(compute_capabilities)
    if named and not flavour.rtx:
        raise UserInputError("standard TensorRT builds for the GPU it runs on: drop --compute-capability, "
                             "or build with --backend tensorrt-rtx for named targets")
    if named:
        for cc in named:
            flavour.compute_capability_enum(cc)  # refuses targets the flavour lacks, listing the ones it has
        return named
    gpu = local_gpu()
    if gpu is None:
        raise UserInputError(
            "there is no usable GPU here to build for"
            + (": name the targets, e.g. --compute-capability 8.6,8.9" if flavour.rtx
               else "; standard TensorRT builds on the GPU it will run on (or use --backend tensorrt-rtx "
                    "--compute-capability ... to build ahead of time)"))
    return (gpu[1],)


def build(folder: str | Path, backend: str = "tensorrt-rtx", profiles: list[Profile] | None = None,
          compute_capabilities: str | tuple[str, ...] | None = None, components: tuple[str, ...] | None = None,
          refit: bool = False, cleanup: bool = True, force: bool = False) -> list[BuildOutcome]:
    """Build (or find in the cache) one engine per component and profile. Returns what happened to each."""
    folder = Path(folder)
    manifest = load_manifest(folder)
    flavour = load_flavour(backend)
    targets = resolve_targets(flavour, compute_capabilities)
    profiles = profiles or [static_profile(manifest.default_size, manifest.default_size)]
    names = components or tuple(manifest.components)
    unknown = [c for c in names if c not in manifest.components]
    if unknown:
        raise UserInputError(f"the export has no {', '.join(unknown)}; it has {', '.join(manifest.components)}")
    for profile in profiles:
        check_profile(profile, manifest)
    outcomes = []
    for profile in profiles:
        for name in names:
            comp = manifest.components[name]
            spec = EngineSpec(name, comp.sha256, comp.precision, flavour.name, flavour.version, targets, profile,
                              component_shapes(manifest, name, profile), refit, cleanup)
            outcome, manifest = _build_one(folder, manifest, flavour, spec, force)
            outcomes.append(outcome)
    return outcomes


def _build_one(folder: Path, manifest: Manifest, flavour, spec: EngineSpec,
               force: bool) -> tuple[BuildOutcome, Manifest]:
    """The engine of ``spec`` from the cache or the builder, and the manifest as it now stands."""
    from .builder import BuildRequest, build_engine

    path = folder / spec.file
    record = manifest.engines.get(spec.key)
    if not force and trusted(folder, record):
        log.info("%s %s: cached (%s)", spec.component, spec.profile.label, path.name)
        return BuildOutcome(spec.component, spec.profile, path, "cached", 0.0, record["bytes"]), manifest
    status = "rebuilt" if path.exists() else "built"
    if status == "rebuilt":
        log.warning("%s does not match its manifest record (truncated, corrupt or unrecorded): rebuilding", path)
    timing_cache = folder / ENGINES_DIR / f"timing-{flavour.name}-{flavour.version}.cache"
    log.info("building %s %s with %s for %s", spec.component, spec.profile.describe(), flavour.label,
             ", ".join(spec.targets))
    result = build_engine(flavour, BuildRequest(folder / manifest.components[spec.component].file, spec.shapes,
                                                spec.targets, spec.refit, spec.cleanup, timing_cache))
    write_bytes(path, result.plan)
    record = spec.record(sha256_file(path), len(result.plan), result.seconds, result.log, result.nodes)
    latest = load_manifest(folder)  # another build may have recorded its engines meanwhile
    latest = latest.with_engines({**latest.engines, spec.key: record})
    latest.save(folder)
    log.info("%s %s: %s in %.1f s (%.1f MB)", spec.component, spec.profile.label, status, result.seconds,
             len(result.plan) / 1e6)
    return BuildOutcome(spec.component, spec.profile, path, status, result.seconds, len(result.plan)), latest
