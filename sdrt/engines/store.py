"""The engine cache: ``OUT/engines/<component>-<profile>-<key>.plan``, keyed by content, recorded in the manifest.

The key is a hash of everything that makes an engine: the ONNX content hash, the flavour and its version, the
target compute capabilities, the graph precision, the profile's shapes, and the build options. A changed model,
TensorRT, GPU or shape therefore never finds a stale engine, and an unchanged one is found and not rebuilt. An
engine is trusted only if its size and sha256 match the manifest's record; anything else is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..fileio import sha256_file
from ..manifest import Manifest
from .profiles import Profile

ENGINES_DIR = "engines"
KEY_FORMAT = 1  # bump when what goes into an engine changes in a way the inputs below do not show


@dataclass(frozen=True)
class EngineSpec:
    """What one engine is built from; its key and file name follow."""
    component: str
    onnx_sha256: str
    precision: str
    flavour: str
    version: str
    targets: tuple[str, ...]  # compute capabilities
    profile: Profile
    shapes: dict  # input -> (min, opt, max)
    refit: bool = False
    cleanup: bool = True

    @property
    def shapes_json(self) -> dict:
        return {k: [list(s) for s in v] for k, v in self.shapes.items()}

    @property
    def key(self) -> str:
        text = json.dumps({
            "format": KEY_FORMAT, "onnx": self.onnx_sha256, "precision": self.precision, "flavour": self.flavour,
            "version": self.version, "targets": list(self.targets), "shapes": self.shapes_json,
            "refit": self.refit, "cleanup": self.cleanup,
        }, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    @property
    def file(self) -> str:
        return f"{ENGINES_DIR}/{self.component}-{self.profile.label}-{self.key}.plan"

    def record(self, sha256: str, size: int, seconds: float, log: dict, nodes: tuple[int, int]) -> dict:
        return {
            "component": self.component, "file": self.file, "key": self.key, "flavour": self.flavour,
            "version": self.version, "targets": list(self.targets), "precision": self.precision,
            "profile": self.profile.to_json(), "shapes": self.shapes_json,
            "refit": self.refit, "cleanup": self.cleanup, "onnx_sha256": self.onnx_sha256,
            "sha256": sha256, "bytes": size, "build_seconds": round(seconds, 2), "builder_log": log,
            "graph_nodes": {"exported": nodes[0], "cleaned": nodes[1]},
        }


def trusted(folder: Path, record: dict | None, quick: bool = False) -> bool:
    """An engine file is used only if it is what the manifest says was written: same size, same sha256
    (``quick``: size only, for the runtime, where TensorRT's own header checks catch the rest)."""
    if not record:
        return False
    path = folder / record["file"]
    if not path.is_file() or path.stat().st_size != record.get("bytes"):
        return False
    return quick or sha256_file(path) == record.get("sha256")


def engine_records(manifest: Manifest, flavour: str | None = None, component: str | None = None) -> list[dict]:
    return [r for r in manifest.engines.values()
            if (flavour is None or r.get("flavour") == flavour) and (component is None or r.get("component") == component)]
