"""Have the calibration ranges settled, and if not, how many samples would settle them?

A tensor's MinMax range after i samples is the running maximum R(i) of |x|. For the light
tails activations usually have (Gumbel domain: Gaussian, exponential), the running maximum
grows like R(i) = mu + sigma * ln(i): over the last 10% of N samples it moves by
sigma * ln(1/0.9), relative to R(N). Taking the move d observed over the last 10% of this
run's n samples as that growth (sigma = d * R(n) / ln(1/0.9)) and extrapolating from R(n):

    N = n * exp(ln(1/0.9) * (1/0.05 - 1/d))

samples bring the move below the 5% that `settled` allows (d = 21.5% -> about 5 n; 13.7% -> 3.8 n).
It is an estimate (the report says so), made per tensor; the run reports the tensor that
needs the most. Heavy-tailed tensors grow faster than ln(i) and need more than estimated:
the held-out check (`check.reference_outputs`) measures what the ranges miss on unseen data.
"""
from __future__ import annotations

import math
from typing import Any

from edgekit.quantize.calibstats import RunningStats

SETTLED = 0.05  # the range moved less than 5% over the last 10% of the samples
LIMIT = 1_000_000


def _moved(history: list[float]) -> float:
    if not history or history[-1] <= 0:
        return 0.0
    end = history[-1]
    return (end - history[max(0, int(len(history) * 0.9) - 1)]) / end


def samples_needed(history: list[float]) -> int | None:
    """Samples for this tensor's range to move less than SETTLED over the last 10% (None: too few to tell)."""
    n = len(history)
    if n < 4:
        return None
    d = _moved(history)
    if d < SETTLED:
        return n
    need = math.log(n) + math.log(1 / 0.9) * (1 / SETTLED - 1 / d)
    return LIMIT if need > math.log(LIMIT) else max(n + 1, math.ceil(math.exp(need)))


def settle_report(stats: dict[str, RunningStats]) -> dict[str, Any]:
    """How much the ranges still moved over the last 10% of the samples (0 = settled), and an estimate
    of the samples that would settle them."""
    worst, worst_name = 0.0, ""
    need, need_name = 0, ""
    for name, st in stats.items():
        move = _moved(st.history)
        if move > worst:
            worst, worst_name = move, name
        if move >= SETTLED:
            n = samples_needed(st.history)
            if n is not None and n > need:
                need, need_name = n, name
    used = max((len(st.history) for st in stats.values()), default=0)
    return {"max_range_change_last_10pct": worst, "tensor": worst_name, "settled": worst < SETTLED,
            "samples_needed": need if need else (None if worst >= SETTLED else used), "samples_needed_tensor": need_name or None,
            "samples_needed_is_estimate": True}


def describe(settled: dict[str, Any], used: int) -> str:
    """'settled' or 'still moving (21.5% over the last 10%; about 400 samples would settle them)'."""
    move = settled.get("max_range_change_last_10pct", 0.0)
    if settled.get("settled"):
        return f"settled ({100 * move:.1f}% over the last 10%)"
    need = settled.get("samples_needed")
    if need is None:
        tail = f"too few samples ({used}) to estimate how many would settle them"
    elif need >= LIMIT:
        tail = f"more than {LIMIT:,} samples would be needed (heavy tails: try --method percentile)"
    else:
        tail = f"about {need:,} samples would settle them (estimate)"
    return f"still moving ({100 * move:.1f}% over the last 10%; {tail})"
