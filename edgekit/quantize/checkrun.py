"""The check as `quantize_model` runs it: measure all-INT8 on held-out data, fall back to float where
it falls below the bar, and say which happened (or refuse with exit 3)."""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx

from edgekit.backends.base import QuantRecipe
from edgekit.data.calibration import CalibrationSet, calibration_set
from edgekit.errors import GateFailed, UsageError
from edgekit.onnxmodel import input_specs
from edgekit.progress import status
from edgekit.quantize.check import DEFAULT_BAR, HeldOut, SliceEvaluator, ranking_drop, reference_outputs, summary_line

INT8_RAN_ON = "onnxruntime on this CPU"
# The fallback aims a quarter of the way past the default bar (worst cosine 0.9925 for 0.99): met on a few
# held-out samples only, the bar itself would be missed on the next ones as often as not.
MARGIN = 0.25 * (1 - DEFAULT_BAR.min_cosine)


def _held_out_data(model: onnx.ModelProto, options: Any, held: HeldOut | None) -> tuple[list[Any], list[int] | None, str]:
    specs = input_specs(model)
    if held is not None:
        return held.feeds(specs), held.labels, held.describe()
    data = calibration_set(options.eval_source, specs, recipe=options.recipe)
    feeds = list(data.feeds(specs))
    return feeds, data.labels, f"{len(feeds)} samples of --eval {data.description}"


def checked_model(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]], recipe: QuantRecipe, exclude: Sequence[str],
                  options: Any, *, held: HeldOut | None, settled: dict[str, Any], calib: CalibrationSet | None = None,
                  method: str = "minmax", target: Any = None, source: str | None = None) -> tuple[onnx.ModelProto, dict[str, Any], dict[str, Any] | None]:
    """(the model to write, the check's report, the fallback's report or None). Below the bar, the PTQ
    algorithms (`ptq.py`, when `calib` is given) are tried first, then the float fallback from the best; above it,
    the PTQ transforms that keep the graph are tried for margin and kept where the held-out slice improves."""
    from edgekit.quantize import sensitivity
    from edgekit.quantize.fallback import keep_in_float
    from edgekit.quantize.qdq import copy_model, quantize_with_ranges

    user = options.max_accuracy_drop is not None
    if user and options.metric not in sensitivity.METRICS and ":" not in options.metric:
        raise UsageError(f"unknown metric {options.metric!r}", hint=f"use one of {', '.join(sensitivity.METRICS)} or pkg.module:callable")
    start = time.perf_counter()
    feeds, labels, where = _held_out_data(model, options, held)
    with status("checking INT8 against FP32 on held-out data"):
        names, reference, beyond = reference_outputs(model, feeds, ranges)
        evaluator = SliceEvaluator(feeds, reference, names, bar=None if user else DEFAULT_BAR, metric=options.metric, labels=labels)
        full = quantize_with_ranges(copy_model(model), ranges, recipe, exclude=exclude)
        got = evaluator.outputs_of(full)
    all_int8 = evaluator.compare(got)
    budget = options.max_accuracy_drop if user else 0.0
    drop_full = evaluator.drop_of(got) if user else max((o["shortfall"] for o in all_int8), default=0.0)
    check: dict[str, Any] = {
        "ran": True, "on": where, "samples": len(feeds), "int8_ran_on": INT8_RAN_ON,
        "bar": {"metric": options.metric, "max_drop": budget, "text": f"{options.metric} drop <= {budget:g}"} if user else DEFAULT_BAR.to_dict(),
        "all_int8": {"outputs": all_int8, "drop": drop_full, "passed": drop_full <= budget},
        "held_out_ranges": beyond, "ranges_settled": settled.get("settled"), "samples_needed": settled.get("samples_needed"),
    }
    fallback = None
    plain = (model, ranges)
    qmodel, final, drop = full, all_int8, drop_full
    unjudged = [o["unjudged"] for o in all_int8 if o.get("unjudged")] if not user else []
    if unjudged:  # the slice shows nothing an output could lose: no PTQ step, fallback or float precision can be judged on it
        check.update(outputs=all_int8, passed=False, evaluations=evaluator.evaluations, seconds=time.perf_counter() - start,
                     outcome="refused: the held-out samples cannot judge " + "; ".join(unjudged), unjudged=unjudged,
                     unjudged_outputs=[o["output"] for o in all_int8 if o.get("unjudged")])
        check["summary"] = summary_line(check)
        return full, check, None
    if calib is not None and getattr(options, "ptq", True):
        from edgekit.quantize import ptq

        rank_full = drop_full if user else ranking_drop(all_int8)
        passing = drop_full <= budget
        best, steps = ptq.improve(model, ranges, full, drop_full, rank_full, recipe, exclude, evaluator, calib, method=method,
                                  samples=options.samples, percentile=options.percentile, passing=passing)
        check["ptq"] = {"steps": steps, "summary": ptq.summary(steps), "drop": best.drop,
                        "why": "all INT8 meets the bar: the transforms that keep the graph, for margin" if passing else "all INT8 misses the bar"}
        if best.qmodel is not full:  # scored on the slice inside improve(): its comparison is the final one
            model, ranges, qmodel, drop, final = best.model, best.ranges, best.qmodel, best.drop, best.outputs
    if drop > budget:
        aim = budget if user else -MARGIN
        executor = getattr(options, "executor", None)
        qmodel, fallback = keep_in_float(model, ranges, recipe, exclude, evaluator, budget=aim, full=qmodel, drop_full=drop,
                                         metric=options.metric if user else "check bar", executor=executor)
        if not fallback["met"] and model is not plain[0]:
            # a transform that lowers all-INT8's shortfall can still move the error where no float node recovers it:
            # the search runs again from the plain model, and the better of the two stands
            q2, fb2 = keep_in_float(plain[0], plain[1], recipe, exclude, evaluator, budget=aim, full=full, drop_full=drop_full,
                                    metric=options.metric if user else "check bar", executor=executor)
            if fb2["met"] or fb2["drop_final"] < fallback["drop_final"]:
                qmodel, fallback = q2, {**fb2, "after_ptq": {k: fallback[k] for k in ("drop_final", "met", "evaluations")}}
                check["ptq"]["summary"] += ("; the float fallback met the bar only from the plain model" if fb2["met"] else
                                            "; the float fallback came closer from the plain model") + ": the PTQ result was dropped"
                check["ptq"]["dropped"] = True
        fallback["trigger"] = "accuracy budget" if user else "default check"
        if fallback["kept_in_float"]:
            final = evaluator.compare(evaluator.outputs_of(qmodel))
    passed = drop <= budget or bool(fallback and fallback["drop_final"] <= budget and fallback["int8_nodes"]["final"] > 0)
    kept_ptq = [] if check.get("ptq", {}).get("dropped") else [s["algorithm"] for s in check.get("ptq", {}).get("steps", []) if s["kept"]]
    check.update(outputs=final, passed=passed, evaluations=evaluator.evaluations, seconds=time.perf_counter() - start,
                 outcome=("all INT8 meets the bar" + (f", with more margin after {' + '.join(kept_ptq)}" if kept_ptq else "")) if drop_full <= budget else
                 f"fixed by {' + '.join(kept_ptq)}" if drop <= budget else
                 (f"fixed: {len(fallback['kept_in_float'])} node(s) kept in float" + (f" after {' + '.join(kept_ptq)}" if kept_ptq else "")
                  if passed else "refused: no fallback meets the bar"))  # type: ignore[index]
    check["summary"] = summary_line(check) if not user else f"{options.metric} drop {fallback['drop_final'] if fallback else drop:.4g} (budget {budget:g})"
    if not passed and target is not None:
        from edgekit.quantize.alternatives import float_alternatives

        def judge(got: list[list[Any]]) -> float:
            return evaluator.drop_of(got) - budget if user else max((o["shortfall"] for o in evaluator.compare(got)), default=0.0)

        with status("checking the float precisions the target runs against the same bar"):
            check["alternatives"] = float_alternatives(plain[0], evaluator, judge, backend=target.backend, target=target.name, source=source)
    return qmodel, check, fallback


