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
        """The QDQ recipe that runs fastest and accurately on this backend, for this model. A CPU backend
        also takes `*, cpu_features: tuple[str, ...]`, the target CPU's (see recipe_for_target)."""
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
    op_types: tuple[str, ...] | None = None  # outside regions: None = ONNX Runtime's full QDQ registry
    extra: tuple[tuple[str, object], ...] = ()  # ONNX Runtime QDQ quantizer extra options
    why: str = ""
    # per region kind (edgekit.quantize.regions.KINDS) -> policy (edgekit.quantize.regions.POLICIES); () = no regions, op_types everywhere
    region_policies: tuple[tuple[str, str], ...] = ()
    hoist_shape_ops: bool = False  # move per-tensor Q/DQ above Reshape/Transpose to the producer (OpenVINO fuses it there)
    regions: tuple[tuple[str, int], ...] = ()  # what was found: kind -> count (the report lists them in full)
    cpu_features: tuple[str, ...] = ()  # the target CPU's features the recipe assumed ("host" resolved)
    cpu_features_from: str = ""  # where they came from: the profile, or this machine
    qdq_pass: str = ""  # "module:function" run on the QDQ model after placement (a backend's fusion rule), "" = none

    def to_dict(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        d["extra"] = dict(self.extra)
        d["region_policies"] = dict(self.region_policies)
        d["regions"] = dict(self.regions)
        return d


TRANSFORMER_OPS = ("MatMul", "Gemm")
# outside regions in a CNN: ONNX Runtime's QDQ registry plus global pooling (NNCF quantizes it too: OpenVINO pools in
# u8, and ONNX Runtime keeps the last residual Add + ReLU in one QLinearAdd, as its own quantize_static does)
CNN_OPS = ("AveragePool", "BatchNormalization", "Clip", "Conv", "ConvTranspose", "CumSum", "Flatten", "Gather", "GatherElements", "Gemm",
           "GlobalAveragePool", "MatMul", "MaxPool", "Pad", "ReduceMean", "Relu", "Reshape", "Resize", "Slice", "Split", "Squeeze",
           "TopK", "Transpose", "Unsqueeze", "Where")

# CPU features a profile may name ([device] cpu_features), and the /proc/cpuinfo flags that show them
CPU_FEATURES = {
    "sse4_2": ("sse4_2",), "avx2": ("avx2",), "avx512": ("avx512f",), "avx_vnni": ("avx_vnni",), "avx512_vnni": ("avx512_vnni",),
    "avx512_bf16": ("avx512_bf16",), "avx512_fp16": ("avx512_fp16",), "amx": ("amx_int8", "amx_tile"),
    "arm64": (), "arm64-dotprod": ("asimddp",), "arm64-i8mm": ("i8mm",), "arm64-sve": ("sve",),
}
_X86 = ("sse4_2", "avx2", "avx512", "avx_vnni", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx")
_INT8_DOT = ("avx_vnni", "avx512_vnni", "amx", "arm64-dotprod", "arm64-i8mm")


def host_cpu_features() -> tuple[str, ...]:
    """This machine's CPU features, in CPU_FEATURES' names (read from /proc/cpuinfo)."""
    import platform

    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags.update(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    arm = platform.machine().lower() in ("aarch64", "arm64")
    out = ["arm64"] if arm else []
    for name, needles in CPU_FEATURES.items():
        if needles and all(n in flags for n in needles) and name.startswith("arm64") == arm:
            out.append(name)
    return tuple(out)


def resolve_cpu_features(features: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
    """(the features a recipe assumes, where they came from) for a profile's `cpu_features`."""
    if not features or features == ("host",):
        return host_cpu_features(), "host" if features else "host (the target names no [device] cpu_features)"
    return tuple(features), "profile"


def missing_cpu_features(assumed: list[str] | tuple[str, ...]) -> list[str]:
    """The features a recipe assumed that this machine's CPU lacks (the INT8 dot-product ones matter)."""
    here = set(host_cpu_features())
    return [f for f in assumed if f not in here]


def cpu_feature_notes(quant_manifest: dict[str, Any] | None) -> tuple[list[str], list[str]]:
    """(missing features, notes) for running here a model whose quantize manifest names the CPU features its
    recipe assumed: the figures measured on this machine are not the device's."""
    recipe = (quant_manifest or {}).get("recipe") or {}
    missing = missing_cpu_features(recipe.get("cpu_features") or [])
    if not missing:
        return [], []
    return missing, [f"the INT8 recipe assumed a CPU with {', '.join(missing)} ({recipe.get('cpu_features_from') or 'profile'}); "
                     f"this machine lacks it, so its speed here is not the device's (--strict makes this exit 3)"]


def x86_without_int8_dot(features: tuple[str, ...]) -> bool:
    """An x86 CPU with no VNNI/AMX: its u8 x s8 kernels add pairs in int16 and saturate (use 7-bit weights)."""
    return any(f in _X86 for f in features) and not any(f in _INT8_DOT for f in features)


def cpu_has_vnni() -> bool:
    """True on x86 CPUs with AVX-512 VNNI or AVX-VNNI (and on non-x86, where the question does not arise)."""
    return not x86_without_int8_dot(host_cpu_features())


def recipe_for_target(backend: Any, model: Any, target: Any) -> QuantRecipe:
    """The backend's recipe for `model` on `target`'s device. CPU recipes take the device's features
    (the profile's `[device] cpu_features`, "host" = this machine); other backends take the model only."""
    import inspect

    fn = backend.quant_recipe
    if "cpu_features" not in inspect.signature(fn).parameters:
        return fn(model)
    features, source = resolve_cpu_features(tuple(getattr(target, "cpu_features", ()) or ()))
    return dataclasses.replace(fn(model, cpu_features=features), cpu_features=features, cpu_features_from=source)


def region_recipe(model: Any, policies: dict[str, str]) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, int], ...]]:
    """(recipe.region_policies, recipe.regions) for a model: the policies of the kinds it has, and the counts."""
    from collections import Counter

    from edgekit.quantize.regions import find_regions

    counts = Counter(r.kind for r in find_regions(model))
    return tuple(sorted(policies.items())), tuple(sorted(counts.items()))


def is_transformer(model: Any) -> bool:
    """Attention blocks: a Softmax fed by a MatMul, with LayerNormalization or many MatMuls around it."""
    ops = [n.op_type for n in model.graph.node]
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    softmax_after_matmul = any(
        n.op_type == "Softmax" and any(producers.get(i) in ("MatMul", "Add", "Div", "Mul") for i in n.input) for n in model.graph.node
    )
    return softmax_after_matmul and (ops.count("MatMul") >= 4 or "LayerNormalization" in ops)
