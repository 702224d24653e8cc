"""The machine's matrix-multiply peak: the best GEMM rate any installed library reaches.

One library's GEMM can be slower than what another library's convolutions reach (on the AVX-512 machine a 4096²
PyTorch matmul ran at 208 GFLOP/s while ONNX Runtime's U-Net reached 357), so the peak is the best of several.
"""

from __future__ import annotations

import importlib.util
import time
from typing import Callable

import numpy as np

from .kernels import kernel_mix
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


def _openvino_chain(n: int, precision: str, chain: int):
    """``chain`` [n, n] MatMuls by constant weights (as a network's layers: weights packed once), compiled by
    OpenVINO for the CPU in ``precision``. int8: each product's input through a FakeQuantize and int8 weights
    with a per-row scale, the pattern NNCF writes, which OpenVINO runs as an int8 GEMM (VNNI or AMX-INT8)."""
    import openvino as ov
    from openvino import opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([n, n], ov.Type.f32, name="x")
    y = x
    for _ in range(chain):
        if precision == "int8":
            bound = [ops.constant(np.float32(v)) for v in (-4.0, 4.0)]
            y = ops.fake_quantize(y, *bound, *bound, 256)
            codes = ops.constant(rng.integers(-127, 128, (n, n)).astype(np.int8))
            weights = ops.multiply(ops.convert(codes, ov.Type.f32), ops.constant(np.float32(1 / (127 * np.sqrt(n)))))
        else:
            weights = ops.constant((rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32))
        y = ops.matmul(y, weights, False, False)
    hint = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}[precision]  # int8: the quantized products are int8 either way
    return ov.Core().compile_model(ov.Model([y], [x], "gemm"), "CPU", {"INFERENCE_PRECISION_HINT": hint})


def openvino_gemm(n: int, repeats: int, precision: str = "fp32", chain: int = 4) -> Stats:
    """OpenVINO's rate on a chain of products (the chain spreads the input's conversion over several)."""
    compiled = _openvino_chain(n, precision, chain)
    request = compiled.create_infer_request()
    feed = [np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)]
    return _rate(lambda: request.infer(feed), chain * 2.0 * n**3, repeats)


def openvino_kernels(precision: str) -> dict[str, int]:
    """The kernels OpenVINO picks for the peak's products in ``precision`` (what the peak was measured on)."""
    return kernel_mix(_openvino_chain(256, precision, 1))


def _has(capability: str) -> bool:
    """Whether OpenVINO's CPU plugin offers ``capability`` ("BF16", "INT8") on this machine."""
    try:
        import openvino as ov
    except ImportError:
        return False
    return capability in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def measure_peak(sizes: tuple[int, ...] = (1024, 2048, 4096), repeats: int = 5) -> dict:
    """GEMM FLOP/s of each library at each square size (best of ``repeats``) and the best of all, per precision:
    the peaks that backends' fractions refer to (fp32; bf16 and int8 — operations per second — where the CPU and
    OpenVINO have them), with the kernels OpenVINO ran them on. The best size differs between libraries and
    machines, hence the sweep."""
    gemms = {"numpy": numpy_gemm, "onnxruntime": onnxruntime_gemm}
    if importlib.util.find_spec("openvino") is not None:
        gemms["openvino"] = openvino_gemm
    result = {}
    for precision in ("fp32", "bf16", "int8"):
        if precision != "fp32":
            if not _has(precision.upper()):
                continue
            gemms = {"openvino": lambda n, r, p=precision: openvino_gemm(n, r, p)}
        rates = {f"{name} {n}": gemm(n, repeats) for name, gemm in gemms.items() for n in sizes}
        best = max(rates, key=lambda k: rates[k].max)
        result[precision] = {k: v.to_json() for k, v in rates.items()}
        result[f"peak_{precision}"], result[f"peak_{precision}_from"] = rates[best].max, best
        if "openvino" in gemms:
            result[f"kernels_{precision}"] = openvino_kernels(precision)
    return result
