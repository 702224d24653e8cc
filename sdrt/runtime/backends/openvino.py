"""OpenVINO backend: the CPU fast path. Reads the export folder's ONNX graphs, compiles each for the CPU in the
precision asked for (fp32 exact; bf16 where the CPU has it), dynamic or for the exact shapes it runs at, optionally
with int8 weights (NNCF's data-free weight compression, as optimum-intel's ``load_in_8bit``) or an int8-compute
U-Net made by ``sdrt quantize`` (``w8a8``: runtime/quantize.py), and keeps OpenVINO's
compiled blobs in a cache keyed by content, so a second load skips compilation and a changed model, version, CPU,
precision or weight format never reuses one."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ...components import UNET, describe
from ...cpu import cpu_flags
from ...errors import BackendError
from ..quantize import require_quantized
from .base import Backend

log = logging.getLogger("sdrt")

PRECISIONS = {"fp32": "f32", "bf16": "bf16"}  # sdrt name -> OpenVINO's INFERENCE_PRECISION_HINT
WEIGHTS = ("int8", "w8a8")  # besides the graph's own: int8 weights; int8 convolutions (sdrt quantize)
MAX_SHAPES = 2  # static compiles kept per graph
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
    have = cpu_flags()
    return ",".join(f for f in _CPU_FLAGS if f in have) if have else "unknown"


def cache_key(sha256: str, version: str, precision: str, features: str, static_shape: str | None = None,
              weights: str = "") -> str:
    """Content hash of the graph + OpenVINO (and NNCF) version + CPU features + precision + shape mode + weights."""
    text = "|".join((sha256, version, features, precision, static_shape or "dynamic") + ((weights,) if weights else ()))
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

    def host_memory_factor(self, precision: str) -> float:
        """Measured on the SD 1.5 architecture in bf16 (4.3 GB of fp32 graphs): a 6.9 GB peak while the graphs are
        read and compiled side by side; an fp16 graph's bytes are half as many for the same weights."""
        return 1.6 if precision == "fp32" else 3.2

    def __init__(self, precision: str = "fp32", cache_dir: str | Path | None = None, static_shapes: bool = False,
                 weights: str | None = None):
        super().__init__()
        if weights not in (None, *WEIGHTS):
            raise BackendError(f"openvino weights must be one of {', '.join(WEIGHTS)} (or the graph's own), got {weights!r}")
        self.precision = precision
        # int8 weights: per-channel asymmetric int8, decompressed on the fly; activations keep the compute precision
        self.weights = weights
        # Static shapes (opt-in): each graph compiled for the exact input shapes it is first run with (a U-Net step
        # was 10-15 % faster than the dynamic compile for SD 1.5 at 256x256 in bf16), at most MAX_SHAPES per graph;
        # a compile is exported to the cache and imported from it later (_compile_static).
        self.static_shapes = static_shapes
        self._cache_dir = Path(cache_dir) if cache_dir else None
        self._compiled: dict[tuple, tuple] = OrderedDict()  # (component, shapes or None) -> (request, outputs)
        self.cache: dict[str, str] = {}  # "component" or "component@shapes" -> "hit" | "miss" | "off"

    def load_impl(self) -> None:
        try:
            import openvino as ov
        except ImportError as e:
            raise BackendError("openvino is not installed: pip install 'sdrt[openvino]' (or pip install openvino)") from e
        self._core, self._version = ov.Core(), ov.__version__
        self._hint = check_precision(self.precision, self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        self._cache_root = self._cache_dir or self.folder / "cache" / "openvino"
        self._features = cpu_features()
        if self.weights:
            try:
                import nncf
            except ImportError as e:
                raise BackendError("int8 weights need NNCF: pip install 'sdrt[openvino]' (or pip install nncf)") from e
            self._nncf = nncf
            nncf.set_log_level(logging.WARNING)  # its per-graph statistics table is noise here
            self._version += f"+nncf{nncf.__version__}"
        if not self.static_shapes:
            for name in self.manifest.components:
                if not describe(name).on_demand:  # ControlNets compile when a call first needs them
                    self._get(name, None)
        weights = f", {self.weights} weights" if self.weights else ""
        self.device = f"CPU ({self.precision}{weights}, {'static' if self.static_shapes else 'dynamic'} shapes)"

    def _get(self, name: str, shapes: dict[str, tuple] | None):
        """The infer request of ``name`` (for ``shapes`` when static), compiled on first use."""
        signature = None if shapes is None else tuple(sorted((k, tuple(v)) for k, v in shapes.items()))
        key = (name, signature)
        if key in self._compiled:
            self._compiled.move_to_end(key)
            return self._compiled[key]
        comp = self.manifest.components[name]
        path = self.folder / comp.file
        shape_text = None if signature is None else ";".join(f"{k}={'x'.join(map(str, v))}" for k, v in signature)
        static = None if shape_text is None else f"{shape_text};exported"  # static caches: a blob of our own
        if self.weights == "w8a8" and name == UNET.name:
            path = require_quantized(self.folder, self.manifest)
        digest = cache_key(comp.sha256, self._version, self.precision, self._features, static,
                           self._weights_key(name, path))
        key_dir = self._cache_root / f"{name}-{digest}"
        label = name if shape_text is None else f"{name}@{shape_text}"
        try:
            if self.weights == "int8":
                path = self._compressed(name, comp, path)
            if shapes is None:
                # from the path, not a read model: on a cache hit OpenVINO then never reads the ONNX weights
                compiled = self._compile(self._core, str(path), self._hint, key_dir, label)
            else:
                compiled = self._compile_static(path, shapes, key_dir, label)
        except BackendError:
            raise
        except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own
            raise BackendError(f"openvino cannot compile {path} ({e}). Export the model again.") from e
        entry = (compiled.create_infer_request(), [(port, _manifest_name(port, comp)) for port in compiled.outputs])
        self._compiled[key] = entry
        same = [k for k in self._compiled if k[0] == name]
        if len(same) > MAX_SHAPES:  # forget the least recently used shape of this graph (its weights are a copy)
            del self._compiled[same[0]]
        return entry

    def _weights_key(self, name: str, path: Path) -> str:
        """The weight format's part of a cache key. A quantized U-Net's names its weights file's size and time (its
        calibrated ranges live there, not in the .xml): calibrated again, compiled again."""
        if self.weights == "w8a8":
            if name != UNET.name:
                return ""
            weights = path.with_suffix(".bin").stat()
            return f"w8a8-{weights.st_size}-{weights.st_mtime_ns}"
        return self.weights or ""

    def _compressed(self, name: str, comp, path: Path) -> Path:
        """The graph with int8 weights, as OpenVINO IR next to the compile cache: NNCF compresses each graph once
        (half a minute for an SD 1.5 U-Net), and the IR is written to a temporary folder renamed into place."""
        ir_dir = self._cache_root / f"{name}-{self.weights}-{cache_key(comp.sha256, self._version, '', '', '', self.weights)}"
        ir = ir_dir / f"{name}.xml"
        if ir.is_file():
            return ir
        import openvino as ov

        log.info("compressing the %s weights to %s with NNCF (once per model)", name, self.weights)
        model = self._nncf.compress_weights(self._core.read_model(str(path)), mode=self._nncf.CompressWeightsMode.INT8_ASYM)
        tmp = ir_dir.with_name(f"{ir_dir.name}.tmp-{os.getpid()}")
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            ov.save_model(model, str(tmp / ir.name), compress_to_fp16=False)
            tmp.rename(ir_dir)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if not ir.is_file():  # not another process's win: the cache folder is not writable
                raise BackendError(f"cannot write the int8 {name} graph to {ir_dir.parent} ({e}); "
                                   "make the export folder writable") from e
        return ir

    def _compile_static(self, path: Path, shapes: dict[str, tuple], key_dir: Path, label: str):
        """A compile for fixed input shapes. OpenVINO's model cache cannot spare the read here: it keys a reshaped
        model by hashing it, weights included, so even a hit read and hashed the whole graph (11.7 s and 9.6 GiB
        for an SD 1.5 U-Net, issue 19). The compiled model is exported once into ``key_dir`` and, after, imported
        from there (the file mapped, not copied) without reading the graph."""
        import openvino as ov

        blob = key_dir / "compiled.blob"
        config = {"INFERENCE_PRECISION_HINT": self._hint}
        if blob.is_file():
            self.cache[label] = "hit"
            return self._core.import_model(ov.Tensor(np.memmap(blob, np.uint8, mode="r")), "CPU", config)
        model = self._core.read_model(str(path))
        model.reshape({k: list(v) for k, v in shapes.items()})
        compiled = self._core.compile_model(model, "CPU", config)
        del model
        self.cache[label] = self._export(compiled, key_dir)
        return compiled

    def _export(self, compiled, key_dir: Path) -> str:
        """``compiled`` exported to ``key_dir``/compiled.blob (a temporary folder renamed into place): "miss", or
        "off" where the cache folder cannot be written."""
        tmp = key_dir.with_name(f"{key_dir.name}.tmp-{os.getpid()}")
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            stream = io.BytesIO()
            compiled.export_model(stream)
            (tmp / "compiled.blob").write_bytes(stream.getbuffer())
            tmp.rename(key_dir)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if not key_dir.is_dir():  # not another process's win: the cache folder is not writable
                log.warning("no OpenVINO cache (cannot write %s: %s); compiling every time", key_dir.parent, e)
                return "off"
        return "miss"

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

    def compiled_model(self, component: str):
        """The OpenVINO CompiledModel ``component`` last ran on, or None before its first compile (sdrt bench reads
        which kernels it runs)."""
        requests = [request for (name, _), (request, _) in self._compiled.items() if name == component]
        return requests[-1].get_compiled_model() if requests else None

    def run_impl(self, component: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request, outputs = self._get(component, {k: v.shape for k, v in feeds.items()} if self.static_shapes else None)
        results = request.infer(feeds)
        # copies: the request's output tensors are overwritten by its next run
        return {name: np.array(results[port]) for port, name in outputs}

    def close_impl(self) -> None:
        self._compiled.clear()
