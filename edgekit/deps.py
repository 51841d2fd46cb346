"""The one place optional libraries are imported.

Every edgekit module imports on a machine without torch, OpenVINO or TensorRT; code
that needs one calls the function here, which raises an exit-4 error naming the
extra to install when it is missing.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType
from typing import Any

from edgekit.errors import BackendUnavailable, UsageError

# module name -> (pip extra, what it is for)
_EXTRAS: dict[str, tuple[str, str]] = {
    "torch": ("torch", "export from PyTorch"),
    "openvino": ("openvino", "the OpenVINO backend"),
    "nncf": ("lm", "NNCF: weight compression of decoders for OpenVINO (and a peer bench/ scripts compare against)"),
    "tensorrt": ("tensorrt", "the TensorRT backend"),
    "cuda": ("tensorrt", "device memory and streams for TensorRT engines (cuda-python)"),
    "modelopt": ("tensorrt-fp16", "TensorRT fp16 engines (NVIDIA ModelOpt's AutoCast)"),
    "transformers": ("lm", "generative decoders (edgekit lm): their model and tokenizer"),
    "onnxscript": ("torch", "the dynamo ONNX exporter"),
    "PIL": ("runtime", "image preprocessing (image calibration data, engine.run_image)"),
    "matplotlib": ("plot", "latency plots"),
    "ray": ("ray", "the Ray executor (--executor ray)"),
}


def _load(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        extra, purpose = _EXTRAS.get(name.split(".")[0], ("", ""))
        fix = f"pip install 'edgekit[{extra}]'" if extra else f"pip install {name}"
        if name.split(".")[0] == "torch":
            fix = "pip install torch==2.13.0 (the CPU build) or 'edgekit[torch]'"
        raise BackendUnavailable(
            f"{name} is not importable ({exc}); it is needed for {purpose or name}",
            hint=f"install it: {fix}",
        ) from exc


def available(name: str) -> bool:
    """True when `name` can be imported; does not import it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def torch() -> ModuleType:
    # torch's compiler cache defaults to a folder in the system temporary folder ($TMPDIR/torchinductor_USER),
    # which the dynamo exporter creates: keep it beside edgekit's own cache instead (#23)
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        base = os.environ.get("EDGEKIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "edgekit")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(base, "torchinductor")
    return _load("torch")


def transformers() -> ModuleType:
    return _load("transformers")


def openvino() -> ModuleType:
    return _load("openvino")


def nncf() -> ModuleType:
    return _load("nncf")


def tensorrt() -> ModuleType:
    return _load("tensorrt")


def cuda_runtime() -> ModuleType:
    return _load("cuda.bindings.runtime")


def modelopt_autocast() -> ModuleType:
    return _load("modelopt.onnx.autocast")


def pil_image() -> ModuleType:
    return _load("PIL.Image")


def pyplot() -> ModuleType:
    mpl = _load("matplotlib")
    mpl.use("Agg")
    return _load("matplotlib.pyplot")


def ray() -> ModuleType:
    return _load("ray")


def onnxruntime() -> ModuleType:
    return _load("onnxruntime")


def import_callable(source: str) -> Any:
    """The object a `pkg.module:callable` string names (a user's model, calibration iterable or metric);
    UsageError when the module or the attribute is missing."""
    mod_name, _, attr = source.partition(":")
    if not mod_name or not attr:
        raise UsageError(f"bad source {source!r}", hint="write it as pkg.module:callable")
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        raise UsageError(f"cannot import module {mod_name!r} ({exc.msg})", hint="check the name and that its folder is on PYTHONPATH") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"module {mod_name!r} has no attribute {attr!r}", hint="check the callable's name")
        obj = getattr(obj, part)
    return obj
