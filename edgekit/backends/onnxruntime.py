"""ONNX Runtime: the reference and default CPU backend.

Compile = ONNX Runtime's graph optimisation saved as an optimised ONNX file; the
execution provider, threads and precision are recorded in the manifest.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import deps
from edgekit.backends.base import (
    TRANSFORMER_OPS, BackendStatus, CompileRequest, EngineBase, PrecisionVariant, QuantRecipe, CNN_OPS, is_transformer, region_recipe, x86_without_int8_dot,
)
from edgekit.errors import BackendUnavailable, UsageError
from edgekit.onnxmodel import TensorSpec, is_qdq, load_onnx

_LEVELS = ("disable", "basic", "extended", "all")
# region policies (edgekit.quantize.regions): ONNX Runtime's CPU kernels gain from INT8 MatMuls with constant weights;
# Q x K^T and P x V in INT8 cost accuracy and run no faster here; a signal front-end (STFT/CQT/mel, then a
# magnitude/log) loses a 16-bit audio range in 8 bits and its log amplifies the error: float
_ORT_REGION_POLICIES = {"attention": "weights", "layernorm": "float", "gelu": "float", "rnn": "float", "embedding": "float", "conv-stem": "int8",
                        "spectral": "float"}


@dataclasses.dataclass(frozen=True)
class OnnxRuntimeOptions:
    """Options of the onnxruntime backend (a target profile's `[options]` table)."""

    threads: int = 0  # intra-op threads; 0 = ONNX Runtime's default (one per physical core)
    inter_op_threads: int = 1
    execution_provider: str = "CPUExecutionProvider"
    optimization: str = "extended"  # level saved offline; "all" adds hardware-specific layouts

    def __post_init__(self) -> None:
        if self.optimization not in _LEVELS:
            raise UsageError(f"onnxruntime option optimization={self.optimization!r} is not one of {', '.join(_LEVELS)}")
        if self.threads < 0 or self.inter_op_threads < 0:
            raise UsageError("onnxruntime threads must be >= 0")


def _session_options(threads: int = 0, inter_op: int = 1, level: str = "all") -> Any:
    ort = deps.onnxruntime()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = inter_op
    so.log_severity_level = 3
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    return so


def session_from_path(path: str | Path, *, threads: int = 0, provider: str = "CPUExecutionProvider") -> Any:
    ort = deps.onnxruntime()
    return ort.InferenceSession(str(path), _session_options(threads), providers=[provider])


def session_from_bytes(model: bytes, *, threads: int = 0) -> Any:
    ort = deps.onnxruntime()
    return ort.InferenceSession(model, _session_options(threads), providers=["CPUExecutionProvider"])


def _spec(arg: Any) -> TensorSpec:
    t = arg.type  # e.g. "tensor(float)"
    name = t[len("tensor("):-1] if t.startswith("tensor(") else "float"
    dtype = {"float": np.float32, "float16": np.float16, "double": np.float64, "bool": np.bool_, "string": np.object_}.get(name)
    if dtype is None:
        dtype = np.dtype(name)
    shape = tuple(d if isinstance(d, int) else (d or f"dim{i}") for i, d in enumerate(arg.shape))
    return TensorSpec(arg.name, shape, np.dtype(dtype))


class OnnxRuntimeEngine(EngineBase):
    def __init__(self, path: Path, *, options: OnnxRuntimeOptions, precision: str) -> None:
        ort = deps.onnxruntime()
        if options.execution_provider not in ort.get_available_providers():
            raise BackendUnavailable(
                f"ONNX Runtime execution provider {options.execution_provider} is not available here",
                hint=f"available: {', '.join(ort.get_available_providers())}",
            )
        so = _session_options(options.threads, options.inter_op_threads, "all")
        self._sess = ort.InferenceSession(str(path), so, providers=[options.execution_provider])
        self.inputs = [_spec(i) for i in self._sess.get_inputs()]
        self.outputs = [_spec(o) for o in self._sess.get_outputs()]
        self._names = [o.name for o in self.outputs]
        self.info = {
            "backend": "onnxruntime",
            "version": ort.__version__,
            "device": "CPU" if options.execution_provider == "CPUExecutionProvider" else options.execution_provider,
            "precision": precision,
            "threads": options.threads or "default",
            "execution_provider": options.execution_provider,
        }

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._names, self._sess.run(self._names, feed)))

    def close(self) -> None:
        self._sess = None


