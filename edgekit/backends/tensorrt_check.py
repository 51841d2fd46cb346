"""TensorRT's explicit-quantization rules for a QDQ ONNX model, checked without TensorRT.

Each rule follows a line of TensorRT's own sources (read at release/10.0 ... release/11.1 of
github.com/NVIDIA/TensorRT and the ONNX parser of github.com/onnx/onnx-tensorrt):

- onnx-tensorrt `onnxOpImporters.cpp`, `QuantDequantLinearHelper` (10.1-GA, lines 1346-1657):
  UINT8 data or zero points are invalid types (`notInvalidType(..., {"UINT8"})`); the zero point must be
  all zeros (`shiftIsAllZeros`) and as large as the scale; all scales must be positive; a per-channel
  scale is 1-D and "the number of scales is not equal to the number of output channels" is an assertion;
  a missing `axis` attribute is read as the input's rank and then as axis 0 (ONNX's default is 1);
  opset 21's `output_dtype` must match the zero point's type, or be INT8/FP8/INT4 without one.
- onnx-tensorrt `importerUtils.cpp`, `getWeightsFromIdentityOrConstant`: the parser walks back through
  Cast and Identity nodes to a Constant to read a zero point.
- TensorRT `include/NvInfer.h`, `IQuantizeLayer` (release/10.0 line 5278: "The subgraph which terminates with
  the scale tensor must be a build-time constant. The same restrictions apply to the zeroPt"; line 5315 and
  release/10.16 line 5575: the allowed subgraphs are Constant -> Quantize and Constant -> Cast -> Quantize;
  "Per-channel quantization is supported only for weight inputs").
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgekit.onnxmodel import opset_of

_PASS_THROUGH = ("Cast", "Identity")  # getWeightsFromIdentityOrConstant skips these back to a Constant


@dataclasses.dataclass(frozen=True)
class _Const:
    value: np.ndarray
    via_cast: bool  # the chain had a Cast: the dtype is the Cast's `to`


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a Constant node, whichever of its attributes holds it (value, value_float, value_ints, ...)."""
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    return None  # sparse_value, value_string(s): not a number TensorRT could read


