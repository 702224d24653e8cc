"""torch → ONNX for one component, the fp16 conversion, and writing the graph with at most one external-data file.

Big graphs never sit in memory as a whole protobuf: torch writes the traced graph's weights to disk as it goes
(one file per tensor past 2 GB), the fp16 conversion rewrites the graph's structure only, and the weights are then
copied (and cast) one tensor at a time into the export's single data file. So an export needs the torch module's
memory and little more (SDXL's U-Net: see the README).
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx.external_data_helper import uses_external_data

from ..errors import ExportError
from .graphs import ComponentGraph, Shape

OPSET = 17
# A protobuf cannot exceed 2 GB; graphs past this size keep their weights in one side file.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
# Normalisations reduce over many values: their mean/variance overflow or lose precision in fp16,
# so --fp16 keeps them in fp32 (the converter puts casts around them).
FP32_OPS = ("InstanceNormalization", "LayerNormalization", "GroupNormalization")
FP16_MAX = float(np.finfo(np.float16).max)
_INLINE_BYTES = 1024  # tensors smaller than this stay in the graph file


def trace_to_onnx(graph: ComponentGraph, shape: Shape, folder: Path, opset: int = OPSET) -> Path:
    """Trace ``graph.module`` at ``shape`` with the contract's names and dynamic axes into ``folder`` (its own,
    scratch): the graph file, and beside it one file per weight where the graph is past 2 GB."""
    inputs = graph.make_inputs(shape, torch.Generator().manual_seed(0))
    path = folder / f"{graph.name}.onnx"
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every Python branch on a shape; the validation at two other
        # shapes is what tells whether a branch was frozen wrongly.
        warnings.simplefilter("ignore")
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
    return path


def to_fp16(model: onnx.ModelProto, fp32_scopes: tuple[str, ...] = ()) -> onnx.ModelProto:
    """fp16 weights and compute, fp32 inputs/outputs, normalisations and nodes named under ``fp32_scopes`` kept in
    fp32.

    Works on the graph's structure: a weight still on disk gets its new type here and is cast when written
    (``write``)."""
    from unittest import mock

    from onnxruntime.transformers import float16

    keep = [n.name for n in model.graph.node if n.name.startswith(fp32_scopes)] if fp32_scopes else []
    # The converter reads each weight it converts only to learn its shape, which fails for (and would load) a
    # weight still on disk: its dims say the same.
    with mock.patch.object(float16, "make_value_info_from_tensor", _value_info):
        model = float16.convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=float16.DEFAULT_OP_BLOCK_LIST + list(FP32_OPS),
            node_block_list=keep,
        )
    return _no_fp16_round_trips(model)


def _no_fp16_round_trips(model: onnx.ModelProto) -> onnx.ModelProto:
    """The converter casts every value to fp16 between nodes, even from one fp32 node to the next (and every fp32
    input at the graph's entry): a value cast to fp16 and straight back to fp32 loses its precision for nothing. A
    flow model's timestep 523.7 came out 523.5, and t × frequency in a sinusoidal embedding lost whole radians
    between the fp32 nodes meant to keep them. Each such fp32 cast reads the value before the fp16 cast instead."""
    to_fp16 = {n.output[0]: n.input[0] for n in model.graph.node if _cast_to(n) == onnx.TensorProto.FLOAT16}
    for node in model.graph.node:
        if _cast_to(node) == onnx.TensorProto.FLOAT and node.input[0] in to_fp16:
            node.input[0] = to_fp16[node.input[0]]
    read = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    unread = [n for n in model.graph.node if _cast_to(n) == onnx.TensorProto.FLOAT16 and n.output[0] not in read]
    for node in unread:  # the fp16 casts nothing reads any more
        model.graph.node.remove(node)
    return model


def _cast_to(node: onnx.NodeProto) -> int | None:
    """The type a Cast node casts to (None for another node)."""
    if node.op_type != "Cast":
        return None
    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "to")


def _value_info(tensor: onnx.TensorProto) -> onnx.ValueInfoProto:
    return onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))


def convert(traced: Path, folder: Path, name: str, precision: str, fp32_scopes: tuple[str, ...] = ()
            ) -> tuple[str, str | None, str]:
    """The traced graph ``traced`` in ``precision``, written to ``folder`` as ``name`` (see ``write``)."""
    model = onnx.load(str(traced), load_external_data=False)
    _inline_constants(model, traced.parent)
    stored = {t.name: t.data_type for t in model.graph.initializer}  # the types of the bytes on disk
    if precision == "fp16":
        model = to_fp16(model, fp32_scopes)
    return write(model, traced.parent, stored, folder, name)


def _weight(tensor: onnx.TensorProto, source_dir: Path, stored_type: int) -> np.ndarray:
    """One initializer's values, in its (possibly new) type: read from ``source_dir`` when on disk, where its
    bytes are still of ``stored_type``."""
    if uses_external_data(tensor):
        on_disk = onnx.TensorProto()
        on_disk.CopyFrom(tensor)
        on_disk.data_type = stored_type
        values = onnx.numpy_helper.to_array(on_disk, str(source_dir))
    else:
        values = onnx.numpy_helper.to_array(tensor)
    wanted = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    if values.dtype == np.float32 and wanted == np.float16:  # clipped to fp16's range, as the converter does
        return np.clip(values, -FP16_MAX, FP16_MAX).astype(np.float16)
    return values.astype(wanted, copy=False)


def _size(tensor: onnx.TensorProto) -> int:
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def write(model: onnx.ModelProto, source_dir: Path, stored: dict[str, int], folder: Path, name: str
          ) -> tuple[str, str | None, str]:
    """Write ``folder/name.onnx``, with its weights in ``name.onnx.data`` when they are past 2 GB, copying them one
    at a time from where they are (in the graph, or on disk in ``source_dir`` as ``stored`` types); return the
    file, the data file and the sha256 of both."""
    file = f"{name}.onnx"
    data = f"{name}.onnx.data" if sum(map(_size, model.graph.initializer)) > EXTERNAL_DATA_THRESHOLD else None
    with open(folder / data, "wb") if data else contextlib.nullcontext() as sink:
        for tensor in model.graph.initializer:
            values = _weight(tensor, source_dir, stored.get(tensor.name, tensor.data_type))
            if data and values.nbytes >= _INLINE_BYTES:
                offset = sink.tell()
                sink.write(np.ascontiguousarray(values).data)
                tensor.CopyFrom(_external(tensor, data, offset, values.nbytes))
            else:
                tensor.CopyFrom(onnx.numpy_helper.from_array(values, tensor.name))
    onnx.save_model(model, str(folder / file))
    digest = hashlib.sha256()
    for f in filter(None, (file, data)):
        (folder / f).chmod(0o644)
        with open(folder / f, "rb") as stream:
            while block := stream.read(1 << 24):
                digest.update(block)
    return file, data, digest.hexdigest()


def _inline_constants(model: onnx.ModelProto, source_dir: Path) -> None:
    """Constant nodes whose values torch wrote beside a graph past 2 GB (SD 3.5's LayerNorms without weights have
    constant ones and zeros) get them back inline: they are small, and the scratch folder goes away."""
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR and uses_external_data(attribute.t):
                values = onnx.numpy_helper.to_array(attribute.t, str(source_dir))
                attribute.t.CopyFrom(onnx.numpy_helper.from_array(values, attribute.t.name))


def _external(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> onnx.TensorProto:
    """``tensor``'s record, its values at ``offset`` in the file ``location``."""
    record = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims,
                              data_location=onnx.TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        record.external_data.add(key=key, value=value)
    return record

