"""Floating-point operations of one graph run, counted from the ONNX graph at concrete input shapes.

Counted: Conv / ConvTranspose (2·MACs), MatMul and Gemm (2·M·K·N per matrix; attention's QKᵀ and AV are MatMuls
of two activations in the exported graphs, counted apart from the linear layers). Element-wise ops, softmax and
normalisations are left out: together they are a few percent of a Stable Diffusion U-Net and bound by memory.
The LoRA sites' branches (``export/lora_sites.py``) are counted apart, at the rank given (1, no LoRA, by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..lora.sites import is_factor


@dataclass(frozen=True)
class FlopCount:
    conv: int
    linear: int  # MatMul/Gemm with a weight
    attention: int  # MatMul of two activations (QKᵀ, AV)
    lora: int = 0  # the LoRA sites' branches

    @property
    def total(self) -> int:
        return self.conv + self.linear + self.attention + self.lora


def count_flops(onnx_path: str | Path, input_shapes: dict[str, tuple[int, ...]]) -> FlopCount:
    """FLOPs of one run of the graph at ``input_shapes`` (every dynamic axis given)."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = onnx.load(str(onnx_path), load_external_data=False)  # shapes only: weights stay on disk...
    _load_small_external_tensors(model, Path(onnx_path).parent)  # ...but shape inference reads small constants
    factors = {inp.name for inp in model.graph.input if is_factor(inp.name)}
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        given = input_shapes.get(inp.name)
        if given is None and inp.name in factors:  # rank 1 unless told
            given = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
        for dim, value in zip(dims, given or ()):
            dim.Clear()
            dim.dim_value = int(value)
    model = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    shapes = {}
    for v in (*model.graph.value_info, *model.graph.input, *model.graph.output):
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    shapes.update(weights)

    def shape(name: str) -> tuple[int, ...]:
        s = shapes.get(name)
        if s is None or any(d is None for d in s):
            raise ValueError(f"shape of {name!r} unknown after shape inference; give every dynamic axis a value")
        return s

    conv = linear = attention = lora = 0
    branch = set(factors)  # tensors computed from LoRA factors, up to the Add that joins the layer's output
    for node in model.graph.node:
        if node.op_type != "Add" and branch.intersection(node.input):
            branch.update(node.output)
            if node.op_type == "MatMul":
                lora += 2 * int(np.prod(shape(node.output[0]))) * int(shape(node.input[0])[-1])
            continue
        if node.op_type in ("Conv", "ConvTranspose"):
            w = shape(node.input[1])  # [Cout, Cin/group, kh, kw] (Conv) or [Cin, Cout/group, kh, kw] (ConvTranspose)
            out = shape(node.output[0])
            conv += 2 * int(np.prod(out)) * int(np.prod(w[1:])) if node.op_type == "Conv" else \
                2 * int(np.prod(shape(node.input[0]))) * int(np.prod(w[1:]))
        elif node.op_type in ("MatMul", "Gemm"):
            a, out = shape(node.input[0]), shape(node.output[0])
            k = a[-2] if node.op_type == "Gemm" and _attr(node, "transA") else a[-1]
            flops = 2 * int(np.prod(out)) * int(k)
            if node.input[1] in weights:
                linear += flops
            else:
                attention += flops
    return FlopCount(conv, linear, attention, lora)


def _load_small_external_tensors(model, folder: Path, max_elements: int = 16384) -> None:
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    for tensor in model.graph.initializer:
        if uses_external_data(tensor) and int(np.prod(tensor.dims)) <= max_elements:
            load_external_data_for_tensor(tensor, str(folder))
            tensor.data_location = onnx_default_location()


def onnx_default_location() -> int:
    from onnx import TensorProto

    return TensorProto.DEFAULT


def _attr(node, name: str, default: int = 0) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)
