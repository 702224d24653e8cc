"""The machine's matrix-multiply peak: the best GEMM rate any installed library reaches.

One library's GEMM can be slower than what another library's convolutions reach (on the AVX-512 machine a 4096²
PyTorch matmul ran at 208 GFLOP/s while ONNX Runtime's U-Net reached 357), so the peak is the best of several.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from .stats import Stats


def _rate(run: Callable[[], object], flops: float, repeats: int) -> Stats:
    run()  # warm-up: thread pools, packing buffers
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - t0)
    return Stats.of([flops / s for s in seconds])


def numpy_gemm(n: int, repeats: int) -> Stats:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    return _rate(lambda: a @ b, 2.0 * n**3, repeats)


def onnxruntime_gemm(n: int, repeats: int) -> Stats:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {x: rng.standard_normal((n, n), dtype=np.float32) for x in ("a", "b")}
    onnx.checker.check_model(model)
    return _rate(lambda: session.run(None, feeds), 2.0 * n**3, repeats)


GEMMS = {"numpy": numpy_gemm, "onnxruntime": onnxruntime_gemm}


def measure_peak(sizes: tuple[int, ...] = (1024, 2048, 4096), repeats: int = 5) -> dict:
    """fp32 GEMM FLOP/s of each library at each square size (best of ``repeats``), and the best of all: the peak
    that backends' fractions refer to. The best size differs between libraries and machines, hence the sweep."""
    rates = {f"{name} {n}": gemm(n, repeats) for name, gemm in GEMMS.items() for n in sizes}
    best = max(rates, key=lambda k: rates[k].max)
    return {"fp32": {k: v.to_json() for k, v in rates.items()}, "peak_fp32": rates[best].max, "peak_fp32_from": best}
