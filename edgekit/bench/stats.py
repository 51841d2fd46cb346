"""Latency statistics: percentiles with bootstrap confidence intervals, and the regression test."""
from __future__ import annotations

import dataclasses

import numpy as np

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0}


@dataclasses.dataclass
class Stat:
    value: float
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def _statistic(name: str, x: np.ndarray, axis: int = -1) -> np.ndarray:
    if name in PERCENTILES:
        return np.percentile(x, PERCENTILES[name], axis=axis)
    return {"mean": np.mean, "max": np.max, "min": np.min}[name](x, axis=axis)


def bootstrap(samples: np.ndarray, name: str, *, confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> Stat:
    """Percentile-bootstrap confidence interval of a statistic (max/min: the observed value, no interval)."""
    value = float(_statistic(name, samples))
    if name in ("max", "min") or len(samples) < 5:
        return Stat(value, value, value)
    rng = np.random.default_rng(seed)
    n = len(samples)
    b = max(200, min(resamples, int(2e7 // n)))  # bound the work for very long runs
    est = np.empty(b)
    chunk = max(1, int(2e6 // n))
    for i in range(0, b, chunk):
        idx = rng.integers(0, n, size=(min(chunk, b - i), n))
        est[i:i + idx.shape[0]] = _statistic(name, samples[idx], axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(est, [alpha, 1 - alpha])
    return Stat(value, float(lo), float(hi))


def summary(samples: np.ndarray, *, confidence: float = 0.95) -> dict[str, object]:
    out: dict[str, object] = {name: bootstrap(samples, name, confidence=confidence).to_dict() for name in PERCENTILES}
    out.update({
        "mean": float(samples.mean()), "std": float(samples.std(ddof=1)) if len(samples) > 1 else 0.0,
        "min": float(samples.min()), "max": float(samples.max()), "iterations": int(len(samples)),
    })
    return out


GATE_STATS = ("floor", "p50", "mean")


def floor_ms(x: np.ndarray, fraction: float = 0.05) -> float:
    """Mean of the fastest 5% of runs (at least 3). Noisy neighbours, interrupts and frequency dips only
    ever add time, so this is what a build costs when nothing interferes; measured on a shared 2-core VM
    it moved 4% between re-runs of one build where the median moved 25%. At least 3 runs, so that a
    short measurement's floor is not its single fastest run (whose bootstrap is degenerate)."""
    k = min(len(x), max(3, int(len(x) * fraction)))
    return float(np.mean(np.partition(x, k - 1)[:k]))


GATE_MEASURES = {"floor": floor_ms, "p50": np.median, "mean": np.mean}


def regression_test(current: np.ndarray, baseline: np.ndarray, *, max_regression: float, alpha: float = 0.01,
                    stat: str = "floor") -> dict[str, object]:
    """Slower only when `stat` grew by more than `max_regression` AND a one-sided Mann-Whitney U test
    says the current samples are stochastically larger (p < alpha): re-runs of one build do not flap."""
    from scipy.stats import mannwhitneyu

    measure = GATE_MEASURES[stat]
    ratio = float(measure(current) / measure(baseline))
    p = float(mannwhitneyu(current, baseline, alternative="greater").pvalue)
    regressed = ratio > 1 + max_regression and p < alpha
    return {"mode": "recorded", "stat": stat, "ratio": ratio, "median_ratio": float(np.median(current) / np.median(baseline)),
            "p_value": p, "test": "one-sided Mann-Whitney U", "alpha": alpha, "max_regression": max_regression, "regressed": regressed}


def paired_regression_test(current: np.ndarray, current_rounds: np.ndarray, baseline: np.ndarray, baseline_rounds: np.ndarray, *,
                           max_regression: float, alpha: float = 0.01, stat: str = "floor", confidence: float = 0.95,
                           resamples: int = 2000, seed: int = 0) -> dict[str, object]:
    """The gate for an interleaved measurement: `stat`(current) / `stat`(baseline) over all rounds, with a
    round-block bootstrap (rounds resampled with replacement, both sides of a round kept together, so the
    interval carries the machine's drift and the autocorrelation within a block). Slower only when the
    ratio exceeds 1 + `max_regression` AND the one-sided bootstrap p-value of "no slower" is under alpha."""
    measure = GATE_MEASURES[stat]
    ids = np.unique(np.concatenate([current_rounds, baseline_rounds]))
    cur_blocks = [current[current_rounds == i] for i in ids]
    base_blocks = [baseline[baseline_rounds == i] for i in ids]
    ratio = float(measure(current) / measure(baseline))
    rng = np.random.default_rng(seed)
    boot = np.empty(resamples)
    for j in range(resamples):
        pick = rng.integers(0, len(ids), size=len(ids))
        boot[j] = measure(np.concatenate([cur_blocks[k] for k in pick])) / measure(np.concatenate([base_blocks[k] for k in pick]))
    p = float((np.count_nonzero(boot <= 1.0) + 1) / (resamples + 1))
    lo, hi = np.quantile(boot, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
    regressed = ratio > 1 + max_regression and p < alpha
    return {"mode": "paired", "stat": stat, "ratio": ratio, "ci_low": float(lo), "ci_high": float(hi), "confidence": confidence,
            "median_ratio": float(np.median(current) / np.median(baseline)), "p_value": p, "test": "round-block bootstrap",
            "rounds": int(len(ids)), "alpha": alpha, "max_regression": max_regression, "regressed": regressed}
