"""The data `optimize` judges accuracy on, the FP32 reference outputs, and the accuracy metrics.

Accuracy is measured on `--eval` data when given; otherwise on the last 20% (at most 64) of the
calibration samples, which the INT8 candidates are then not calibrated on. The metrics are the
ones `edgekit quantize --metric` uses: cosine (1 - worst cosine), top1 (points), maxabs, or a
`pkg.module:callable(reference, candidate, labels)` of the user's.
"""
from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.data.calibration import calibration_set
from edgekit.errors import UsageError
from edgekit.data.metrics import OutputAgreement
from edgekit.onnxmodel import TensorSpec
from edgekit.data.preprocess import ImageRecipe

METRICS = ("cosine", "top1", "maxabs")
DEFAULT_DROP = {"cosine": 0.01, "top1": 1.0}  # worst cosine >= 0.99; at most one point of top-1
HOLD_OUT_FRACTION, HOLD_OUT_MAX, HOLD_OUT_MIN_SET = 0.2, 64, 5


@dataclasses.dataclass
class EvalData:
    """Held-out feeds with the FP32 outputs on them; `source` is what quantize's float fallback evaluates on."""

    feeds: list[dict[str, np.ndarray]]
    labels: list[int] | None
    source: str  # a path calibration_set reads: --eval, or the hold-out saved as .npz files
    description: str
    calib_samples: int | None  # with a hold-out: calibrate on the first N samples only
    reference: list[list[np.ndarray]] = dataclasses.field(default_factory=list)
    output_names: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.description, "samples": len(self.feeds), "labels": self.labels is not None,
                "held_out_from_calibration": self.calib_samples is not None}


def budget_for(metric: str, max_drop: float | None) -> float:
    if metric not in METRICS and ":" not in metric:
        raise UsageError(f"unknown metric {metric!r}", hint=f"use one of {', '.join(METRICS)} or pkg.module:callable")
    if max_drop is None:
        if metric not in DEFAULT_DROP:
            raise UsageError(f"--metric {metric} has no default budget", hint="pass --max-accuracy-drop")
        return DEFAULT_DROP[metric]
    if max_drop < 0:
        raise UsageError(f"--max-accuracy-drop {max_drop:g} is negative", hint="give the largest acceptable drop, e.g. 0.01")
    return max_drop


def eval_data(calib: str, eval_source: str | None, specs: Sequence[TensorSpec], *, recipe: ImageRecipe | None, workdir: Path) -> EvalData:
    """--eval data, or a hold-out of the calibration data written under `workdir` (every sample checked)."""
    if eval_source:
        es = calibration_set(eval_source, specs, recipe=recipe)
        return EvalData(list(es.feeds(specs)), es.labels, eval_source, es.description, None)
    cs = calibration_set(calib, specs, recipe=recipe)
    tail: collections.deque[dict[str, np.ndarray]] = collections.deque(maxlen=HOLD_OUT_MAX)
    n = 0
    for feed in cs.feeds(specs):  # one pass, bounded memory: only the last samples are kept
        tail.append(feed)
        n += 1
    if n < HOLD_OUT_MIN_SET:
        raise UsageError(f"calibration set {cs.description} has {n} samples: too few to hold some out for the accuracy check",
                         hint=f"give at least {HOLD_OUT_MIN_SET} samples, or held-out data with --eval")
    k = min(HOLD_OUT_MAX, max(1, int(n * HOLD_OUT_FRACTION)))
    held = list(tail)[-k:]
    folder = workdir / "holdout"
    folder.mkdir(parents=True, exist_ok=True)
    for i, feed in enumerate(held):
        np.savez(folder / f"{i:05d}.npz", **feed)
    labels = cs.labels[n - k:] if cs.labels is not None and len(cs.labels) == n else None
    return EvalData(held, labels, str(folder), f"the last {k} of {n} samples of {cs.description} (held out from calibration)", n - k)


def reference_outputs(model: Path, data: EvalData) -> None:
    """FP32 in ONNX Runtime: the reference every candidate is compared with (as `edgekit quantize --eval`)."""
    from edgekit.backends.onnxruntime import session_from_path

    sess = session_from_path(model)
    data.output_names = [o.name for o in sess.get_outputs()]
    data.reference = [sess.run(data.output_names, f) for f in data.feeds]


def accuracy(run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], data: EvalData, *, metric: str) -> dict[str, Any]:
    """The candidate's outputs on every held-out feed against FP32: per-output agreement and the metric's drop."""
    import time

    got: list[list[np.ndarray]] = []
    times = []
    for feed in data.feeds:
        t0 = time.perf_counter()
        out = run(feed)
        times.append((time.perf_counter() - t0) * 1e3)
        vals = list(out.values())
        # by name where the runtime kept the ONNX names, else by position
        got.append([out[n] if n in out else vals[i] for i, n in enumerate(data.output_names)])
    per_output = [OutputAgreement(n) for n in data.output_names]
    for ref, cand in zip(data.reference, got):
        for acc, a, b in zip(per_output, ref, cand):
            acc.add(a, b)
    # a crude latency for free (median run of this pass, first included): enough to drop a candidate many
    # times slower than another before the interleaved timing, which it would slow down for nothing
    result: dict[str, Any] = {"metric": metric, "drop": drop(metric, data.reference, got, data.labels), "pass_run_ms": float(np.median(times)),
                              "outputs": [a.to_dict() for a in per_output]}
    if data.labels is not None:
        result["top1_fp32"] = _hits(data.reference, data.labels) / len(data.labels)
        result["top1"] = _hits(got, data.labels) / len(data.labels)
    return result


def _hits(outputs: list[list[np.ndarray]], labels: list[int]) -> int:
    return sum(int(np.argmax(o[0]) == lb) for o, lb in zip(outputs, labels))


def drop(metric: str, reference: list[list[np.ndarray]], got: list[list[np.ndarray]], labels: list[int] | None) -> float:
    """How much worse than FP32, with quantize's definitions: 1 - worst cosine (per row of class-like
    outputs, else per sample), top-1 points lost (against labels when there are, else disagreement), or
    the largest absolute error of the first output."""
    if ":" in metric:
        from edgekit.deps import import_callable

        value = import_callable(metric)(reference, got, labels)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise UsageError(f"metric {metric} returned {value!r}, not a number", hint="return the accuracy drop as a float") from None
    if metric == "cosine":
        worst = 1.0
        for ref, out in zip(reference, got):
            for a, b in zip(ref, out):
                acc = OutputAgreement("x")
                acc.add(a, b)
                worst = min(worst, float(acc.to_dict()["cosine_min_row"]) if a.ndim >= 2 and a.shape[-1] > 1 else acc.cosine)
        return 1.0 - worst
    if metric == "maxabs":
        return max(float(np.abs(np.asarray(r[0], np.float64) - np.asarray(o[0], np.float64)).max()) for r, o in zip(reference, got))
    if labels is not None:
        return 100.0 * (_hits(reference, labels) - _hits(got, labels)) / len(labels)
    rows = [(r[0].reshape(-1, r[0].shape[-1]).argmax(-1), o[0].reshape(-1, o[0].shape[-1]).argmax(-1)) for r, o in zip(reference, got)]
    n = sum(len(a) for a, _ in rows)
    return 100.0 * sum(int((a != b).sum()) for a, b in rows) / n