def refusal(check: dict[str, Any], fallback: dict[str, Any] | None, output: Path, report: Any) -> GateFailed:
    """Exit 3: one line naming the outputs below the bar and the bar; the best model found is already written."""
    kept = len(fallback["kept_in_float"]) if fallback else 0
    if check["bar"].get("max_drop") is not None and "min_cosine" not in check["bar"]:
        msg = (f"no float fallback meets the accuracy budget: best {check['bar']['metric']} drop "
               f"{fallback['drop_final'] if fallback else check['all_int8']['drop']:.4g} > {check['bar']['max_drop']:g} "
               f"with {kept} nodes in float; wrote that model to {output}")
        hint = "raise --max-accuracy-drop, give more calibration data, or try --method percentile"
    elif check.get("unjudged"):
        resplit = f"; {check['held_out_resplit']}" if check.get("held_out_resplit") else ""
        msg = (f"INT8 cannot be checked: {'; '.join(check['unjudged'])}, so the check cannot tell whether INT8 keeps it "
               f"(on {check['on']}{resplit}); wrote the all-INT8 model to {output}")
        hint = ("give calibration data (or --eval DATA) with more samples where the map shows foreground or the detector finds "
                "objects: the held-out samples are a slice of it, or set your own --max-accuracy-drop")
    else:
        msg = (f"INT8 is {summary_line(check)} on {check['on']} (bar: {check['bar']['text']}), even with {kept} node(s) kept in float; "
               f"wrote that model to {output}")
        hint = "give more (and more varied) calibration data, try --method percentile, or set your own --max-accuracy-drop"
    need = check.get("samples_needed")
    if check.get("ranges_settled") is False and need:
        hint = (f"calibrate on about {need:,} samples (the ranges are still moving), or " + hint.split(", ", 1)[-1] if not check.get("unjudged")
                else hint + f"; the ranges are still moving: about {need:,} samples would settle them")
    alts = check.get("alternatives") or []
    from edgekit.quantize.alternatives import best_line

    unchecked = [a for a in alts if a["meets_bar"] is None]
    first = alts[0] if alts else None
    if first is not None and first["meets_bar"] is None:  # the fastest float candidate cannot be run here (TensorRT fp16)
        hint += f"; next to try: {first['precision']} ({first['checked']}): {first['command']}, then edgekit bench on the device"
    elif best_line(alts):
        hint = f"{best_line(alts)}; for INT8: " + hint
    elif unchecked:
        hint += "; " + "; ".join(f"{a['precision']}: {a['checked']}" for a in unchecked)
    return GateFailed(msg, hint=hint, result=report)
