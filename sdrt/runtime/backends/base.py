"""The backend interface: run one component of an export folder on one engine.

Like polygraphy's runners: used as a context manager, public ``load``/``run``/``close`` wrap small
``*_impl`` methods, and inputs are checked against the manifest before they reach the engine.
Output arrays may be buffers the backend reuses: copy them if you keep them past the next ``run``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ...components import RunShape
from ...errors import BackendError
from ...manifest import ComponentSpec, Manifest


class Backend(ABC):
    name: str = "?"

    def __init__(self) -> None:
        self.folder: Path | None = None
        self.manifest: Manifest | None = None
        self.device = "unknown"  # what the backend really runs on, e.g. "CPUExecutionProvider"
        # called as observe(component, seconds) after every run: timing and counting (sdrt bench, sdrt serve)
        self.observers: list[Callable[[str, float], None]] = []
        # inputs fed to every run of a component besides the caller's: the request's LoRA factors
        self.bound: dict[str, dict[str, np.ndarray]] = {}

    def load(self, folder: Path, manifest: Manifest) -> Backend:
        self.folder, self.manifest = Path(folder), manifest
        self.load_impl()
        return self

    def run(self, component: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self._spec(component)
        feeds = {**self.bound.get(component, {}), **feeds}
        checked = {}
        for t in spec.inputs:
            if t.name not in feeds:
                raise BackendError(f"{component} needs input {t.name!r}; got {sorted(feeds)}")
            value = np.asarray(feeds[t.name])
            if value.ndim != len(t.shape):
                raise BackendError(f"{component} input {t.name!r} must have {len(t.shape)} dims {t.shape}, got {value.shape}")
            checked[t.name] = np.ascontiguousarray(value, dtype=t.dtype)
        started = time.perf_counter()
        outputs = self.run_impl(component, checked)
        elapsed = time.perf_counter() - started
        for observe in self.observers:
            observe(component, elapsed)
        return outputs

    def host_memory_factor(self, precision: str) -> float:
        """Bytes of this machine's memory the backend holds, at its peak while loading, per byte of a graph of
        ``precision`` on disk (``memory.check_load_fits``). A GPU backend reads a graph and hands it on: 1."""
        return 1.0

    def prepare(self, shape: RunShape) -> None:
        """Called once per pipeline call before the first graph runs: a backend with fixed shapes (TensorRT
        profiles) refuses here, before any work, what it cannot run. Graphs with dynamic shapes need nothing."""

    def close(self) -> None:
        self.close_impl()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _spec(self, component: str) -> ComponentSpec:
        if self.manifest is None:
            raise BackendError(f"{self.name} backend used before load()")
        try:
            return self.manifest.components[component]
        except KeyError:
            raise BackendError(f"the export has no {component!r} graph (it has {sorted(self.manifest.components)})") from None

    @abstractmethod
    def load_impl(self) -> None: ...

    @abstractmethod
    def run_impl(self, component: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close_impl(self) -> None:
        pass
