"""Regions of an ONNX graph that want different quantization: recipes per subgraph, not per model.

`find_regions` names the blocks a recipe treats differently, wherever they are (a CNN with
attention blocks gets both treatments): attention (MatMul-Softmax-MatMul with the projections
that feed and read it), layer norms (the op or its ReduceMean/Sub/Pow/Sqrt/Div decomposition),
GELU (the op or its Erf form), conv stems (the first convolution on a graph input), RNN cells
(LSTM/GRU/RNN/Scan/Loop), embedding tables (Gather from a float table) and in-graph signal front-ends
(STFT / constant-Q / mel filters on a graph input, then a magnitude and/or a log: edgekit.quantize.spectral).

`quantization_plan` turns regions + a recipe's per-region policies into what ONNX Runtime's
QDQ quantizer is told: the nodes its op quantizers handle, and activation tensors marked
directly. The placement follows NNCF's (nncf/quantization/algorithms/min_max, OpenVINO ignored
patterns and quantizer propagation): inside attention only the MatMuls quantize; the
Softmax->MatMul product stays float (NNCF's MULTIHEAD_ATTENTION_OUTPUT pattern); the two
activation inputs of Q x K^T are quantized above their Reshape/Transpose, where the projection's
bias Add ends, so OpenVINO fuses the requantization into the FullyConnected and keeps its fused
attention kernel; LayerNorm, GELU, Softmax and residual Adds stay float.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import onnx

from edgekit.quantize.graph import SHAPE_OPS, Graph

_SCORE_OPS = ("Add", "Div", "Mul", "Where", "Sub", "Cast") + SHAPE_OPS  # between Q x K^T and Softmax (scale, mask)
_PROJ_PATH_OPS = ("Add", "Mul", "Div", "Split", "Slice", "Gather") + SHAPE_OPS  # between a projection and Q x K^T / P x V
_NORM_OPS = ("LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
             "RMSNormalization", "GroupNormalization", "InstanceNormalization")
_GELU_OPS = ("Gelu", "FastGelu", "BiasGelu")
_RNN_OPS = ("LSTM", "GRU", "RNN", "Scan", "Loop")
_CONV_OPS = ("Conv", "ConvTranspose")

KINDS = ("attention", "layernorm", "gelu", "conv-stem", "rnn", "embedding", "spectral")
POLICIES = ("int8", "int8-s8", "float", "weights", "attention")  # what a region may get (see quantization_plan)


@dataclasses.dataclass(frozen=True)
class Region:
    kind: str
    nodes: tuple[str, ...]  # node names, in graph order
    qk: str | None = None  # attention: the Q x K^T MatMul
    pv: str | None = None  # attention: the Softmax x V MatMul

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "nodes": len(self.nodes), "first": self.nodes[0], "last": self.nodes[-1]}
        if self.qk:
            d.update(qk=self.qk, pv=self.pv)
        return d


def find_regions(model: onnx.ModelProto) -> list[Region]:
    """Every region of the kinds in KINDS, in graph order. A node belongs to at most one region."""
    from edgekit.quantize.spectral import spectral_front_ends

    g = Graph(model)
    found: list[Region] = []
    taken: set[str] = set()

    def add(kind: str, nodes: list[onnx.NodeProto], **kw: Any) -> None:
        names = sorted({g.n(x) for x in nodes} - taken, key=g.order.__getitem__)
        if names:
            taken.update(names)
            found.append(Region(kind, tuple(names), **kw))

    for front_end in spectral_front_ends(model, g):  # first: its filters on the input are no conv stem
        add("spectral", front_end)
    for n in g.nodes:
        if n.op_type == "Softmax":
            _attention(g, n, add)
    for n in g.nodes:
        if g.n(n) in taken:
            continue
        if n.op_type in _NORM_OPS:
            add("layernorm", [n])
        elif n.op_type == "ReduceMean":
            _decomposed_layernorm(g, n, add)
        elif n.op_type in _GELU_OPS:
            add("gelu", [n])
        elif n.op_type == "Erf":
            _erf_gelu(g, n, add)
        elif n.op_type in _RNN_OPS:
            add("rnn", [n])
        elif n.op_type == "Gather" and n.input[0] in g.float_inits and n.input[1] not in g.consts:
            add("embedding", [n])
    for n in g.nodes:
        if n.op_type in _CONV_OPS and g.n(n) not in taken:
            top, path = g.up(n.input[0], ("Transpose", "Cast", "Sub", "Div", "Mul", "Add", "Pad", "Reshape", "Unsqueeze"), 4)
            if top is None and path and set(g.dynamic_inputs(path[-1])) & g.inputs or n.input[0] in g.inputs:
                add("conv-stem", [*path, n])
    found.sort(key=lambda r: g.order[r.nodes[0]])
    return found


def _attention(g: Graph, softmax: onnx.NodeProto, add: Any) -> None:
    qk, score_path = g.up(softmax.input[0], _SCORE_OPS, 6)
    if qk is None or qk.op_type != "MatMul" or len(g.dynamic_inputs(qk)) != 2:
        return
    pv, prob_path = g.down(softmax.output[0], ("Cast", "Dropout", "Identity", "Reshape"), 3)
    if pv is None or pv.op_type != "MatMul" or len(g.dynamic_inputs(pv)) != 2:
        return
    nodes = [qk, *score_path, softmax, *prob_path, pv]
    for t in (qk.input[0], qk.input[1], pv.input[1]):  # Q, K and V: up to their projections
        proj, path = g.up(t, _PROJ_PATH_OPS, 8)
        if proj is not None and g.is_weighted(proj):
            nodes += [proj, *path]
    out, path = g.down(pv.output[0], SHAPE_OPS, 4)
    if out is not None and g.is_weighted(out):
        nodes += [*path, out]
    add("attention", nodes, qk=g.n(qk), pv=g.n(pv))


def _decomposed_layernorm(g: Graph, mean: onnx.NodeProto, add: Any) -> None:
    """ReduceMean(x) -> Sub(x, mean) -> Pow/Mul -> ReduceMean -> Add(eps) -> Sqrt -> Div -> [Mul gamma] -> [Add beta]."""
    x = mean.input[0]
    subs = [c for c in g.consumers.get(mean.output[0], []) if c.op_type == "Sub" and c.input[0] == x]
    if not subs:
        return
    nodes, frontier = [mean, subs[0]], [subs[0]]
    allowed = ("Pow", "Mul", "ReduceMean", "Add", "Sqrt", "Div", "Reciprocal")
    for _ in range(6):  # breadth first from (x - mean) to the Div by the standard deviation, not past it
        nxt = [c for f in frontier if f.op_type != "Div" for c in g.consumers.get(f.output[0], []) if c.op_type in allowed and c not in nodes]
        if not nxt:
            break
        nodes += nxt
        frontier = nxt
    div = next((n for n in nodes if n.op_type == "Div" and subs[0].output[0] in n.input), None)
    if div is None or not any(n.op_type in ("Sqrt", "Reciprocal") for n in nodes):
        return
    tail, path = g.down(div.output[0], ("Mul", "Add"), 2)
    add("layernorm", nodes + [p for p in path if any(i in g.consts for i in p.input)])


def _erf_gelu(g: Graph, erf: onnx.NodeProto, add: Any) -> None:
    """x * 0.5 * (1 + erf(x / sqrt 2)), in any order of its multiplications."""
    pre = g.producer.get(erf.input[0])
    nodes = [erf] + ([pre] if pre is not None and pre.op_type in ("Div", "Mul") else [])
    _, path = g.down(erf.output[0], ("Add", "Mul"), 3)
    add("gelu", nodes + path)


def region_report(model: onnx.ModelProto, policies: dict[str, str]) -> list[dict[str, Any]]:
    """The regions found, each with the policy its recipe gave it (the quantize report's `regions`)."""
    return [{**r.to_dict(), "policy": policies.get(r.kind, "int8")} for r in find_regions(model)] if policies else []


def region_line(regions: list[dict[str, Any]]) -> str:
    """`attention x6 (attention), layernorm x13 (float), ...` for a terminal."""
    from collections import Counter

    counts = Counter((r["kind"], r["policy"]) for r in regions)
    return ", ".join(f"{k} x{n} ({p})" for (k, p), n in counts.items())


def quantization_plan(model: onnx.ModelProto, regions: list[Region], policies: dict[str, str], base_ops: set[str], *,
                      exclude: set[str] = frozenset()) -> tuple[list[str], list[str]]:  # type: ignore[assignment]
    """(nodes for ONNX Runtime's op quantizers, activation tensors to quantize directly).

    Nodes outside every region quantize when their op is in `base_ops`. A region's nodes follow its
    kind's policy: `int8` as outside (`int8-s8`: a signed input symmetric S8, NNCF's choice for a stem); `float` none; `weights` only MatMul/Gemm/Conv with constant
    weights; `attention` the weighted ones plus Q x K^T's two inputs above their shape-only ops.
    """
    g = Graph(model)
    by_name = {g.n(n): n for n in g.nodes}
    in_region = {name: r for r in regions for name in r.nodes}
    nodes: list[str] = []
    tensors: list[str] = []
    for n in g.nodes:
        name = g.n(n)
        r = in_region.get(name)
        if name in exclude:
            continue
        policy = policies.get(r.kind, "int8") if r is not None else "int8"
        if policy not in POLICIES:
            raise ValueError(f"unknown region policy {policy!r}")
        if policy in ("int8", "int8-s8") and n.op_type in base_ops:
            nodes.append(name)
        elif policy in ("weights", "attention") and g.is_weighted(n):
            nodes.append(name)
    for r in regions:
        if policies.get(r.kind) == "attention" and r.qk and r.qk not in exclude:
            for t in by_name[r.qk].input[:2]:
                top = t
                while (p := g.producer.get(top)) is not None and p.op_type in SHAPE_OPS and len(g.consumers[top]) == 1 \
                        and len(g.consumers[p.output[0]]) == 1:
                    top = p.input[0]
                tensors.append(top)
    return nodes, tensors


def hoist_qdq_over_shape_ops(model: onnx.ModelProto) -> int:
    """`x -> Reshape/Transpose/... -> Q -> DQ -> y` becomes `x -> Q -> DQ -> Reshape/... -> y` when the shape op's
    output has no other consumer (per-tensor Q/DQ commutes with them; x's other consumers keep reading x). OpenVINO then fuses the
    requantization into the op that produces x (MVN, GELU, a FullyConnected) instead of running it alone,
    as NNCF's quantizer propagation places it. Returns how many pairs moved."""
    moved, again = 0, True
    while again:
        again = False
        g = Graph(model)
        for q in g.nodes:
            if _hoist_one(model, g, q):
                moved += 1
                again = True
                break
    return moved


def _hoist_one(model: onnx.ModelProto, g: Graph, q: onnx.NodeProto) -> bool:
    if q.op_type != "QuantizeLinear" or len(q.input) < 2 or q.input[1] not in g.consts:
        return False
    shape = g.producer.get(q.input[0])
    if shape is None or shape.op_type not in SHAPE_OPS or len(g.consumers[q.input[0]]) != 1:
        return False
    x = shape.input[0]
    if x in g.consts or _per_channel(model, q):
        return False
    src = g.producer.get(x)
    if src is None or src.op_type in SHAPE_OPS or src.op_type == "MatMul" and len(g.dynamic_inputs(src)) == 2:
        # only onto an op that can absorb it: not an attention product (P x V, inside OpenVINO's fused attention
        # kernel), not another shape op (OpenVINO then pushes the pair through a Transpose it runs in 8 bits)
        return False
    dqs = g.consumers[q.output[0]]
    if len(dqs) != 1 or dqs[0].op_type != "DequantizeLinear":
        return False
    dq = dqs[0]
    deq = dq.output[0]
    # x -> Q -> DQ -> shape -> (former DQ consumers): the shape op keeps writing `deq`, so its consumers and a
    # graph output of that name still get the shaped tensor; the DQ writes a new name
    taken = {t.name for t in model.graph.initializer} | {i.name for i in model.graph.input} | {o for n in g.nodes for o in n.output}
    inner, k = deq + "_unshaped", 0
    while inner in taken:
        k += 1
        inner = f"{deq}_unshaped{k}"
    q.input[0] = x
    dq.output[0] = inner
    shape.input[0] = inner
    shape.output[0] = deq
    return True


def _per_channel(model: onnx.ModelProto, q: onnx.NodeProto) -> bool:
    scale = next((t for t in model.graph.initializer if t.name == q.input[1]), None)
    return scale is not None and any(d > 1 for d in scale.dims)


def unfold_reshaped_gemms(model: onnx.ModelProto) -> int:
    """`Reshape(x, [-1, K]) -> Gemm(W, b) -> Reshape(back)` becomes `MatMul(x, W) -> Add(b)`.

    ONNX Runtime's pre-processing fuses a 3-D MatMul + Add into a 2-D Gemm between two Reshapes. OpenVINO
    cannot fuse through those Reshapes: the bias, GELU and the requantization after a FullyConnected then
    run as separate eltwise passes (6 per MiniLM layer pair) that NNCF's graph, which keeps the MatMul, does
    not have. Only where x's last dimension is K and the result has x's leading dimensions. Returns how many."""
    from onnx import helper, numpy_helper

    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    inits = {t.name: t for t in model.graph.initializer}
    g = Graph(model)
    done = 0
    for gemm in g.nodes:
        if gemm.op_type != "Gemm" or gemm.input[1] not in inits:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            continue
        rin, outs = g.producer.get(gemm.input[0]), g.consumers.get(gemm.output[0], [])
        if rin is None or rin.op_type != "Reshape" or len(g.consumers[rin.output[0]]) != 1 or len(outs) != 1 or outs[0].op_type != "Reshape":
            continue
        rout, x = outs[0], rin.input[0]
        w = numpy_helper.to_array(inits[gemm.input[1]])
        w = w.T if attrs.get("transB", 0) else w
        xs, ys = shapes.get(x), shapes.get(rout.output[0])
        if not xs or not ys or len(xs) < 3 or xs[-1] != w.shape[0] or ys[:-1] != xs[:-1] or ys[-1] != w.shape[1] or None in xs:
            continue
        wname = gemm.input[1]
        if attrs.get("transB", 0):
            wname = gemm.input[1] + "_transposed"
            model.graph.initializer.append(numpy_helper.from_array(w, wname))
        has_bias = len(gemm.input) > 2 and gemm.input[2]
        mm_out = rout.output[0] + "_matmul" if has_bias else rout.output[0]
        new = [helper.make_node("MatMul", [x, wname], [mm_out], name=gemm.name or f"{rout.output[0]}_matmul")]
        if has_bias:
            new.append(helper.make_node("Add", [mm_out, gemm.input[2]], [rout.output[0]], name=(gemm.name or rout.output[0]) + "_bias"))
        nodes = list(model.graph.node)
        at = nodes.index(gemm)
        keep = [n for n in nodes[:at] if n is not rin] + new + [n for n in nodes[at + 1:] if n is not rout]
        del model.graph.node[:]
        model.graph.node.extend(keep)
        g = Graph(model)
        done += 1
    return done
