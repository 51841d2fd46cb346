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
class PrecisionVariant:
    """One way a device can run a model: the precision compile is asked for, and the backend options that go
    with it (a mixed precision, e.g. INT8 with the rest in bf16, is an int8 precision plus an option)."""

    name: str  # what `edgekit optimize` calls it: fp32, bf16, fp16, int8, int8+bf16, ...
    precision: str
    options: Any
    why: str = ""  # what the runtime said that makes it a candidate


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

    def quant_recipe(self, model: Any) -> QuantRecipe:
        """The QDQ recipe that runs fastest and accurately on this backend, for this model."""
        ...

    def precision_variants(self, device: str, options: Any) -> list[PrecisionVariant]:
        """Every precision `device` runs, as its runtime reports it, and the mixed ones the backend offers."""
        ...


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


# --- quantization recipes: each backend owns the QDQ recipe that runs fastest on it ------------

@dataclasses.dataclass(frozen=True)
class QuantRecipe:
    """How to place and type QDQ nodes for one backend (the user never has to pick U8/S8)."""

    name: str
    activation_type: str = "uint8"  # uint8 | int8
    activation_symmetric: bool = False
    weight_type: str = "int8"
    per_channel: bool = True
    reduce_range: bool = False  # 7-bit weights: avoids int16 saturation in u8 x s8 kernels on x86 CPUs without VNNI
    method: str = "minmax"  # default calibration method: minmax | percentile | entropy
    op_types: tuple[str, ...] | None = None  # None: ONNX Runtime's full QDQ registry
    extra: tuple[tuple[str, object], ...] = ()  # ONNX Runtime QDQ quantizer extra options
    why: str = ""

    def to_dict(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        d["extra"] = dict(self.extra)
        return d


TRANSFORMER_OPS = ("MatMul", "Gemm")


def cpu_has_vnni() -> bool:
    """True on x86 CPUs with AVX-512 VNNI or AVX-VNNI (and on non-x86, where the question does not arise)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i686"):
        return True
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split()
                    return "avx512_vnni" in flags or "avx_vnni" in flags
    except OSError:
        pass
    return True


def is_transformer(model: Any) -> bool:
    """Attention blocks: a Softmax fed by a MatMul, with LayerNormalization or many MatMuls around it."""
    ops = [n.op_type for n in model.graph.node]
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    softmax_after_matmul = any(
        n.op_type == "Softmax" and any(producers.get(i) in ("MatMul", "Add", "Div", "Mul") for i in n.input) for n in model.graph.node
    )
    return softmax_after_matmul and (ops.count("MatMul") >= 4 or "LayerNormalization" in ops)
