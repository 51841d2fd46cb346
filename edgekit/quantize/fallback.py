"""The float fallback: keep the most sensitive nodes in float until the check's bar (or the user's budget) holds.

Nodes are ranked by what each costs alone (only that node quantized), then `sensitivity.search`
finds the smallest number of top-ranked nodes to keep in float. To bound the work on large
graphs, the candidates are ranked in at most MAX_UNITS units (contiguous runs of nodes in graph
order when there are more candidates). A fallback that keeps more than half of the units in float
is no INT8 model any more: the search stops there and, when the bar is still missed, the run is
refused (exit 3) with the best model found (the all-INT8 one if nothing else stays INT8). Worst case, in model evaluations (each: place QDQ nodes, build an ONNX Runtime
session, run the held-out slice):

    units + 2 * ceil(log2(units / 2)) + 1   (units <= 64: at most 77)

plus the all-INT8 model the check already measured. When single nodes in float do not meet the bar and
the graph has regions (`regions.find_regions`: attention blocks, conv stems, RNN cells, layer norms, ...),
the search runs once more with each region as one unit (what builds up inside a block is recovered only
by keeping the block), and the better of the two stands (`regions_as_units` in the report); the worst
case then adds that search's own count.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from edgekit.backends.base import QuantRecipe
from edgekit.inspection import quantized_nodes
from edgekit.progress import status
from edgekit.quantize.check import SliceEvaluator

MAX_UNITS = 64
TIMED_NODES = 8  # latency cost per kept unit is timed for the first few only (each costs ~1 s of timing)


def worst_case_evaluations(units: int) -> int:
    return units + 2 * math.ceil(math.log2(max(units // 2, 1))) + 1


def _units(model: onnx.ModelProto, candidates: Sequence[str]) -> list[tuple[str, list[str], str]]:
    """(label, nodes, op types) per unit; one node per unit when there are at most MAX_UNITS candidates."""
    ops = {n.name: n.op_type for n in model.graph.node}
    size = max(1, math.ceil(len(candidates) / MAX_UNITS))
    out = []
    for i in range(0, len(candidates), size):
        group = list(candidates[i:i + size])
        label = group[0] if len(group) == 1 else f"{group[0]} .. {group[-1]} ({len(group)} nodes)"
        out.append((label, group, ", ".join(sorted({ops[g] for g in group}))))
    return out


def _region_units(model: onnx.ModelProto, candidates: Sequence[str]) -> list[tuple[str, list[str], str]]:
    """Units where each region (`regions.find_regions`: an attention block, a conv stem, an RNN cell, ...)
    is one unit with its candidate nodes, the candidates outside regions as in `_units`; [] without regions."""
    from edgekit.quantize.regions import find_regions

    ops = {n.name: n.op_type for n in model.graph.node}
    cand = set(candidates)
    out, inside = [], set()
    for r in find_regions(model):
        nodes = [n for n in r.nodes if n in cand and n not in inside]
        if len(nodes) >= 2:
            inside.update(nodes)
            out.append((f"{r.kind} {nodes[0]} .. {nodes[-1]} ({len(nodes)} nodes)", nodes, ", ".join(sorted({ops[n] for n in nodes}))))
    if not out:
        return []
    rest = [c for c in candidates if c not in inside]
    return out + (_units(model, rest) if rest else [])


def keep_in_float(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]], recipe: QuantRecipe, exclude: Sequence[str],
                  evaluator: SliceEvaluator, *, budget: float, full: onnx.ModelProto, drop_full: float,
                  metric: str, executor: Any = None) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The fallback search from an all-INT8 model `full` whose drop `drop_full` exceeds `budget`.
    `executor` (edgekit.executors): where the per-unit sensitivity ranking runs (None: here)."""
    from onnxruntime.quantization.registry import QDQRegistry

    from edgekit.quantize import sensitivity
    from edgekit.quantize.qdq import copy_model, quantize_with_ranges

    op_types = set(recipe.op_types or QDQRegistry.keys())
    candidates = [n.name for n in model.graph.node if n.op_type in op_types and n.name and n.name not in set(exclude)]
    start = evaluator.evaluations
    ran_before = len(executor.ran) if executor is not None else 0  # an executor may serve several quantize runs (optimize)

    class _Ranker:  # rank by the continuous score; search against the budget
        def drop(self, m: onnx.ModelProto) -> float:
            return evaluator.rank_drop(m)

    def run(units: list[tuple[str, list[str], str]]) -> tuple[Any, ...]:
        nodes_of = {label: nodes for label, nodes, _ in units}
        op_of = {label: ops for label, _, ops in units}

        def q(labels: Sequence[str]) -> onnx.ModelProto:
            extra = {n for lb in labels for n in nodes_of.get(lb, [lb])}
            return quantize_with_ranges(copy_model(model), ranges, recipe, exclude=sorted(set(exclude) | extra))

        labels = [lb for lb, _, _ in units]
        ranking = sensitivity.rank_nodes(labels, lambda lb: q([x for x in labels if x != lb]), _Ranker(), executor=executor)  # type: ignore[arg-type]
        with status("searching the float fallback"):
            found = sensitivity.search(ranking[:max(1, len(ranking) // 2)], q, evaluator, budget, known={0: drop_full})  # type: ignore[arg-type]
        kept = [{"node": lb, "nodes": nodes_of[lb], "cost": c, "op_type": op_of[lb]} for lb, c in ranking[:found["kept"]]]
        return units, q, ranking, found, kept

    units, q, ranking, found, kept = run(_units(model, candidates))
    by_regions = None
    regional = [] if found["met"] else _region_units(model, candidates)
    if regional:
        # single nodes kept in float did not meet the bar: errors that build up inside a block (attention, a conv
        # stem, an RNN cell) are recovered only by keeping the block in float as a whole; searched the same way
        r_units, r_q, r_ranking, r_found, r_kept = run(regional)
        by_regions = {"units": len(r_units), "met": r_found["met"], "drop": r_found["drop"], "kept": len(r_kept),
                      "worst_case_evaluations": worst_case_evaluations(len(r_units))}
        if r_found["met"] or r_found["drop"] < found["drop"]:
            units, q, ranking, found, kept = r_units, r_q, r_ranking, r_found, r_kept
            by_regions["chosen"] = True
    final = q([k["node"] for k in kept])
    int8_full, int8_final = len(quantized_nodes(full)[0]), len(quantized_nodes(final)[0])
    if int8_final == 0:  # nothing left in INT8 is no INT8 model: the best INT8 answer is the all-INT8 one
        kept, final, found = [], full, {**found, "kept": 0, "drop": drop_full, "met": False}
    result: dict[str, Any] = {
        "metric": metric, "budget": budget, "drop_full": drop_full, "candidates": len(candidates), "units": len(units),
        "ranking": [{"node": n, "cost": c} for n, c in ranking[:20]], "kept_in_float": kept, "drop_final": found["drop"],
        "met": found["met"], "tried": {str(k): v for k, v in found["tried"].items()}, "int8_nodes": {"all_int8": int8_full, "final": int8_final},
        "evaluations": evaluator.evaluations - start,
        "worst_case_evaluations": worst_case_evaluations(len(_units(model, candidates))) + (by_regions["worst_case_evaluations"] if by_regions else 0),
    }
    if by_regions is not None:
        result["regions_as_units"] = by_regions
    if executor is not None:
        from edgekit.executors import placement

        result["ranked_on"] = placement(executor.ran[ran_before:])
    if kept:
        with status("timing the float fallback"):
            timed = kept[:TIMED_NODES]
            speed = _fallback_speed(full, final, timed, q, evaluator.feeds[0])
        for k in kept:
            k["latency_cost_ms"] = speed["per_node_ms"].get(k["node"])
        result["latency_ms"] = {"all_int8": speed["all_int8"], "final": speed["final"]}
    return final, result


def _fallback_speed(full: onnx.ModelProto, final: onnx.ModelProto, kept: list[dict[str, Any]], q: Any, feed: dict[str, np.ndarray]) -> dict[str, Any]:
    """What keeping each node in float costs in latency (ONNX Runtime, this CPU): that node alone in float vs all
    INT8. Variants are timed in interleaved blocks and compared on their floor (fastest 5%), which interference cannot lower."""
    from edgekit.backends.onnxruntime import session_from_bytes
    from edgekit.bench.stats import floor_ms
    from edgekit.bench.timer import measure_interleaved
    from edgekit.config import BenchSettings

    models = {"all_int8": full, "final": final, **{k["node"]: q([k["node"]]) for k in kept}}
    sessions = {name: session_from_bytes(m.SerializeToString()) for name, m in models.items()}
    settings = BenchSettings(warmup_ms=100, min_iterations=10, min_duration_s=0.9)
    timed = measure_interleaved([lambda s=sess: s.run(None, feed) for sess in sessions.values()], settings)
    best = {name: floor_ms(t.latencies_ms) for name, t in zip(sessions, timed)}
    return {"all_int8": best["all_int8"], "final": best["final"], "per_node_ms": {k["node"]: best[k["node"]] - best["all_int8"] for k in kept}}
