"""Backends: one module each, registered by name here. No `if backend == ...` lives outside this package."""
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
    return list(REGISTRY)
