"""PTQ algorithms that need less float, tried when all-INT8 misses the check's bar (or the user's budget),
and, where it meets it, the two that leave the graph as it is (for margin: few held-out samples say little
about the next ones, and NNCF applies bias correction by default for the same reason).

Each one is tried on top of the best model so far and kept only when the held-out slice shows it
helps (its shortfall goes down; with equal shortfall, the continuous ranking score must drop). The
float fallback then starts from the best. In order:

1. SmoothQuant (`smoothquant.py`): MatMuls whose activation has outlier channels get the outliers
   moved into their weights, at migration strength 0.5 and 0.7 (both from the same model, the better
   stands); re-calibrated after.
2. Cross-layer equalization (`equalize.py`): Conv -> ReLU -> Conv pairs (depthwise-separable CNNs)
   get equal per-channel weight ranges; re-calibrated after.
3. Bias correction (`equalize.py`): the mean shift that weight rounding causes in each Conv/Gemm
   output, measured on the calibration data, is taken out of its bias.
4. Per-tensor calibration method: for each activation, the range (min-max, percentile or entropy,
   from the same histograms) whose quantization error on the held-out activations is lowest.

Cost, when the bar is missed: at most one calibration pass per transform that applies, plus one for the
per-tensor choice, and one held-out evaluation per step (at most 5). When all-INT8 meets the bar, only
cross-layer equalization and bias correction are tried (at most one calibration pass, one bias-correction
pass over the calibration data and 2 held-out evaluations): SmoothQuant adds nodes, and a range per tensor
chosen on the held-out slice would be judged on the same slice.
"""
from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import onnx

from edgekit.backends.base import QuantRecipe
from edgekit.data.calibration import CalibrationSet
from edgekit.quantize.calibstats import METHODS, RunningStats, tensor_range
from edgekit.data.feeds import Feed
from edgekit.onnxmodel import input_specs
from edgekit.progress import status
from edgekit.quantize.check import SliceEvaluator, ranking_drop

Ranges = dict[str, tuple[float, float]]


@dataclasses.dataclass
class Candidate:
    model: onnx.ModelProto  # the float model (transformed or not)
    ranges: Ranges
    qmodel: onnx.ModelProto  # its QDQ model
    drop: float  # shortfall against the bar (or the user metric's drop)
    rank: float  # continuous score (edgekit.quantize.check.ranking_drop)
    stats: dict[str, RunningStats] | None = None  # calibration statistics of `model`, when collected here
    outputs: list[dict[str, Any]] | None = None  # the check's per-output comparison of `qmodel` (None: the all-INT8 one)

    def better_than(self, other: Candidate) -> bool:
        return self.drop < other.drop - 1e-9 or (self.drop <= other.drop and self.rank < other.rank - 1e-4)


def _score(evaluator: SliceEvaluator, qmodel: onnx.ModelProto) -> tuple[float, float, list[dict[str, Any]]]:
    """(shortfall or the user metric's drop, the ranking score, the per-output comparison) from one run of the slice."""
    got = evaluator.outputs_of(qmodel)
    outs = evaluator.compare(got)
    if evaluator.bar is None:  # the user's metric
        d = evaluator.drop_of(got)
        return d, d, outs
    return max((o["shortfall"] for o in outs), default=0.0), ranking_drop(outs), outs


def _qsim(x: np.ndarray, lo: float, hi: float, symmetric: bool) -> np.ndarray:
    """x through an 8-bit quantizer with range [lo, hi], as ONNX Runtime's QDQ computes scale and zero point."""
    if symmetric:
        scale = max(abs(lo), abs(hi)) / 127.0 or 1.0
        return np.clip(np.round(x / scale), -128, 127) * scale
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    zp = np.round(-lo / scale)
    return (np.clip(np.round(x / scale) + zp, 0, 255) - zp) * scale


def per_tensor_methods(model: onnx.ModelProto, stats: dict[str, RunningStats], feeds: Sequence[Feed], recipe: QuantRecipe,
                       percentile: float) -> tuple[Ranges, dict[str, Any]]:
    """Per activation, the calibration method whose range quantizes the held-out activations with the lowest
    mean squared error (the held-out feeds: data the ranges were not computed on)."""
    from edgekit.backends.onnxruntime import session_from_bytes

    methods = [m for m in METHODS if m == "minmax" or all(st.histogram for st in stats.values())]
    cand = {m: {k: tensor_range(st, m, percentile=percentile, symmetric=recipe.activation_symmetric) for k, st in stats.items()} for m in methods}
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    known = {o.name for o in aug.graph.output}
    aug.graph.output.extend([onnx.ValueInfoProto(name=n) for n in stats if n not in known])
    sess = session_from_bytes(aug.SerializeToString())
    names = [o.name for o in sess.get_outputs()]
    err = {m: dict.fromkeys(stats, 0.0) for m in methods}
    for f in feeds:
        for n, v in zip(names, sess.run(names, f)):
            if n in stats and isinstance(v, np.ndarray) and v.dtype.kind == "f" and v.size:
                x = v.astype(np.float32, copy=False)
                for m in methods:
                    lo, hi = cand[m][n]
                    err[m][n] += float(np.mean((_qsim(x, lo, hi, recipe.activation_symmetric) - x) ** 2))
    chosen = {n: min(methods, key=lambda m: (err[m][n], m != recipe.method)) for n in stats}
    ranges = {n: cand[chosen[n]][n] for n in stats}
    counts = {m: sum(1 for c in chosen.values() if c == m) for m in methods}
    return ranges, {"sites": sum(v for m, v in counts.items() if m != recipe.method), "tensors_per_method": counts}


