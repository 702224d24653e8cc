"""Check each exported graph against the PyTorch module it came from, on fresh random inputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..manifest import TensorSpec
from .graphs import ComponentGraph, Shape
from ..lora.sites import is_factor

# Relative error = max |onnx - torch| / max |torch|, per output.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}


@dataclass(frozen=True)
class Check:
    component: str
    shape: str
    output: str
    max_abs_error: float
    relative_error: float
    tolerance: float
    finite: bool

    @property
    def passed(self) -> bool:
        return self.finite and self.relative_error < self.tolerance


@dataclass(frozen=True)
class Reference:
    """What PyTorch computes for one set of random inputs of one shape."""

    shape: str
    inputs: dict[str, np.ndarray]
    outputs: tuple[np.ndarray, ...]


def references(graph: ComponentGraph, shapes: list[Shape], seed: int = 1234) -> list[Reference]:
    """PyTorch's outputs at ``shapes``: taken before the graph is written, so the module can be freed first."""
    refs = []
    for shape in shapes:
        inputs = graph.make_inputs(shape, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            expected = graph.module(*inputs.values())
        expected = expected if isinstance(expected, tuple) else (expected,)
        label = "x".join(f"{k}={list(v.shape)}" for k, v in inputs.items() if not is_factor(k))
        label += f" lora_rank={shape.lora_rank}" if any(map(is_factor, inputs)) else ""
        refs.append(Reference(label, {k: v.numpy() for k, v in inputs.items()}, tuple(e.numpy() for e in expected)))
    return refs


def validate_graph(component: str, outputs: tuple[TensorSpec, ...], onnx_path: Path, precision: str,
                   refs: list[Reference]) -> list[Check]:
    """ONNX Runtime's outputs of the graph at ``onnx_path`` against PyTorch's ``refs``, output by output."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # The graph as written, not ONNX Runtime's rewrite of it; and on the CPU an fp16 graph's weights are then cast
    # as each node runs rather than folded into fp32 copies of them all (SDXL's U-Net: 10 GB more).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # The default order runs every node that needs no input first: all those weight casts, at once. In the graph's
    # own order each cast runs just before its node (SDXL's fp16 U-Net: 7.4 GB instead of 11.7, measured).
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    options.enable_cpu_mem_arena = False  # a check runs once: give each activation back when done with it
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    checks = []
    for ref in refs:
        got = session.run(None, ref.inputs)
        for spec, expected, out in zip(outputs, ref.outputs, got):
            expected = expected.astype(np.float64)
            out = out.astype(np.float64)
            finite = bool(np.isfinite(out).all())
            err = float(np.abs(out - expected).max()) if finite else float("inf")
            scale = float(np.abs(expected).max()) or 1.0
            checks.append(Check(component, ref.shape, spec.name, err, err / scale, TOLERANCE[precision], finite))
    return checks


def report(checks: list[Check]) -> str:
    lines = [f"{'component':<15} {'output':<18} {'max abs':>10} {'rel err':>10} {'tol':>7}  result  inputs"]
    for c in checks:
        lines.append(
            f"{c.component:<15} {c.output:<18} {c.max_abs_error:>10.3e} {c.relative_error:>10.3e} {c.tolerance:>7.0e}  "
            f"{'ok' if c.passed else 'FAIL':<6}  {c.shape}"
        )
    return "\n".join(lines)


def as_json(checks: list[Check]) -> list[dict]:
    return [asdict(c) | {"passed": c.passed} for c in checks]
