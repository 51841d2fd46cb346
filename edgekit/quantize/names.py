"""Tensor names ONNX Runtime's quantizer cannot clash on.

ONNX Runtime's QDQ quantizer makes new tensor names by appending to existing ones (`<w>_quantized`,
`<x>_scale`, `<x>_DequantizeLinear_Output`, and `<b><n>` for each extra consumer of a shared bias) and
checks them against the initializers only (microsoft/onnxruntime#24705). Exporters name tensors
freely: tf2onnx names a Conv bias `.../conv1d_25` and another Conv's output `.../conv1d_252`, so the
bias's third copy takes the activation's name and the model it writes is invalid (basic-pitch).

`canonical_names` renames every tensor to `<prefix><i>~` before the quantizer runs: no such name is
another one plus a suffix, so nothing the quantizer appends can land on an existing tensor.
`restore_names` gives the written model its own names back (graph inputs and outputs included),
and the quantizer's new tensors their usual names (`<original>_scale`, ...) wherever those are free.
`check_quantized` is the last guard: a written model that is not valid ONNX (a name defined twice, a
tensor rewired to the wrong producer so that type or shape inference fails) is refused with exit 3.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import onnx

from edgekit.errors import GateFailed


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _graphs(g)


def rename_tensors(model: onnx.ModelProto, rename: Callable[[str], str]) -> None:
    """Apply `rename` to every tensor name of every graph (main and control-flow bodies); '' stays ''."""
    for g in _graphs(model.graph):
        for t in g.initializer:
            t.name = rename(t.name)
        for s in g.sparse_initializer:
            s.values.name = rename(s.values.name)
        for v in [*g.input, *g.output, *g.value_info]:
            v.name = rename(v.name)
        for n in g.node:
            n.input[:] = [rename(x) if x else x for x in n.input]
            n.output[:] = [rename(x) if x else x for x in n.output]


def tensor_names(model: onnx.ModelProto) -> set[str]:
    names: set[str] = set()

    def seen(x: str) -> str:
        names.add(x)
        return x

    rename_tensors(model, seen)
    names.discard("")
    return names


def canonical_names(model: onnx.ModelProto) -> tuple[dict[str, str], str]:
    """Rename every tensor of `model` in place to `<prefix><i>~`; returns ({original: canonical}, prefix)."""
    existing = tensor_names(model)
    node_names = {n.name for g in _graphs(model.graph) for n in g.node}
    prefix = "ekq~"
    while any(x.startswith(prefix) for x in existing | node_names):
        prefix += "~"
    mapping: dict[str, str] = {}

    def rename(x: str) -> str:
        if x not in mapping:
            mapping[x] = f"{prefix}{len(mapping)}~"
        return mapping[x]

    rename_tensors(model, rename)
    return mapping, prefix


def _original_of(name: str, back: dict[str, str], prefix: str) -> str | None:
    """The original name a generated `<prefix><i>~<suffix>` derives from, + suffix; None if not derived."""
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix):]
    digits = len(rest) - len(rest.lstrip("0123456789"))
    if not digits or rest[digits:digits + 1] != "~":
        return None
    base = f"{prefix}{rest[:digits]}~"
    return back[base] + rest[digits + 1:] if base in back else None


def restore_names(model: onnx.ModelProto, mapping: dict[str, str], prefix: str) -> None:
    """Undo `canonical_names` on the quantized model: the original tensors get their names back, a name the
    quantizer derived (`<canonical>_scale`) becomes `<original>_scale` unless that is taken (then `_1`, `_2`...
    is added). Node names the quantizer derived from tensor names get the same treatment."""
    back = {c: o for o, c in mapping.items()}
    present = tensor_names(model)
    derived = {n: o for n in sorted(present - set(back)) if (o := _original_of(n, back, prefix)) is not None}
    used = set(back.values()) | (present - set(back) - set(derived))  # originals, and names the quantizer made from none
    new: dict[str, str] = dict(back)

    def free(want: str, taken: set[str]) -> str:
        name, k = want, 0
        while name in taken:
            k += 1
            name = f"{want}_{k}"
        taken.add(name)
        return name

    for name, orig in derived.items():
        new[name] = free(orig, used)
    rename_tensors(model, lambda x: new.get(x, x))
    node_used = {n.name for g in _graphs(model.graph) for n in g.node if not n.name.startswith(prefix)}
    for g in _graphs(model.graph):
        for n in g.node:
            orig = _original_of(n.name, back, prefix)
            if orig is not None:
                n.name = free(orig, node_used)


def check_quantized(model: onnx.ModelProto, fp32: onnx.ModelProto, what: str) -> None:
    """Refuse (exit 3) a quantized model that is not valid ONNX: a tensor defined twice, one read and never
    defined, or ONNX's own type and shape inference failing (a tensor rewired to the wrong producer shows up
    there, before any runtime loads it). Inference runs on `skeleton`s (no stale value_info, no weights) and
    is only held against the quantizer when the FP32 model's skeleton (`fp32`) passes it."""
    g = model.graph
    inits = [t.name for t in g.initializer] + [s.values.name for s in g.sparse_initializer]
    defined = set(inits) | {i.name for i in g.input}  # an input may share an initializer's name (its default)
    twice = sorted(x for x, k in Counter(inits).items() if k > 1)
    for n in g.node:
        twice += [o for o in n.output if o and o in defined]
        defined.update(o for o in n.output if o)
    missing = [x for n in g.node for x in n.input if x and x not in defined]
    detail = f"tensor {twice[0]!r} is defined twice" if twice else f"tensor {missing[0]!r} is read but never defined" if missing else None
    if detail is None:
        try:
            _strict_inference(skeleton(model))
        except onnx.shape_inference.InferenceError as exc:
            try:
                _strict_inference(fp32)
            except onnx.shape_inference.InferenceError:
                return  # ONNX's inference already fails on the FP32 model: it says nothing about the quantizer
            detail = " ".join(str(exc).split())[:300]
    if detail is not None:
        raise GateFailed(f"{what} produced an invalid model ({detail}); no model written",
                         hint="quantize with --exclude for the nodes around it, and report the model to edgekit")


def skeleton(model: onnx.ModelProto, *, keep: int = 256) -> onnx.ModelProto:
    """`model` for type and shape inference only: the same nodes, inputs and outputs, no value_info (passes
    such as edgekit's QDQ hoisting leave some stale, which runtimes ignore), and each initializer or Constant
    of more than `keep` elements turned into a graph input of its type and shape (inference needs the values
    of shape-like tensors only; copying the weights would cost more than the inference)."""
    src = model.graph
    out = onnx.ModelProto(ir_version=model.ir_version, domain=model.domain)
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    g = out.graph
    g.name = src.name
    g.input.extend(src.input)
    declared = {i.name for i in src.input}
    for t in src.initializer:
        if _count(t.dims) <= keep:
            g.initializer.append(t)
        elif t.name not in declared:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    g.sparse_initializer.extend(src.sparse_initializer)
    for n in src.node:
        value = next((a.t for a in n.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and value is not None and _count(value.dims) > keep:
            g.input.append(onnx.helper.make_tensor_value_info(n.output[0], value.data_type, list(value.dims)))
        else:
            g.node.append(n)
    g.output.extend(src.output)
    return out


def _count(dims: Iterable[int]) -> int:
    k = 1
    for d in dims:
        k *= d
    return k


def _strict_inference(model: onnx.ModelProto) -> None:
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
