"""TensorRT backend (both flavours): runs the engines ``sdrt build`` wrote into the export folder.

Engines are deserialized once at load; each component may have several (one per profile) and each run picks the
one whose profile covers its shapes. All engines share one activation-memory pool (the largest one's size: the
components run one after another on one stream), device buffers are allocated per shape and reused across steps,
and a static-profile U-Net step is replayed as a CUDA graph. Host-side numpy does the rest.

This file needs a GPU: it has never run on the machines sdrt is developed on (see the README).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ...engines.flavours import load_flavour, local_gpu
from ...engines.profiles import Profile
from ...engines.select import build_command, no_engine_message, pick, profile_for, uncovered
from ...engines.store import engine_records, trusted
from ...errors import BackendError
from ...fileio import write_bytes
from ...components import RunShape
from .base import Backend

log = logging.getLogger("sdrt")

MAX_SHAPES = 4  # buffer sets (and CUDA graphs) kept per engine


class _Engine:
    """One deserialized engine, its execution context, and device buffers per input shape."""

    def __init__(self, backend: TensorRTBackend, record: dict, engine):
        self.record, self.engine = record, engine
        self.profile = Profile.from_json(record["profile"])
        trt = backend.flavour.trt
        self.names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in self.names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if n not in self.inputs]
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in self.names}
        self.memory_size = engine.device_memory_size_v2
        self.context = backend.new_context(self)
        self.buffers: OrderedDict[tuple, dict] = OrderedDict()  # shape signature -> {name: (ptr, host array)}
        self.graphs: dict[tuple, object] = {}  # shape signature -> instantiated CUDA graph
        self.ran: set[tuple] = set()  # signatures run at least once (TensorRT initializes lazily on the first run)


class TensorRTBackend(Backend):
    def __init__(self, flavour: str = "tensorrt", auto_build: bool = False, cuda_graphs: bool = True):
        super().__init__()
        self.name = flavour
        self.flavour_name = flavour
        # build a static engine for a shape no profile covers (and rebuild a damaged engine), instead of failing
        self.auto_build = auto_build
        self.cuda_graphs = cuda_graphs
        self._engines: dict[str, _Engine] = {}  # by engine key
        self._chosen: dict[tuple, _Engine] = {}  # (component, input shapes) -> engine: chosen once, not every step
        self._shape: RunShape | None = None
        self._workspace, self._workspace_size = 0, 0
        self._runtime_caches: dict[str, object] = {}

    # -- loading -------------------------------------------------------------------------------------------

    def load_impl(self) -> None:
        self.flavour = load_flavour(self.flavour_name)
        gpu = local_gpu()
        if gpu is None:
            raise BackendError(f"the {self.flavour_name} backend needs an NVIDIA GPU and its driver, and none is usable "
                               "here; use backend onnxruntime or openvino (or auto)")
        self.gpu_name, self.gpu_cc = gpu
        from .cuda import Cuda

        self.cuda = Cuda()
        from ...engines.builder import BuildLog, make_logger

        self._log = BuildLog()
        self.runtime = self.flavour.trt.Runtime(make_logger(self.flavour, self._log))
        for record in self._usable_records():
            if record["key"] not in self._engines:  # an auto-build rebuild may have loaded it already
                self._deserialize(record)
        self._ensure_workspace()
        self.device = f"{self.gpu_name} (compute capability {self.gpu_cc}, {self.flavour.label})"

    def _usable_records(self) -> list[dict]:
        """The engines of this flavour, version and GPU; a clear error when there are engines but none fits."""
        records = engine_records(self.manifest, self.flavour_name)
        fitting = [r for r in records if r["version"] == self.flavour.version and self.gpu_cc in r["targets"]]
        if fitting or self.auto_build:
            return fitting
        build = build_command(self.folder, self.flavour_name)
        if not records:
            raise BackendError(f"{self.folder} has no {self.flavour_name} engines. Build them first: {build}")
        versions = sorted({r["version"] for r in records})
        if self.flavour.version not in versions:
            raise BackendError(f"the {self.flavour_name} engines in {self.folder} were built by version "
                               f"{', '.join(versions)}, this is {self.flavour.version}: engines do not move between "
                               f"versions. Build them again: {build}")
        targets = sorted({cc for r in records for cc in r["targets"]})
        raise BackendError(f"this GPU ({self.gpu_name}) has compute capability {self.gpu_cc}; the engines in "
                           f"{self.folder} target {', '.join(targets)}. Build for it: {build} "
                           f"--compute-capability {self.gpu_cc}" +
                           (" (TensorRT for RTX cannot target it if it is not among "
                            "7.5, 8.0, 8.6, 8.9, 12.0, 12.1: use backend tensorrt or onnxruntime)" if self.flavour.rtx else ""))

    def _deserialize(self, record: dict, retry: bool = True) -> None:
        path = self.folder / record["file"]
        fix = f"`{build_command(self.folder, self.flavour_name)}` with the same options rebuilds it"
        problem = None
        if not trusted(self.folder, record, quick=True):
            problem = "is missing or truncated (not the size recorded in the manifest)"
        else:
            engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                problem = f"cannot be loaded by {self.flavour.label} ({'; '.join(self._log.errors[-2:]) or 'no reason logged'})"
        if problem and self.auto_build and retry:
            log.warning("engine %s %s: rebuilding it", path, problem)
            self._build([record["component"]], Profile.from_json(record["profile"]), record)
            return
        if problem:
            raise BackendError(f"engine {path} {problem}; {fix}")
        self._engines[record["key"]] = _Engine(self, record, engine)

    def new_context(self, eng: _Engine):
        trt = self.flavour.trt
        strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED  # the shared pool below
        if not self.flavour.rtx:
            return eng.engine.create_execution_context(strategy)
        # TensorRT-RTX compiles kernels for the GPU on first use: its runtime cache keeps them across processes,
        # and it captures CUDA graphs itself
        config = eng.engine.create_runtime_config()
        config.set_execution_context_allocation_strategy(strategy)
        cache = config.create_runtime_cache()
        path = self._runtime_cache_path(eng.record)
        if path.is_file() and not cache.deserialize(path.read_bytes()):
            log.warning("runtime cache %s does not fit this GPU, driver or version; starting a new one", path)
        config.set_runtime_cache(cache)
        if self.cuda_graphs and eng.profile.static:
            config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
        self._runtime_caches[eng.record["key"]] = (cache, path)
        return eng.engine.create_execution_context(config)

    def _runtime_cache_path(self, record: dict) -> Path:
        return self.folder / "engines" / f"runtime-{record['key']}-sm{self.gpu_cc.replace('.', '')}.cache"

    def _ensure_workspace(self) -> None:
        """One activation-memory pool for every engine, as large as the largest needs."""
        size = max((e.memory_size for e in self._engines.values()), default=0)
        if size <= self._workspace_size:
            return
        if self._workspace:
            self.cuda.free(self._workspace)
        self._workspace, self._workspace_size = self.cuda.malloc(size), size
        for e in self._engines.values():
            e.context.set_device_memory(self._workspace, self._workspace_size)

    # -- choosing an engine --------------------------------------------------------------------------------

    def _records(self) -> list[dict]:
        return [e.record for e in self._engines.values()]

    def prepare(self, shape: RunShape) -> None:
        self._shape = shape
        missing = uncovered(self._records(), self.manifest, shape)
        if missing and self.auto_build:
            self._build(missing, profile_for(shape))
        elif missing:
            raise BackendError(no_engine_message(self.folder, self.flavour_name, missing[0], self._records(), shape))

    def _build(self, components: list[str], profile: Profile, like: dict | None = None) -> None:
        """Build engines for ``profile`` on this GPU (``like``: with a damaged engine's options) and load them."""
        from ...engines import build
        from ...manifest import load_manifest

        log.info("auto-build: building %s engines for %s", ", ".join(components), profile.describe())
        targets = (self.gpu_cc,) if self.flavour.rtx else None
        options = {"refit": like["refit"], "cleanup": like["cleanup"]} if like else {}
        build(self.folder, self.flavour_name, [profile], compute_capabilities=targets, components=tuple(components),
              **options)
        self.manifest = load_manifest(self.folder)
        for record in self._usable_records():
            if record["key"] not in self._engines:
                self._deserialize(record, retry=False)
        self._chosen.clear()  # a new engine may fit a shape better
        self._ensure_workspace()

    # -- running -------------------------------------------------------------------------------------------

    def run_impl(self, component: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shapes = {k: v.shape for k, v in feeds.items()}
        signature = tuple(sorted(shapes.items()))
        eng = self._chosen.get((component, signature))
        if eng is None:
            record = pick(self._records(), component, shapes)
            if record is None:
                raise BackendError(no_engine_message(self.folder, self.flavour_name, component, self._records(),
                                                     self._shape))
            eng = self._chosen[(component, signature)] = self._engines[record["key"]]
        buffers = self._buffers(eng, signature, feeds)
        staged = [np.ascontiguousarray(value, dtype=eng.dtypes[name]) for name, value in feeds.items()]
        for name, host in zip(feeds, staged):  # ``staged`` stays alive until the stream is synchronized
            self.cuda.to_device(buffers[name][0], host)
        self._execute(eng, signature)
        for name in eng.outputs:
            ptr, host = buffers[name]
            self.cuda.to_host(host, ptr)
        self.cuda.synchronize()
        return {name: buffers[name][1].copy() for name in eng.outputs}

    def _buffers(self, eng: _Engine, signature: tuple, feeds: dict[str, np.ndarray]) -> dict:
        """Device buffers (and host arrays for the outputs) for these shapes, made once and reused every step."""
        if signature in eng.buffers:
            eng.buffers.move_to_end(signature)
            buffers = eng.buffers[signature]
        else:
            ctx, buffers = eng.context, {}
            for name, value in feeds.items():
                if not ctx.set_input_shape(name, value.shape):
                    raise BackendError(no_engine_message(self.folder, self.flavour_name, eng.record["component"],
                                                         self._records(), self._shape))
                buffers[name] = (self.cuda.malloc(value.size * eng.dtypes[name].itemsize), None)
            for name in eng.outputs:
                host = np.empty(tuple(ctx.get_tensor_shape(name)), dtype=eng.dtypes[name])
                buffers[name] = (self.cuda.malloc(host.nbytes), host)
            eng.buffers[signature] = buffers
            if len(eng.buffers) > MAX_SHAPES:
                old, dropped = eng.buffers.popitem(last=False)
                eng.graphs.pop(old, None)
                for ptr, _ in dropped.values():
                    self.cuda.free(ptr)
        for name, value in feeds.items():  # the context remembers one shape at a time
            eng.context.set_input_shape(name, value.shape)
        for name in eng.names:
            eng.context.set_tensor_address(name, buffers[name][0])
        return buffers

    def _execute(self, eng: _Engine, signature: tuple) -> None:
        # Standard TensorRT: a static-profile U-Net step is captured as a CUDA graph on its second run and
        # replayed from then on; TensorRT-RTX captures by itself (its runtime config, see new_context).
        graphable = (self.cuda_graphs and not self.flavour.rtx and eng.profile.static
                     and eng.record["component"] == "unet")
        if graphable and signature in eng.ran and signature not in eng.graphs:
            eng.graphs[signature] = self.cuda.capture(lambda: self._enqueue(eng))
        if signature in eng.graphs:
            self.cuda.launch(eng.graphs[signature])
        else:
            self._enqueue(eng)
            eng.ran.add(signature)

    def _enqueue(self, eng: _Engine) -> None:
        if not eng.context.execute_async_v3(self.cuda.stream):
            raise BackendError(f"{self.flavour.label} failed to run {eng.record['file']}: "
                               f"{'; '.join(self._log.errors[-2:]) or 'no reason logged'}")

    def close_impl(self) -> None:
        for cache, path in self._runtime_caches.values():
            try:
                write_bytes(path, bytes(cache.serialize()))
            except OSError as e:
                log.warning("cannot save the TensorRT-RTX runtime cache %s: %s", path, e)
        if getattr(self, "cuda", None) is None:
            return
        pointers = [ptr for e in self._engines.values() for buffers in e.buffers.values() for ptr, _ in buffers.values()]
        self._engines.clear()  # contexts and engines go before the memory they use
        for ptr in pointers + ([self._workspace] if self._workspace else []):
            self.cuda.free(ptr)
        self._workspace = 0
        self.cuda.close()
        self.cuda = None
