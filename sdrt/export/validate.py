"""Check each exported graph against the PyTorch module it came from, on fresh random inputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .graphs import ComponentGraph, Shape

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


def validate_graph(graph: ComponentGraph, onnx_path: Path, precision: str, shapes: list[Shape], seed: int = 1234) -> list[Check]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    checks = []
    for shape in shapes:
        inputs = graph.make_inputs(shape, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            expected = graph.module(*inputs.values())
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = session.run(None, {k: v.numpy() for k, v in inputs.items()})
        label = "x".join(f"{k}={list(v.shape)}" for k, v in inputs.items())
        for spec, ref, out in zip(graph.outputs, expected, got):
            ref = ref.numpy().astype(np.float64)
            out = out.astype(np.float64)
            finite = bool(np.isfinite(out).all())
            err = float(np.abs(out - ref).max()) if finite else float("inf")
            scale = float(np.abs(ref).max()) or 1.0
            checks.append(Check(graph.name, label, spec.name, err, err / scale, TOLERANCE[precision], finite))
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
