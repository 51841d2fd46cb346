"""Latency statistics: percentiles with bootstrap confidence intervals, and the regression test."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

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


def budget_verdict(st: Stat, limit_ms: float) -> str:
    """pass when the whole interval is at or under the limit, fail when all of it is over, undecided between."""
    return "pass" if st.ci_high <= limit_ms else "fail" if st.ci_low > limit_ms else "undecided"


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


GATE_VERDICTS = ("pass", "regressed", "undecided")


def _verdict(ci_low: float, ci_high: float, *, max_regression: float) -> str:
    """Decided on the ratio's confidence interval against the threshold, so that chance alone decides
    wrongly only at the threshold itself: regressed when the whole interval lies above 1 + max_regression,
    pass when it lies at or under it, undecided while it holds the threshold (measure longer).

    With a 95% interval, a build exactly at the threshold is called regressed 2.5% of the time; an
    unchanged build (ratio 1) would need its interval's low end 0.1 above its true ratio, i.e. the
    estimate off by more than 4 of its standard errors even when noise makes that error 5%: < 1e-4.
    A build 1.5x slower passes only if the whole interval lands 0.4 below the truth."""
    if ci_low > 1 + max_regression:
        return "regressed"
    if ci_high <= 1 + max_regression:
        return "pass"
    return "undecided"


def regression_test(current: np.ndarray, baseline: np.ndarray, *, max_regression: float,
                    stat: str = "floor", confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> dict[str, object]:
    """Against recorded samples: the bootstrap interval of `stat`(current) / `stat`(baseline), each side
    resampled on its own, decides as in `_verdict`; the one-sided Mann-Whitney U p-value (current
    stochastically larger) is reported beside it. Drift between the two runs is not in the interval: the
    paired gate is the one to trust on a shared machine."""
    from scipy.stats import mannwhitneyu

    measure = GATE_MEASURES[stat]
    ratio = float(measure(current) / measure(baseline))
    p = float(mannwhitneyu(current, baseline, alternative="greater").pvalue)
    rng = np.random.default_rng(seed)
    boot = np.array([measure(rng.choice(current, len(current))) / measure(rng.choice(baseline, len(baseline))) for _ in range(resamples)])
    lo, hi = np.quantile(boot, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
    verdict = _verdict(float(lo), float(hi), max_regression=max_regression)
    return {"mode": "recorded", "stat": stat, "ratio": ratio, "ci_low": float(lo), "ci_high": float(hi), "confidence": confidence,
            "median_ratio": float(np.median(current) / np.median(baseline)), "p_value": p, "test": "one-sided Mann-Whitney U",
            "max_regression": max_regression, "verdict": verdict, "regressed": verdict == "regressed"}


def _round_bootstrap(current: np.ndarray, current_rounds: np.ndarray, baseline: np.ndarray, baseline_rounds: np.ndarray,
                     measure: Callable[[np.ndarray], float], *, resamples: int, confidence: float, seed: int) -> dict[str, float]:
    """measure(current) / measure(baseline), its round-block bootstrap interval and the one-sided p-value of
    "no slower" (the share of resampled ratios at or under 1). Rounds are resampled with replacement, both
    sides of a round kept together, so the interval carries the machine's drift between rounds."""
    ids = np.unique(np.concatenate([current_rounds, baseline_rounds]))
    cur_blocks = [current[current_rounds == i] for i in ids]
    base_blocks = [baseline[baseline_rounds == i] for i in ids]
    ratio = float(measure(current) / measure(baseline))
    rng = np.random.default_rng(seed)
    boot = np.empty(resamples)
    for j in range(resamples):
        pick = rng.integers(0, len(ids), size=len(ids))
        boot[j] = measure(np.concatenate([cur_blocks[k] for k in pick])) / measure(np.concatenate([base_blocks[k] for k in pick]))
    lo, hi = np.quantile(boot, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
    return {"ratio": ratio, "ci_low": float(lo), "ci_high": float(hi), "p_value": float((np.count_nonzero(boot <= 1.0) + 1) / (resamples + 1)),
            "rounds": int(len(ids))}


@dataclasses.dataclass(frozen=True)
class PairedSide:
    """One build's interleaved measurement, as the paired gate reads it."""

    latencies_ms: np.ndarray
    rounds: np.ndarray
    block_cpu_ms: np.ndarray | None = None  # CPU ms per run in each block (the process's, all threads)
    block_rounds: np.ndarray | None = None


def paired_regression_test(current: PairedSide, baseline: PairedSide, *, max_regression: float,
                           stat: str = "floor", confidence: float = 0.95, resamples: int = 2000, seed: int = 0,
                           busy: bool = False) -> dict[str, object]:
    """The gate for an interleaved measurement, on two clocks.

    Wall clock: `stat`(current) / `stat`(baseline) over all rounds with a round-block bootstrap. CPU time:
    the median over blocks of the CPU ms the process got per run, bootstrapped the same way; a neighbour
    that takes the core mid-run inflates wall time, not CPU time, so on a busy machine CPU time still sees a
    slower build that wall time blurs. Each clock decides on its interval (`_verdict`). The gate: regressed
    when wall time says so, or CPU time does and wall time does not pass; pass when wall time passes and
    CPU time does not say regressed; otherwise undecided (the caller measures longer, then reports it).
    On a busy machine (`busy`) "regressed" needs both clocks: a loaded suite run saw an A/A pair at x1.98
    [1.31, 2.16] wall beside bursty neighbours (a compile, an LM benchmark), where the CPU clock did not
    say regressed; a build that really is slower costs more CPU per run too and is still caught.
    (A build that trades CPU for latency, more threads busy for a shorter run, reads as undecided when
    its CPU time grew past the threshold.) `busy`: other work took the cores while measuring; then a wall
    clock that says regressed while CPU time does not is undecided (`busy_reason`): the neighbours' bursts
    land on one build's runs more than the other's (measured: an A/A pair at x1.41 wall, x1.01 CPU, beside
    1.4 cores of other work), and a build that really is slower for the same CPU (fewer threads, waiting)
    shows as regressed on a quiet runner. `p_value`: the share of resampled ratios at or under 1."""
    wall = _round_bootstrap(current.latencies_ms, current.rounds, baseline.latencies_ms, baseline.rounds, GATE_MEASURES[stat],
                            resamples=resamples, confidence=confidence, seed=seed)
    wall_verdict = _verdict(wall["ci_low"], wall["ci_high"], max_regression=max_regression)
    cpu: dict[str, object] | None = None
    cpu_verdict = None
    if current.block_cpu_ms is not None and baseline.block_cpu_ms is not None and current.block_rounds is not None \
            and baseline.block_rounds is not None and len(current.block_cpu_ms) >= 3 and len(baseline.block_cpu_ms) >= 3:
        c = _round_bootstrap(current.block_cpu_ms, current.block_rounds, baseline.block_cpu_ms, baseline.block_rounds,
                             lambda x: float(np.median(x)), resamples=resamples, confidence=confidence, seed=seed + 1)
        cpu_verdict = _verdict(c["ci_low"], c["ci_high"], max_regression=max_regression)
        cpu = {**c, "stat": "median CPU ms per run", "verdict": cpu_verdict}
    busy_reason = None
    if busy and wall_verdict == "regressed" and cpu is not None and cpu_verdict != "regressed":
        verdict = "undecided"
        busy_reason = (f"undecided: wall time says x{wall['ratio']:.3f} but the CPU time per run is x{cpu['ratio']:.3f} "
                       f"[{cpu['ci_low']:.3f}, {cpu['ci_high']:.3f}] ({cpu_verdict}) while other work shared the cores: the "
                       "wall-clock excess cannot be told from the neighbours; re-run on a quieter runner to judge latency that is not CPU work")
    elif wall_verdict == "regressed" or (cpu_verdict == "regressed" and wall_verdict != "pass"):
        verdict = "regressed"
    elif wall_verdict == "pass" and cpu_verdict != "regressed":
        verdict = "pass"
    else:
        verdict = "undecided"
    return {"mode": "paired", "stat": stat, **wall, "confidence": confidence, "wall_verdict": wall_verdict, "cpu": cpu,
            "median_ratio": float(np.median(current.latencies_ms) / np.median(baseline.latencies_ms)), "test": "round-block bootstrap",
            "max_regression": max_regression, "verdict": verdict, "regressed": verdict == "regressed",
            **({"busy_reason": busy_reason} if busy_reason else {})}
