"""When no INT8 mix meets the bar: the float precisions the target runs, each checked against the same bar
on the same held-out samples, so the exit-3 line can name the fastest one that meets it and its command.

Candidates, fastest first: bf16 where the target is OpenVINO on a CPU with bf16 instructions (AVX-512
BF16 or AMX), fp16 on TensorRT (not run here: it needs the GPU, so it is named as unchecked), and fp32,
which is the reference itself. Each one that runs here is run in its runtime on this CPU, compared with
the check's own rules, and timed over the held-out samples (median ms per sample).
"""
from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

from edgekit.machine import cpu_features
from edgekit.onnxmodel import save_onnx
from edgekit.quantize.check import SliceEvaluator

BF16_FEATURES = ("avx512_bf16", "amx_bf16")


def candidates(backend: str, features: list[str] | None = None) -> list[str]:
    """The float precisions worth trying on `backend`, fastest first."""
    feats = cpu_features() if features is None else features
    if backend == "openvino":
        return (["bf16"] if any(f in feats for f in BF16_FEATURES) else []) + ["fp32"]
    if backend == "tensorrt":
        return ["fp16", "fp32"]
    return ["fp32"]


def _run_openvino(path: Path, precision: str, evaluator: SliceEvaluator) -> tuple[list[list[Any]], float]:
    from edgekit.backends.openvino import OpenVinoEngine, OpenVinoOptions

    got, times = [], []
    with OpenVinoEngine(path, options=OpenVinoOptions(), precision=precision, device="CPU") as engine:
        for feed in evaluator.feeds:
            t0 = time.perf_counter()
            out = engine.run(feed)
            times.append(time.perf_counter() - t0)
            got.append([out[n] if n in out else list(out.values())[i] for i, n in enumerate(evaluator.names)])
    return got, 1e3 * statistics.median(times)


def float_alternatives(model: onnx.ModelProto, evaluator: SliceEvaluator, judge: Callable[[list[list[Any]]], float], *,
                       backend: str, target: str, source: str | None) -> list[dict[str, Any]]:
    """Each candidate with whether it meets the bar (None: not checked here) and the command that builds it.
    `judge(outputs)` is the check's own shortfall for a candidate's outputs (<= 0 meets the bar)."""
    res: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgekit-alt-") as tmp:
        path: Path | None = None
        for precision in candidates(backend):
            entry: dict[str, Any] = {"precision": precision, "backend": backend,
                                     "command": f"edgekit compile {source or 'MODEL.onnx'} --target {target} --precision {precision} -o OUT"}
            if precision == "fp32":
                entry.update(meets_bar=True, checked="the FP32 model is the check's reference")
            elif backend == "openvino":
                if path is None:
                    path = save_onnx(model, Path(tmp) / "model.onnx")
                try:
                    got, ms = _run_openvino(path, precision, evaluator)
                except Exception as exc:  # the runtime cannot build it here: say so, it is a result
                    entry.update(meets_bar=None, checked=f"could not run: {str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}")
                else:
                    short = judge(got)
                    entry.update(meets_bar=short <= 0, ms_per_sample=ms, shortfall=short,
                                 checked=f"OpenVINO {precision} on this CPU, {len(evaluator.feeds)} held-out samples")
            else:
                entry.update(meets_bar=None, checked=f"not checked here: {backend} needs its device")
            res.append(entry)
    return res


def best_line(alternatives: list[dict[str, Any]]) -> str:
    """One clause for the exit-3 line: the fastest candidate known to meet the bar, and how to build it."""
    for a in alternatives:
        if a["meets_bar"]:
            speed = f", {a['ms_per_sample']:.2f} ms per sample here" if a.get("ms_per_sample") is not None else ""
            return f"{a['precision']} on {a['backend']} meets the bar ({a['checked']}{speed}): {a['command']}"
    return ""
