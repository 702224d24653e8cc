"""An export's graphs are used only if they are what the export wrote: each graph's sha256 (of its ``.onnx`` file and
its external data, in that order) is in the manifest. Hashing gigabytes at every load would cost seconds, so what was
verified is remembered beside the export (``.verified.json``: each file's size and modification time when its
graph last matched): a graph whose files have not changed since is trusted; one whose size or time changed is
hashed again. So a damaged file (a copy cut short, bytes flipped on disk, a file replaced) is refused with the fix,
and a load of an unchanged export costs a ``stat`` per file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from .errors import ManifestError
from .fileio import write_json
from .manifest import ComponentSpec, Manifest

log = logging.getLogger("sdrt")

VERIFIED_NAME = ".verified.json"


def verify_export(folder: str | Path, manifest: Manifest) -> list[str]:
    """Check every graph of ``manifest`` against its recorded sha256 (hashing only those changed since they last
    matched); the graphs that were hashed. A mismatch is a ManifestError that names the file and the fix."""
    folder = Path(folder)
    seen = _read_verified(folder)
    verified, hashed = {}, []
    for name, comp in manifest.components.items():
        record = _record(folder, comp)
        if seen.get(name) != record:
            if _digest(folder, comp) != comp.sha256:
                files = ", ".join(str(folder / f) for f in _files(comp))
                raise ManifestError(
                    f"{files} ({name}) is not what was exported: its content "
                    f"does not match the sha256 in {folder / 'manifest.json'} (damaged or changed since). Export the "
                    f"model again: sdrt export MODEL {folder}")
            hashed.append(name)
        verified[name] = record
    if hashed or verified != seen:
        _write_verified(folder, verified)
    return hashed


def remember_verified(folder: str | Path, manifest: Manifest) -> None:
    """Record every graph of ``manifest`` as verified as its files are now: for the exporter, which has just written
    them and computed their sha256."""
    folder = Path(folder)
    _write_verified(folder, {name: _record(folder, comp) for name, comp in manifest.components.items()})


def _files(comp: ComponentSpec) -> list[str]:
    return [f for f in (comp.file, comp.external_data) if f]


def _record(folder: Path, comp: ComponentSpec) -> dict:
    """What is remembered of a verified graph: its sha256 and each file's size and modification time."""
    return {"sha256": comp.sha256, "files": {f: _stamp(folder / f) for f in _files(comp)}}


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _digest(folder: Path, comp: ComponentSpec) -> str:
    """The sha256 of the graph file followed by its external data (as ``export.onnx_io.write`` records it)."""
    digest = hashlib.sha256()
    for f in _files(comp):
        with open(folder / f, "rb") as stream:
            while block := stream.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()


def _read_verified(folder: Path) -> dict:
    try:
        data = json.loads((folder / VERIFIED_NAME).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_verified(folder: Path, verified: dict) -> None:
    try:
        write_json(folder / VERIFIED_NAME, verified)
    except OSError as e:  # a read-only export: hashed again at the next load
        log.debug("cannot remember the verified graphs in %s (%s)", folder, e)
