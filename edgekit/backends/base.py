"""The Backend and Engine contracts every backend implements.

A backend compiles an ONNX file (FP32 or QDQ INT8) into its artifact at an explicit
precision and loads artifacts into engines. An engine is a context manager with
`run(feed) -> {output name: array}`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edgekit.onnxmodel import TensorSpec

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclasses.dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    version: str | None
    devices: tuple[str, ...]
    reason: str | None = None  # why not available, and what to do

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class CompileRequest:
    """What `compile` needs beyond the model: the precision is always explicit here."""

    precision: str
    device: str
    options: Any  # the backend's typed options dataclass
    shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    info: dict[str, object]  # precision, threads, device as the runtime reports them

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def __enter__(self) -> Engine: ...

    def __exit__(self, *exc: object) -> None: ...


class Backend(Protocol):
    name: str
    artifact_suffix: str
    options_type: type

    def status(self) -> BackendStatus: ...

    def compile(self, model: Path, out_dir: Path, *, request: CompileRequest) -> dict[str, Any]:
        """Write the artifact into out_dir; return the backend part of the manifest (files, versions, settings)."""
        ...

    def load(self, artifact_dir: Path, manifest: dict[str, Any], *, options: Any) -> Engine: ...


class EngineBase:
    """Context-manager plumbing shared by the engines."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    info: dict[str, object]

    def __enter__(self) -> EngineBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the runtime's resources."""
