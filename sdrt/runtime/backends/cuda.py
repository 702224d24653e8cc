"""The few CUDA runtime calls the TensorRT backend needs, through cuda-python (never PyTorch): device memory,
one stream, copies, and CUDA-graph capture. Every call is checked; a failure names the call and the CUDA error."""

from __future__ import annotations

import numpy as np

from ...errors import BackendError


def _cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as e:
        raise BackendError("the TensorRT backend needs cuda-python: pip install 'sdrt[tensorrt-rtx]' "
                           "(or pip install cuda-python)") from e
    return cudart


class Cuda:
    def __init__(self):
        self.rt = _cudart()
        count = self.check(self.rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if not count:
            raise BackendError("CUDA sees no GPU here; use backend onnxruntime or openvino")
        self.stream = self.check(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def check(self, result, call: str):
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            name = self.rt.cudaGetErrorName(err)[1]
            raise BackendError(f"CUDA call {call} failed: {name.decode() if isinstance(name, bytes) else name}")
        return values[0] if len(values) == 1 else (values or None)

    def malloc(self, nbytes: int) -> int:
        return int(self.check(self.rt.cudaMalloc(max(nbytes, 1)), f"cudaMalloc({nbytes})"))

    def free(self, ptr: int) -> None:
        self.check(self.rt.cudaFree(ptr), "cudaFree")

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        self.check(self.rt.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes,
                                           self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream),
                   "cudaMemcpyAsync (to the GPU)")

    def to_host(self, array: np.ndarray, ptr: int) -> None:
        self.check(self.rt.cudaMemcpyAsync(array.ctypes.data, ptr, array.nbytes,
                                           self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream),
                   "cudaMemcpyAsync (to the host)")

    def synchronize(self) -> None:
        self.check(self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def capture(self, work) -> object:
        """Record what ``work()`` enqueues on the stream as a CUDA graph; returns the instantiated graph."""
        rt = self.rt
        self.check(rt.cudaStreamBeginCapture(self.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal),
                   "cudaStreamBeginCapture")
        try:
            work()
        finally:
            graph = self.check(rt.cudaStreamEndCapture(self.stream), "cudaStreamEndCapture")
        return self.check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")

    def launch(self, graph_exec) -> None:
        self.check(self.rt.cudaGraphLaunch(graph_exec, self.stream), "cudaGraphLaunch")

    def close(self) -> None:
        if self.stream is not None:
            self.rt.cudaStreamDestroy(self.stream)
            self.stream = None
