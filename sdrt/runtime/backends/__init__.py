"""Backends that execute the export folder's graphs. The pipeline loop never knows which one runs.

A backend is named ``name`` or ``name:precision`` (``openvino:bf16``); ``auto`` picks the fastest one present.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Literal

from ...errors import UserInputError
from .base import Backend

log = logging.getLogger("sdrt")

BackendName = Literal["onnxruntime", "openvino", "auto"]
# The backends sdrt has, in the order `auto` prefers them where they are installed (a TensorRT engine
# backend, once it exists, goes first when a GPU is present).
KNOWN_BACKENDS = ("openvino", "onnxruntime")
BACKENDS = tuple(b for b in KNOWN_BACKENDS if importlib.util.find_spec(b) is not None)  # installed here
_ALIASES = {"onnxruntime": "onnxruntime", "ort": "onnxruntime", "openvino": "openvino", "ov": "openvino"}


def resolve_auto() -> tuple[str, str]:
    """The backend ``auto`` stands for on this machine, and why."""
    if "openvino" in BACKENDS:
        return "openvino", "OpenVINO is installed: the fastest CPU backend (no TensorRT backend for a GPU yet)"
    return "onnxruntime", "OpenVINO is not installed (pip install 'sdrt[openvino]'), so ONNX Runtime"


def create_backend(spec: str) -> Backend:
    """``"onnxruntime"``, ``"openvino"``, ``"openvino:bf16"``, ``"openvino:bf16:static"``, ``"auto"``…"""
    name, *options = spec.lower().split(":")
    static = "static" in options
    options = [o for o in options if o != "static"]
    if len(options) > 1:
        raise UserInputError(f"backend {spec!r}: give at most a precision and 'static' after the name")
    precision = options[0] if options else ""
    if name == "auto":
        name, reason = resolve_auto()
        log.info("backend auto: %s (%s)", name, reason)
    key = _ALIASES.get(name)
    if key == "onnxruntime":
        if static or precision not in ("", "fp32"):
            raise UserInputError(f"onnxruntime runs the graphs in the precision they were exported in; drop ':{precision}'"
                                 " (export with --fp16 for fp16)")
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend()
    if key == "openvino":
        from .openvino import OpenVinoBackend

        return OpenVinoBackend(precision=precision or "fp32", static_shapes=static)
    raise UserInputError(f"unknown backend {spec!r}; available: {', '.join(KNOWN_BACKENDS)}, auto "
                         "(openvino takes :fp32 or :bf16, and :static)")
