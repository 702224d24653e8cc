"""What the CPU is: its model name and instruction-set flags, from /proc/cpuinfo (empty where there is none)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def cpuinfo() -> dict[str, str]:
    """The first CPU's /proc/cpuinfo fields ("model name", "flags", …)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            key, value = (part.strip() for part in line.split(":", 1))
            info.setdefault(key, value)
    return info


def cpu_flags() -> set[str]:
    return set(cpuinfo().get("flags", "").split())
