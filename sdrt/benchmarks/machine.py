"""What the figures were measured on: CPU model and instruction-set flags, cores, memory, GPU, library versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path

from .. import cpu

LIBRARIES = ("numpy", "onnxruntime", "onnxruntime-gpu", "onnx", "torch", "diffusers", "transformers", "openvino",
             "tensorrt", "tensorrt-rtx", "sdrt")
_FLAG_PREFIXES = ("avx", "amx", "fma", "f16c", "sse4", "vnni")


def cpu_flags() -> list[str]:
    """The CPU's vector and matrix instruction-set flags (AVX*, AMX*, FMA, VNNI …)."""
    return sorted(f for f in cpu.cpu_flags() if f.startswith(_FLAG_PREFIXES))


def gpu_name() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def machine_info() -> dict:
    info = cpu.cpuinfo()
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            pass
    mem_kb = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0) if Path("/proc/meminfo").exists() else 0
    return {
        "cpu": info.get("model name", platform.processor() or "unknown"),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "gpu": gpu_name(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }
