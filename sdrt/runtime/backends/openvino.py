"""OpenVINO backend: the CPU fast path. Reads the export folder's ONNX graphs, compiles each for the CPU in the
precision asked for (fp32 exact; bf16 where the CPU has it), and keeps OpenVINO's compiled blobs in a cache keyed
by content, so a second load skips compilation and a changed model, version, CPU or precision never reuses one."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from ...errors import BackendError
from .base import Backend

log = logging.getLogger("sdrt")

PRECISIONS = {"fp32": "f32", "bf16": "bf16"}  # sdrt name -> OpenVINO's INFERENCE_PRECISION_HINT
_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16", "amx_fp16")


def check_precision(precision: str, capabilities: list[str]) -> str:
    """OpenVINO's precision hint for ``precision``, or a clear error where the CPU cannot run it."""
    if precision not in PRECISIONS:
        raise BackendError(f"openvino precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and "BF16" not in capabilities:
        raise BackendError(
            "this CPU has no bf16 support (no AVX512_BF16 or AMX), so OpenVINO cannot run in bf16 here; "
            "use precision fp32"
        )
    return PRECISIONS[precision]


def cpu_features() -> str:
    """The CPU flags that change which kernels OpenVINO compiles (part of the cache key)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    have = set(flags.split(":", 1)[1].split())
    return ",".join(f for f in _CPU_FLAGS if f in have)


def cache_key(sha256: str, version: str, precision: str, features: str, static_shape: str | None = None) -> str:
    """Content hash of the graph + OpenVINO version + CPU features + precision + shape mode."""
    text = "|".join((sha256, version, features, precision, static_shape or "dynamic"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _manifest_name(port, comp) -> str:
    """The contract's name of an output: a tensor can carry several names in OpenVINO (an fp16 graph's final Cast
    adds its own), so pick the one the manifest knows."""
    names = port.get_names()
    for spec in comp.outputs:
        if spec.name in names:
            return spec.name
    raise BackendError(f"openvino output {sorted(names)} is none of the manifest's {[o.name for o in comp.outputs]}")


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(self, precision: str = "fp32", cache_dir: str | Path | None = None):
        super().__init__()
        self.precision = precision
        self._cache_dir = Path(cache_dir) if cache_dir else None
        self._requests: dict = {}
        self._outputs: dict[str, list] = {}  # component -> [(output port, manifest name)]
        self.cache: dict[str, str] = {}  # component -> "hit" | "miss" | "off"

    def load_impl(self) -> None:
        try:
            import openvino as ov
        except ImportError as e:
            raise BackendError("openvino is not installed: pip install 'sdrt[openvino]' (or pip install openvino)") from e
        core = ov.Core()
        hint = check_precision(self.precision, core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        cache_root = self._cache_dir or self.folder / "cache" / "openvino"
        features = cpu_features()
        for name, comp in self.manifest.components.items():
            path = self.folder / comp.file
            key_dir = cache_root / f"{name}-{cache_key(comp.sha256, ov.__version__, self.precision, features)}"
            try:
                # from the path, not a read model: on a cache hit OpenVINO then never reads the ONNX weights
                compiled = self._compile(core, str(path), hint, key_dir, name)
                self._requests[name] = compiled.create_infer_request()
                self._outputs[name] = [(port, _manifest_name(port, comp)) for port in compiled.outputs]
            except BackendError:
                raise
            except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own
                raise BackendError(f"openvino cannot compile {path} ({e}). Export the model again.") from e
        self.device = f"CPU ({self.precision})"

    def _compile(self, core, model, hint: str, key_dir: Path, name: str):
        """Compile with OpenVINO's model cache in ``key_dir``; a new cache is written to a temporary folder and
        renamed into place, so a half-written cache is never read."""
        config = {"INFERENCE_PRECISION_HINT": hint}
        if key_dir.is_dir():
            self.cache[name] = "hit"
            return core.compile_model(model, "CPU", config | {"CACHE_DIR": str(key_dir)})
        tmp = key_dir.with_name(f"{key_dir.name}.tmp-{os.getpid()}")
        try:
            tmp.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a read-only export folder: run without a cache
            log.warning("no OpenVINO cache (cannot write %s: %s); compiling every time", key_dir.parent, e)
            self.cache[name] = "off"
            return core.compile_model(model, "CPU", config)
        try:
            compiled = core.compile_model(model, "CPU", config | {"CACHE_DIR": str(tmp)})
            try:
                tmp.rename(key_dir)
            except OSError:  # another process put the same cache in place first
                shutil.rmtree(tmp, ignore_errors=True)
        except Exception:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.cache[name] = "miss"
        return compiled

    def run_impl(self, component: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._requests[component].infer(feeds)
        # copies: the request's output tensors are overwritten by its next run
        return {name: np.array(results[port]) for port, name in self._outputs[component]}

    def close_impl(self) -> None:
        self._requests.clear()
        self._outputs.clear()
