"""In-graph signal front-ends (the `spectral` region kind of edgekit.quantize.regions).

An STFT, constant-Q or mel front-end built from ordinary ops: filters with constant kernels (Conv,
MatMul/Gemm, or the STFT/DFT ops) applied to a graph input through data-movement and scaling ops
only, then a magnitude (real^2 + imag^2 or a sum of squares, Abs, Sqrt) and/or a Log of the power
(often after an epsilon Add/Max/Clip, sometimes after a mel filterbank). INT8 squeezes a 16-bit audio
dynamic range into 256 steps at the filters, and the log then amplifies the small errors of quiet
bins: recipes keep the whole front-end in float.

Found by what the graph computes, never by names: a tensor is *linear* when it is a linear (or affine)
function of graph inputs alone; it is *filtered* once a constant-kernel filter has run on it; squaring a
filtered tensor gives a *power*. The region is every node from the inputs to a Sqrt of combined powers
(two squares added, or squares summed) or a Log of a power, up to the last such node. A Conv stem
(Conv -> BatchNorm/ReLU) never squares its output; a norm (x - mean)^2 or x / sqrt(sum x^2) is not a
linear function of the input and its Sqrt only divides: neither is a front-end.
"""
from __future__ import annotations

from typing import Any

import onnx

from edgekit.quantize.graph import SHAPE_OPS, Graph

# ops that move or reshape data: linear in their first input (the others are shapes, pads, indices, axes)
_MOVE_OPS = SHAPE_OPS + ("Slice", "Pad", "Split", "Expand", "Tile", "Cast", "Gather")
_FILTER_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")  # with a constant kernel (second input)
_SIGNAL_OPS = ("STFT", "DFT")  # ONNX's own transforms: linear in the signal


def spectral_front_ends(model: onnx.ModelProto, g: Graph) -> list[list[onnx.NodeProto]]:
    """The nodes of each signal front-end in `model` (see the module docstring), in graph order."""
    consts = _const_values(model)
    linear: set[str] = set(g.inputs)  # tensors linear in the graph inputs
    filtered: set[str] = set()  # ... that went through a constant-kernel filter
    # tensors derived from squared filtered tensors -> (combined: re^2 + im^2 or a sum, filterbanks since the square)
    power: dict[str, tuple[bool, int]] = {}
    member: dict[str, onnx.NodeProto] = {}  # producer of each linear / power tensor
    ends: list[onnx.NodeProto] = []
    for n in g.nodes:  # ONNX keeps nodes in topological order
        dyn = g.dynamic_inputs(n)
        if not dyn:
            continue
        lin = _linear_step(g, n, dyn, linear)
        if lin is not None:
            linear.update(n.output)
            if lin or any(i in filtered for i in dyn):
                filtered.update(n.output)
            member.update((o, n) for o in n.output)
            continue
        state = _power_step(g, n, dyn, filtered, power, consts)
        if state is None:
            continue
        member.update((o, n) for o in n.output)
        if n.op_type == "Log":  # the front-end ends at its first Log
            ends.append(n)
            continue
        power.update((o, state) for o in n.output)
        if n.op_type in ("Sqrt", "ReduceL2") and state[0] and not _only_divides(g, n):
            ends.append(n)
    return _closures(g, ends, member)


def _linear_step(g: Graph, n: onnx.NodeProto, dyn: list[str], linear: set[str]) -> bool | None:
    """None when `n`'s output is not linear in the inputs; else whether `n` is a constant-kernel filter."""
    op = n.op_type
    if op in _MOVE_OPS:
        return False if n.input[0] in linear and n.input[0] not in g.consts else None
    if op in ("Concat", "Add", "Sub", "Neg", "Sum"):
        return False if all(i in linear for i in dyn) else None
    if op in ("Mul", "Div"):  # a window or a scale: one linear input times a constant
        return False if len(dyn) == 1 and dyn[0] in linear and (op == "Mul" or n.input[0] == dyn[0]) else None
    if op in _FILTER_OPS:
        return True if g.is_weighted(n) and len(dyn) == 1 and dyn[0] in linear else None
    if op in _SIGNAL_OPS:
        return True if n.input[0] in linear else None
    return None


