"""A float model made ready for quantization: loaded, upgraded to opset 13 or later (per-channel QDQ needs it),
and through ONNX Runtime's pre-processing (shape inference and graph optimizations), which runs in a child process."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from edgekit.errors import UsageError
from edgekit.onnxmodel import is_qdq, load_onnx, opset_of, save_onnx


def prepare_model(model_path: Path, notes: list[str]) -> onnx.ModelProto:
    """Load, upgrade to opset 13+ (per-channel QDQ needs it), run ONNX Runtime's pre-processing."""

    model = load_onnx(model_path)
    if is_qdq(model):
        raise UsageError(f"{model_path} is already quantized (QDQ)", hint="quantize the FP32 model")
    if opset_of(model) < 13:
        from onnx import version_converter

        notes.append(f"upgraded opset {opset_of(model)} -> 13: per-channel QDQ needs opset 13 or later")
        try:
            model = version_converter.convert_version(model, 13)
        except Exception as exc:
            raise UsageError(f"cannot upgrade the model from opset {opset_of(model)} to 13 ({exc})", hint="re-export with --opset 13 or later") from exc
    with tempfile.TemporaryDirectory(prefix="edgekit-q-") as tmp_name:
        tmp = Path(tmp_name)
        src = save_onnx(model, tmp / "in.onnx")
        dst = tmp / "pre.onnx"
        outcome = _pre_process_in_subprocess(src, dst, cwd=tmp)
        if outcome == "plain":
            notes.append("ONNX Runtime pre-processing skipped the symbolic shape pass (it failed on this graph)")
        elif outcome == "failed":
            notes.append("ONNX Runtime pre-processing failed; quantizing the model as given")
            return onnx.shape_inference.infer_shapes(model)
        return fresh_optimizer_names(model, onnx.load(str(dst)))


def fresh_optimizer_names(source: onnx.ModelProto, pre: onnx.ModelProto) -> onnx.ModelProto:
    """Rename (in place) the initializers ONNX Runtime's pre-processing added to `pre` (not in `source`) to
    `edgekit_pre_<name>`. Its optimizer names what it creates after the fusion (MatMulAddFusion's
    `gemm_input_shape`, ...) without looking at what a graph already holds: ONNX Runtime 1.32 refuses a
    session at the default level ("Attempt to replace the existing tensor") on a model its basic level
    already rewrote, which every transformer's prepared model is (MiniLM: the check, SmoothQuant, the
    benchmark all failed)."""
    from edgekit.quantize.names import rename_tensors, tensor_names

    old = tensor_names(source)
    added = {t.name for t in pre.graph.initializer if t.name not in old}
    taken = tensor_names(pre)
    mapping = {}
    for name in sorted(added):
        new = f"edgekit_pre_{name}"
        while new in taken:
            new = f"edgekit_pre_{new}"
        mapping[name] = new
        taken.add(new)
    if mapping:
        rename_tensors(pre, lambda x: mapping.get(x, x))
    return pre


# ONNX Runtime's symbolic shape pass saves `sym_shape_infer_temp.onnx` (and a `<uuid>.data`) into the
# working directory when it gives up. The working directory belongs to the whole process, so changing it
# would break the relative paths of every other thread (a service quantizing two models at once): the pass
# runs in a child process whose working directory is a private temporary folder instead (~0.9 s of imports).
_PRE_PROCESS = """
import sys
from onnxruntime.quantization.shape_inference import quant_pre_process
src, dst = sys.argv[1], sys.argv[2]
try:
    quant_pre_process(src, dst, skip_symbolic_shape=False)
    print("symbolic")
except Exception:
    try:
        quant_pre_process(src, dst, skip_symbolic_shape=True)
        print("plain")
    except Exception:
        print("failed")
"""


def _pre_process_in_subprocess(src: Path, dst: Path, *, cwd: Path) -> str:
    """`symbolic`, `plain` (the symbolic shape pass failed, the rest ran) or `failed`, as ONNX Runtime's
    pre-processing went in a child process working in `cwd`."""
    import subprocess
    import sys

    env = {**os.environ, "ORT_DISABLE_TELEMETRY": os.environ.get("ORT_DISABLE_TELEMETRY", "1")}
    res = subprocess.run([sys.executable, "-c", _PRE_PROCESS, str(src), str(dst)], cwd=cwd, env=env, capture_output=True, text=True)
    lines = res.stdout.strip().splitlines()
    outcome = lines[-1] if res.returncode == 0 and lines else "failed"
    return outcome if outcome in ("symbolic", "plain") and dst.exists() else "failed"
