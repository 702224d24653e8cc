"""Backends that execute the export folder's graphs. The pipeline loop never knows which one runs.

A backend is named ``name`` or ``name:option…`` (``openvino:bf16``, ``openvino:bf16:int8``); ``auto`` picks the
fastest one present.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Literal

from ...errors import UserInputError
from ...manifest import Manifest
from .base import Backend

log = logging.getLogger("sdrt")

BackendName = Literal["onnxruntime", "openvino", "tensorrt", "tensorrt-rtx", "auto"]
# The backends sdrt has, in the order `auto` prefers them where they are installed (TensorRT only with a GPU
# and engines built for it).
KNOWN_BACKENDS = ("tensorrt", "tensorrt-rtx", "openvino", "onnxruntime")
_MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx", "openvino": "openvino", "onnxruntime": "onnxruntime"}
BACKENDS = tuple(b for b in KNOWN_BACKENDS if importlib.util.find_spec(_MODULES[b]) is not None)  # installed here
CPU_BACKENDS = tuple(b for b in BACKENDS if b in ("openvino", "onnxruntime"))  # installed, and need no GPU or engines
_ALIASES = {"onnxruntime": "onnxruntime", "ort": "onnxruntime", "openvino": "openvino", "ov": "openvino",
            "tensorrt": "tensorrt", "trt": "tensorrt", "tensorrt-rtx": "tensorrt-rtx", "trt-rtx": "tensorrt-rtx"}


def resolve_auto(manifest: Manifest | None = None) -> tuple[str, str]:
    """The backend ``auto`` stands for on this machine (and export folder, when given), and why."""
    flavours = [b for b in ("tensorrt", "tensorrt-rtx") if b in BACKENDS]
    if flavours:
        from ...engines.flavours import local_gpu

        gpu = local_gpu()
        built = [f for f in flavours if manifest is None or any(r.get("flavour") == f for r in manifest.engines.values())]
        if gpu and built:
            return built[0], f"a GPU ({gpu[0]}) and {built[0]} engines are here"
        why = ("no usable GPU" if gpu is None else
               f"no {flavours[0]} engines built yet (sdrt build OUT --backend {flavours[0]} ...)")
    else:
        why = "no TensorRT flavour installed"
    if "openvino" in BACKENDS:
        return "openvino", f"{why}; OpenVINO is installed: the fastest CPU backend"
    return "onnxruntime", f"{why}; OpenVINO is not installed (pip install 'sdrt[openvino]'), so ONNX Runtime"


def create_backend(spec: str, manifest: Manifest | None = None) -> Backend:
    """``"onnxruntime"``, ``"openvino:bf16:static:int8"``, ``"tensorrt-rtx:auto-build"``, ``"auto"``…
    (``manifest``: the export ``auto`` chooses for, so it picks TensorRT only where engines are built)."""
    name, *options = spec.lower().split(":")
    if name in ("tensorrt", "trt", "tensorrt-rtx", "trt-rtx"):
        unknown = [o for o in options if o not in ("auto-build", "no-cuda-graphs")]
        if unknown:
            raise UserInputError(f"backend {spec!r}: TensorRT takes ':auto-build' and ':no-cuda-graphs' "
                                 "(its precision is the engine's, from the graph: export with --fp16 for fp16)")
        from .tensorrt import TensorRTBackend

        return TensorRTBackend(_ALIASES[name], auto_build="auto-build" in options,
                               cuda_graphs="no-cuda-graphs" not in options)
    static = "static" in options
    weights = next((o for o in options if o in ("int8", "w8a8")), None)
    options = [o for o in options if o not in ("static", "int8", "w8a8")]
    if len(options) > 1:
        raise UserInputError(f"backend {spec!r}: give at most a precision, 'static' and 'int8' or 'w8a8' after the name")
    precision = options[0] if options else ""
    if name == "auto":
        name, reason = resolve_auto(manifest)
        log.info("backend auto: %s (%s)", name, reason)
    key = _ALIASES.get(name)
    if key == "onnxruntime":
        if static or weights or precision not in ("", "fp32"):
            raise UserInputError(f"onnxruntime runs the graphs as exported; drop the options from {spec!r} "
                                 "(export with --fp16 for fp16; int8 weights, w8a8 and static shapes are openvino's)")
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend()
    if key == "openvino":
        from .openvino import OpenVinoBackend

        return OpenVinoBackend(precision=precision or "fp32", static_shapes=static, weights=weights)
    if key in ("tensorrt", "tensorrt-rtx"):  # picked by auto
        return create_backend(key, manifest)
    raise UserInputError(f"unknown backend {spec!r}; available: {', '.join(KNOWN_BACKENDS)}, auto "
                         "(openvino takes :fp32 or :bf16, :static and :int8 or :w8a8)")
