"""Graphs added to an existing export (ControlNets, a tiny VAE decoder) without exporting the base again: written to
a scratch folder beside the export, moved in only once all are exported and checked, the manifest written last, so
that an addition that fails leaves the export as it was."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from ..fileio import write_json, write_text
from ..integrity import verify_export
from ..manifest import Manifest, load_manifest
from .validate import as_json, report

# (scratch folder, the export's manifest) → the manifest with the new graphs, and their validation checks
Addition = Callable[[Path, Manifest], tuple[Manifest, list]]


def add_to_folder(folder: str | Path, add: Addition) -> Manifest:
    folder = Path(folder)
    manifest = load_manifest(folder)
    scratch = Path(tempfile.mkdtemp(prefix=".adding-", dir=folder))
    try:
        manifest, checks = add(scratch, manifest)
        for file in scratch.iterdir():
            file.replace(folder / file.name)
        record_checks(folder, checks)
        manifest.save(folder)
        verify_export(folder, manifest)  # hashes the new graphs (and any base graph not verified since it changed)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return manifest


def record_checks(folder: Path, checks: list) -> None:
    """Checks of added graphs appended to the export's validation report (validation.txt and .json)."""
    if not checks:
        return
    old = json.loads((folder / "validation.json").read_text()) if (folder / "validation.json").is_file() else []
    write_json(folder / "validation.json", old + as_json(checks))
    text = (folder / "validation.txt").read_text() if (folder / "validation.txt").is_file() else report([]) + "\n"
    write_text(folder / "validation.txt", text + "\n".join(report(checks).splitlines()[1:]) + "\n")
