"""Whether an export fits in this machine's memory, decided before any work, from the networks' parameter counts.

The export holds every network in the export's precision, and traces one network at a time in fp32 after freeing
those it is done with, the biggest (the U-Net) last and alone (see ``exporter``). So its peak is the larger of
loading (all networks, each made or read in fp32 before it is cast) and tracing the U-Net in fp32 (ONNX Runtime's
check of an fp16 graph on the CPU costs about as much, as it casts the weights to fp32). Measured on SDXL's
architecture in fp16: loading 10.5 GB, tracing 11.6 GB, the check 13.4 GB; estimated 13.8 GB.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
from pathlib import Path

from ..errors import ExportError, ModelSourceError
from ..memory import available_bytes
from .builtin import ARCH_DIR, BUILTIN_MODELS, NETWORKS, make_network, networks_in
from .single_file import read_shapes

BASE_BYTES = 1.0e9  # Python with torch, diffusers, transformers, onnx and ONNX Runtime loaded
TRACE_FACTOR = 1.25  # tracing a network to ONNX peaks at this many times its fp32 weights
_UNET_PREFIXES = ("model.diffusion_model.",)  # a single-file checkpoint's U-Net
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
BIG_EXPORT_BYTES = 6e9  # exports estimated past this return freed memory at once (see freed_memory_returned)


def parameter_counts(model: str) -> dict[str, int] | None:
    """Parameters per network of ``model`` (a built-in, a diffusers folder, a .safetensors checkpoint), read from
    configs or file headers; None where they cannot be told without loading it (pickles, unknown sources)."""
    if model in BUILTIN_MODELS:
        return _counts_from_configs(ARCH_DIR / BUILTIN_MODELS[model].arch)
    path = Path(model).expanduser()
    if path.is_dir() and (path / "model_index.json").is_file():
        counts = {n: _safetensors_count(sorted((path / n).glob("*.safetensors"))) for n in NETWORKS}
        return {n: c for n, c in counts.items() if c} or None
    if path.is_file() and path.suffix == ".safetensors":
        shapes = _safetensors_shapes(path)
        unet = sum(math.prod(s) for k, s in shapes.items() if k.startswith(_UNET_PREFIXES))
        return {"unet": unet, "others": sum(map(math.prod, shapes.values())) - unet}
    return None


def estimate_peak(counts: dict[str, int], fp16: bool) -> float:
    """Bytes an export of networks with ``counts`` parameters needs at its peak."""
    stored = 2 if fp16 else 4
    largest, total = max(counts.values()), sum(counts.values())
    loading = total * stored + largest * (4 - stored)
    tracing = largest * 4 * TRACE_FACTOR
    return BASE_BYTES + max(loading, tracing)


def check_fits(model: str, fp16: bool, without: tuple[str, ...] = ()) -> float | None:
    """Refuse, before loading anything, an export this machine's free memory cannot hold; else return the
    estimated peak (None where it cannot be told). ``without``: networks the export leaves out (SD 3's T5)."""
    counts = parameter_counts(model)
    if counts is None:
        return None
    counts = {name: n for name, n in counts.items() if name not in without}
    need = estimate_peak(counts, fp16)
    available = available_bytes()
    if available is None or need <= available:
        return need
    hint = ""
    if not fp16 and estimate_peak(counts, True) <= available:
        hint = f" Export with --fp16 (about {estimate_peak(counts, True) / 1e9:.1f} GB), or"
    raise ExportError(
        f"exporting {model} in {'fp16' if fp16 else 'fp32'} needs about {need / 1e9:.1f} GB of memory "
        f"({sum(counts.values()) / 1e9:.2f} B parameters, the largest network {max(counts.values()) / 1e9:.2f} B), "
        f"and {available / 1e9:.1f} GB is available.{hint} Close other programs or use a machine with more "
        "memory."
    )


@contextlib.contextmanager
def freed_memory_returned(enabled: bool):
    """While exporting a big model, make freed memory go back to the system at once (glibc; elsewhere nothing).

    glibc serves allocations under a threshold it raises up to 32 MB from its heap, where freed blocks stay: tracing
    SDXL's U-Net peaked 6 GB above its weights. With blocks past 1 MB taken from mmap, each is returned when freed
    (the trace then peaks 0.6 GB above its weights, and takes about twice as long, so small models are left as
    they are). Afterwards the threshold is set to 32 MB, where glibc's own adjustment ends up."""
    libc = _glibc() if enabled else None
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)


def trim() -> None:
    """Hand the heap's free memory back to the system (glibc)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _glibc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def _counts_from_configs(root: Path) -> dict[str, int]:
    """Parameters of each network an arch folder describes, counted on networks made on the meta device."""
    import torch

    index = json.loads((root / "model_index.json").read_text(encoding="utf-8"))
    with torch.device("meta"):
        return {name: sum(p.numel() for p in make_network(root, index, name).parameters())
                for name in networks_in(index)}


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    try:
        return read_shapes(path, allow_pickle=False)
    except ModelSourceError:  # unreadable: loading reports it
        return {}


def _safetensors_count(files: list[Path]) -> int:
    return sum(math.prod(s) for f in files for s in _safetensors_shapes(f).values())
