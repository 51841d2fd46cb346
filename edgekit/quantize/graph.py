"""An ONNX graph read for pattern matching: node names, producers, consumers, constants and walks through
data-movement ops. Shared by `regions` and `spectral`, below both."""
from __future__ import annotations

from collections import defaultdict

import onnx

# ops that only move data: per-tensor quantization commutes with them
SHAPE_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity")
WEIGHTED_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")  # ops whose second input may be a constant weight


def node_name(node: onnx.NodeProto, index: int) -> str:
    """A node's name; unnamed nodes get `op_type_index` (name_nodes writes the same names into a model)."""
    return node.name or f"{node.op_type}_{index}"


def name_nodes(model: onnx.ModelProto) -> None:
    """Give unnamed nodes the names `regions.find_regions` reports, so a plan can refer to every node."""
    for i, n in enumerate(model.graph.node):
        if not n.name:
            n.name = node_name(n, i)


class Graph:
    """One model's main graph, indexed once: `producer[tensor]`, `consumers[tensor]`, `consts` (initializers and
    Constant outputs), `float_inits`, `inputs` (graph inputs that are not constants) and `order` by node name."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.nodes = list(model.graph.node)
        self.name = {id(n): node_name(n, i) for i, n in enumerate(self.nodes)}
        self.order = {self.name[id(n)]: i for i, n in enumerate(self.nodes)}
        self.consts = {t.name for t in model.graph.initializer} | {o for n in self.nodes if n.op_type == "Constant" for o in n.output}
        self.float_inits = {t.name for t in model.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
        self.inputs = {i.name for i in model.graph.input} - self.consts
        self.producer: dict[str, onnx.NodeProto] = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in self.nodes:
            for i in n.input:
                self.consumers[i].append(n)

    def n(self, node: onnx.NodeProto) -> str:
        """The node's name (`node_name`)."""
        return self.name[id(node)]

    def dynamic_inputs(self, node: onnx.NodeProto) -> list[str]:
        """The node's inputs that are not constants."""
        return [i for i in node.input if i and i not in self.consts]

    def is_weighted(self, node: onnx.NodeProto) -> bool:
        """A MatMul/Gemm/Conv/ConvTranspose whose second input is a constant."""
        return node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in self.consts

    def up(self, tensor: str, through: tuple[str, ...], depth: int) -> tuple[onnx.NodeProto | None, list[onnx.NodeProto]]:
        """Walk producers from `tensor` through `through` ops (first dynamic input) to the first other node."""
        path: list[onnx.NodeProto] = []
        for _ in range(depth + 1):
            p = self.producer.get(tensor)
            if p is None or p.op_type not in through:
                return p, path
            path.append(p)
            dyn = self.dynamic_inputs(p)
            if not dyn:
                return None, path
            tensor = dyn[0]
        return None, path

    def down(self, tensor: str, through: tuple[str, ...], depth: int) -> tuple[onnx.NodeProto | None, list[onnx.NodeProto]]:
        """Follow the single consumer of `tensor` through `through` ops to the first other node."""
        path: list[onnx.NodeProto] = []
        for _ in range(depth + 1):
            cons = self.consumers.get(tensor, [])
            if len(cons) != 1:
                return None, path
            c = cons[0]
            if c.op_type not in through:
                return c, path
            path.append(c)
            tensor = c.output[0]
        return None, path
