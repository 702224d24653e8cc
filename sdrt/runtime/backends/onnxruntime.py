"""ONNX Runtime backend: the embedded default. CUDA when onnxruntime-gpu and a GPU are there, else CPU."""

from __future__ import annotations

import logging

import numpy as np

from ...errors import BackendError
from .base import Backend

log = logging.getLogger("sdrt")


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, providers: list[str] | None = None, threads: int | None = None):
        super().__init__()
        self._providers = providers
        self._threads = threads
        self._sessions: dict = {}

    def _choose_providers(self, ort) -> list[str]:
        if self._providers:
            return self._providers
        available = ort.get_available_providers()
        # onnxruntime-gpu lists CUDA even on a machine without a GPU; session creation then
        # falls back to CPU, and load_impl reports what was really used.
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]

    def load_impl(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendError("onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)") from e
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self._threads:
            options.intra_op_num_threads = self._threads
        providers = self._choose_providers(ort)
        for name, comp in self.manifest.components.items():
            path = self.folder / comp.file
            try:
                self._sessions[name] = ort.InferenceSession(str(path), options, providers=providers)
            except Exception as e:  # ORT raises its own Fail/InvalidGraph types
                raise BackendError(f"onnxruntime cannot load {path} ({e}). Export the model again.") from e
        used = self._sessions[next(iter(self._sessions))].get_providers()
        self.device = used[0]
        if "CUDAExecutionProvider" in providers and self.device != "CUDAExecutionProvider":
            log.warning("onnxruntime-gpu is installed but CUDA is not usable here; running on the CPU")

    def run_impl(self, component: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._sessions[component]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds)))

    def close_impl(self) -> None:
        self._sessions.clear()