def improve(model: onnx.ModelProto, ranges: Ranges, full: onnx.ModelProto, drop_full: float, rank_full: float, recipe: QuantRecipe,
            exclude: Sequence[str],
            evaluator: SliceEvaluator, calib: CalibrationSet, *, method: str, samples: int | None, percentile: float,
            passing: bool = False) -> tuple[Candidate, list[dict[str, Any]]]:
    """The best of the PTQ algorithms on the held-out slice, and what each did (the report's `ptq`).
    `passing`: all-INT8 already meets the bar; only the transforms that keep the graph are tried."""
    from edgekit.quantize.equalize import bias_correct, equalize
    from edgekit.quantize.qdq import collect_stats, copy_model, quantize_with_ranges
    from edgekit.quantize.smoothquant import smooth_quant

    specs = input_specs(model)

    def feeds() -> Iterable[Feed]:
        return itertools.islice(calib.feeds(specs), samples)

    def calibrated(m: onnx.ModelProto) -> tuple[Ranges, dict[str, RunningStats]]:
        stats, _ = collect_stats(m, calib, limit=samples, histograms=True)
        return {k: tensor_range(st, method, percentile=percentile, symmetric=recipe.activation_symmetric) for k, st in stats.items()}, stats

    def candidate(m: onnx.ModelProto, r: Ranges, stats: dict[str, RunningStats] | None) -> Candidate:
        q = quantize_with_ranges(copy_model(m), r, recipe, exclude=exclude)
        drop, rank, outs = _score(evaluator, q)
        return Candidate(m, r, q, drop, rank, stats=stats, outputs=outs)

    best = base = Candidate(model, ranges, full, drop_full, rank_full)
    steps: list[dict[str, Any]] = []
    transforms: list[tuple[str, Callable[[Candidate], tuple[onnx.ModelProto, dict[str, Any]]], bool]] = [
        # two migration strengths from the same model (never one on top of the other): 0.5 suits ONNX Runtime's
        # U8 activations, 0.7 OpenVINO's on MiniLM (bench/smoothquant.py); the slice picks
        ("smoothquant", lambda c: smooth_quant(c.model, feeds, alpha=0.5), True),
        ("smoothquant alpha 0.7", lambda c: smooth_quant(base.model, feeds, alpha=0.7), True),
        ("cross-layer equalization", lambda c: equalize(c.model), True),
        ("bias correction", lambda c: bias_correct(c.model, c.qmodel, feeds), False),
    ]
    for name, fn, recalibrate in transforms:
        if passing and name.startswith("smoothquant"):
            steps.append({"algorithm": name, "applied": False, "kept": False, "why": "all INT8 meets the bar, and it adds nodes"})
            continue
        t0 = time.perf_counter()
        with status(f"trying {name}"):
            m2, info = fn(best)
            if not info.get("sites"):
                steps.append({"algorithm": name, "applied": False, "kept": False, "why": "nothing to apply it to", "info": info})
                continue
            r2, stats = calibrated(m2) if recalibrate else (best.ranges, None)
            c = candidate(m2, r2, stats)
        kept = c.better_than(best)
        steps.append({"algorithm": name, "applied": True, "kept": kept, "drop_before": best.drop, "drop_after": c.drop,
                      "rank_before": best.rank, "rank_after": c.rank, "seconds": time.perf_counter() - t0, "info": info,
                      "why": "lowered the held-out shortfall" if kept else "did not help on the held-out slice"})
        if kept:
            best = c
    if passing:
        steps.append({"algorithm": "per-tensor calibration method", "applied": False, "kept": False,
                      "why": "all INT8 meets the bar, and a range chosen on the held-out slice would be judged on it"})
        return best, steps
    t0 = time.perf_counter()
    with status("choosing a calibration method per tensor"):
        stats = best.stats if best.stats is not None else calibrated(best.model)[1]
        r4, info = per_tensor_methods(best.model, stats, evaluator.feeds, recipe, percentile)
        c = candidate(best.model, r4, stats) if info["sites"] else None
    if c is None:
        steps.append({"algorithm": "per-tensor calibration method", "applied": False, "kept": False,
                      "why": f"{method} is the best range for every tensor", "info": info})
    else:
        kept = c.better_than(best)
        steps.append({"algorithm": "per-tensor calibration method", "applied": True, "kept": kept, "drop_before": best.drop, "drop_after": c.drop,
                      "rank_before": best.rank, "rank_after": c.rank, "seconds": time.perf_counter() - t0, "info": info,
                      "why": "lowered the held-out shortfall" if kept else "did not help on the held-out slice"})
        if kept:
            best = c
    return best, steps


def summary(steps: Sequence[dict[str, Any]]) -> str:
    kept = [s["algorithm"] for s in steps if s["kept"]]
    tried = [s["algorithm"] for s in steps if s["applied"] and not s["kept"]]
    parts = [f"kept {', '.join(kept)}" if kept else "none helped"]
    if tried:
        parts.append(f"tried without gain: {', '.join(tried)}")
    return "; ".join(parts)
