"""OpenVINO: compile to IR (`.xml`/`.bin`) and run with an explicit inference precision.

OpenVINO on a CPU with AMX/AVX-512 BF16 runs FP32 models in bf16 unless told
otherwise; edgekit always sets INFERENCE_PRECISION_HINT and checks the compiled
model reports what was asked, so the precision edgekit reports is the one that ran.
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

# the region policies (edgekit.quantize.regions) of both OpenVINO recipes (a signal front-end stays float: see onnxruntime.py)
_OV_REGION_POLICIES = {"attention": "attention", "layernorm": "float", "gelu": "float", "rnn": "float", "embedding": "float", "conv-stem": "int8-s8",
                       "spectral": "float"}
# edgekit precision -> OpenVINO inference precision (int8 comes from the QDQ nodes; the rest runs f32)
_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}
KNOWN_DEVICES = ("CPU", "GPU", "NPU", "AUTO")


@dataclasses.dataclass(frozen=True)
class OpenVinoOptions:
    """Options of the openvino backend (a target profile's `[options]` table)."""

    threads: int = 0  # INFERENCE_NUM_THREADS; 0 = OpenVINO's default
    streams: int = 1  # NUM_STREAMS; 1 for latency
    performance_hint: str = "LATENCY"  # LATENCY | THROUGHPUT
    cache_dir: str = ""  # OpenVINO model cache ("" = none)
    int8_float_precision: str = "f32"  # what the non-quantized parts of an int8 model run in: f32 | bf16

    def __post_init__(self) -> None:
        if self.performance_hint not in ("LATENCY", "THROUGHPUT"):
            raise UsageError(f"openvino option performance_hint={self.performance_hint!r}: use LATENCY or THROUGHPUT")
        if self.int8_float_precision not in ("f32", "bf16", "f16"):
            raise UsageError(f"openvino option int8_float_precision={self.int8_float_precision!r}: use f32, bf16 or f16")
        if self.threads < 0 or self.streams < 0:
            raise UsageError("openvino threads and streams must be >= 0")


def _core() -> Any:
    ov = deps.openvino()
    return ov, ov.Core()


def _check_device(core: Any, device: str) -> None:
    dev = device.upper()
    if dev.split(".")[0] not in KNOWN_DEVICES:
        raise UsageError(f"unknown OpenVINO device {device!r}", hint=f"use one of {', '.join(KNOWN_DEVICES)}")
    if dev != "AUTO" and not any(d.split(".")[0] == dev.split(".")[0] for d in core.available_devices):
        raise BackendUnavailable(
            f"OpenVINO device {dev} is not available on this machine (it has {', '.join(core.available_devices)})",
            hint="install its driver, or use a target for CPU",
        )


def _hint_for(precision: str, options: OpenVinoOptions) -> str:
    return options.int8_float_precision if precision == "int8" else _HINT[precision]


def _ov_type_name(t: Any) -> str:
    return str(t.get_type_name() if hasattr(t, "get_type_name") else t).lower()


def _spec(port: Any) -> TensorSpec:
    name = port.get_any_name()
    et = port.get_element_type()
    dtype = np.dtype(et.to_dtype()) if hasattr(et, "to_dtype") else np.dtype(np.float32)
    shape = tuple(int(d.get_length()) if d.is_static else f"dim{i}" for i, d in enumerate(port.get_partial_shape()))
    return TensorSpec(name, shape, dtype)


class OpenVinoEngine(EngineBase):
    def __init__(self, xml: Path, *, options: OpenVinoOptions, precision: str, device: str) -> None:
        ov, core = _core()
        _check_device(core, device)
        hint = _hint_for(precision, options)
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": hint,
            "PERFORMANCE_HINT": options.performance_hint,
            "NUM_STREAMS": str(options.streams) if options.streams else "AUTO",
        }
        if options.threads:
            config["INFERENCE_NUM_THREADS"] = options.threads
        if options.cache_dir:
            config["CACHE_DIR"] = options.cache_dir
        model = core.read_model(str(xml))
        try:
            self._compiled = core.compile_model(model, device.upper(), config)
        except RuntimeError as exc:
            msg = str(exc).strip().splitlines()
            raise UsageError(f"OpenVINO cannot compile the model for {device} at {precision}: {msg[0] if msg else exc}") from exc
        got = _ov_type_name(self._compiled.get_property("INFERENCE_PRECISION_HINT"))
        if device.upper() == "CPU" and got != hint:
            raise BackendUnavailable(
                f"OpenVINO on this CPU runs {got}, not the requested {hint} ({precision})",
                hint="this CPU lacks the instructions for it; choose another --precision",
            )
        self._request = self._compiled.create_infer_request()
        self.inputs = [_spec(p) for p in self._compiled.inputs]
        self.outputs = [_spec(p) for p in self._compiled.outputs]
        threads = self._compiled.get_property("INFERENCE_NUM_THREADS")
        self.info = {
            "backend": "openvino",
            "version": ov.get_version(),
            "device": device.upper(),
            "device_name": core.get_property(device.upper(), "FULL_DEVICE_NAME") if device.upper() != "AUTO" else "AUTO",
            "precision": precision,
            "inference_precision": got,
            "threads": int(threads) if str(threads).isdigit() else threads,
            "streams": str(self._compiled.get_property("NUM_STREAMS")),
            "loaded_from_cache": bool(options.cache_dir) and bool(self._compiled.get_property("LOADED_FROM_CACHE")),
        }

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._request.infer(feed, share_inputs=True)
        return {spec.name: np.array(self._request.get_output_tensor(i).data) for i, spec in enumerate(self.outputs)}

    def close(self) -> None:
        self._request = None
        self._compiled = None


