"""Cross-layer equalization and analytic bias correction: PTQ transforms that need no retraining (#13).

Both follow Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias Correction".
Each returns a new float model (the input is never changed), with the same graph inputs, outputs and node
names; `edgekit.quantize.quantize_with_ranges` places QDQ on it afterwards, exactly as on the original.

`equalize` (data-free): for a layer pair L1 -> [ops that commute with a positive per-channel scale] -> L2,
where L1's output reaches only L2, channel i of L1's output is divided by s_i (weight row and bias) and
L2's input channel i multiplied by s_i, s_i = sqrt(r1_i / r2_i) (r: the channel's largest |weight|), so both
layers end with the same per-channel ranges sqrt(r1_i * r2_i). Chains (conv -> depthwise -> conv) are swept
until the scales settle, as DFQ does. Layers: Conv (grouped and depthwise: output channel i of group g reads
only its group's input channels), Gemm, MatMul with a constant 2-D weight (and an Add of a constant bias after
it); a Flatten/Reshape to 2-D between a Conv and a Gemm/MatMul maps each channel to its H*W columns. Ops that
pass: Relu, LeakyRelu, PRelu, Identity, Clip(0, inf) (positive-homogeneous: f(s*x) = s*f(x) for s > 0), max and
average pooling and spatial ReduceMean/ReduceMax (per channel). Clip(0, 6) (ReLU6), sigmoid-like and other
activations are not homogeneous: pairs behind one are skipped and counted in info["skipped"], never treated as
ReLU (DFQ's ReLU6 -> ReLU swap, which AIMET's CLE applies unconditionally, changes the function). BatchNormalization must already be folded (ONNX Runtime's
pre-processing and PyTorch's export in eval mode do that); a BatchNormalization between two layers stops a pair.

`bias_correct` (one calibration pass): for every Conv / Gemm / MatMul(+Add bias) whose constant weight the QDQ
model quantizes, the expected output error of weight quantization per output channel,
E[y_q - y]_o = sum_{c,k} (W_q - W)[o,c,k] * E[x_c], with E[x_c] the per-channel mean of the layer's float
input over the calibration feeds, is subtracted from the float bias (a zero bias is created where a Conv or
Gemm has none). For a Conv the expectation is taken over output positions exactly: Conv is linear, so
E[y_q - y] = mean over positions of Conv(E_batch[x], W_q - W), which counts the taps that fall on zero padding
at the borders (DFQ ignores them); when feeds differ in spatial size, the per-channel form above is used
(padding ignored) and info says for how many convolutions. The correction counts only each layer's own weight
error with float inputs (DFQ's analytic form; NNCF's FastBiasCorrection alike), not the error its quantized
inputs bring from upstream.

Why not a library: NNCF's (Fast)BiasCorrection computes the same shift but edits the quantized model NNCF made
(float bias initializers next to its quantizers) through its NNCFGraph; on ONNX Runtime's QDQ model the bias
reaches the layer through DequantizeLinear of int32 (QuantizeBias), which NNCF's ONNX backend does not read as
a bias; it skips layers without a bias and cannot hand back the float model edgekit re-quantizes. AIMET's
ONNX CLE (aimet-onnx) swaps ReLU6 for ReLU and pulls in torch, bokeh, pandas and a C++ extension. NNCF's
ChannelAlignment is another algorithm and OpenVINO-only.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.quantize.graph import node_name

Feeds = Callable[[], Iterable[dict[str, np.ndarray]]]

_HOMOGENEOUS = ("Relu", "LeakyRelu", "PRelu", "Identity")  # elementwise, f(s*x) = s*f(x) for s > 0
_POOLS = ("MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool")  # per channel (axis 1) and homogeneous
_REDUCE = ("ReduceMean", "ReduceMax")  # over spatial axes only: per channel and homogeneous
_FLATTEN = ("Flatten", "Reshape")
# elementwise activations that are NOT positive-homogeneous: a scale cannot pass them
_NOT_HOMOGENEOUS = ("Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu", "Softplus", "Softsign",
                    "Gelu", "Mish", "Erf", "ThresholdedRelu", "Swish")
_MAP_LIMIT = 1 << 22  # a Conv input's per-position mean is kept up to 4M values per sample (32 MB as float64)
_MAX_SWEEPS = 50
_SETTLED = 1e-3  # stop sweeping when no scale moves by more than 0.1%


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _uses(graph: onnx.GraphProto, counts: dict[str, int]) -> None:
    for n in graph.node:
        for i in n.input:
            counts[i] += 1
        for a in n.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                _uses(g, counts)


class _Graph:
    """Index of a model's main graph: constant initializers (as float64 arrays, written back at the end),
    producers, consumers, and how many node inputs refer to each tensor (subgraphs included)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        g = model.graph
        self.nodes = list(g.node)
        self.names = [node_name(n, i) for i, n in enumerate(self.nodes)]
        inputs = {i.name for i in g.input}
        self.inits = {t.name: t for t in g.initializer if t.name not in inputs}  # a graph input may override it
        self.arrays: dict[str, np.ndarray] = {}
        self.dirty: set[str] = set()
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in self.nodes:
            for i in n.input:
                if i:
                    self.consumers[i].append(n)
        self.uses: dict[str, int] = defaultdict(int)
        _uses(g, self.uses)
        self.outputs = {o.name for o in g.output}
        self.shapes: dict[str, list[int | None]] | None = None

    def name(self, node: onnx.NodeProto) -> str:
        return self.names[self.nodes.index(node)]

    def const(self, name: str, *, own: bool = True) -> np.ndarray | None:
        """The float initializer `name` as float64 (None if it is not one, or is used elsewhere when `own`)."""
        t = self.inits.get(name)
        if t is None or t.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
            return None
        if own and self.uses[name] != 1:
            return None
        if name not in self.arrays:
            self.arrays[name] = numpy_helper.to_array(t).astype(np.float64)
        return self.arrays[name]

    def set(self, name: str, value: np.ndarray) -> None:
        self.arrays[name] = value
        self.dirty.add(name)

    def write_back(self) -> None:
        for name in self.dirty:
            t = self.inits[name]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
            t.CopyFrom(numpy_helper.from_array(self.arrays[name].astype(dtype), name))

    def shape(self, tensor: str) -> list[int | None] | None:
        if self.shapes is None:
            try:
                inferred = onnx.shape_inference.infer_shapes(self.model)
            except Exception:  # noqa: BLE001 - shapes are only needed for Flatten/Reshape; without them the pair is skipped
                inferred = self.model
            self.shapes = {}
            for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
                if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
                    self.shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        return self.shapes.get(tensor)

    def sole_consumer(self, tensor: str) -> onnx.NodeProto | None:
        cons = self.consumers.get(tensor, [])
        if tensor in self.outputs or len(cons) != 1 or self.uses[tensor] != 1:
            return None
        return cons[0]


