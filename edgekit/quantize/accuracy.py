"""Accuracy of a quantized model against its FP32 source on held-out real data.

FP32 runs in ONNX Runtime (the reference). INT8 runs where it will be deployed when
that backend works here; otherwise (TensorRT on a machine without a GPU) in ONNX
Runtime with graph optimisations off, which computes the QDQ arithmetic exactly
rather than through this CPU's integer kernels.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends import get_backend
from edgekit.backends.onnxruntime import session_from_path
from edgekit.data.calibration import calibration_set
from edgekit.config import Target
from edgekit.data.metrics import OutputAgreement
from edgekit.onnxmodel import input_specs, load_onnx
from edgekit.data.preprocess import ImageRecipe


@contextlib.contextmanager
def _int8_runner(int8: Path, target: Target | None) -> Iterator[tuple[Any, str]]:
    from edgekit.compile import open_engine

    if target is not None and get_backend(target.backend).status().available:
        with open_engine(int8, target=target, precision="int8") as (engine, _m):
            names = [o.name for o in engine.outputs]
            yield (lambda feed: [engine.run(feed)[n] for n in names]), f"{target.backend} ({engine.info.get('device', '')})"
        return
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(int8), so, providers=["CPUExecutionProvider"])
    yield (lambda feed: sess.run(None, feed)), "exact QDQ arithmetic (onnxruntime, no fusions)"


def evaluate(fp32: str | Path, int8: str | Path, source: str, *, recipe: ImageRecipe | None = None, target: Target | None = None) -> dict[str, Any]:
    """Per output: cosine, SQNR, max abs error, top-1 agreement; top-1 against labels when the data has them."""
    ref_sess = session_from_path(fp32)
    specs = input_specs(load_onnx(fp32))
    data = calibration_set(source, specs, recipe=recipe)
    names = [o.name for o in ref_sess.get_outputs()]
    acc = [OutputAgreement(n) for n in names]
    labels = data.labels
    hits_ref = hits_q = n = 0
    first: dict[str, np.ndarray] | None = None
    with _int8_runner(Path(int8), target) as (run_int8, where):
        for i, feed in enumerate(data.feeds(specs)):
            first = feed if first is None else first
            ref = ref_sess.run(names, feed)
            got = run_int8(feed)
            for a, r, g in zip(acc, ref, got):
                a.add(r, g)
            if labels is not None:
                hits_ref += int(np.argmax(ref[0]) == labels[i])
                hits_q += int(np.argmax(got[0]) == labels[i])
            n += 1
    out: dict[str, Any] = {"source": data.description, "samples": n, "int8_ran_on": where, "outputs": [a.to_dict() for a in acc]}
    if labels is not None:
        out["top1_fp32"] = hits_ref / n
        out["top1_int8"] = hits_q / n
        out["top1_drop_points"] = 100 * (hits_ref - hits_q) / n
    if first is not None and target is not None and not where.startswith("exact"):
        out["speed"] = int8_speedup(Path(fp32), Path(int8), target, first)
    return out


def int8_speedup(fp32: Path, int8: Path, target: Target, feed: dict[str, np.ndarray], *, seconds: float = 0.5) -> dict[str, Any]:
    """FP32 and INT8 on the target backend here, in randomized interleaved blocks (drift cancels):
    the speed-up on the floor with its interval, and `slower` when INT8 is significantly slower,
    as it is on CPUs without VNNI for some models (MiniLM on OpenVINO: 0.74x)."""
    import dataclasses

    from edgekit.backends.base import cpu_has_vnni
    from edgekit.bench.stats import PairedSide, floor_ms, paired_regression_test
    from edgekit.bench.timer import measure_interleaved
    from edgekit.compile import open_engine

    settings = dataclasses.replace(target.bench, min_duration_s=seconds, warmup_ms=100, min_iterations=10)
    with open_engine(fp32, target=target, precision="fp32") as (ref, _), open_engine(int8, target=target, precision="int8") as (q, _):
        f32, i8 = measure_interleaved([lambda: ref.run(feed), lambda: q.run(feed)], settings)
    assert f32.rounds is not None and i8.rounds is not None
    t = paired_regression_test(PairedSide(i8.latencies_ms, i8.rounds), PairedSide(f32.latencies_ms, f32.rounds), max_regression=0.0)
    out = {"backend": target.backend, "fp32_floor_ms": floor_ms(f32.latencies_ms), "int8_floor_ms": floor_ms(i8.latencies_ms),
           "speedup": 1 / t["ratio"], "speedup_ci": [1 / t["ci_high"], 1 / t["ci_low"]], "slower": bool(t["regressed"])}
    if out["slower"]:
        why = " (this CPU has no VNNI: its INT8 kernels gain little)" if target.device.upper() == "CPU" and not cpu_has_vnni() else ""
        out["note"] = (f"INT8 runs slower than FP32 on {target.backend} here: {out['speedup']:.2f}x{why}; "
                       "ship the FP32 artifact for this target, or bench both on the device")
    return out
