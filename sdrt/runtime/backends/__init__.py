"""Backends that execute the export folder's graphs. The pipeline loop never knows which one runs."""

from __future__ import annotations

from typing import Literal

from ...errors import UserInputError
from .base import Backend

BackendName = Literal["onnxruntime"]
BACKENDS = ("onnxruntime",)
_ALIASES = {"onnxruntime": "onnxruntime", "ort": "onnxruntime"}


def create_backend(name: str) -> Backend:
    key = _ALIASES.get(name.lower())
    if key == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend()
    raise UserInputError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
