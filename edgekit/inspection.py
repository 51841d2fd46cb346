"""`inspect`: what a model is made of: inputs/outputs, ops, parameters, MACs, size, quantized nodes."""
from __future__ import annotations

import collections
import dataclasses
import os
from pathlib import Path

import numpy as np
import onnx

from edgekit.onnxmodel import input_specs, is_qdq, load_onnx, opset_of, output_specs

_COMPUTE = ("Conv", "ConvTranspose", "MatMul", "Gemm")
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclasses.dataclass
class ModelSummary:
    path: str
    size_bytes: int
    opset: int
    inputs: list[dict[str, object]]
    outputs: list[dict[str, object]]
    ops: dict[str, int]
    parameters: int
    macs: int
    macs_note: str
    quantized: bool
    quantized_nodes: list[str]
    float_compute_nodes: list[str]

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def _shape_map(model: onnx.ModelProto) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = []
        for d in vi.type.tensor_type.shape.dim:
            dims.append(int(d.dim_value) if d.HasField("dim_value") else 1)  # symbolic -> 1
        shapes[vi.name] = dims
    for t in model.graph.initializer:
        shapes[t.name] = list(t.dims)
    return shapes


def _weight_source(name: str, producers: dict[str, onnx.NodeProto]) -> str:
    """The initializer behind a (possibly DequantizeLinear'd) weight input."""
    node = producers.get(name)
    while node is not None and node.op_type in ("DequantizeLinear", "Transpose", "Reshape", "Cast"):
        name = node.input[0]
        node = producers.get(name)
    return name


def _macs(model: onnx.ModelProto) -> int:
    shapes = _shape_map(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    total = 0
    for node in model.graph.node:
        if node.op_type not in _COMPUTE or not node.output:
            continue
        out = shapes.get(node.output[0])
        if not out:
            continue
        if node.op_type in ("Conv", "ConvTranspose"):
            w = shapes.get(_weight_source(node.input[1], producers))
            if w:
                if node.op_type == "Conv":
                    total += int(np.prod(out, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
                else:
                    x = shapes.get(node.input[0])
                    if x:
                        total += int(np.prod(x, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
        else:
            a = shapes.get(node.input[0]) or shapes.get(_weight_source(node.input[0], producers))
            if a:
                k = a[-1]
                if node.op_type == "Gemm" and any(at.name == "transA" and at.i for at in node.attribute):
                    k = a[0]
                total += int(np.prod(out, dtype=np.int64)) * int(k)
    return total


_RECURRENT = ("LSTM", "GRU", "RNN")
_SHAPE_ONLY = ("Shape", "Size")  # read a tensor's shape, never its values
# float constants that are parameters, not weights: a Conv/Gemm bias (folded into the INT8 kernel), Clip's bounds,
# Pad's fill value, Resize's roi and scales
_PARAM_SLOTS = {"Conv": (2,), "ConvTranspose": (2,), "Gemm": (2,), "Clip": (1, 2), "Pad": (2,), "Resize": (1, 2), "Upsample": (1,)}


def quantized_nodes(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(nodes that run in INT8, compute and recurrent nodes left in float).

    A node runs in INT8 when a DequantizeLinear feeds it and every float constant it reads (a weight; a
    bias or a Clip bound excepted) is dequantized too: an LSTM/GRU whose input happens to be dequantized for
    another consumer still multiplies float W and R, and a Shape reads no values at all."""
    producers = {o: n for n in model.graph.node for o in n.output}
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)
    consts = {t.name for t in model.graph.initializer if t.data_type in floats}
    consts |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"
               and any(a.name == "value" and a.t.data_type in floats for a in n.attribute)}
    q, f = [], []
    for node in model.graph.node:
        if node.op_type in _QDQ_OPS:
            continue
        fed = any((p := producers.get(i)) is not None and p.op_type == "DequantizeLinear" for i in node.input)
        float_weight = any(i in consts for k, i in enumerate(node.input) if k not in _PARAM_SLOTS.get(node.op_type, ()))
        if fed and not float_weight and node.op_type not in _SHAPE_ONLY:
            q.append(node.name or node.output[0])
        elif node.op_type in _COMPUTE or node.op_type in _RECURRENT:
            f.append(node.name or node.output[0])
    return q, f


def inspect_model(path: str | os.PathLike[str]) -> ModelSummary:
    path = Path(path)
    model = load_onnx(path)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        inferred = model
    params = sum(int(np.prod(t.dims, dtype=np.int64)) for t in model.graph.initializer)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    q, f = quantized_nodes(model)
    dynamic = any(s.is_dynamic for s in input_specs(model))
    size = path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.name + ".data"))
    return ModelSummary(
        path=str(path), size_bytes=size, opset=opset_of(model),
        inputs=[s.to_dict() for s in input_specs(model)], outputs=[s.to_dict() for s in output_specs(model)],
        ops=dict(ops.most_common()), parameters=params, macs=_macs(inferred),
        macs_note="dynamic axes counted as 1" if dynamic else "",
        quantized=is_qdq(model), quantized_nodes=q, float_compute_nodes=f,
    )
