"""TensorRT: build a serialized engine from (QDQ) ONNX with the Python API of 10.x and 11.x.

INT8 is explicit quantization only: the QDQ nodes in the ONNX say what runs in INT8
(TensorRT 10 deprecated and 11 removed the implicit calibrators and precision flags).
Networks are built strongly typed; fp16 converts the ONNX to FP16 first (keeping FP32
I/O), as TensorRT 11 requires. Everything here imports without TensorRT; building
and running need TensorRT and an NVIDIA GPU.
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgekit import deps
from edgekit.backends.base import BackendStatus, CompileRequest, EngineBase, PrecisionVariant, QuantRecipe
from edgekit.errors import BackendUnavailable, UsageError
from edgekit.onnxmodel import input_specs, is_qdq, load_onnx, opset_of, save_onnx

_HW_COMPAT = ("none", "ampere_plus", "same_compute_capability")


@dataclasses.dataclass(frozen=True)
class TensorRtOptions:
    """Options of the tensorrt backend (a target profile's `[options]` table)."""

    workspace_mib: int = 1024
    dla_core: int = -1  # Jetson: the DLA core to use (-1: GPU only)
    gpu_fallback: bool = True  # with a DLA core: layers DLA cannot run go to the GPU
    timing_cache: str = ""  # path of a timing cache file to reuse and update
    version_compatible: bool = False  # engine runs on later TensorRT versions (lean runtime)
    hardware_compatibility: str = "none"  # none | ampere_plus | same_compute_capability
    builder_optimization_level: int = 3  # 0-5
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


def check_explicit_quantization(model: onnx.ModelProto) -> list[str]:
    """Problems that keep a QDQ model from building as explicit INT8 in TensorRT (empty = fine).

    TensorRT wants symmetric INT8 (signed, zero point 0), float bias, per-tensor activations,
    per-channel weights along the output-channel axis, and opset >= 13 for per-channel.
    """
    problems: list[str] = []
    inits = {t.name: t for t in model.graph.initializer}
    consts = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}

    def value(name: str) -> np.ndarray | None:
        if name in inits:
            return onnx.numpy_helper.to_array(inits[name])
        if name in consts:
            return onnx.numpy_helper.to_array(consts[name].attribute[0].t)
        return None

    opset = opset_of(model)
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        label = node.name or node.output[0]
        zp = value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zp is None and len(node.input) > 2 and node.input[2]:
            problems.append(f"{label}: zero point is computed at run time; TensorRT needs a constant")
            continue
        if zp is not None:
            if zp.dtype != np.int8:
                problems.append(f"{label}: {zp.dtype} quantization; TensorRT needs signed INT8 (int8 zero point)")
            elif np.any(zp != 0):
                problems.append(f"{label}: zero point {int(np.max(np.abs(zp)))} != 0; TensorRT needs symmetric quantization")
        scale = value(node.input[1])
        if scale is None:
            problems.append(f"{label}: scale is computed at run time; TensorRT needs a constant")
        elif scale.size > 1 and opset < 13:
            problems.append(f"{label}: per-channel quantization needs opset >= 13 (model has {opset})")
        elif scale.size > 1 and node.op_type == "QuantizeLinear" and value(node.input[0]) is None:
            problems.append(f"{label}: per-channel scale on an activation; TensorRT quantizes activations per tensor")
        if scale is not None and np.any(scale <= 0):
            problems.append(f"{label}: non-positive scale")
    return problems


def _trt() -> Any:
    trt = deps.tensorrt()
    return trt


def _major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def _gpu_info() -> dict[str, str]:
    """GPU name, compute capability and CUDA version through the CUDA runtime TensorRT ships with."""
    info: dict[str, str] = {}
    try:
        from cuda import cudart  # type: ignore[import-not-found]  # cuda-python, beside TensorRT

        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            info["gpu"] = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
            info["compute_capability"] = f"{props.major}.{props.minor}"
        err, ver = cudart.cudaRuntimeGetVersion()
        if int(err) == 0:
            info["cuda"] = f"{ver // 1000}.{(ver % 1000) // 10}"
    except Exception:  # cuda-python missing or no device: recorded as unknown
        pass
    return info


def _network_flags(trt: Any) -> int:
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None or _major(trt) >= 11 else 1 << int(flag)


def _fp16_onnx(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True)


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


