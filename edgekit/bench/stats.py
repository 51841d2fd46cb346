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
    """Mean of the fastest 5% of runs. Noisy neighbours, interrupts and frequency dips only ever add
    time, so this is what a build costs when nothing interferes; measured on a shared 2-core VM it
    moved 4% between re-runs of one build where the median moved 25%."""
    k = max(1, int(len(x) * fraction))
    return float(np.mean(np.partition(x, k - 1)[:k]))


def regression_test(current: np.ndarray, baseline: np.ndarray, *, max_regression: float, alpha: float = 0.01,
                    stat: str = "floor") -> dict[str, object]:
    """Slower only when `stat` grew by more than `max_regression` AND a one-sided Mann-Whitney U test
    says the current samples are stochastically larger (p < alpha): re-runs of one build do not flap."""
    from scipy.stats import mannwhitneyu

    measure = {"floor": floor_ms, "p50": np.median, "mean": np.mean}[stat]
    ratio = float(measure(current) / measure(baseline))
    p = float(mannwhitneyu(current, baseline, alternative="greater").pvalue)
    regressed = ratio > 1 + max_regression and p < alpha
    return {"stat": stat, "ratio": ratio, "median_ratio": float(np.median(current) / np.median(baseline)), "p_value": p,
            "alpha": alpha, "max_regression": max_regression, "regressed": regressed}
