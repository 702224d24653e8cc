"""torch → ONNX for one component, the fp16 conversion, and saving with at most one external-data file."""

from __future__ import annotations

import hashlib
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from ..errors import ExportError
from .graphs import ComponentGraph, Shape

OPSET = 17
# A protobuf cannot exceed 2 GB; graphs past this size keep their weights in one side file.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
# Normalisations reduce over many values: their mean/variance overflow or lose precision in fp16,
# so --fp16 keeps them in fp32 (the converter puts casts around them).
FP32_OPS = ("InstanceNormalization", "LayerNormalization", "GroupNormalization")


def weights_size(model: onnx.ModelProto) -> int:
    """Bytes of the graph's initializers, without serializing it (which fails past 2 GB)."""
    total = 0
    for init in model.graph.initializer:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        total += int(np.prod(init.dims, dtype=np.int64)) * itemsize
    return total


def trace_to_onnx(graph: ComponentGraph, shape: Shape, opset: int = OPSET) -> onnx.ModelProto:
    """Trace ``graph.module`` at ``shape`` with the contract's names and dynamic axes."""
    inputs = graph.make_inputs(shape, torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory(prefix="sdrt-export-") as tmp, torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every Python branch on a shape; the validation at two other
        # shapes is what tells whether a branch was frozen wrongly.
        warnings.simplefilter("ignore")
        path = Path(tmp) / f"{graph.name}.onnx"
        try:
            torch.onnx.export(
                graph.module,
                tuple(inputs.values()),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[t.name for t in graph.inputs],
                output_names=[t.name for t in graph.outputs],
                dynamic_axes=graph.dynamic_axes(),
                do_constant_folding=True,
            )
        except Exception as e:  # the tracer raises many types; all mean the same to the user
            raise ExportError(f"tracing {graph.name} to ONNX failed: {e}") from e
        return onnx.load(str(path))  # loads external data (if any) into memory, before tmp goes


def to_fp16(model: onnx.ModelProto, graph: ComponentGraph) -> onnx.ModelProto:
    """fp16 weights and compute, fp32 inputs/outputs, normalisations and ``graph.fp32_scopes`` kept in fp32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    keep = [n.name for n in model.graph.node if n.name.startswith(graph.fp32_scopes)] if graph.fp32_scopes else []
    return convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=DEFAULT_OP_BLOCK_LIST + list(FP32_OPS),
        node_block_list=keep,
        disable_shape_infer=weights_size(model) > EXTERNAL_DATA_THRESHOLD,  # shape inference serializes
    )


def save(model: onnx.ModelProto, folder: Path, name: str) -> tuple[str, str | None, str]:
    """Write ``folder/name.onnx`` (+ ``name.onnx.data`` when over 2 GB); return file, data file, sha256."""
    file = f"{name}.onnx"
    data = f"{name}.onnx.data" if weights_size(model) > EXTERNAL_DATA_THRESHOLD else None
    onnx.save_model(
        model,
        str(folder / file),
        save_as_external_data=data is not None,
        all_tensors_to_one_file=True,
        location=data,
        size_threshold=1024,
    )
    digest = hashlib.sha256()
    for f in filter(None, (file, data)):
        (folder / f).chmod(0o644)  # onnx writes external data as 0600
        with open(folder / f, "rb") as stream:
            while block := stream.read(1 << 24):
                digest.update(block)
    return file, data, digest.hexdigest()
