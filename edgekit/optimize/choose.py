"""The winner, each candidate's verdict, and why; or, when none meets both budgets, the closest.

The winner is the fastest (by the chosen statistic) of the candidates that meet the accuracy budget
and every latency budget. Candidates whose paired ratio to it has a 95% interval containing 1 are as
fast within the noise of this machine: among those the most accurate wins, and the report says so.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgekit.bench.stats import GATE_MEASURES
from edgekit.optimize.candidates import Candidate
from edgekit.optimize.race import Runner, paired_ratio


def choose(cands: Sequence[Candidate], runners: Mapping[str, Runner], lat: Mapping[str, dict[str, Any]], *, max_drop: float,
           stat: str, confidence: float) -> dict[str, Any]:
    measure = GATE_MEASURES[stat]
    built = [c for c in cands if c.built and c.name in runners]
    speed = {c.name: measure(runners[c.name].latencies) for c in built}
    accurate = {c.name for c in built if c.accuracy and c.accuracy["meets"]}
    in_budget = {c.name for c in built if all(v["verdict"] == "pass" for v in lat[c.name]["budgets"])}
    eligible = sorted((c for c in built if c.name in accurate and c.name in in_budget), key=lambda c: speed[c.name])
    verdicts: dict[str, str] = {}
    for c in cands:
        if not c.built or c.name not in runners:
            verdicts[c.name] = "not built" if not c.built else "not timed"
            continue
        misses = ([f"accuracy (drop {_g(c.accuracy['drop'])} > {_g(max_drop)})"] if c.name not in accurate and c.accuracy else []) + [
            f"{v['budget']} ({v['stat']} {v['value']:.3f} ms)" for v in lat[c.name]["budgets"] if v["verdict"] != "pass"]
        verdicts[c.name] = "misses " + ", ".join(misses) if misses else "meets both"
    vs_winner: dict[str, Any] = {}
    if not eligible:
        return {"winner": None, "verdicts": verdicts, "vs_winner": vs_winner, **_closest(built, accurate, speed, lat, max_drop, stat)}
    # the leader among those still running at the end: they ran the same rounds, so their figures compare
    # fairly (a longer-measured candidate meets more quiet moments, and its floor drops); the others stopped
    # because they were surely slower than an accurate one
    pool = [c for c in eligible if runners[c.name].stopped is None] or eligible
    common = functools.reduce(np.intersect1d, [runners[c.name].rounds for c in pool])
    leader = min(pool, key=lambda c: measure(runners[c.name].latencies[np.isin(runners[c.name].rounds, common)]) if len(common) else speed[c.name])
    eligible = [leader] + [c for c in eligible if c is not leader]
    tied = [leader] + [c for c in eligible[1:] if paired_ratio(runners[c.name], runners[leader.name], stat=stat, confidence=confidence)["ci_low"] <= 1.0]
    winner = min(tied, key=lambda c: (c.accuracy["drop"] if c.accuracy else 0.0, speed[c.name]))
    for c in built:
        if c is not winner:
            t = paired_ratio(runners[c.name], runners[winner.name], stat=stat, confidence=confidence)
            vs_winner[c.name] = {"ratio": t["ratio"], "ci_low": t["ci_low"], "ci_high": t["ci_high"], "rounds": t["rounds"]}
    for c in eligible:
        verdicts[c.name] = "meets both, slower"
    verdicts[winner.name] = "WINNER"
    return {"winner": winner.name, "verdicts": verdicts, "vs_winner": vs_winner,
            "why": _why(winner, leader, eligible, built, speed, accurate, vs_winner, stat, max_drop)}


def _why(winner: Candidate, leader: Candidate, eligible: list[Candidate], built: list[Candidate], speed: dict[str, float],
         accurate: set[str], vs: dict[str, Any], stat: str, max_drop: float) -> str:
    n = len(eligible)
    if winner is leader:
        why = f"the fastest of the {n} candidate{'s' if n != 1 else ''} meeting both budgets ({stat} {speed[winner.name]:.3f} ms)"
        if n > 1:
            nxt = min(eligible[1:], key=lambda c: vs[c.name]["ratio"])
            r = vs[nxt.name]
            why += f"; next {nxt.name} x{r['ratio']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
    else:
        r = vs[leader.name]
        why = (f"as fast as {leader.name} within the noise ({leader.name}/{winner.name} {stat} x{r['ratio']:.2f}, interval "
               f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]) and more accurate (drop {_g(winner.accuracy['drop'])} vs {_g(leader.accuracy['drop'])})")
    faster = [c for c in built if c.name in vs and vs[c.name]["ratio"] < 1.0 and c.name not in {e.name for e in eligible}]
    if faster:
        why += "; faster but ruled out: " + ", ".join(
            f"{c.name} (x{vs[c.name]['ratio']:.2f}; {'accuracy drop ' + _g(c.accuracy['drop']) + ' > ' + _g(max_drop) if c.name not in accurate and c.accuracy else 'latency budget'})"
            for c in sorted(faster, key=lambda c: vs[c.name]["ratio"]))
    return why


def _closest(built: list[Candidate], accurate: set[str], speed: dict[str, float], lat: Mapping[str, dict[str, Any]], max_drop: float,
             stat: str) -> dict[str, Any]:
    """None meets both: the accurate candidate nearest its latency budgets, else the most accurate one."""
    if not built:
        return {"closest": None, "why": "no candidate could be built for this target"}
    if accurate:
        def excess(c: Candidate) -> float:
            return max((v["value"] / v["limit_ms"] for v in lat[c.name]["budgets"]), default=0.0)

        best = min((c for c in built if c.name in accurate), key=excess)
        over = "; ".join(f"{v['budget']}: {v['stat']} {v['value']:.3f} ms" for v in lat[best.name]["budgets"] if v["verdict"] != "pass")
        return {"closest": best.name, "why": f"no candidate meets both budgets: {len(accurate)} meet the accuracy budget but miss the "
                                             f"latency budget; closest {best.name} ({over})"}
    best = min(built, key=lambda c: c.accuracy["drop"] if c.accuracy else float("inf"))
    drop = best.accuracy["drop"] if best.accuracy else float("nan")
    return {"closest": best.name, "why": f"no candidate meets the accuracy budget ({best.accuracy['metric'] if best.accuracy else 'drop'} "
                                         f"drop <= {_g(max_drop)}); closest {best.name} (drop {_g(drop)}, {stat} {speed[best.name]:.3f} ms)"}


def _g(x: float) -> str:
    return f"{x:.3g}"
