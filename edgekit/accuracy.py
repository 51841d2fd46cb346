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
from edgekit.calibration import calibration_set
from edgekit.config import Target
from edgekit.metrics import OutputAgreement
from edgekit.onnxmodel import input_specs, load_onnx
from edgekit.preprocess import ImageRecipe


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
    with _int8_runner(Path(int8), target) as (run_int8, where):
        for i, feed in enumerate(data.feeds(specs)):
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
    return out
