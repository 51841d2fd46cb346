"""Latency of every candidate, interleaved, in stages; candidates that cannot win stop early.

Each stage is one `measure_interleaved` call over the candidates still running (short blocks of
each in a fresh random order every round: drift on a shared machine hits all of them alike).
After a stage, a candidate stops when it cannot win: it misses the accuracy budget (timed one
stage, for the table), its latency budget's interval lies above the budget, or a round-block
bootstrap of its ratio to the fastest accurate candidate puts the whole 95% interval above 1 —
the paired statistics of `edgekit bench --baseline`.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgekit.bench.stats import GATE_MEASURES, PairedSide, bootstrap, paired_regression_test, summary
from edgekit.bench.timer import measure_interleaved
from edgekit.config import BenchSettings, Budget
from edgekit.progress import interactive

STAGE_ROUNDS = 5


@dataclasses.dataclass
class Runner:
    name: str
    run: Callable[[], object]
    accurate: bool
    latencies: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0))
    rounds: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0, dtype=int))
    spent_s: float = 0.0
    stages: int = 0
    stopped: str | None = None

    def add(self, lat: np.ndarray, rounds: np.ndarray, spent: float) -> None:
        self.latencies = np.concatenate([self.latencies, lat])
        self.rounds = np.concatenate([self.rounds, rounds])
        self.spent_s += spent
        self.stages += 1


def budget_verdict(samples: np.ndarray, budget: Budget, confidence: float) -> dict[str, Any]:
    """pass when the statistic's interval lies under the budget, fail when above, else undecided (as bench)."""
    st = bootstrap(samples, budget.stat, confidence=confidence)
    verdict = "pass" if st.ci_high <= budget.ms else "fail" if st.ci_low > budget.ms else "undecided"
    return {"budget": str(budget), "stat": budget.stat, "limit_ms": budget.ms, **st.to_dict(), "verdict": verdict}


def paired_ratio(a: Runner, b: Runner, *, stat: str, confidence: float) -> dict[str, Any]:
    """stat(a) / stat(b) over the rounds both ran in, with the round-block bootstrap interval."""
    common = np.intersect1d(a.rounds, b.rounds)
    ma, mb = np.isin(a.rounds, common), np.isin(b.rounds, common)
    return paired_regression_test(PairedSide(a.latencies[ma], a.rounds[ma]), PairedSide(b.latencies[mb], b.rounds[mb]), max_regression=0.0,
                                  stat=stat, confidence=confidence, resamples=1000)


def race(runners: Sequence[Runner], settings: BenchSettings, budgets: Sequence[Budget], *, stat: str) -> dict[str, Any]:
    """Measure until every candidate still running has `settings.min_duration_s`, its budgets are decided and no
    two of them are tied (or `settings.max_duration_s` of racing has passed); returns what happened, stage by stage."""
    measure = GATE_MEASURES[stat]
    stage_s = max(0.2, settings.min_duration_s / 3)
    start = time.perf_counter()
    offset, log = 0, []
    show = interactive()
    while True:
        live = [r for r in runners if r.stopped is None]
        if not live:
            break
        s = dataclasses.replace(settings, min_duration_s=stage_s, min_iterations=1, warmup_ms=settings.warmup_ms if offset == 0 else 0.0)
        if show:
            import sys

            sys.stderr.write(f"\rtiming {len(live)} candidates, stage {len(log) + 1}...")
            sys.stderr.flush()
        timed = measure_interleaved([r.run for r in live], s, min_rounds=STAGE_ROUNDS, seed=len(log))
        for r, t in zip(live, timed):
            assert t.rounds is not None
            r.add(t.latencies_ms, t.rounds + offset, t.wall_s)
        offset += max(int(t.rounds.max()) + 1 for t in timed if t.rounds is not None and len(t.rounds))
        stopped_now = _stop_losers(live, budgets, settings, stat, measure)
        log.append({"candidates": [r.name for r in live], "stopped": stopped_now, "seconds": round(time.perf_counter() - start, 3)})
        running = [r for r in live if r.stopped is None]
        enough = all(r.spent_s >= settings.min_duration_s for r in running)
        undecided = any(budget_verdict(r.latencies, b, settings.confidence)["verdict"] == "undecided" for r in running for b in budgets)
        # two accurate candidates still within each other's noise: measure longer (up to the cap) before a
        # tie is settled by accuracy, as bench measures longer before deciding a straddled budget
        capped = time.perf_counter() - start >= settings.max_duration_s
        if enough and (capped or not (undecided or _tied(running, stat, settings.confidence))):
            break
    if show:
        import sys

        sys.stderr.write("\r\x1b[2K")
    return {"stages": log, "seconds": time.perf_counter() - start}


def _tied(running: list[Runner], stat: str, confidence: float) -> bool:
    if len(running) < 2:
        return False
    measure = GATE_MEASURES[stat]
    leader = min(running, key=lambda r: measure(r.latencies))
    return any(paired_ratio(r, leader, stat=stat, confidence=confidence)["ci_low"] <= 1.0 for r in running if r is not leader)


def _stop_losers(live: list[Runner], budgets: Sequence[Budget], settings: BenchSettings, stat: str, measure: Callable[[np.ndarray], float]) -> dict[str, str]:
    stopped: dict[str, str] = {}
    for r in live:
        if not r.accurate:
            r.stopped = "misses the accuracy budget: timed one stage, for the table"
        else:
            over = [v for v in (budget_verdict(r.latencies, b, settings.confidence) for b in budgets) if v["verdict"] == "fail"]
            if over:
                v = over[0]
                r.stopped = f"{v['budget']}: its interval [{v['ci_low']:.3f}, {v['ci_high']:.3f}] ms lies above the budget"
    accurate = [r for r in live if r.stopped is None]
    if accurate:
        leader = min(accurate, key=lambda r: measure(r.latencies))
        for r in accurate:
            if r is leader:
                continue
            if len(np.intersect1d(r.rounds, leader.rounds)) < 2 * STAGE_ROUNDS:
                continue  # a round-block bootstrap over a handful of rounds is too sure of itself
            t = paired_ratio(r, leader, stat=stat, confidence=settings.confidence)
            if t["ci_low"] > 1.0:
                r.stopped = (f"slower than {leader.name} (accurate): {stat} x{t['ratio']:.2f}, "
                             f"{int(100 * settings.confidence)}% interval [{t['ci_low']:.2f}, {t['ci_high']:.2f}]")
    for r in live:
        if r.stopped is not None:
            stopped[r.name] = r.stopped
    return stopped


def latency_summary(r: Runner, budgets: Sequence[Budget], settings: BenchSettings) -> dict[str, Any]:
    from edgekit.bench.stats import floor_ms

    verdicts = []
    for b in budgets:
        v = budget_verdict(r.latencies, b, settings.confidence)
        if v["verdict"] == "undecided":
            v["reason"] = f"the interval [{v['ci_low']:.3f}, {v['ci_high']:.3f}] ms straddles {b.ms:g} ms: decided on the point estimate"
            v["verdict"] = "pass" if v["value"] <= b.ms else "fail"
        verdicts.append(v)
    return {"latency_ms": {**summary(r.latencies, confidence=settings.confidence), "floor": floor_ms(r.latencies)},
            "budgets": verdicts, "measured_s": r.spent_s, "stages": r.stages, "stopped": r.stopped}
