"""The machine's matrix-multiply peak: the best GEMM rate any installed library reaches.

One library's GEMM can be slower than what another library's convolutions reach (on the AVX-512 machine a 4096²
PyTorch matmul ran at 208 GFLOP/s while ONNX Runtime's U-Net reached 357), so the peak is the best of several.
"""

from __future__ import annotations

import importlib.util
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


def openvino_gemm(n: int, repeats: int, precision: str = "fp32", chain: int = 4) -> Stats:
    """``chain`` MatMuls by constant weights (as a network's layers: weights packed once, in bf16 where asked),
    compiled by OpenVINO for the CPU; the chain spreads the input's conversion over several products."""
    import openvino as ov
    from openvino import opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([n, n], ov.Type.f32, name="x")
    y = x
    for _ in range(chain):
        y = ops.matmul(y, ops.constant((rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32)), False, False)
    hint = {"fp32": "f32", "bf16": "bf16"}[precision]
    compiled = ov.Core().compile_model(ov.Model([y], [x], "gemm"), "CPU", {"INFERENCE_PRECISION_HINT": hint})
    request = compiled.create_infer_request()
    feed = [rng.standard_normal((n, n), dtype=np.float32)]
    return _rate(lambda: request.infer(feed), chain * 2.0 * n**3, repeats)


def _has_bf16() -> bool:
    try:
        import openvino as ov
    except ImportError:
        return False
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def measure_peak(sizes: tuple[int, ...] = (1024, 2048, 4096), repeats: int = 5) -> dict:
    """GEMM FLOP/s of each library at each square size (best of ``repeats``) and the best of all, per precision:
    the peaks that backends' fractions refer to (fp32; bf16 where the CPU and OpenVINO have it). The best size
    differs between libraries and machines, hence the sweep."""
    gemms = {"numpy": numpy_gemm, "onnxruntime": onnxruntime_gemm}
    if importlib.util.find_spec("openvino") is not None:
        gemms["openvino"] = openvino_gemm
    result = {}
    for precision in ("fp32", "bf16"):
        if precision == "bf16":
            if not _has_bf16():
                break
            gemms = {"openvino": lambda n, r: openvino_gemm(n, r, "bf16")}
        rates = {f"{name} {n}": gemm(n, repeats) for name, gemm in gemms.items() for n in sizes}
        best = max(rates, key=lambda k: rates[k].max)
        result[precision] = {k: v.to_json() for k, v in rates.items()}
        result[f"peak_{precision}"], result[f"peak_{precision}_from"] = rates[best].max, best
    return result