class _Graph:
    """Constant values, producers and consumers of one ONNX graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.inits = {t.name: t for t in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for n in g.node:
            for i, name in enumerate(n.input):
                self.consumers.setdefault(name, []).append((n, i))
        self.shapes = {vi.name: [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
                       for vi in [*g.input, *g.value_info, *g.output] if vi.type.tensor_type.HasField("shape")}

    def const(self, name: str) -> _Const | None:
        """The build-time value of `name`, following Cast/Identity back to a Constant or initializer (None: run time)."""
        via_cast = False
        casts: list[int] = []
        for _ in range(64):  # a chain, never a loop in a valid graph; the bound keeps a broken one finite
            if name in self.inits:
                value = numpy_helper.to_array(self.inits[name])
                break
            node = self.producer.get(name)
            if node is None:
                return None
            if node.op_type == "Constant":
                value = _constant_node_value(node)
                if value is None:
                    return None
                break
            if node.op_type not in _PASS_THROUGH:
                return None
            if node.op_type == "Cast":
                via_cast = True
                casts.append(next(a.i for a in node.attribute if a.name == "to"))
            name = node.input[0]
        else:
            return None
        for to in reversed(casts):  # apply the casts from the Constant outwards
            value = value.astype(helper.tensor_dtype_to_np_dtype(to))
        return _Const(np.asarray(value), via_cast)

    def shape(self, name: str) -> list[int] | None:
        c = self.const(name)
        return list(c.value.shape) if c is not None else self.shapes.get(name)


def _attr(node: onnx.NodeProto, name: str) -> onnx.AttributeProto | None:
    return next((a for a in node.attribute if a.name == name), None)


def _output_channel_axis(consumer: onnx.NodeProto, index: int, rank: int) -> int | None:
    """Which axis of a weight is the output channel, for the weighted ops TensorRT fuses with a DQ."""
    if index != 1:
        return None
    if consumer.op_type == "Conv":
        return 0  # OIHW
    if consumer.op_type == "ConvTranspose":
        return 1  # I(O/group)HW
    if consumer.op_type == "Gemm":
        trans_b = _attr(consumer, "transB")
        return 0 if trans_b is not None and trans_b.i else 1
    if consumer.op_type == "MatMul":
        return rank - 1  # [..., K, N]
    return None


def check_explicit_quantization(model: onnx.ModelProto) -> list[str]:
    """Problems that keep a QDQ model from building as explicit INT8 in TensorRT, or that make TensorRT
    compute something else than ONNX Runtime does on the same file (empty list = fine).

    TensorRT wants symmetric signed INT8 (zero point 0, from a build-time constant), positive constant
    scales, per-tensor activations, per-channel weights with one scale per output channel along the
    output-channel axis (written explicitly), and opset >= 13 for per-channel scales.
    """
    g = _Graph(model)
    opset = opset_of(model)
    problems: list[str] = []
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            problems += _check_node(g, node, opset)
    return problems


def _check_node(g: _Graph, node: onnx.NodeProto, opset: int) -> list[str]:
    label = node.name or node.output[0]
    is_q = node.op_type == "QuantizeLinear"
    out: list[str] = []
    data = g.const(node.input[0])
    # -- the quantized type: zero point, output_dtype (opset 21), or the DQ's constant input -----------
    zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else ""
    zp = g.const(zp_name) if zp_name else None
    out_dtype = _attr(node, "output_dtype")
    out_np = helper.tensor_dtype_to_np_dtype(out_dtype.i) if out_dtype is not None and out_dtype.i else None
    if zp_name and zp is None:
        out.append(f"{label}: zero point is computed at run time; TensorRT needs a build-time constant "
                   "(Constant -> [Cast ->] QuantizeLinear)")
    qtype = zp.value.dtype if zp is not None else out_np if is_q else (data.value.dtype if data is not None else None)
    if zp is not None and out_np is not None and zp.value.dtype != out_np:
        out.append(f"{label}: output_dtype {np.dtype(out_np)} differs from the zero point's {zp.value.dtype}")
    if is_q and not zp_name and out_np is None:
        out.append(f"{label}: no zero point and no output_dtype: ONNX quantizes to UINT8 here while TensorRT quantizes "
                   "to INT8, so the results differ; give it an int8 zero point of 0")
    elif qtype is not None and qtype == np.uint8:
        out.append(f"{label}: uint8 quantization; TensorRT needs signed INT8 (int8 zero point, zero point 0)")
    elif qtype is not None and qtype != np.int8:
        out.append(f"{label}: {np.dtype(qtype)} quantization; TensorRT's INT8 path needs signed INT8 (int8 zero point)")
    if zp is not None and np.any(zp.value.astype(np.float64) != 0):
        out.append(f"{label}: zero point {int(np.max(np.abs(zp.value.astype(np.int64))))} != 0; TensorRT needs symmetric quantization")
    # -- the scale -------------------------------------------------------------------------------------
    scale = g.const(node.input[1])
    if scale is None:
        return out + [f"{label}: scale is computed at run time; TensorRT needs a build-time constant"]
    if np.any(scale.value.astype(np.float64) <= 0):
        out.append(f"{label}: non-positive scale; TensorRT needs all scales > 0")
    if zp is not None and zp.value.size != scale.value.size:
        out.append(f"{label}: {zp.value.size} zero points for {scale.value.size} scales; TensorRT needs as many of each")
    if scale.value.size > 1:
        out += _check_per_channel(g, node, label, scale.value, data, opset)
    return out


def _check_per_channel(g: _Graph, node: onnx.NodeProto, label: str, scale: np.ndarray, data: _Const | None, opset: int) -> list[str]:
    if opset < 13:
        return [f"{label}: per-channel quantization needs opset >= 13 (model has {opset})"]
    if scale.ndim != 1:
        return [f"{label}: scale of shape {list(scale.shape)}: TensorRT's INT8 takes a scalar or a 1-D per-channel scale"]
    if data is None and (node.op_type == "QuantizeLinear" or not _from_constant_q(g, node)):
        return [f"{label}: per-channel scale on an activation; TensorRT quantizes activations per tensor"]
    shape = g.shape(node.input[0]) if data is None else list(data.value.shape)
    axis_attr = _attr(node, "axis")
    if axis_attr is None:
        # ONNX's default axis is 1; the parser reads a missing axis as the rank, then as axis 0
        return [f"{label}: per-channel scale without an axis attribute: ONNX means axis 1, TensorRT's parser reads axis 0; "
                "write the axis explicitly"]
    if not shape:
        return []
    rank, axis = len(shape), axis_attr.i
    if not -rank <= axis < rank:
        return [f"{label}: axis {axis} is outside a rank-{rank} weight"]
    axis %= rank
    if shape[axis] >= 0 and shape[axis] != scale.size:
        return [f"{label}: {scale.size} scales for {shape[axis]} channels on axis {axis}; TensorRT's parser needs one per channel"]
    dq_out = node.output[0] if node.op_type == "DequantizeLinear" else _dq_after(g, node)
    for consumer, index in g.consumers.get(dq_out or "", []):
        want = _output_channel_axis(consumer, index, rank)
        if want is not None and axis != want:
            return [f"{label}: per-channel on axis {axis} of the {consumer.op_type} weight; TensorRT quantizes weights "
                    f"per output channel (axis {want})"]
    return []


def _from_constant_q(g: _Graph, dq: onnx.NodeProto) -> bool:
    """A DQ fed by a Q of a constant weight (the Q -> DQ form of a float weight)."""
    q = g.producer.get(dq.input[0])
    return q is not None and q.op_type == "QuantizeLinear" and g.const(q.input[0]) is not None


def _dq_after(g: _Graph, q: onnx.NodeProto) -> str | None:
    for consumer, _ in g.consumers.get(q.output[0], []):
        if consumer.op_type == "DequantizeLinear":
            return consumer.output[0]
    return None
