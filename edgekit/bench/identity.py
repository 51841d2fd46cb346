"""What a latency figure was measured on: the model's graph, its input shapes, the target and the precision.

A baseline records this identity so that a baseline of another model (a mixed-up CI cache key, a
copied path) is an error naming both, not a fake regression. The graph digest is the architecture:
operators, attributes and wiring, and the shapes (not the values) of weights. Weights' values, names,
doc strings, QuantizeLinear/DequantizeLinear pairs and activation clamps (Relu, Clip: quantizers fold
them into the quantized range) are left out, so a retrained model or another quantization recipe (a
float fallback, per-channel scales) of the same network is the same model,
and gated as a regression when it got slower; a changed layer or input size is another model.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

# transparent: their output stands for their data input. Relu and Clip too, because quantizers fold an
# activation clamp into the quantized range and drop the node (ONNX Runtime's QDQ quantizer does), so a
# model with some nodes back in float (a fallback) keeps clamps the fully quantized one lost
_TRANSPARENT = {"QuantizeLinear", "DequantizeLinear", "Relu", "Clip"}
IDENTITY_FIELDS = ("graph", "inputs", "target", "precision")


def graph_digest(model: Any) -> str:
    """SHA-256 (first 16 hex digits) of an ONNX graph's architecture; see the module docstring."""
    return hashlib.sha256(json.dumps(_graph_structure(model.graph), separators=(",", ":")).encode()).hexdigest()[:16]


def _graph_structure(graph: Any) -> dict[str, Any]:
    names: dict[str, str] = {}
    weights = {t.name for t in graph.initializer}
    for i, vi in enumerate(x for x in graph.input if x.name not in weights):
        names[vi.name] = f"in{i}"
    for t in graph.initializer:
        names[t.name] = "w" + "x".join(str(d) for d in t.dims)
    alias: dict[str, str] = {}  # the output of a Q or DQ node stands for that node's data input
    nodes = []
    for n in graph.node:
        if n.domain in ("", "ai.onnx", "com.microsoft") and n.op_type in _TRANSPARENT and n.input and n.output:
            alias[n.output[0]] = n.input[0]
            continue
        for j, o in enumerate(n.output):
            names[o] = f"n{len(nodes)}.{j}"
        nodes.append([n.domain, n.op_type, [_name(x, alias, names) for x in n.input],
                      sorted([a.name, _attribute(a)] for a in n.attribute)])
    return {"nodes": nodes, "outputs": [_name(o.name, alias, names) for o in graph.output]}


def _name(x: str, alias: dict[str, str], names: dict[str, str]) -> str:
    while x in alias:
        x = alias[x]
    return names.get(x, "" if not x else "outer")  # "": an omitted optional input; outer: a subgraph's outer-scope name


def _attribute(a: Any) -> Any:
    from onnx import helper

    v = helper.get_attribute_value(a)
    if a.type == a.TENSOR:
        return ["tensor", list(v.dims)]
    if a.type == a.GRAPH:
        return _graph_structure(v)
    if a.type == a.GRAPHS:
        return [_graph_structure(g) for g in v]
    if a.type == a.TENSORS:
        return [["tensor", list(t.dims)] for t in v]
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, list):
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in v]
    return v if isinstance(v, (int, float, str)) else repr(v)


@functools.lru_cache(maxsize=32)
def _onnx_facts(path: str, mtime_ns: int, size: int) -> tuple[str, bool, tuple[Any, ...]]:
    from edgekit.onnxmodel import input_specs, is_qdq, load_onnx

    proto = load_onnx(path, check=False)
    return graph_digest(proto), is_qdq(proto), tuple(input_specs(proto))


def onnx_facts(path: str | os.PathLike[str]) -> tuple[str, bool, tuple[Any, ...]]:
    """(graph digest, is it QDQ, input specs) of an ONNX file, cached while the file is unchanged."""
    st = os.stat(path)
    return _onnx_facts(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


def manifest_graph(manifest: dict[str, Any]) -> str | None:
    """The source model's graph digest an artifact's manifest records, or (older manifests) the
    digest of its source ONNX when that file is still there, byte for byte."""
    source = manifest.get("source") or {}
    if source.get("graph"):
        return str(source["graph"])
    path = source.get("path")
    if path and Path(path).is_file():
        from edgekit.files import sha256_file

        if source.get("sha256") in (None, sha256_file(path)):
            return onnx_facts(path)[0]
    return None


def mismatch(current: dict[str, Any], recorded: dict[str, Any]) -> list[str]:
    """The identity fields both sides know and that differ."""
    return [k for k in IDENTITY_FIELDS if current.get(k) is not None and recorded.get(k) is not None and _norm(current[k]) != _norm(recorded[k])]


def _norm(v: Any) -> Any:
    return {k: list(x) for k, x in v.items()} if isinstance(v, dict) else v


def describe(identity: dict[str, Any], fields: list[str] | None = None) -> str:
    """`efficientnet.onnx (graph 1a2b..., inputs inputs=1x3x224x224, target cpu-openvino, int8)`."""
    parts = []
    for k in fields or IDENTITY_FIELDS:
        v = identity.get(k)
        if v is None:
            parts.append(f"{k} unknown")
        elif k == "inputs":
            parts.append("inputs " + ", ".join(f"{n}={'x'.join(str(d) for d in s)}" for n, s in v.items()))
        elif k == "graph":
            parts.append(f"graph {v}")
        elif k == "target":
            parts.append(f"target {v}")
        else:
            parts.append(str(v))
    return f"{identity.get('model') or 'a model'} ({', '.join(parts)})"
