"""Backends: one module each, registered by name here (`get_backend`, `backend_names`, `REGISTRY`). No
`if backend == ...` lives outside this package.

`base` holds the contracts (Backend, Engine, CompileRequest, QuantRecipe, the CPU features a recipe may assume);
`onnxruntime`, `openvino` and `tensorrt` implement them; TensorRT's parts that need no GPU are their own modules
(`tensorrt_build`, `tensorrt_check`, `tensorrt_compat`, `tensorrt_cuda`, `tensorrt_placement`)."""
from __future__ import annotations

import importlib

from edgekit.backends.base import Backend
from edgekit.errors import UsageError

# name -> module path; a new backend is one module plus one line here (and a profile in targets/)
REGISTRY: dict[str, str] = {
    "onnxruntime": "edgekit.backends.onnxruntime",
    "openvino": "edgekit.backends.openvino",
    "tensorrt": "edgekit.backends.tensorrt",
}


def get_backend(name: str) -> Backend:
    """The backend object for `name`; importing it never imports its runtime library."""
    if name not in REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, REGISTRY, n=1)
        raise UsageError(f"unknown backend {name!r}", hint=f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(REGISTRY)}")
    return importlib.import_module(REGISTRY[name]).BACKEND


def backend_names() -> list[str]:
    """Every registered backend's name."""
    return list(REGISTRY)
