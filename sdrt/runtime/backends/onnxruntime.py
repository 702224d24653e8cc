"""ONNX Runtime backend: the embedded default. CUDA when onnxruntime-gpu and a GPU are there, else CPU."""

from __future__ import annotations

import logging

import numpy as np

from ...components import UNET, describe
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

    def host_memory_factor(self, precision: str) -> float:
        """Measured on the SD 1.5 architecture (fp32, 4.3 GB of graphs): a 4.75 GB peak. On the CPU an fp16 graph's
        weights are cast to fp32 copies (its MatMuls and convolutions have no fp16 kernels): twice as many bytes."""
        return 1.1 if precision == "fp32" else 2.2

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
        self._ort, providers = ort, self._choose_providers(ort)
        self._options = {spin: self._session_options(spin) for spin in (True, False)}
        self._providers_asked = providers
        for name in self.manifest.components:
            if not describe(name).on_demand:
                self._session(name)
        used = self._sessions[next(iter(self._sessions))].get_providers()
        self.device = used[0]
        if "CUDAExecutionProvider" in providers and self.device != "CUDAExecutionProvider":
            log.warning("onnxruntime-gpu is installed but CUDA is not usable here; running on the CPU")

    def _session_options(self, spin: bool):
        options = self._ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self._threads:
            options.intra_op_num_threads = self._threads
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options

    def _session(self, name: str):
        """The session of component ``name``, made on first use (ControlNets are loaded when a call needs them)."""
        if name not in self._sessions:
            path = self.folder / self.manifest.components[name].file
            try:
                # Only the U-Net, called step after step, keeps its threads spinning between calls: a session run
                # once per call (text encoders, VAE, previews) or between U-Net calls (ControlNets) would spin on the
                # cores the U-Net needs next (measured on shapes, 2 cores: 12-15 % off a 20-step call, and a preview
                # decode no longer slows the next U-Net steps)
                options = self._options[name == UNET.name]
                self._sessions[name] = self._ort.InferenceSession(str(path), options, providers=self._providers_asked)
            except Exception as e:  # ORT raises its own Fail/InvalidGraph types
                raise BackendError(f"onnxruntime cannot load {path} ({e}). Export the model again.") from e
        return self._sessions[name]

    def run_impl(self, component: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._session(component)
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds)))

    def close_impl(self) -> None:
        self._sessions.clear()
