"""Build one TensorRT engine from one ONNX graph: clean the graph, parse it, add the profile, build.

Both flavours build strongly typed networks, so the engine computes in the precision of the graph (fp16 engines
come from the exporter's fp16 graphs; TensorRT for RTX has no fp16 builder flag at all).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SdrtError
from ..fileio import write_bytes
from .flavours import Flavour

log = logging.getLogger("sdrt")

# Builder log lines worth keeping in the manifest (the rest is in the log at debug level)
_SUMMARY_MARKERS = ("Total Activation Memory", "Total Weights Memory", "Engine generation completed",
                    "Total Host Persistent Memory", "Total Device Persistent Memory")


class EngineBuildError(SdrtError):
    """TensorRT could not parse or build a graph."""


@dataclass
class BuildLog:
    """Collects the builder's messages; the summary goes into the manifest."""
    warnings: int = 0
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, severity: str, message: str) -> None:
        if severity in ("ERROR", "INTERNAL_ERROR"):
            if "Thread context has not been set" not in message:  # TensorRT-RTX logs this for harmless getters
                self.errors.append(message)
        elif severity == "WARNING":
            self.warnings += 1
        if any(m in message for m in _SUMMARY_MARKERS):
            self.notes.append(message.strip())
        log.debug("[%s] %s", severity, message)

    def summary(self) -> dict:
        return {"warnings": self.warnings, "errors": self.errors[-5:], "notes": self.notes}


def make_logger(flavour: Flavour, build_log: BuildLog):
    trt = flavour.trt

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)  # the binding needs its own constructor called

        def log(self, severity, message):
            build_log.add(severity.name, message)

    return Logger()


@dataclass(frozen=True)
class BuildRequest:
    onnx_path: Path
    shapes: dict[str, tuple[tuple[int, ...], ...]]  # input -> (min, opt, max)
    targets: tuple[str, ...] = ()  # compute capabilities (TensorRT-RTX ahead of time); () = the local GPU
    refit: bool = False
    cleanup: bool = True
    timing_cache: Path | None = None  # standard TensorRT only


@dataclass(frozen=True)
class BuildResult:
    plan: bytes
    seconds: float
    log: dict
    nodes: tuple[int, int]  # graph nodes before and after the clean-up


def clean_graph(onnx_path: Path, workdir: Path) -> tuple[Path, tuple[int, int]]:
    """Constant folding, dead-node removal and shape inference with onnx-graphsurgeon (folding runs the constant
    subgraphs on ONNX Runtime); the result is written into ``workdir`` beside its external weights."""
    import onnx
    import onnx_graphsurgeon as gs
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # folding runs ORT sessions; their optimizer notes are noise here
    model = onnx.load(str(onnx_path))
    before = len(model.graph.node)
    graph = gs.import_onnx(model)
    graph.fold_constants().cleanup().toposort()
    cleaned = gs.export_onnx(graph)
    del model, graph
    out = workdir / onnx_path.name
    large = _over_protobuf_limit(cleaned)
    onnx.save(cleaned, str(out), save_as_external_data=large, location=f"{onnx_path.name}.data" if large else None)
    if not large:
        try:
            onnx.save(onnx.shape_inference.infer_shapes(cleaned), str(out))
        except Exception as e:  # shape inference is a help to the parser, not a requirement
            log.debug("shape inference skipped on %s: %s", onnx_path.name, e)
    return out, (before, len(cleaned.graph.node))


def _over_protobuf_limit(model) -> bool:
    """Graphs over 2 GB (the SD 1.5 U-Net in fp32) must keep their weights in an external file."""
    try:
        return model.ByteSize() > (1 << 31) - (1 << 20)
    except Exception:  # protobuf refuses to even size it
        return True


def build_engine(flavour: Flavour, request: BuildRequest) -> BuildResult:
    trt = flavour.trt
    build_log = BuildLog()
    logger = make_logger(flavour, build_log)
    with tempfile.TemporaryDirectory(prefix="sdrt-build-") as tmp:
        path, nodes = request.onnx_path, (0, 0)
        if request.cleanup:
            try:
                path, nodes = clean_graph(request.onnx_path, Path(tmp))
            except Exception as e:
                log.warning("graph clean-up of %s failed (%s); building from the graph as exported", path.name, e)
        builder = trt.Builder(logger)
        # strongly typed: the engine keeps the graph's types (the default, and the only mode, in TensorRT-RTX)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise EngineBuildError(
                f"{flavour.label} cannot parse {request.onnx_path}: {'; '.join(errors) or 'no reason given'}. "
                "An operator it does not support needs a different export (or another backend: onnxruntime).")
        config = builder.create_builder_config()
        _set_targets(flavour, config, request.targets)
        if request.refit:
            config.set_flag(trt.BuilderFlag.REFIT)
        timing_cache = _attach_timing_cache(flavour, config, request.timing_cache)
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in request.shapes.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
        start = time.perf_counter()
        plan = builder.build_serialized_network(network, config)
        seconds = time.perf_counter() - start
    if plan is None:
        reason = "; ".join(build_log.errors[-3:]) or "no reason logged"
        hint = _hint(flavour, request, reason)
        raise EngineBuildError(f"{flavour.label} failed to build an engine from {request.onnx_path}: {reason}.{hint}")
    if timing_cache is not None:
        write_bytes(request.timing_cache, bytes(timing_cache.serialize()))
    return BuildResult(bytes(plan), seconds, build_log.summary(), nodes)


def _set_targets(flavour: Flavour, config, targets: tuple[str, ...]) -> None:
    if not flavour.rtx:
        return  # standard TensorRT builds for the GPU it runs on
    trt = flavour.trt
    members = [flavour.compute_capability_enum(cc) for cc in targets] or [trt.ComputeCapability.CURRENT]
    config.num_compute_capabilities = len(members)
    for i, member in enumerate(members):
        config.set_compute_capability(member, i)


def _attach_timing_cache(flavour: Flavour, config, path: Path | None):
    """Standard TensorRT reuses kernel timings across builds; TensorRT-RTX does not time kernels at build time."""
    if flavour.rtx or path is None:
        return None
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _hint(flavour: Flavour, request: BuildRequest, reason: str) -> str:
    if request.refit and flavour.rtx:
        return (" TensorRT-RTX builds refittable engines only on a GPU and for one target at a time: "
                "build without --refit here, or with --refit on a machine with the target GPU.")
    if "CUDA driver version is insufficient" in reason or "cudaError 35" in reason or "CUDA_SUCCESS" in reason:
        return (" There is no usable GPU here: name the targets with --compute-capability (e.g. 8.6,8.9)."
                if flavour.rtx else " Standard TensorRT builds on the GPU it will run on; run sdrt build there.")
    if "out of memory" in reason.lower():
        return " Build a narrower profile (smaller --max) or free GPU memory."
    return " Run with --verbose for the builder's full log."