class TensorRtEngine(EngineBase):
    def __init__(self, engine_path: Path, *, precision: str) -> None:
        trt = _trt()
        try:
            import torch  # device buffers; torch's CUDA build is the common companion on Jetson/GPU hosts
        except ImportError as exc:
            raise BackendUnavailable("running a TensorRT engine from edgekit needs torch with CUDA for device buffers", hint="pip install torch (a CUDA build)") from exc
        if not torch.cuda.is_available():
            raise BackendUnavailable("no CUDA device is visible to torch", hint="run on the machine with the NVIDIA GPU")
        self._torch = torch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self._engine is None:
            raise UsageError(f"{engine_path} does not deserialize with TensorRT {trt.__version__}", hint="rebuild it on this device with `edgekit compile`")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_in = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._in = [n for n in names if is_in[n]]
        self._out = [n for n in names if not is_in[n]]
        from edgekit.onnxmodel import TensorSpec

        def spec(n: str) -> TensorSpec:
            return TensorSpec(n, tuple(int(d) if d >= 0 else f"dim{i}" for i, d in enumerate(self._engine.get_tensor_shape(n))), np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))))

        self.inputs = [spec(n) for n in self._in]
        self.outputs = [spec(n) for n in self._out]
        self._stream = torch.cuda.Stream()
        self.info = {"backend": "tensorrt", "version": trt.__version__, "device": "GPU", "precision": precision, **_gpu_info()}

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        keep = []
        for n in self._in:
            t = torch.from_numpy(np.ascontiguousarray(feed[n])).cuda()
            keep.append(t)
            self._context.set_input_shape(n, tuple(t.shape))
            self._context.set_tensor_address(n, t.data_ptr())
        outs = {}
        for n in self._out:
            shape = tuple(self._context.get_tensor_shape(n))
            dtype = torch.from_numpy(np.zeros(0, dtype=np.dtype(self._trt_dtype(n)))).dtype
            t = torch.empty(shape, dtype=dtype, device="cuda")
            outs[n] = t
            self._context.set_tensor_address(n, t.data_ptr())
        self._context.execute_async_v3(self._stream.cuda_stream)
        self._stream.synchronize()
        return {n: t.cpu().numpy() for n, t in outs.items()}

    def _trt_dtype(self, name: str) -> Any:
        return _trt().nptype(self._engine.get_tensor_dtype(name))

    def close(self) -> None:
        self._context = None
        self._engine = None


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
        gpu = _gpu_info()
        return BackendStatus(self.name, True, trt.__version__, (f"GPU ({gpu.get('gpu', 'unknown')}, sm {gpu.get('compute_capability', '?')})",))

    def compile(self, model: Path, out_dir: Path, *, request: CompileRequest) -> dict[str, Any]:
        options: TensorRtOptions = request.options
        trt = _trt()  # exit 4 first: on a machine without TensorRT nothing else matters
        st = self.status()
        if not st.available:
            raise BackendUnavailable(st.reason or "TensorRT is not usable here")
        proto = load_onnx(model)
        profiles = self.validate(proto, request)
        return self._build(trt, proto, out_dir, request, options, profiles)

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
        return _default_profiles(proto, request, options)

    def _build(self, trt: Any, proto: onnx.ModelProto, out_dir: Path, request: CompileRequest, options: TensorRtOptions,
               profiles: dict[str, list[list[int]]]) -> dict[str, Any]:
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(_network_flags(trt))
        parser = trt.OnnxParser(network, logger)
        if request.precision == "fp16":
            proto = _fp16_onnx(proto)
        with tempfile.TemporaryDirectory(prefix="edgekit-trt-") as tmp:
            src = save_onnx(proto, Path(tmp) / "model.onnx")
            if not parser.parse_from_file(str(src)):
                errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
                raise UsageError(f"TensorRT's ONNX parser rejects the model: {errors[0] if errors else 'unknown error'}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
        config.builder_optimization_level = options.builder_optimization_level
        if options.dla_core >= 0:
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = options.dla_core
            if options.gpu_fallback:
                config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        if options.version_compatible:
            config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        if options.hardware_compatibility != "none":
            config.hardware_compatibility_level = {
                "ampere_plus": trt.HardwareCompatibilityLevel.AMPERE_PLUS,
                "same_compute_capability": trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY,
            }[options.hardware_compatibility]
        if profiles:
            profile = builder.create_optimization_profile()
            for name, (lo, opt, hi) in profiles.items():
                profile.set_shape(name, lo, opt, hi)
            config.add_optimization_profile(profile)
        cache_path = Path(options.timing_cache) if options.timing_cache else None
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.exists() else b"")
        config.set_timing_cache(cache, False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise UsageError("TensorRT failed to build the engine (see the log above)", hint="try a larger workspace_mib or check unsupported layers")
        (out_dir / "model.engine").write_bytes(bytes(serialized))
        if cache_path:
            from edgekit.files import atomic_path

            with atomic_path(cache_path) as tmp_cache:
                tmp_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
        return {
            "files": ["model.engine"],
            "entry": "model.engine",
            "versions": {"tensorrt": trt.__version__, **{k: v for k, v in _gpu_info().items() if k == "cuda"}},
            "settings": {
                "strongly_typed": True, "profiles": profiles, "workspace_mib": options.workspace_mib,
                "dla_core": options.dla_core, "version_compatible": options.version_compatible,
                "hardware_compatibility": options.hardware_compatibility,
                **{k: v for k, v in _gpu_info().items() if k in ("gpu", "compute_capability")},
            },
        }

    def quant_recipe(self, model: Any) -> QuantRecipe:
        # TensorRT's explicit quantization: signed INT8, zero point 0, per-channel weights
        # (opset >= 13). Percentile, not entropy: KL thresholds clip the pooled features
        # before a classifier head far too hard (measured on EfficientNet-Lite0).
        return QuantRecipe(
            name="tensorrt-s8s8-symmetric", activation_type="int8", activation_symmetric=True, weight_type="int8",
            per_channel=True, method="percentile",
            extra=(("WeightSymmetric", True), ("QuantizeBias", False)),
            why="symmetric S8 activations and per-channel S8 weights, zero point 0, as TensorRT requires",
        )

    def load(self, artifact_dir: Path, manifest: dict[str, Any], *, options: TensorRtOptions) -> TensorRtEngine:
        _trt()
        return TensorRtEngine(artifact_dir / manifest["entry"], precision=manifest["precision"])

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
