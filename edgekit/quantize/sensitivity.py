"""Per-node sensitivity and the accuracy-budget search: keep the nodes that cost most in float.

Sensitivity of a node = the accuracy metric when only that node is quantized (what it
alone costs). The search keeps the k most sensitive nodes in float, doubling k until
the budget holds, then bisects to the smallest k that holds.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx

from edgekit.executors import Executor
from edgekit.inspection import quantized_nodes
from edgekit.data.metrics import OutputAgreement
from edgekit.progress import track

METRICS = ("cosine", "top1", "maxabs")


@dataclasses.dataclass
class Evaluator:
    """The FP32 outputs of held-out feeds, computed once; `drop(model)` measures a candidate against them."""

    feeds: list[dict[str, np.ndarray]]
    reference: list[list[np.ndarray]]
    metric: str
    labels: list[int] | None = None

    def drop(self, model: onnx.ModelProto) -> float:
        """How much worse than FP32: 1 - worst cosine, top-1 points lost, or max abs error of the first output."""
        from edgekit.backends.onnxruntime import session_from_bytes

        sess = session_from_bytes(model.SerializeToString())
        return self.drop_of([sess.run(None, f) for f in self.feeds])

    def drop_of(self, got: list[list[np.ndarray]]) -> float:
        """The drop of a candidate's outputs on `feeds` (in the order of `reference`)."""
        if ":" in self.metric:  # a user metric, pkg.module:callable(reference, candidate, labels) -> drop
            from edgekit.errors import UsageError
            from edgekit.deps import import_callable

            value = import_callable(self.metric)(self.reference, got, self.labels)
            try:
                return float(value)
            except (TypeError, ValueError):
                raise UsageError(f"metric {self.metric} returned {value!r}, not a number", hint="return the accuracy drop as a float") from None
        if self.metric == "cosine":
            worst = 1.0
            for ref, out in zip(self.reference, got):
                for a, b in zip(ref, out):
                    acc = OutputAgreement("x")
                    acc.add(a, b)
                    worst = min(worst, acc._cos_min if a.ndim >= 2 and a.shape[-1] > 1 else acc.cosine)
            return 1.0 - worst
        if self.metric == "maxabs":
            return max(float(np.abs(ref[0] - out[0]).max()) for ref, out in zip(self.reference, got))
        # top1: points lost against labels when there are labels, else disagreement with FP32 in points
        n = sum(r[0].reshape(-1, r[0].shape[-1]).shape[0] for r in self.reference)
        if self.labels is not None:
            ref_hits = sum(int(np.argmax(r[0]) == lb) for r, lb in zip(self.reference, self.labels))
            q_hits = sum(int(np.argmax(o[0]) == lb) for o, lb in zip(got, self.labels))
            return 100.0 * (ref_hits - q_hits) / n
        same = sum(int((r[0].reshape(-1, r[0].shape[-1]).argmax(-1) == o[0].reshape(-1, o[0].shape[-1]).argmax(-1)).sum())
                   for r, o in zip(self.reference, got))
        return 100.0 * (n - same) / n


def rank_nodes(candidates: Sequence[str], quantize_only: Callable[[str], onnx.ModelProto], evaluator: Evaluator,
               *, executor: Executor | None = None) -> list[tuple[str, float]]:
    """(node, drop when only this node is quantized), most costly first. With an `executor`, each node's
    quantize + evaluate is one work unit there (`executor.ran` keeps where each ran)."""
    if executor is not None:
        drops = [d.value for d in executor.map(lambda name: evaluator.drop(quantize_only(name)), candidates, label="sensitivity")]
        return sorted(zip(candidates, drops), key=lambda c: -c[1])
    costs = [(name, evaluator.drop(quantize_only(name))) for name in track(candidates, label="sensitivity", total=len(candidates))]
    return sorted(costs, key=lambda c: -c[1])


def search(ranking: Sequence[tuple[str, float]], quantize_excluding: Callable[[list[str]], onnx.ModelProto],
           evaluator: Evaluator, budget: float, *, known: dict[int, float] | None = None) -> dict[str, Any]:
    """Smallest k such that keeping the k most sensitive nodes in float meets `budget`.

    At most 2 * ceil(log2(len(ranking))) + 1 evaluations (doubling, then bisection); `known`
    gives drops already measured (k = 0: the all-INT8 model)."""
    tried: dict[int, float] = dict(known or {})

    def drop_at(k: int) -> float:
        if k not in tried:
            tried[k] = evaluator.drop(quantize_excluding([n for n, _ in ranking[:k]]))
        return tried[k]

    if drop_at(0) <= budget:
        return {"kept": 0, "drop": tried[0], "met": True, "tried": tried}
    lo, k = 0, 1
    while k < len(ranking) and drop_at(k) > budget:
        lo, k = k, min(2 * k, len(ranking))
    if drop_at(k) > budget:
        best = min(tried, key=lambda i: tried[i])
        return {"kept": best, "drop": tried[best], "met": False, "tried": tried}
    hi = k
    while hi - lo > 1:  # drop_at(lo) > budget >= drop_at(hi)
        mid = (lo + hi) // 2
        if drop_at(mid) <= budget:
            hi = mid
        else:
            lo = mid
    return {"kept": hi, "drop": tried[hi], "met": True, "tried": tried}


def quantized_compute_nodes(model: onnx.ModelProto) -> list[str]:
    return quantized_nodes(model)[0]
