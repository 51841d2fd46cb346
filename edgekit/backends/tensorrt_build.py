"""Building a TensorRT engine from ONNX (needs TensorRT and a GPU; fp16 first converts with ModelOpt's AutoCast,
`fp16_onnx`), and TensorRT's QDQ recipe (needs neither).

Line references are to github.com/NVIDIA/TensorRT at the named release branch.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from edgekit import deps
from edgekit.backends import tensorrt_compat as compat
from edgekit.backends.base import CompileRequest, QuantRecipe
from edgekit.errors import BackendUnavailable, UsageError
from edgekit.onnxmodel import save_onnx


def _note(notes: list[str], text: str) -> None:
    notes.append(text)
    print(f"note: {text}", file=sys.stderr)


def _attach_timing_cache(trt: Any, config: Any, path: Path | None, notes: list[str]) -> str:
    """Load the timing cache at `path` into `config`; a cache TensorRT refuses starts a new one, never a failure.

    `set_timing_cache` returns False for a cache from another device (pyCoreDoc.h release/10.0 lines 1442-1454,
    same text on release/11.1 lines 1666-1678: "A failure will be reported if the CUDA device property in the
    provided cache is different"); Polygraphy's CreateConfig (backend/trt/config.py lines 312-333) falls back to
    an empty cache the same way when the file is missing.
    """
    state = "new"
    cache = None
    if path is not None and path.exists():
        try:
            data = path.read_bytes()
            cache = config.create_timing_cache(data) if data else None
        except Exception as exc:  # noqa: BLE001 - a corrupt file is TensorRT's error to report, ours to survive
            _note(notes, f"timing cache {path} is unreadable ({str(exc).strip()[:120] or type(exc).__name__}); building with a new one")
            cache = None
        if cache is not None:
            state = "loaded"
    if cache is not None and not config.set_timing_cache(cache, False):
        _note(notes, f"timing cache {path} was made on another GPU or TensorRT version; building with a new one")
        cache, state = None, "replaced"
    if cache is None:
        config.set_timing_cache(config.create_timing_cache(b""), False)
    return state


def _save_timing_cache(config: Any, path: Path, notes: list[str]) -> bool:
    """Write the build's timing cache; any failure is a note: the engine is already written and must not be lost.

    `get_timing_cache` may return None (pyCoreDoc.h release/11.1 lines 1680-1684); Polygraphy checks it before
    serializing (backend/trt/loader.py lines 609-640).
    """
    from edgekit.files import atomic_path

    try:
        cache = config.get_timing_cache()
        if cache is None:
            _note(notes, "TensorRT returned no timing cache after the build; nothing saved")
            return False
        data = bytes(memoryview(cache.serialize()))
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        return True
    except Exception as exc:  # noqa: BLE001 - see the docstring
        _note(notes, f"could not save the timing cache to {path} ({str(exc).strip()[:160] or type(exc).__name__})")
        return False


def _hardware_level(trt: Any, level: str) -> Any:
    # SAME_COMPUTE_CAPABILITY is bound from release/10.9 (pyCore.cpp line 1634), AMPERE_PLUS from 10.0 (line 1355):
    # probe the enum member instead of naming both in one literal
    member = getattr(trt.HardwareCompatibilityLevel, level.upper(), None)
    if member is None:
        raise BackendUnavailable(f"TensorRT {trt.__version__} has no HardwareCompatibilityLevel.{level.upper()}",
                                 hint="use hardware_compatibility = \"ampere_plus\" or upgrade TensorRT")
    return member


def fp16_onnx(model: Path, dest: Path) -> Path:
    """`model` with FP16 compute and FP32 I/O, by ModelOpt's AutoCast, written to `dest`.

    AutoCast is what TensorRT points to for strongly typed FP16 (samples/python/strongly_type_autocast/README.md,
    release/10.15 on): it keeps nodes whose values exceed FP16's range (data_max 512 on a reference run, init_max
    65504) in FP32 and reads the model from its path, so a model over 2 GB needs no in-memory shape inference.
    ONNX Runtime's float16 converter casts everything and runs in-memory shape inference.
    """
    import inspect

    autocast = deps.modelopt_autocast()
    kwargs: dict[str, Any] = {"low_precision_type": "fp16", "keep_io_types": True}
    accepted = inspect.signature(autocast.convert_to_mixed_precision).parameters
    if "providers" in accepted:  # the reference run on the CPU, even on a GPU host (not in every ModelOpt release)
        kwargs["providers"] = ["cpu"]
    converted = autocast.convert_to_mixed_precision(onnx_path=str(model), **kwargs)
    return save_onnx(converted, dest)


def build_engine(trt: Any, model: Path, out_dir: Path, *, request: CompileRequest, options: Any,
                 profiles: dict[str, list[list[int]]] | list[dict[str, list[list[int]]]]) -> dict[str, Any]:
    """Parse `model`, build with the target's options, write `out_dir/model.engine`; the manifest's backend part."""
    from edgekit.backends.tensorrt_cuda import device_info

    version = compat.parse_version(trt.__version__)
    notes: list[str] = []
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    dla = options.dla_core >= 0
    if dla and options.dla_core >= builder.num_DLA_cores:
        # trtexec refuses a DLA core the builder does not have (sampleEngines.cpp release/10.16 lines 1241-1270)
        raise BackendUnavailable(f"dla_core = {options.dla_core}, but this device has {builder.num_DLA_cores} DLA cores "
                                 "(a Jetson Orin Nano has none)", hint="set dla_core = -1 in the target's [options] to build for the GPU")
    weakly_typed = dla and compat.dla_weakly_typed(version)
    flags = 0
    if compat.strongly_typed_flag_needed(version) and not weakly_typed:
        # 10.x: kSTRONGLY_TYPED = 1 (NvInfer.h release/10.0 line 9407); 11.x ignores it (release/11.0 line 11415)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with tempfile.TemporaryDirectory(prefix="edgekit-trt-") as tmp:
        src = model
        if request.precision == "fp16" and not weakly_typed:
            src = fp16_onnx(model, Path(tmp) / "model.fp16.onnx")
        if not parser.parse_from_file(str(src)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise UsageError(f"TensorRT's ONNX parser rejects the model: {errors[0] if errors else 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    config.builder_optimization_level = options.builder_optimization_level
    if not options.tf32:
        # TF32 is on by default (NvInfer.h release/10.16 lines 10486-10489, release/11.1 lines 9973-9976): fp32 would
        # really be TF32 on Ampere and later; trtexec clears it unless --tf32 (sampleEngines.cpp release/10.16 lines
        # 996-999), Polygraphy too (backend/trt/config.py lines 544-548)
        config.clear_flag(trt.BuilderFlag.TF32)
    if dla:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = options.dla_core
        if weakly_typed:  # trtexec's 10.x DLA flags (sampleEngines.cpp release/10.16 lines 1245-1263)
            config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
            config.set_flag(trt.BuilderFlag.FP16)
            if request.precision == "int8":
                config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK if options.gpu_fallback else trt.BuilderFlag.DIRECT_IO)
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if options.hardware_compatibility != "none":
        config.hardware_compatibility_level = _hardware_level(trt, options.hardware_compatibility)
    # one profile, or several (a decoder's prefill and decode): profile k is the k-th dict
    for shapes in ([profiles] if isinstance(profiles, dict) else profiles):
        if not shapes:
            continue
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    cache_path = compat.timing_cache_path(options.timing_cache)
    cache_state = _attach_timing_cache(trt, config, cache_path, notes) if cache_path else "off"
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UsageError("TensorRT failed to build the engine (see the log above)", hint="try a larger workspace_mib or check unsupported layers")
    (out_dir / "model.engine").write_bytes(bytes(memoryview(serialized)))
    cache_saved = _save_timing_cache(config, cache_path, notes) if cache_path else False
    info = device_info()
    return {
        "files": ["model.engine"],
        "entry": "model.engine",
        "versions": {"tensorrt": trt.__version__, **{k: v for k, v in info.items() if k in ("cuda", "cuda_driver", "tensorrt_cuda_major")}},
        "settings": {
            "strongly_typed": not weakly_typed, "tf32": options.tf32, "profiles": profiles, "workspace_mib": options.workspace_mib,
            "dla_core": options.dla_core, "version_compatible": options.version_compatible,
            "hardware_compatibility": options.hardware_compatibility,
            "timing_cache": {"path": str(cache_path) if cache_path else None, "state": cache_state, "saved": cache_saved},
            "fp16_conversion": "modelopt-autocast" if request.precision == "fp16" and not weakly_typed else None,
            "notes": notes,
            **{k: v for k, v in info.items() if k in ("gpu", "compute_capability")},
        },
    }


# Which ops get Q/DQ on their inputs. NVIDIA ModelOpt's TensorRT-guided setup (modelopt/onnx/quantization/ort_utils.py
# `configure_ort`, 0.47.0) removes copy, shape, reduction and activation ops (Concat, Relu, Reshape, Softmax, Transpose,
# Sigmoid, ...) from ONNX Runtime's QDQ registry: TensorRT runs them in the precision of their input and moves Q/DQ
# across them itself. What stays: the weighted ops, pooling and the element-wise Add of residual blocks.
_CNN_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "MaxPool", "AveragePool", "GlobalAveragePool")
_TRANSFORMER_OPS = ("MatMul", "Gemm")


def tensorrt_recipe(model: Any) -> QuantRecipe:
    """TensorRT's explicit quantization: signed INT8, zero point 0, per-channel weights (opset >= 13), placed where
    TensorRT fuses (inputs of weighted ops, residual inputs of Adds, never the outputs of an op: ModelOpt's
    `OpTypesToExcludeOutputQuantization` over every op type, ort_utils.py `configure_ort`).

    Percentile, not entropy: KL thresholds clip the pooled features before a classifier head far too hard
    (measured on EfficientNet-Lite0).
    """
    from edgekit.backends.base import is_transformer

    all_ops = sorted({n.op_type for n in model.graph.node})
    transformer = is_transformer(model)
    return QuantRecipe(
        name="tensorrt-transformer" if transformer else "tensorrt-s8s8-symmetric", activation_type="int8",
        activation_symmetric=True, weight_type="int8", per_channel=True, method="percentile",
        op_types=_TRANSFORMER_OPS if transformer else _CNN_OPS,
        extra=(("WeightSymmetric", True), ("QuantizeBias", False), ("OpTypesToExcludeOutputQuantization", tuple(all_ops)),
               ("ForceQuantizeNoInputCheck", True)),
        qdq_pass="" if transformer else "edgekit.backends.tensorrt_placement:keep_residual_qdq_only",
        why="symmetric S8 activations and per-channel S8 weights, zero point 0, on the inputs TensorRT fuses "
            "(weighted ops, pooling, the residual side of Adds), as TensorRT's placement guide and NVIDIA ModelOpt do",
    )