# --- cross-layer equalization ----------------------------------------------------------------------------

class _First:
    """L1 of a pair: its weight's output channels, its bias (scaled along its last axis)."""

    def __init__(self, g: _Graph, node: onnx.NodeProto, weight: str, axis: int, bias: str | None, out: str, channels_first: bool) -> None:
        self.node, self.weight, self.axis, self.bias, self.out, self.channels_first = node, weight, axis, bias, out, channels_first
        self.channels = g.const(weight).shape[axis]

    def ranges(self, g: _Graph) -> np.ndarray:
        w = g.const(self.weight)
        return np.abs(np.moveaxis(w, self.axis, 0)).reshape(self.channels, -1).max(axis=1)

    def scale(self, g: _Graph, s: np.ndarray) -> None:
        w = g.const(self.weight)
        shape = [1] * w.ndim
        shape[self.axis] = -1
        g.set(self.weight, w / s.reshape(shape))
        if self.bias is not None:
            b = g.const(self.bias)
            if b.ndim == 0 or b.shape[-1] != self.channels:  # a broadcast bias becomes per-channel
                b = np.broadcast_to(b, (*b.shape[:-1], self.channels) if b.ndim else (self.channels,)).copy()
            g.set(self.bias, b / s)


def _first(g: _Graph, node: onnx.NodeProto) -> _First | None:
    if node.op_type == "Conv" and len(node.input) >= 2:
        if g.const(node.input[1]) is None:
            return None
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is not None and g.const(bias) is None:
            return None
        return _First(g, node, node.input[1], 0, bias, node.output[0], True)
    if node.op_type == "Gemm":
        w = g.const(node.input[1])
        if w is None or w.ndim != 2:
            return None
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is not None:
            b = g.const(bias)
            if b is None or b.ndim > 2 or (b.ndim == 2 and b.shape[0] != 1) or _attr(node, "beta", 1.0) == 0:
                return None
        return _First(g, node, node.input[1], 0 if _attr(node, "transB", 0) else 1, bias, node.output[0], False)
    if node.op_type == "MatMul":
        w = g.const(node.input[1])
        if w is None or w.ndim != 2 or node.input[0] in g.inits:
            return None
        out, bias = node.output[0], None
        add = g.sole_consumer(out)
        if add is not None and add.op_type == "Add":  # MatMul + Add(constant) is one layer with a bias
            other = add.input[1] if add.input[0] == out else add.input[0]
            b = g.const(other)
            if b is not None and b.size in (1, w.shape[1]) and (b.ndim == 0 or b.shape[-1] == b.size):
                out, bias = add.output[0], other
        return _First(g, node, node.input[1], 1, bias, out, False)
    return None


