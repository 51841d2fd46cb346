"""Where TensorRT wants Q/DQ pairs, as an ONNX pass run after ONNX Runtime's QDQ quantizer placed them.

TensorRT's explicit-quantization guide ("Q/DQ Layer-Placement Recommendations", TensorRT developer guide,
docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html):
quantize all inputs of weighted operations; do not quantize their outputs by default; quantize the residual
input of an element-wise Add that follows a weighted operation, so TensorRT fuses the Add into that operation's
kernel (an extra Q/DQ pair on the weighted operation's side "forces the separation" of the two). NVIDIA
ModelOpt implements the same rule (modelopt/onnx/quantization/graph_utils.py `build_non_residual_input_map`,
`remove_partial_input_qdq`, 0.47.0): of the two inputs of a residual Add, the one on the longer path from
their lowest common ancestor is the fusible (non-residual) one and keeps no Q/DQ.
"""
from __future__ import annotations

import onnx

_BACKBONE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_THROUGH = ("BatchNormalization",)  # folded into the weighted op by TensorRT


def _ancestors(start: str, producer: dict[str, onnx.NodeProto]) -> dict[str, int]:
    """Node name -> fewest hops from the tensor `start` back to that node."""
    dist: dict[str, int] = {}
    frontier = [(start, 0)]
    while frontier:
        tensor, d = frontier.pop()
        node = producer.get(tensor)
        if node is None or dist.get(node.name, 1 << 30) <= d:
            continue
        dist[node.name] = d
        frontier.extend((i, d + 1) for i in node.input if i)
    return dist


def keep_residual_qdq_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove the Q/DQ pair on the fusible (weighted-op) input of each residual Add; the model changes in place."""
    g = model.graph
    for i, n in enumerate(g.node):  # the walk below identifies nodes by name
        if not n.name:
            n.name = f"_edgekit_node_{i}"
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    outputs = {o.name for o in g.output}
    drop: set[str] = set()
    for add in [n for n in g.node if n.op_type == "Add" and len(n.input) == 2]:
        pairs = []
        for idx, t in enumerate(add.input):
            dq = producer.get(t)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is None or q.op_type != "QuantizeLinear":
                break
            pairs.append((idx, dq, q, q.input[0]))
        if len(pairs) != 2:
            continue

        def fusible(src: str, dq: onnx.NodeProto, q: onnx.NodeProto) -> bool:
            node = producer.get(src)
            while node is not None and node.op_type in _THROUGH:
                node = producer.get(node.input[0])
            only_here = [c.name for c in consumers.get(src, [])] == [q.name] and [c.name for c in consumers.get(q.output[0], [])] == [dq.name]
            return node is not None and node.op_type in _BACKBONE and only_here and src not in outputs \
                and [c.name for c in consumers.get(dq.output[0], [])] == [add.name]

        candidates = [p for p in pairs if fusible(p[3], p[1], p[2])]
        if len(candidates) == 2:
            a, b = (_ancestors(p[3], producer) for p in pairs)
            common = set(a) & set(b)
            if not common:
                continue
            lca = min(common, key=lambda k: a[k] + b[k])
            if a[lca] == b[lca]:
                continue  # two branches of equal depth: no residual side to tell
            candidates = [pairs[0] if a[lca] > b[lca] else pairs[1]]
        if len(candidates) != 1:
            continue
        idx, dq, q, src = candidates[0]
        add.input[idx] = src
        drop.update((dq.name, q.name))
    if drop:
        kept = [n for n in g.node if n.name not in drop]
        del g.node[:]
        g.node.extend(kept)
    return model
