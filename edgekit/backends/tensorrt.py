"""TensorRT: build a serialized engine from (QDQ) ONNX with the Python API of 10.x and 11.x.

INT8 is explicit quantization only: the QDQ nodes in the ONNX say what runs in INT8
(TensorRT 10 deprecated and 11 removed the implicit calibrators and precision flags).
Networks are built strongly typed; fp16 converts the ONNX with NVIDIA ModelOpt's AutoCast
first (keeping FP32 I/O and overflow-prone nodes in FP32), as TensorRT 11's migration guide
recommends. Everything here imports without TensorRT; building and running need TensorRT,
cuda-python and an NVIDIA GPU.

Every TensorRT call below was read against github.com/NVIDIA/TensorRT at release/10.0, 10.8, 10.9,
10.13, 10.16, 11.0 and 11.1 (python/src/infer/pyCore.cpp, python/docstrings/infer/pyCoreDoc.h,
include/NvInfer.h, samples/common/sampleEngines.cpp) and Polygraphy's backend/trt/{loader,config}.py;
the comments name the line each one follows.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgekit import deps
from edgekit.backends import tensorrt_compat as compat
from edgekit.backends.base import BackendStatus, CompileRequest, EngineBase, PrecisionVariant, QuantRecipe
from edgekit.backends.tensorrt_check import check_explicit_quantization
from edgekit.errors import BackendUnavailable, UsageError
from edgekit.onnxmodel import input_specs, is_qdq, load_onnx

__all__ = ["BACKEND", "TensorRtBackend", "TensorRtEngine", "TensorRtOptions", "check_explicit_quantization"]

_HW_COMPAT = ("none", "ampere_plus", "same_compute_capability")


@dataclasses.dataclass(frozen=True)
class TensorRtOptions:
    """Options of the tensorrt backend (a target profile's `[options]` table)."""

    workspace_mib: int = 1024
    dla_core: int = -1  # a DLA core to run on (-1: GPU only); checked against the device and the TensorRT version
    gpu_fallback: bool = True  # with a DLA core: layers DLA cannot run go to the GPU
    timing_cache: str = ""  # timing cache file; a relative path lives in edgekit's cache folder
    version_compatible: bool = False  # engine runs on later TensorRT versions (lean runtime embedded)
    hardware_compatibility: str = "none"  # none | ampere_plus | same_compute_capability (10.9+)
    builder_optimization_level: int = 3  # 0-5
    tf32: bool = False  # let FP32 layers run in TF32 (TensorRT's default); off so fp32 means fp32
    # dynamic inputs: "name" -> [min, opt, max] shapes, e.g. {images = [[1,3,224,224],[4,3,224,224],[8,3,224,224]]}
    profiles: dict[str, list[list[int]]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.workspace_mib <= 0:
            raise UsageError(f"tensorrt option workspace_mib={self.workspace_mib}: must be > 0")
        if self.dla_core < -1:
            raise UsageError(f"tensorrt option dla_core={self.dla_core}: use -1 (none) or a core index")
        if self.hardware_compatibility not in _HW_COMPAT:
            raise UsageError(f"tensorrt option hardware_compatibility={self.hardware_compatibility!r}: use one of {', '.join(_HW_COMPAT)}")
        if not 0 <= self.builder_optimization_level <= 5:
            raise UsageError(f"tensorrt option builder_optimization_level={self.builder_optimization_level}: use 0 to 5")
        if self.dla_core >= 0 and self.hardware_compatibility != "none":
            raise UsageError("tensorrt: hardware_compatibility cannot be combined with a DLA core")
        for name, shapes in self.profiles.items():
            if len(shapes) != 3 or any(len(s) != len(shapes[0]) for s in shapes):
                raise UsageError(f"tensorrt profile for {name!r} must be [min, opt, max] shapes of equal rank")
            if any(not (a <= b <= c) for a, b, c in zip(*shapes)):
                raise UsageError(f"tensorrt profile for {name!r}: need min <= opt <= max on every axis")


def _trt() -> Any:
    return deps.tensorrt()


def _version(trt: Any) -> tuple[int, ...]:
    return compat.parse_version(trt.__version__)


def _default_profiles(model: onnx.ModelProto, request: CompileRequest, options: TensorRtOptions) -> dict[str, list[list[int]]]:
    profiles = dict(options.profiles)
    for spec in input_specs(model):
        if not spec.is_dynamic or spec.name in profiles:
            continue
        if spec.name in request.shapes:
            s = list(request.shapes[spec.name])
            profiles[spec.name] = [s, s, s]
            continue
        raise UsageError(
            f"input {spec.name!r} has dynamic shape {list(spec.shape)} and the target gives no optimisation profile",
            hint=f"add profiles.{spec.name} = [[min], [opt], [max]] to the target's [options], or pass --shape {spec.name}:...",
        )
    return profiles


def feed_for(name: str, value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The feed in the engine's input dtype: a lossless cast within a kind (float64 -> float32, int64 -> int32
    when the values fit); anything else is the caller's error, never a silent conversion."""
    value = np.asarray(value)
    if value.dtype == dtype:
        return np.ascontiguousarray(value)
    if value.dtype.kind == dtype.kind == "f":
        return np.ascontiguousarray(value, dtype=dtype)
    if value.dtype.kind in "iu" and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if value.size == 0 or (value.min() >= info.min and value.max() <= info.max):
            return np.ascontiguousarray(value, dtype=dtype)
    raise UsageError(f"input {name!r} is {value.dtype}; this engine takes {dtype}", hint=f"feed {dtype} values")


class TensorRtEngine(EngineBase):
    def __init__(self, engine_path: Path, *, precision: str, settings: dict[str, Any]) -> None:
        from edgekit.backends import tensorrt_cuda

        trt = _trt()
        tensorrt_cuda.check_cuda_matches_tensorrt()
        self._trt = trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        if settings.get("version_compatible"):
            # a version-compatible engine embeds the lean runtime: deserializing it needs host code allowed
            # (samples/common/sampleEngines.cpp release/10.16 lines 137-141; Polygraphy loader.py EngineFromBytes
            # line 719; pyCore.cpp release/10.0 line 1509 binds the property)
            runtime.engine_host_code_allowed = True
        dla_core = int(settings.get("dla_core", -1))
        if dla_core >= 0:
            # the DLA core is chosen on the runtime before deserializing (sampleEngines.cpp release/10.16 lines 150-152)
            if dla_core >= runtime.num_DLA_cores:
                raise BackendUnavailable(f"this engine runs on DLA core {dla_core}; this device has {runtime.num_DLA_cores} DLA cores",
                                         hint="rebuild it for this device with `edgekit compile` (dla_core = -1 for the GPU)")
            runtime.DLA_core = dla_core
        self._runtime = runtime
        self._engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self._engine is None:
            raise UsageError(f"{engine_path} does not deserialize with TensorRT {trt.__version__}", hint="rebuild it on this device with `edgekit compile`")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_in = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._in = [n for n in names if is_in[n]]
        self._out = [n for n in names if not is_in[n]]
        self._dtype = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        from edgekit.onnxmodel import TensorSpec

        def spec(n: str) -> TensorSpec:
            return TensorSpec(n, tuple(int(d) if d >= 0 else f"dim{i}" for i, d in enumerate(self._engine.get_tensor_shape(n))), self._dtype[n])

        self.inputs = [spec(n) for n in self._in]
        self.outputs = [spec(n) for n in self._out]
        self._buffers = tensorrt_cuda.DeviceBuffers()
        self.info = {"backend": "tensorrt", "version": trt.__version__, "device": "GPU" if dla_core < 0 else f"DLA:{dla_core}",
                     "precision": precision, **tensorrt_cuda.device_info()}

    def _profile_range(self, name: str) -> str:
        try:
            lo, _, hi = self._engine.get_tensor_profile_shape(name, 0)  # pyCore.cpp release/10.0 line 1247
            return f"{list(lo)} to {list(hi)}"
        except Exception:  # noqa: BLE001 - a static input has no profile: its one shape is the range
            return f"only {list(self._engine.get_tensor_shape(name))}"

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self._in if n not in feed]
        if missing:
            raise UsageError(f"the feed lacks input {missing[0]!r}", hint=f"this engine takes {', '.join(self._in)}")
        for n in self._in:
            value = feed_for(n, feed[n], self._dtype[n])
            # set_input_shape returns False for a shape outside the optimisation profile (pyCore.cpp release/10.0
            # lines 1043-1048 bind IExecutionContext::setInputShape, which returns bool); running anyway would hand
            # back whatever the output buffers held
            if not self._context.set_input_shape(n, tuple(value.shape)):
                raise UsageError(f"input {n!r} of shape {list(value.shape)} is outside the engine's optimisation profile "
                                 f"({self._profile_range(n)})", hint="feed a shape in that range, or compile with a wider profile")
            self._context.set_tensor_address(n, self._buffers.upload(n, value))
        unresolved = self._context.infer_shapes()  # names whose shapes are still unknown (pyCoreDoc.h set_input_shape...)
        if unresolved:
            raise UsageError(f"TensorRT cannot infer the shapes of {', '.join(map(str, unresolved))} from these inputs")
        outs: dict[str, np.ndarray] = {}
        for n in self._out:
            shape = tuple(self._context.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise UsageError(f"output {n!r} has a data-dependent shape {list(shape)}; edgekit's TensorRT engine runs "
                                 "models whose output shapes follow from the input shapes")
            outs[n] = np.empty(shape, dtype=self._dtype[n])
            self._context.set_tensor_address(n, self._buffers.pointer(n, outs[n].nbytes))
        # execute_async_v3 returns bool (pyCore.cpp release/10.0 line 111)
        if not self._context.execute_async_v3(self._buffers.stream_handle):
            raise BackendUnavailable("TensorRT could not run the engine (execute_async_v3 returned False; see its log above)")
        for n, arr in outs.items():
            self._buffers.download(n, arr)
        self._buffers.synchronize()
        return outs

    def close(self) -> None:
        self._context = None
        self._engine = None
        if getattr(self, "_buffers", None) is not None:
            self._buffers.close()
            self._buffers = None


class TensorRtBackend:
    name = "tensorrt"
    artifact_suffix = ".engine"
    options_type = TensorRtOptions

    def status(self) -> BackendStatus:
        try:
            trt = _trt()
        except BackendUnavailable:
            return BackendStatus(self.name, False, None, (), "the tensorrt Python package is not installed (pip install 'edgekit[tensorrt]'; needs an NVIDIA GPU and driver)")
        try:
            builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
            if builder is None:
                raise RuntimeError("no CUDA device")
        except Exception as exc:
            return BackendStatus(self.name, False, trt.__version__, (), f"TensorRT {trt.__version__} is installed but finds no usable NVIDIA GPU ({str(exc).strip()[:200]})")
        from edgekit.backends.tensorrt_cuda import device_info

        gpu = device_info()
        dla = f", {builder.num_DLA_cores} DLA cores" if builder.num_DLA_cores else ""
        return BackendStatus(self.name, True, trt.__version__, (f"GPU ({gpu.get('gpu', 'unknown')}, sm {gpu.get('compute_capability', '?')}){dla}",))

    def compile(self, model: Path, out_dir: Path, *, request: CompileRequest) -> dict[str, Any]:
        options: TensorRtOptions = request.options
        trt = _trt()  # exit 4 first: on a machine without TensorRT nothing else matters
        proto = load_onnx(model)
        profiles = self.validate(proto, request)
        version = compat.parse_version(trt.__version__)
        self.check_version(version, request)
        if request.precision == "fp16" and not (options.dla_core >= 0 and compat.dla_weakly_typed(version)):
            deps.modelopt_autocast()  # exit 4 naming the extra before anything is built
        st = self.status()
        if not st.available:
            raise BackendUnavailable(st.reason or "TensorRT is not usable here")
        del proto
        from edgekit.backends.tensorrt_build import build_engine

        return build_engine(trt, model, out_dir, request=request, options=options, profiles=profiles)

    def validate(self, proto: onnx.ModelProto, request: CompileRequest) -> dict[str, list[list[int]]]:
        """Everything that can be checked without TensorRT: precision, QDQ rules, device, profiles."""
        options: TensorRtOptions = request.options
        qdq = is_qdq(proto)
        if request.precision == "bf16":
            raise UsageError("tensorrt targets here build fp32, fp16 or int8 (QDQ)", hint="use --precision fp16")
        if request.precision == "int8":
            if not qdq:
                raise UsageError("tensorrt int8 is explicit quantization: it needs a QDQ model", hint="run `edgekit quantize --target tensorrt` first")
            problems = check_explicit_quantization(proto)
            if problems:
                raise UsageError(f"the QDQ model breaks TensorRT's explicit-quantization rules: {problems[0]} (+{len(problems) - 1} more)",
                                 hint="quantize it again with `edgekit quantize --target tensorrt`")
        elif qdq:
            raise UsageError(f"this model is quantized (QDQ); TensorRT builds it as int8, not {request.precision}", hint="pass --precision int8")
        if not request.device.upper().startswith(("GPU", "CUDA")):
            raise UsageError(f"tensorrt device {request.device!r}: use GPU (a Jetson's DLA is the dla_core option)")
        if options.dla_core >= 0 and request.precision == "fp32":
            raise UsageError("a DLA core runs fp16 or int8, not fp32", hint="pass --precision fp16, or set dla_core = -1")
        return _default_profiles(proto, request, options)

    @staticmethod
    def check_version(version: tuple[int, ...], request: CompileRequest) -> None:
        """What this TensorRT version lacks for the request: exit 4 naming the version that has it."""
        options: TensorRtOptions = request.options
        problem = compat.hardware_compatibility_problem(options.hardware_compatibility, version)
        if problem is None and options.dla_core >= 0:
            problem = compat.dla_problem(version)
        if problem:
            raise BackendUnavailable(problem)

    def quant_recipe(self, model: Any) -> QuantRecipe:
        from edgekit.backends.tensorrt_build import tensorrt_recipe

        return tensorrt_recipe(model)

    def load(self, artifact_dir: Path, manifest: dict[str, Any], *, options: TensorRtOptions) -> TensorRtEngine:
        _trt()
        return TensorRtEngine(artifact_dir / manifest["entry"], precision=manifest["precision"], settings=manifest.get("settings", {}))

    def precision_variants(self, device: str, options: TensorRtOptions) -> list[PrecisionVariant]:
        """fp32, and fp16 / int8 where the builder reports fast kernels for them on this GPU (TensorRT 11
        dropped the platform flags: every GPU it supports has both)."""
        trt = _trt()
        st = self.status()
        if not st.available:
            raise BackendUnavailable(st.reason or "TensorRT is not usable here")
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
        out = [PrecisionVariant("fp32", "fp32", options, "TensorRT builds every network in fp32")]
        for p, flag in (("fp16", "platform_has_fast_fp16"), ("int8", "platform_has_fast_int8")):
            if getattr(builder, flag, True):
                out.append(PrecisionVariant(p, p, options, f"TensorRT {trt.__version__}: builder.{flag}" if hasattr(builder, flag) else f"TensorRT {trt.__version__} (no platform flags)"))
        return out


BACKEND = TensorRtBackend()