class _Second:
    """L2 of a pair: its weight's input channels (grouped Conv: by group; after a flatten: H*W columns each)."""

    def __init__(self, weight: str, *, group: int = 0, axis: int = 0, repeat: int = 1) -> None:
        self.weight, self.group, self.axis, self.repeat = weight, group, axis, repeat  # group > 0: a Conv

    def _view(self, w: np.ndarray, channels: int) -> np.ndarray:
        if self.group:  # [M, C/g, k...] -> [g, M/g, C/g, k...]
            return w.reshape(self.group, w.shape[0] // self.group, *w.shape[1:])
        return np.moveaxis(w, self.axis, 0).reshape(channels, self.repeat, -1)

    def ranges(self, g: _Graph, channels: int) -> np.ndarray:
        v = np.abs(self._view(g.const(self.weight), channels))
        if self.group:
            return v.max(axis=tuple(i for i in range(v.ndim) if i not in (0, 2))).reshape(-1)
        return v.reshape(channels, -1).max(axis=1)

    def scale(self, g: _Graph, s: np.ndarray) -> None:
        w = g.const(self.weight)
        if self.group:
            v = self._view(w, s.size)
            shape = [1] * v.ndim
            shape[0], shape[2] = self.group, -1
            g.set(self.weight, (v * s.reshape(shape)).reshape(w.shape))
        else:
            shape = [1] * w.ndim
            shape[self.axis] = -1
            g.set(self.weight, w * np.repeat(s, self.repeat).reshape(shape))


def _second(g: _Graph, node: onnx.NodeProto, tensor: str, first: _First, repeat: int | None) -> _Second | None:
    """L2 reading `tensor`; repeat None: channels on axis 1 (N, C, ...), else on the last axis, `repeat` columns each."""
    if not node.input or node.input[0] != tensor or tensor in node.input[1:]:
        return None
    w = g.const(node.input[1]) if len(node.input) > 1 else None
    if w is None:
        return None
    c = first.channels
    if node.op_type == "Conv" and repeat is None:
        group = int(_attr(node, "group", 1))
        if w.shape[1] * group != c or w.shape[0] % group:
            return None
        return _Second(node.input[1], group=group)
    if node.op_type in ("Gemm", "MatMul") and w.ndim == 2 and repeat is not None:
        if node.op_type == "Gemm" and _attr(node, "transA", 0):
            return None
        axis = 1 if node.op_type == "Gemm" and _attr(node, "transB", 0) else 0
        if w.shape[axis] != c * repeat:
            return None
        return _Second(node.input[1], axis=axis, repeat=repeat)
    return None


def _flatten_repeat(g: _Graph, node: onnx.NodeProto, channels: int) -> int | None:
    """A Flatten(axis=1) or a Reshape of [N, C, ...] to [N, C*H*W]: how many columns each channel becomes."""
    shape_in = g.shape(node.input[0])
    if not shape_in or len(shape_in) < 3 or shape_in[1] != channels or any(d is None for d in shape_in[2:]):
        return None
    hw = int(np.prod(shape_in[2:]))
    if node.op_type == "Flatten":
        return hw if _attr(node, "axis", 1) == 1 else None
    target = numpy_helper.to_array(g.inits[node.input[1]]) if len(node.input) > 1 and node.input[1] in g.inits else None
    if target is None or target.size != 2:
        shape_out = g.shape(node.output[0])
        return hw if shape_out and len(shape_out) == 2 and shape_out[1] == channels * hw else None
    rows, cols = (int(v) for v in target.reshape(-1))
    return hw if cols == channels * hw and (rows in (0, -1) or rows == shape_in[0]) else None


def _spatial_reduce(g: _Graph, node: onnx.NodeProto) -> bool | None:
    """A ReduceMean/ReduceMax of (N, C, spatial...) over spatial axes only: whether it keeps dims (None: not one)."""
    shape = g.shape(node.input[0])
    if not shape or len(shape) < 3:
        return None
    axes = _attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        t = g.inits.get(node.input[1])
        axes = None if t is None else numpy_helper.to_array(t).reshape(-1).tolist()
    if axes is None:
        return None  # all axes (or unknown ones): channels would mix
    axes = {int(a) % len(shape) for a in axes}
    keep = bool(_attr(node, "keepdims", 1))
    if not axes or axes & {0, 1}:
        return None
    if not keep and axes != set(range(2, len(shape))):
        return None  # (N, C, some spatial) left: the channel axis is still 1, but no longer followed by our layouts
    return keep


def _clip_homogeneous(g: _Graph, node: onnx.NodeProto) -> bool:
    """A Clip whose bounds are each 0 or absent/infinite (ReLU written as Clip(0, inf)) commutes with s > 0."""
    bounds = [_attr(node, "min", None), _attr(node, "max", None)]
    for k in (1, 2):
        if len(node.input) > k and node.input[k]:
            t = g.inits.get(node.input[k])
            if t is None:
                return False
            bounds[k - 1] = float(numpy_helper.to_array(t))
    return all(b is None or b == 0 or np.isinf(b) for b in bounds)


def _pairs(g: _Graph) -> tuple[list[tuple[_First, _Second, onnx.NodeProto, list[str]]], dict[str, int]]:
    pairs, skipped = [], defaultdict(int)
    for node in g.nodes:
        first = _first(g, node)
        if first is None:
            continue
        tensor, between = first.out, []
        repeat: int | None = None if first.channels_first else 1  # see _second
        blocked: str | None = None
        while True:
            nxt = g.sole_consumer(tensor)
            if nxt is None or len([o for o in nxt.output if o and g.uses[o] + (o in g.outputs)]) > 1:
                break
            op = nxt.op_type
            if op in ("Conv", "Gemm", "MatMul"):
                second = _second(g, nxt, tensor, first, repeat) if blocked is None else None
                if blocked is not None:
                    if _second(g, nxt, tensor, first, repeat) is not None:
                        skipped[f"non-homogeneous {blocked}"] += 1
                elif second is not None:
                    pairs.append((first, second, nxt, between))
                break
            if nxt.input[0] != tensor:
                break
            if op in _HOMOGENEOUS or (op in _POOLS and repeat is None) or (op == "Clip" and _clip_homogeneous(g, nxt)):
                if op == "PRelu" and nxt.input[1] == tensor:
                    break
                between.append(op)
            elif op in _REDUCE and repeat is None:
                kept = _spatial_reduce(g, nxt)
                if kept is None:
                    break
                repeat = None if kept else 1  # keepdims=0 leaves (N, C)
                between.append(op)
            elif op in _FLATTEN and repeat is None:
                r = _flatten_repeat(g, nxt, first.channels)
                if r is None:
                    break
                repeat = r
                between.append(op)
            elif op in _NOT_HOMOGENEOUS and blocked is None:
                blocked = op  # look on: count the pair only if a layer follows
                between.append(op)
            else:
                break
            tensor = nxt.output[0]
    return pairs, dict(skipped)


def _precision(r: np.ndarray) -> float:
    """Per-tensor quantization's use of its grid for these channel ranges (DFQ): mean(r_i / max r)."""
    return float(np.mean(r / r.max())) if r.size and r.max() > 0 else 1.0


def _scales(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    ok = (r1 > 1e-12 * max(r1.max(), 1e-30)) & (r2 > 1e-12 * max(r2.max(), 1e-30))
    s = np.ones_like(r1)
    s[ok] = np.sqrt(r1[ok] / r2[ok])
    return s


def equalize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Cross-layer equalization (data-free); see the module docstring. Returns (new model, info)."""
    out = _copy(model)
    g = _Graph(out)
    pairs, skipped = _pairs(g)
    info: dict[str, Any] = {"sites": len(pairs), "skipped": skipped, "pairs": []}
    if not pairs:
        return out, info

    def precisions() -> list[float]:
        return [p for f, s, _, _ in pairs for p in (_precision(f.ranges(g)), _precision(s.ranges(g, f.channels)))]

    before = precisions()
    total = [np.ones(f.channels) for f, _, _, _ in pairs]
    sweeps = 0
    for sweeps in range(1, _MAX_SWEEPS + 1):
        moved = 0.0
        for k, (first, second, _, _) in enumerate(pairs):
            s = _scales(first.ranges(g), second.ranges(g, first.channels))
            first.scale(g, s)
            second.scale(g, s)
            total[k] *= s
            moved = max(moved, float(np.abs(np.log(s)).max()))
        if moved < _SETTLED:
            break
    after = precisions()
    g.write_back()
    info.update(
        sweeps=sweeps,
        precision_before=float(np.mean(before)), precision_after=float(np.mean(after)),
        pairs=[{"first": g.name(f.node), "second": g.name(nxt), "between": between, "channels": f.channels,
                "scale_min": float(t.min()), "scale_max": float(t.max())} for (f, _, nxt, between), t in zip(pairs, total)],
    )
    return out, info


# --- bias correction -------------------------------------------------------------------------------------

def _dequantized_weight(qdq: onnx.ModelProto, tensor: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(W_q as the QDQ model computes it, its step broadcast to W's shape): DequantizeLinear of an integer
    initializer (or of a QuantizeLinear of a float one), with its scale, zero point and axis."""
    prod = {o: n for n in qdq.graph.node for o in n.output}
    inits = {t.name: t for t in qdq.graph.initializer}
    dq = prod.get(tensor)
    if dq is None or dq.op_type != "DequantizeLinear" or _attr(dq, "block_size", 0):
        return None

    def arr(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(inits[name]) if name in inits else None

    scale = arr(dq.input[1])
    zp = arr(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
    q = arr(dq.input[0])
    if q is None:
        ql = prod.get(dq.input[0])
        w = arr(ql.input[0]) if ql is not None and ql.op_type == "QuantizeLinear" else None
        if w is None or scale is None:
            return None
        qzp = arr(ql.input[2]) if len(ql.input) > 2 and ql.input[2] else np.zeros((), np.uint8)
        axis_q = _attr(ql, "axis", 1)
        sq = _along(arr(ql.input[1]), w.ndim, axis_q)
        info = np.iinfo(qzp.dtype)
        q = np.clip(np.rint(w / sq) + _along(qzp, w.ndim, axis_q), info.min, info.max).astype(qzp.dtype)
        zp = qzp if zp is None else zp
    if scale is None or q.dtype.kind not in "iu":
        return None
    axis = _attr(dq, "axis", 1)
    zero = 0 if zp is None else _along(zp.astype(np.float64), q.ndim, axis)
    step = _along(scale.astype(np.float64), q.ndim, axis)
    return (q.astype(np.float64) - zero) * step, np.broadcast_to(step, q.shape)


def _along(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A per-axis (1-D) or per-tensor (scalar) parameter, shaped to broadcast along `axis` of an ndim tensor."""
    if v.ndim == 0 or v.size == 1:
        return v.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return v.reshape(shape)


class _Site:
    def __init__(self, node: onnx.NodeProto, name: str, x: str, dw: np.ndarray, kind: str, bias: str | None, bias_gain: float) -> None:
        # dw: (W_q - W) as [out, in] (summed over the kernel) or [g, out/g, in/g] for a grouped Conv
        self.node, self.name, self.x, self.dw, self.kind, self.bias, self.bias_gain = node, name, x, dw, kind, bias, bias_gain
        self.conv_dw: np.ndarray | None = None  # a Conv's full (W_q - W), for the exact mean over output positions


def _site(g: _Graph, node: onnx.NodeProto, name: str, qnode: onnx.NodeProto, qdq: onnx.ModelProto, skipped: dict[str, int]) -> _Site | None:
    w = g.const(node.input[1], own=False) if len(node.input) > 1 else None  # read only: a shared weight is fine
    if w is None or node.input[0] in g.inits:
        return None
    got = _dequantized_weight(qdq, qnode.input[1]) if len(qnode.input) > 1 else None
    if got is None:
        return None  # this weight is not quantized in the QDQ model (excluded, or kept float by the recipe)
    wq, step = got
    if wq.shape != w.shape or np.any(np.abs(wq - w) > 0.5 * step * (1 + 1e-3) + 1e-7 * np.abs(w)):
        skipped["QDQ weight is not this weight rounded (another model?)"] += 1
        return None
    dw = wq - w
    x = node.input[0]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if node.op_type == "Conv":
        group = int(_attr(node, "group", 1))
        d = dw.reshape(dw.shape[0], dw.shape[1], -1).sum(axis=2)
        d = d.reshape(group, dw.shape[0] // group, dw.shape[1])
        kind, gain = "conv", 1.0
    elif node.op_type == "Gemm":
        if w.ndim != 2:
            return None
        d = (dw if _attr(node, "transB", 0) else dw.T) * float(_attr(node, "alpha", 1.0))  # [N, K]
        kind, gain = ("gemm-t" if _attr(node, "transA", 0) else "gemm"), float(_attr(node, "beta", 1.0))
        if gain == 0:
            skipped["Gemm with beta 0"] += 1
            return None
    else:  # MatMul: its bias is the constant of the Add that alone reads it
        if w.ndim != 2:
            return None
        d, kind, gain = dw.T, "matmul", 1.0
        add = g.sole_consumer(node.output[0])
        other = (add.input[1] if add.input[0] == node.output[0] else add.input[0]) if add is not None and add.op_type == "Add" else None
        b = g.const(other) if other else None
        if b is None or b.size not in (1, w.shape[1]) or (b.ndim and b.shape[-1] != b.size):
            skipped["MatMul without a constant bias Add"] += 1
            return None
        bias, node = other, add  # the correction goes into the Add's constant
    if bias is not None and g.const(bias) is None:
        skipped["bias shared or not a constant"] += 1
        return None
    site = _Site(node, name, x, d, kind, bias, gain)
    if kind == "conv":
        site.conv_dw = dw
    return site


def bias_correct(model: onnx.ModelProto, qdq: onnx.ModelProto, feeds: Feeds) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Analytic bias correction of weight quantization (see the module docstring). `qdq` is the QDQ model
    `quantize_with_ranges` made from `model` (nodes matched by name); `feeds` gives the calibration feeds
    (one pass). Returns (new float model, info)."""
    out = _copy(model)
    g = _Graph(out)
    layers = [n for n in qdq.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    by_name = {n.name: n for n in layers if n.name}
    by_output = {n.output[0]: n for n in layers}  # QDQ keeps a layer's output name (for nodes left unnamed)
    skipped: dict[str, int] = defaultdict(int)
    sites: list[_Site] = []
    for node, name in zip(g.nodes, g.names):
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        # a named node by its name; an unnamed one by its output (QDQ keeps it unless it is a graph output), else by
        # the name edgekit.quantize.graph.name_nodes gave it (_site checks the weights agree to half a step either way)
        qnode = by_name.get(node.name) if node.name else by_output.get(node.output[0]) or by_name.get(name)
        if qnode is None or qnode.op_type != node.op_type:
            continue
        site = _site(g, node, name, qnode, qdq, skipped)
        if site is not None:
            sites.append(site)
    info: dict[str, Any] = {"sites": 0, "skipped": dict(skipped)}
    if not sites:
        return out, info

    means = _channel_means(model, sites, feeds)
    corrections = []
    exact = 0
    for site in sites:
        mean = means[_key(site)]
        mean_map = means.get(("map", site.x))
        if site.kind == "conv" and mean_map is not None:  # the error's mean over output positions, padding included
            corr = _conv_of_mean(site.node, site.conv_dw, mean_map)
            exact += 1
        elif site.kind == "conv":
            groups, _, cin = site.dw.shape
            corr = (site.dw * mean.reshape(groups, 1, cin)).sum(axis=2).reshape(-1)
        else:
            corr = site.dw @ mean
        corrections.append(corr)
        _apply(g, out, site, corr)
    g.write_back()
    rel = []
    for site, corr in zip(sites, corrections):
        b0 = g.const(site.bias, own=False) if site.bias is not None and site.bias in g.inits else None
        b0 = None if b0 is None else b0 + np.broadcast_to(corr / site.bias_gain, b0.shape)  # the bias before correction
        rms = float(np.sqrt(np.mean(b0 ** 2))) if b0 is not None else 0.0
        rel.append(float(np.abs(corr).max()) / rms if rms > 0 else None)
    absmax = [float(np.abs(c).max()) for c in corrections]
    known = [r for r in rel if r is not None]
    info.update(
        sites=len(sites), skipped=dict(skipped), feeds=means["__feeds__"],
        convs_with_padding_exact=exact, convs_with_padding_ignored=sum(s.kind == "conv" for s in sites) - exact,
        correction_abs_mean=float(np.mean([np.abs(c).mean() for c in corrections])), correction_abs_max=max(absmax),
        correction_rel_bias_rms_mean=float(np.mean(known)) if known else None, correction_rel_bias_rms_max=max(known) if known else None,
        per_site={s.name: {"max_abs": a, "rel_bias_rms": r} for s, a, r in zip(sites, absmax, rel)},
    )
    return out, info


def _key(site: _Site) -> tuple[str, int]:
    """(input tensor, its channel axis): Conv: 1; Gemm: the columns of A (its rows under transA); MatMul: the last."""
    return site.x, (1 if site.kind == "conv" else 0 if site.kind == "gemm-t" else -1)


def _channel_means(model: onnx.ModelProto, sites: list[_Site], feeds: Feeds) -> dict[Any, Any]:
    """Per-channel means of the sites' float inputs over the feeds, in one pass (input tensors exposed as outputs)."""
    from edgekit.backends.onnxruntime import session_from_bytes

    keys = sorted({_key(s) for s in sites})
    inputs = {i.name for i in model.graph.input}
    fetch = sorted({x for x, _ in keys if x not in inputs})
    aug = _copy(model)
    existing = {o.name for o in aug.graph.output}
    aug.graph.output.extend([onnx.ValueInfoProto(name=x) for x in fetch if x not in existing])
    sess = session_from_bytes(aug.SerializeToString())
    sums: dict[tuple[str, int], np.ndarray] = {}
    counts: dict[tuple[str, int], int] = defaultdict(int)
    maps: dict[str, np.ndarray | None] = {}  # Conv inputs: the sum over the batch per position, while shapes agree
    batches: dict[str, int] = defaultdict(int)
    samples = 0
    for feed in feeds():
        got = dict(zip(fetch, sess.run(fetch, feed))) if fetch else {}
        for x, ax in keys:
            v = np.asarray(feed[x] if x in inputs else got[x], dtype=np.float64)
            if ax == 1 and v.ndim >= 3:
                m = maps.get(x, 0)
                if m is not None and v[0].size <= _MAP_LIMIT and (isinstance(m, int) or m.shape == v.shape[1:]):
                    maps[x], batches[x] = m + v.sum(axis=0), batches[x] + v.shape[0]
                else:
                    maps[x] = None  # spatial sizes differ between feeds (or too large): padding is ignored
            v = np.moveaxis(v, ax, 0).reshape(v.shape[ax], -1)
            sums[x, ax] = sums.get((x, ax), 0) + v.sum(axis=1)
            counts[x, ax] += v.shape[1]
        samples += 1
    if samples == 0:
        from edgekit.errors import UsageError

        raise UsageError("bias correction got no calibration feeds", hint="give at least one calibration sample")
    out: dict[Any, Any] = {k: sums[k] / counts[k] for k in keys}
    out.update({("map", x): m / batches[x] for x, m in maps.items() if m is not None})
    out["__feeds__"] = samples
    return out


def _conv_of_mean(node: onnx.NodeProto, dw: np.ndarray, mean_map: np.ndarray) -> np.ndarray:
    """mean over output positions of Conv(E[x], W_q - W): the exact expected error per output channel (Conv is
    linear), with the layer's own pads, strides, dilations and groups; run by ONNX Runtime as a one-node model."""
    from edgekit.backends.onnxruntime import session_from_bytes

    h = onnx.helper
    conv = h.make_node("Conv", ["x", "w"], ["y"])
    conv.attribute.extend(node.attribute)
    graph = h.make_graph([conv], "edgekit_bias_error", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, *mean_map.shape])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [numpy_helper.from_array(dw.astype(np.float32), "w")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)], ir_version=7)
    y = session_from_bytes(model.SerializeToString()).run(None, {"x": mean_map[None].astype(np.float32)})[0]
    return y[0].reshape(y.shape[1], -1).astype(np.float64).mean(axis=1)


def _apply(g: _Graph, model: onnx.ModelProto, site: _Site, corr: np.ndarray) -> None:
    """bias -= corr / gain (created as zeros when the layer has none)."""
    delta = corr / site.bias_gain
    if site.bias is None:
        name = _unique(g, f"edgekit_bias_{site.name}")
        model.graph.initializer.append(numpy_helper.from_array(np.zeros(delta.size, np.float32), name))
        g.inits[name] = model.graph.initializer[-1]
        g.uses[name] = 1
        while len(site.node.input) < 2:
            site.node.input.append("")
        if len(site.node.input) == 2:
            site.node.input.append(name)
        else:
            site.node.input[2] = name
        site.bias = name
    b = g.const(site.bias)
    if b.ndim == 0 or b.shape[-1] != delta.size:
        b = np.broadcast_to(b, (*b.shape[:-1], delta.size) if b.ndim else (delta.size,)).copy()
    g.set(site.bias, b - delta)


def _unique(g: _Graph, base: str) -> str:
    taken = set(g.inits) | set(g.producer) | {i.name for i in g.model.graph.input}
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name