class OpenVinoBackend:
    name = "openvino"
    artifact_suffix = ".xml"
    options_type = OpenVinoOptions

    def status(self) -> BackendStatus:
        try:
            ov, core = _core()
        except BackendUnavailable as exc:
            return BackendStatus(self.name, False, None, (), str(exc))
        devices = tuple(f"{d} ({core.get_property(d, 'FULL_DEVICE_NAME')})" for d in core.available_devices)
        return BackendStatus(self.name, True, ov.get_version(), devices)

    def compile(self, model: Path, out_dir: Path, *, request: CompileRequest) -> dict[str, Any]:
        ov, core = _core()
        _check_device(core, request.device)
        proto = load_onnx(model)
        qdq = is_qdq(proto)
        if request.precision == "int8" and not qdq:
            raise UsageError("openvino int8 needs a quantized (QDQ) model", hint="run `edgekit quantize` first, then compile its output")
        if request.precision != "int8" and qdq:
            raise UsageError(f"this model is quantized (QDQ); it compiles as int8, not {request.precision}", hint="compile the FP32 model, or pass --precision int8")
        try:
            ov_model = ov.convert_model(str(model))
        except Exception as exc:
            msg = str(exc).strip().splitlines()
            raise UsageError(f"OpenVINO cannot convert {model}: {msg[0][:300] if msg else exc}", hint="check the ops with `edgekit inspect`") from exc
        if request.shapes:
            names = {n for port in ov_model.inputs for n in port.get_names()}
            unknown = sorted(set(request.shapes) - names)
            if unknown:
                raise UsageError(f"--shape names {unknown[0]!r}, which is not an input of {model.name}",
                                 hint=f"its inputs are {', '.join(sorted(names))}")
            try:
                ov_model.reshape({k: list(v) for k, v in request.shapes.items()})
            except RuntimeError as exc:
                msg = str(exc).strip().splitlines()
                raise UsageError(f"OpenVINO cannot reshape {model.name} to {request.shapes}: {msg[0][:200] if msg else exc}",
                                 hint="give each input a shape its graph accepts (see `edgekit inspect`)") from exc
        xml = out_dir / "model.xml"
        # fp16 stores weights compressed; the inference precision is set at load time.
        ov.save_model(ov_model, str(xml), compress_to_fp16=request.precision == "fp16")
        # compile once now: an unsupported op or precision fails here, not on the device
        engine = OpenVinoEngine(xml, options=request.options, precision=request.precision, device=request.device)
        info = dict(engine.info)
        engine.close()
        return {
            "files": ["model.xml", "model.bin"],
            "entry": "model.xml",
            "versions": {"openvino": ov.get_version()},
            "settings": {"inference_precision": info["inference_precision"], "device_name": info["device_name"]},
        }

    def quant_recipe(self, model: Any, *, cpu_features: tuple[str, ...] = ()) -> QuantRecipe:
        # Placement after NNCF's for OpenVINO (see edgekit.quantize.regions): OpenVINO fuses a FakeQuantize into the
        # FullyConnected/Convolution that produces its input, and tokenizes attention into one fused kernel
        # that QDQ on Softmax, on P x V or after a Transpose breaks (42 extra eltwise layers on MiniLM-L6).
        policies, regions = region_recipe(model, _OV_REGION_POLICIES)
        seven_bit = x86_without_int8_dot(cpu_features)
        common = dict(reduce_range=seven_bit, activation_type="uint8", activation_symmetric=False, per_channel=True, method="minmax",
                      region_policies=policies, regions=regions, hoist_shape_ops=True, extra=(("OpTypesToExcludeOutputQuantization", ["MatMul", "Gemm"]),))
        bits = " (7-bit weights: x86 without VNNI)" if seven_bit else ""
        if is_transformer(model) and not any(k == "conv-stem" for k, _ in regions):
            return QuantRecipe(
                name="openvino-transformer", op_types=TRANSFORMER_OPS, **common,  # type: ignore[arg-type]
                why="transformer: INT8 projections and Q x K^T (quantized before its Reshape/Transpose), attention output, "
                    "LayerNorm, GELU, Softmax and residual Adds f32" + bits,
            )
        return QuantRecipe(
            name="openvino-cnn", op_types=CNN_OPS, **common,  # type: ignore[arg-type]
            why="CNN: QDQ on every quantizable op and the global pooling, U8 activations / S8 per-channel weights; "
                "attention blocks, LayerNorm and GELU inside follow the transformer placement" + bits,
        )

    def load(self, artifact_dir: Path, manifest: dict[str, Any], *, options: OpenVinoOptions) -> OpenVinoEngine:
        return OpenVinoEngine(artifact_dir / manifest["entry"], options=options, precision=manifest["precision"], device=manifest["device"])

    def precision_variants(self, device: str, options: OpenVinoOptions) -> list[PrecisionVariant]:
        """The device's OPTIMIZATION_CAPABILITIES (FP32, BF16, FP16, INT8), and INT8 with its float parts in
        each float precision the device has besides f32 (the `int8_float_precision` option)."""
        ov, core = _core()
        _check_device(core, device)
        dev = device.upper().split(".")[0]
        try:
            caps = {str(c).upper() for c in core.get_property(dev, "OPTIMIZATION_CAPABILITIES")}
        except RuntimeError:  # AUTO and some plugins do not report capabilities: what every device runs
            caps = {"FP32", "INT8"}
        said = f"OpenVINO {dev} reports {{}} in OPTIMIZATION_CAPABILITIES"
        out = [PrecisionVariant(p, p, options if p != "int8" else dataclasses.replace(options, int8_float_precision="f32"), said.format(c))
               for c, p in (("FP32", "fp32"), ("BF16", "bf16"), ("FP16", "fp16"), ("INT8", "int8")) if c in caps]
        if "INT8" in caps:
            out += [PrecisionVariant(f"int8+{p}", "int8", dataclasses.replace(options, int8_float_precision=hint), said.format(f"INT8 and {c}"))
                    for c, p, hint in (("BF16", "bf16", "bf16"), ("FP16", "fp16", "f16")) if c in caps]
        return out


BACKEND = OpenVinoBackend()
