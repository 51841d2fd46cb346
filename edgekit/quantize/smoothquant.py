"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights of the MatMuls that read them.

A MatMul (or Gemm) with a constant weight W computes X W. For a per-input-channel scale s,
X W = (X / s) (diag(s) W): the float function is unchanged, but the activation's outlier channels
shrink (per-tensor INT8 activations get their levels back) while the weight rows grow (per-channel
INT8 weights absorb that well). Per input channel j:

    s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)

MatMuls that read the same X (Q, K and V projections) share one s (max|W_j| over all of them).
max|X_j| comes from ONE pass over the calibration feeds (the MatMul inputs exposed as outputs).

Where it can help: a site is smoothed only when its activation has outlier channels, i.e. the
largest channel maximum is at least `min_ratio` (default 5) times the median channel maximum. Per-tensor
INT8 gives the median channel 255 / ratio levels; at 5x it has lost more than 2 of its 8 bits to a few
channels, which is the situation SmoothQuant targets (LLM and BERT LayerNorm / GELU outputs measure 5-30x).
Activations whose channels are mostly silent (median channel maximum 0, e.g. after a ReLU) are left alone, and so
is a site where s would not lower that ratio: when the outlier channels' weight rows are as large as the activations
(MiniLM's GELU outputs into the FFN down-projection), alpha = 0.5 moves difficulty into the activation, not out.

1/s costs nothing at run time where it folds into the producer of X, when X's only readers are the
smoothed MatMuls: a LayerNormalization (scale and bias / s), a Mul by a constant, an Add of a constant
whose other operand folds too (a decomposed LayerNorm's Mul(gamma) -> Add(beta)). Otherwise a Mul by the
constant 1/s is inserted before the MatMuls (one elementwise op; the QDQ placement quantizes its output, the
MatMuls' input). Then X's other readers (BERT's residual Add) read the float X, no longer X's Q/DQ output: part of
the gain on MiniLM comes from that alone (bench/smoothquant.py's "Mul by 1" control row).

Why not NNCF's SmoothQuant (nncf/quantization/algorithms/smooth_quant, ONNX backend): it always inserts a
Multiply (never folds), smooths every weighted MatMul without asking whether its activation has outliers,
picks a group's scale from the one member whose scales are flattest rather than from all members' weights, and
is driven only through NNCF's private graph builder, statistics aggregator and algorithm classes. Driven that way
on MiniLM-L6 it keeps node names, but all-INT8 after it is worse than after this (bench/smoothquant.py). The
transformation itself is a few lines of numpy.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

SCALE_RANGE = (1e-4, 1e4)  # s is clipped into this range: a guard against dead channels and float overflow


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.inits = {t.name: t for t in model.graph.initializer}
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in model.graph.node:
            for i in n.input:
                self.consumers[i].append(n)
        self.outputs = {o.name for o in model.graph.output}

    def const(self, name: str) -> np.ndarray | None:
        t = self.inits.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def only_read_by(self, tensor: str, nodes: Iterable[onnx.NodeProto]) -> bool:
        ids = {id(n) for n in nodes}
        return tensor not in self.outputs and all(id(c) in ids for c in self.consumers[tensor])

    def set_const(self, node: onnx.NodeProto, index: int, value: np.ndarray, tag: str) -> None:
        """Write `value` as `node`'s input `index`: in place when no other node reads that initializer, else a new one."""
        name = node.input[index]
        old = self.inits[name]
        value = value.astype(numpy_helper.to_array(old).dtype)
        if len(self.consumers[name]) == 1 and name not in self.outputs:
            old.CopyFrom(numpy_helper.from_array(value, name))
            return
        new = self.unique(f"edgekit_smooth_{tag}_{name}")
        self.model.graph.initializer.append(numpy_helper.from_array(value, new))
        self.inits[new] = self.model.graph.initializer[-1]
        self.consumers[name] = [c for c in self.consumers[name] if c is not node]
        node.input[index] = new
        self.consumers[new] = [node]

    def unique(self, base: str) -> str:
        taken = set(self.inits) | set(self.producer) | {n.name for n in self.model.graph.node} | {i.name for i in self.model.graph.input}
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        return name


def _weighted_input(g: _Graph, node: onnx.NodeProto) -> tuple[str, int] | None:
    """(activation tensor, weight input-channel axis) of a MatMul/Gemm X W with a constant 2-D weight, else None."""
    if node.op_type == "MatMul" and len(node.input) == 2:
        w = g.const(node.input[1])
        if w is not None and w.ndim == 2 and w.dtype.kind == "f" and node.input[0] not in g.inits:
            return node.input[0], 0
    if node.op_type == "Gemm" and len(node.input) >= 2 and not _attr(node, "transA", 0):
        w = g.const(node.input[1])
        if w is not None and w.ndim == 2 and w.dtype.kind == "f" and node.input[0] not in g.inits:
            return node.input[0], 1 if _attr(node, "transB", 0) else 0
    return None


def _weight_absmax(g: _Graph, node: onnx.NodeProto, axis: int) -> np.ndarray:
    w = np.abs(g.const(node.input[1]).astype(np.float64))
    return w.max(axis=1 - axis)


def _channel_const(g: _Graph, name: str, channels: int) -> np.ndarray | None:
    """A constant that broadcasts along the last axis only (shape [], [1], [C] or [1, ..., C]), as a [C] vector."""
    c = g.const(name)
    if c is None or c.dtype.kind != "f" or any(d != 1 for d in c.shape[:-1]) or (c.ndim and c.shape[-1] not in (1, channels)):
        return None
    return np.broadcast_to(c.reshape(-1) if c.ndim else c.reshape(1), (channels,)).astype(np.float64)


def _fold_plan(g: _Graph, tensor: str, readers: list[onnx.NodeProto], channels: int) -> list[tuple[onnx.NodeProto, int]] | None:
    """How to divide `tensor` by s inside its producers: the per-channel constants to divide by s, as
    [(node, input index)], or None when it cannot fold."""
    if not g.only_read_by(tensor, readers):
        return None
    p = g.producer.get(tensor)
    if p is None:
        return None
    if p.op_type == "LayerNormalization" and p.output[0] == tensor and _attr(p, "axis", -1) == -1:  # (norm(X) * scale + bias) / s; Mean/InvStdDev unchanged
        plan = [(p, 1)]
        if len(p.input) > 2 and p.input[2]:
            if _channel_const(g, p.input[2], channels) is None:
                return None
            plan.append((p, 2))
        return plan if _channel_const(g, p.input[1], channels) is not None else None
    if p.op_type in ("Mul", "Add") and len(p.input) == 2:
        for k in (0, 1):
            if p.input[k] in g.inits and _channel_const(g, p.input[k], channels) is not None and p.input[1 - k] not in g.inits:
                if p.op_type == "Mul":  # (Y * c) / s = Y * (c / s)
                    return [(p, k)]
                inner = _fold_plan(g, p.input[1 - k], [p], channels)  # (Y + c) / s = Y / s + c / s
                return None if inner is None else [(p, k), *inner]
        return None
    return None


def _apply_fold(g: _Graph, plan: list[tuple[onnx.NodeProto, int]], s: np.ndarray) -> None:
    for node, index in plan:
        c = g.const(node.input[index]).astype(np.float64)
        shape = (*c.shape[:-1], len(s)) if c.ndim else (len(s),)  # a [1] or scalar constant becomes per-channel
        g.set_const(node, index, np.broadcast_to(c, shape) / s, "folded")


def _channel_absmax(model: onnx.ModelProto, tensors: list[str], feeds: Callable[[], Iterable[dict[str, np.ndarray]]]) -> tuple[dict[str, np.ndarray], int]:
    """max |X_j| over every axis but the last, for each tensor, in one pass over the feeds."""
    from edgekit.backends.onnxruntime import session_from_bytes

    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    have = {o.name for o in aug.graph.output}
    inputs = {i.name for i in aug.graph.input}
    run = [t for t in tensors if t not in inputs]  # a MatMul reading a graph input: its values are in the feed
    aug.graph.output.extend(onnx.ValueInfoProto(name=t) for t in run if t not in have)
    sess = session_from_bytes(aug.SerializeToString())
    out: dict[str, np.ndarray] = {}
    used = 0
    for feed in feeds():
        values = dict(zip(run, sess.run(run, feed))) if run else {}
        for name in tensors:
            value = values[name] if name in values else feed[name]
            v = np.abs(np.asarray(value, dtype=np.float64))
            if v.ndim == 0:
                continue
            m = v.reshape(-1, v.shape[-1]).max(axis=0) if v.size else np.zeros(v.shape[-1])
            out[name] = np.maximum(out[name], m) if name in out else m
        used += 1
    return out, used


def outlier_ratio(absmax: np.ndarray) -> float:
    """Largest channel maximum over the median channel maximum (inf when the median channel is silent)."""
    med = float(np.median(absmax))
    return float(absmax.max() / med) if med > 0 else float("inf")


def smooth_quant(model: onnx.ModelProto, feeds: Callable[[], Iterable[dict[str, np.ndarray]]], *, alpha: float = 0.5,
                 min_ratio: float = 5.0) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """SmoothQuant on every MatMul/Gemm site whose activation has outlier channels; returns (a new model, info).
    The input model is not changed; existing nodes keep their names; new nodes and initializers start `edgekit_`."""
    from edgekit.quantize.graph import name_nodes

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = _Graph(out)
    groups: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
    for node in out.graph.node:
        hit = _weighted_input(g, node)
        if hit is not None:
            groups[hit[0]].append((node, hit[1]))
    # every reader of a group must agree on the channel count (its weight's input dimension)
    groups = {x: m for x, m in groups.items() if len({g.const(n.input[1]).shape[a] for n, a in m}) == 1}
    info: dict[str, Any] = {"sites": 0, "alpha": alpha, "min_ratio": min_ratio, "candidates": len(groups), "matmuls": 0,
                            "folded": 0, "inserted": 0, "skipped_no_gain": 0, "samples": 0, "per_site": [], "not_smoothed": [],
                            "rule": f"smoothed where max/median of the per-channel max|X| >= {min_ratio:g} and smoothing lowers it"}
    if not groups:
        return out, info
    absmax, used = _channel_absmax(out, sorted(groups), feeds)
    info["samples"] = used
    name_nodes(out)  # names as edgekit.quantize.graph.name_nodes gives them to the original: new nodes come after
    order = {id(n): i for i, n in enumerate(out.graph.node)}
    inserts: list[tuple[int, onnx.NodeProto]] = []
    for x in sorted(groups, key=lambda t: order[id(groups[t][0][0])]):
        members = groups[x]
        a = absmax.get(x)
        channels = g.const(members[0][0].input[1]).shape[members[0][1]]
        if a is None or a.shape != (channels,):
            continue
        ratio = outlier_ratio(a)
        if not ratio >= min_ratio or not np.isfinite(ratio):
            info["not_smoothed"].append({"tensor": x, "ratio": round(ratio, 2) if np.isfinite(ratio) else None,
                                         "why": "no outlier channels" if np.isfinite(ratio) else "median channel is silent"})
            continue
        w = np.max([_weight_absmax(g, n, ax) for n, ax in members], axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.power(a, alpha) / np.power(w, 1.0 - alpha)
        s = np.where((a > 0) & (w > 0) & np.isfinite(s), s, 1.0)
        s = np.clip(s, *SCALE_RANGE)
        after = a / s
        if not outlier_ratio(after) < ratio:  # the weights already carry these channels' outliers: smoothing moves difficulty the wrong way
            info["skipped_no_gain"] += 1
            info["not_smoothed"].append({"tensor": x, "ratio": round(ratio, 2), "why": f"smoothing would raise the ratio to {outlier_ratio(after):.1f}"})
            continue
        for node, ax in members:
            wv = g.const(node.input[1]).astype(np.float64)
            g.set_const(node, 1, wv * (s[:, None] if ax == 0 else s[None, :]), "weight")
        readers = [n for n, _ in members]
        plan = _fold_plan(g, x, readers, channels)
        where: str
        if plan is not None:
            _apply_fold(g, plan, s)
            info["folded"] += 1
            where = "folded into " + ", ".join(dict.fromkeys(n.name for n, _ in plan))
        else:
            dtype = g.const(members[0][0].input[1]).dtype
            inv, y = g.unique(f"edgekit_smooth_inv_scale_{x}"), g.unique(f"edgekit_smoothed_{x}")
            out.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(dtype), inv))
            g.inits[inv] = out.graph.initializer[-1]
            mul = onnx.helper.make_node("Mul", [x, inv], [y], name=g.unique(f"edgekit_smooth_{x}"))
            g.producer[y] = mul
            for node in readers:
                node.input[0] = y
            g.consumers[x] = [c for c in g.consumers[x] if all(c is not r for r in readers)] + [mul]
            g.consumers[y] = list(readers)
            inserts.append((min(order[id(r)] for r in readers), mul))
            info["inserted"] += 1
            where = "Mul inserted: " + mul.name
        info["sites"] += 1
        info["matmuls"] += len(members)
        info["per_site"].append({"tensor": x, "nodes": [n.name for n in readers], "channels": int(channels),
                                 "ratio_before": round(ratio, 2), "ratio_after": round(outlier_ratio(after), 2),
                                 "absmax_before": round(float(a.max()), 4), "absmax_after": round(float(after.max()), 4),
                                 "scale_min": float(s.min()), "scale_max": float(s.max()), "where": where})
    if not info["sites"]:
        unchanged = onnx.ModelProto()
        unchanged.CopyFrom(model)
        return unchanged, info
    if inserts:  # each Mul goes right before the first MatMul that reads it (its input is produced earlier)
        nodes = list(out.graph.node)
        for pos, mul in sorted(inserts, key=lambda t: -t[0]):
            nodes.insert(pos, mul)
        del out.graph.node[:]
        out.graph.node.extend(nodes)
    return out, info
