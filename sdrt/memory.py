"""How much memory this machine has left, and whether a backend can load an export in it: decided before any
work, so that a model too big (Flux.1 dev: 12 B parameters in its transformer, 4.7 B in T5) is refused with what to
do, rather than killed for memory minutes into its load. Torch-free: the runtime imports it."""

from __future__ import annotations

from pathlib import Path

from .components import describe
from .errors import UserInputError

BASE_BYTES = 0.6e9  # the runtime's Python with numpy and a backend loaded


def available_bytes() -> int | None:
    """Memory this process can still take: the system's available memory, or less under a cgroup limit."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        available = info["MemAvailable"]
    except (OSError, KeyError, ValueError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available


def graph_bytes(folder: Path, manifest) -> dict[str, int]:
    """The bytes on disk of each graph a backend loads with the export (ControlNets and the tiny VAE load later)."""
    sizes = {}
    for name, spec in manifest.components.items():
        if not describe(name).on_demand:
            sizes[name] = sum((folder / f).stat().st_size for f in filter(None, (spec.file, spec.external_data)))
    return sizes


def check_load_fits(folder: Path, manifest, backend) -> float | None:
    """Refuse, before ``backend`` reads anything, an export this machine's free memory cannot hold while it loads:
    its graphs' bytes times what the backend holds per byte (``Backend.host_memory_factor``); else return the
    estimate (None where the free memory cannot be told)."""
    sizes = graph_bytes(Path(folder), manifest)
    need = BASE_BYTES + sum(size * backend.host_memory_factor(manifest.components[name].precision)
                            for name, size in sizes.items())
    available = available_bytes()
    if available is None or need <= available:
        return need
    raise UserInputError(
        f"loading {folder} on {backend.name} needs about {need / 1e9:.1f} GB of memory ({sum(sizes.values()) / 1e9:.1f} "
        f"GB of graphs), and {available / 1e9:.1f} GB is available. Close other programs, or use a backend that holds "
        "less while loading (ONNX Runtime on fp32 graphs: 1.1 bytes per byte of graph; OpenVINO 1.6 while it "
        "compiles), an --fp16 export on a GPU backend, an export without T5 (sdrt export --no-t5, SD 3), or a "
        "machine with more memory; the README's \"Memory\" table says what each model needs."
    )