class OnnxRuntimeBackend:
    name = "onnxruntime"
    artifact_suffix = ".onnx"
    options_type = OnnxRuntimeOptions

    def status(self) -> BackendStatus:
        try:
            ort = deps.onnxruntime()
        except BackendUnavailable as exc:
            return BackendStatus(self.name, False, None, (), str(exc))
        providers = tuple(ort.get_available_providers())
        return BackendStatus(self.name, True, ort.__version__, providers)

    def compile(self, model: Path, out_dir: Path, *, request: CompileRequest) -> dict[str, Any]:
        ort = deps.onnxruntime()
        opts: OnnxRuntimeOptions = request.options
        if request.device.upper() != "CPU" and opts.execution_provider == "CPUExecutionProvider":
            raise BackendUnavailable(f"onnxruntime: device {request.device!r} needs an execution provider for it; this build has {', '.join(ort.get_available_providers())}")
        proto = load_onnx(model)
        qdq = is_qdq(proto)
        if request.precision == "int8" and not qdq:
            raise UsageError("onnxruntime int8 needs a quantized (QDQ) model", hint="run `edgekit quantize` first, then compile its output")
        if request.precision in ("fp16", "bf16"):
            raise UsageError(f"onnxruntime on the CPU runs fp32 and int8 (QDQ), not {request.precision}", hint="use --precision fp32, or the openvino target for bf16/fp16")
        if request.precision == "fp32" and qdq:
            raise UsageError("this model is quantized (QDQ); onnxruntime runs it as int8", hint="compile the FP32 model for fp32, or pass --precision int8")
        out = out_dir / "model.onnx"
        so = _session_options(opts.threads, opts.inter_op_threads, opts.optimization)
        so.optimized_model_filepath = str(out)
        try:
            ort.InferenceSession(str(model), so, providers=[opts.execution_provider])
        except Exception as exc:
            raise UsageError(f"ONNX Runtime cannot load {model}: {str(exc).strip().splitlines()[0][:300]}") from exc
        return {
            "files": ["model.onnx"],
            "entry": "model.onnx",
            "versions": {"onnxruntime": ort.__version__},
            "settings": {"optimization": opts.optimization, "execution_provider": opts.execution_provider},
        }

    def load(self, artifact_dir: Path, manifest: dict[str, Any], *, options: OnnxRuntimeOptions) -> OnnxRuntimeEngine:
        return OnnxRuntimeEngine(artifact_dir / manifest["entry"], options=options, precision=manifest["precision"])

    def quant_recipe(self, model: Any, *, cpu_features: tuple[str, ...] = ()) -> QuantRecipe:
        # Measured (DESIGN.md): on x86 S8 activations run slower than FP32 in ONNX Runtime (0.8x);
        # U8 activations with S8 per-channel weights run 2-3x faster.
        policies, regions = region_recipe(model, _ORT_REGION_POLICIES)
        seven_bit = x86_without_int8_dot(cpu_features)
        common = dict(reduce_range=seven_bit, activation_type="uint8", activation_symmetric=False, weight_type="int8", per_channel=True,
                      method="minmax", region_policies=policies, regions=regions)
        bits = " (7-bit weights: x86 without VNNI)" if seven_bit else ""
        if is_transformer(model) and not any(k == "conv-stem" for k, _ in regions):
            # QDQ around LayerNorm/Softmax/Add costs accuracy (cosine 0.86 on MiniLM) and speed;
            # the MatMuls with constant weights carry the compute.
            return QuantRecipe(
                name="onnxruntime-transformer", op_types=TRANSFORMER_OPS, **common,  # type: ignore[arg-type]
                why="transformer: INT8 MatMul/Gemm with constant weights, U8 activations / S8 per-channel weights" + bits,
            )
        return QuantRecipe(
            name="onnxruntime-u8s8", op_types=CNN_OPS, **common,  # type: ignore[arg-type]
            why="U8 activations / S8 per-channel weights: ONNX Runtime's fast x86 INT8 kernels; attention blocks, LayerNorm "
                "and GELU inside keep the transformer placement" + bits,
        )

    def load_onnx(self, path: Path, *, options: OnnxRuntimeOptions, precision: str) -> OnnxRuntimeEngine:
        return OnnxRuntimeEngine(path, options=options, precision=precision)

    def precision_variants(self, device: str, options: OnnxRuntimeOptions) -> list[PrecisionVariant]:
        """fp32, and int8 from a QDQ model: what compile builds for ONNX Runtime (its CPU kernels have no bf16/fp16)."""
        ep = options.execution_provider
        return [PrecisionVariant("fp32", "fp32", options, f"ONNX Runtime {ep} runs float models in fp32"),
                PrecisionVariant("int8", "int8", options, f"ONNX Runtime {ep} runs QDQ models with its INT8 kernels")]


BACKEND = OnnxRuntimeBackend()