def _power_step(g: Graph, n: onnx.NodeProto, dyn: list[str], filtered: set[str], power: dict[str, tuple[bool, int]],
                consts: dict[str, Any]) -> tuple[bool, int] | None:
    """None when `n` is no step of a magnitude / log; else (combined power?, filterbanks since the square)."""
    op = n.op_type
    if _squares(n, consts):
        return power.get(dyn[0], (False, 0) if dyn[0] in filtered else None)
    if op in ("Abs", "ReduceL2", "ReduceSumSquare"):
        return (True, 0) if dyn[0] in filtered else None
    if op in _MOVE_OPS:
        return power.get(n.input[0])
    if not all(i in power for i in dyn):
        return None
    combined, banks = any(power[i][0] for i in dyn), max(power[i][1] for i in dyn)
    if op in ("Add", "Sum") and len(dyn) >= 2 or op == "ReduceSum":  # re^2 + im^2, or squares summed over an axis
        return True, banks
    if op in ("Concat", "Neg", "Sqrt", "Log") or op in ("Add", "Mul", "Div", "Max", "Clip") and len(dyn) == 1:
        return combined, banks
    if op in _FILTER_OPS and g.is_weighted(n) and banks == 0:  # one mel (or other) filterbank on the power spectrum
        return combined, 1
    return None


def _squares(n: onnx.NodeProto, consts: dict[str, Any]) -> bool:
    if n.op_type == "Mul":
        return len(n.input) == 2 and n.input[0] == n.input[1]
    if n.op_type == "Pow":
        e = consts.get(n.input[1])
        return e is not None and e.size == 1 and float(e.reshape(-1)[0]) == 2.0
    return False


def _only_divides(g: Graph, n: onnx.NodeProto) -> bool:
    """A norm read only as a divisor (x / max(sqrt(sum x^2), eps)) normalizes; a magnitude is read as a feature."""
    frontier, divides = [n.output[0]], False
    for _ in range(6):
        nxt = []
        for t in frontier:
            for c in g.consumers.get(t, []):
                if c.op_type == "Reciprocal" or c.op_type == "Div" and c.input[1] == t:
                    divides = True
                elif c.op_type in ("Clip", "Max", "Add", "Expand") + SHAPE_OPS:
                    nxt.append(c.output[0])  # the epsilon and broadcasting on the way to the Div
                else:
                    return False
        if not nxt:
            return divides
        frontier = nxt
    return False


def _closures(g: Graph, ends: list[onnx.NodeProto], member: dict[str, onnx.NodeProto]) -> list[list[onnx.NodeProto]]:
    """Each end's upstream nodes within the front-end; front-ends that share nodes are one."""
    groups: list[dict[str, onnx.NodeProto]] = []
    for end in ends:
        seen: dict[str, onnx.NodeProto] = {}
        stack = [end]
        while stack:
            n = stack.pop()
            if g.n(n) in seen:
                continue
            seen[g.n(n)] = n
            stack += [member[i] for i in n.input if i in member and i not in g.consts]
        if not any(x.op_type in _FILTER_OPS + _SIGNAL_OPS for x in seen.values()):
            continue
        for other in [grp for grp in groups if grp.keys() & seen.keys()]:
            groups.remove(other)
            seen.update(other)
        groups.append(seen)
    return [sorted(grp.values(), key=lambda x: g.order[g.n(x)]) for grp in groups]


def _const_values(model: onnx.ModelProto) -> dict[str, Any]:
    """Small constants (scalars and short vectors) by tensor name: initializers and Constant nodes."""
    from onnx import numpy_helper

    out: dict[str, Any] = {}
    for t in model.graph.initializer:
        if len(t.dims) <= 1 and (not t.dims or t.dims[0] <= 16):
            out[t.name] = numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            t = n.attribute[0].t
            if len(t.dims) <= 1 and (not t.dims or t.dims[0] <= 16):
                out[n.output[0]] = numpy_helper.to_array(t)
    return out
