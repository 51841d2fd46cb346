"""One `optimize` run in this process: candidates built, judged for accuracy on held-out data and raced; the
winner written with its report. `OptimizeOptions` says how; `optimize_model` (the package's front door) calls
`optimize_here` directly, or through `optimize.remote` on an executor's node."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from edgekit.config import Budget, load_target
from edgekit.errors import BackendUnavailable, GateFailed, UsageError
from edgekit.machine import cpu_features
from edgekit.optimize.candidates import Candidate, all_names, candidate_for, compile_candidate, fallback_name, quantized_model
from edgekit.optimize.choose import choose
from edgekit.optimize.data import EvalData, accuracy, budget_for, eval_data, reference_outputs
from edgekit.optimize.race import Runner, latency_summary, race
from edgekit.progress import status

REPORT = "optimize.json"


@dataclasses.dataclass(frozen=True)
class OptimizeOptions:
    target: str = "onnxruntime"
    eval_source: str | None = None  # None: hold out the last 20% of the calibration data
    max_accuracy_drop: float | None = None  # None: the metric's default (cosine 0.01, top1 1 point)
    metric: str = "cosine"
    budgets: tuple[Budget, ...] = ()  # in addition to the target's
    candidates: tuple[str, ...] = ()  # () = every variant the device runs
    recipe: Any = None  # ImageRecipe for image-folder sources
    samples: int | None = None  # calibrate on at most N samples
    min_duration_s: float | None = None  # per candidate still running (default: the target's bench settings)
    max_duration_s: float | None = None
    stat: str = "floor"  # what "fastest" compares: floor (fastest 5%), p50 or mean
    # an edgekit.executors.Executor (None: this process). Ray: the run is one unit on the target's node (compiles,
    # accuracy, the interleaved race), and quantize's sensitivity units spread over the cluster (optimize.remote)
    executor: Any = None
    device: str | None = None  # race the latency on this device over SSH (a [devices.NAME] or ssh://...; edgekit.optimize.device)
    device_config: str | None = None  # the edgekit.toml naming the device (default ./edgekit.toml)


def check_arguments(out_dir: Path, options: OptimizeOptions) -> float:
    """The checks that need nothing but the arguments (before anything is shipped); the accuracy budget."""
    from edgekit.bench.stats import GATE_STATS

    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} exists and is not a folder", hint="give -o a folder path (it is replaced whole)")
    if options.stat not in GATE_STATS:
        raise UsageError(f"unknown statistic {options.stat!r}", hint=f"use one of {', '.join(GATE_STATS)}")
    if options.device and options.executor is not None and options.executor.name != "local":
        from edgekit.optimize.device import not_with_executor

        raise not_with_executor(options.device, options.executor.name)
    return budget_for(options.metric, options.max_accuracy_drop)


def optimize_here(model: Path, out_dir: Path, *, calib: str, options: OptimizeOptions, ran_on: dict[str, Any]) -> dict[str, Any]:
    """optimize_model in this process; `options.executor` (if any) runs quantize's sensitivity units;
    `ran_on` is where this process is (the report's `ran_on`)."""
    from edgekit.backends import get_backend
    from edgekit.onnxmodel import input_specs, is_qdq, load_onnx

    start = time.perf_counter()
    max_drop = check_arguments(out_dir, options)
    target = load_target(options.target)
    backend = get_backend(target.backend)
    st = backend.status()
    if not st.available:
        raise BackendUnavailable(st.reason or f"{target.backend} is not available here")
    on_device = _device_preflight(options, target.backend)
    proto = load_onnx(model)
    if is_qdq(proto):
        raise UsageError(f"{model} is already quantized (QDQ)", hint="give optimize the FP32 model: it makes the INT8 candidates itself")
    specs = input_specs(proto)
    del proto
    variants = backend.precision_variants(target.device, target.options)
    names = all_names(variants)
    wanted = list(options.candidates) or names
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise UsageError(f"candidate {unknown[0]!r} is not one {target.name} ({target.device}) runs", hint=f"use some of {', '.join(names)}")
    if "fp32" not in wanted:
        wanted.insert(0, "fp32")  # always a candidate: the safe choice when nothing faster is accurate enough
    settings = _settings(target, options)
    budgets = tuple(target.budgets) + tuple(options.budgets)
    workdir = Path(tempfile.mkdtemp(prefix="edgekit-optimize-"))
    try:
        with contextlib.ExitStack() as stack:
            with status("reading the evaluation data"):
                data = eval_data(calib, options.eval_source, specs, recipe=options.recipe, workdir=workdir)
                reference_outputs(model, data)
            t_data = time.perf_counter()
            cands = _build(model, calib, variants, wanted, target, options, data, max_drop, workdir, stack, settings)
            t_build = time.perf_counter()
            if on_device is None:
                _skip_far_slower(cands)
                runners = [Runner(c.name, _runner(c, data), c.accuracy is not None and c.accuracy["meets"]) for c in cands if c.built and not c.skipped]
                timing = race(runners, settings, budgets, stat=options.stat)
            else:
                from edgekit.optimize.device import race_on_device

                runners, timing, device_env = race_on_device(on_device, [c for c in cands if c.built], data.feeds[0], settings, budgets, stat=options.stat)
            # where the wall time went: quantize (and its float fallback) is inside building
            timing["phases_s"] = {"data": t_data - start, "build_and_accuracy": t_build - t_data, "race": timing["seconds"]}
            lat = {r.name: latency_summary(r, budgets, settings) for r in runners}
            choice = choose(cands, {r.name: r for r in runners}, lat, max_drop=max_drop, stat=options.stat, confidence=settings.confidence)
            env = _environment(cands) if on_device is None else device_env
        report = _report(model, target, options, data, max_drop, budgets, cands, lat, choice, timing, env, start, out_dir)
        report["ran_on"] = ran_on  # compiles, accuracy and the race: one place (quantize's ranking: each candidate's quantize.ranked_on)
        if on_device is not None:
            from edgekit.optimize.device import annotate

            annotate(report, on_device)
        if choice["winner"] is None:
            raise GateFailed(choice["why"], hint="loosen --max-accuracy-drop or the latency budget, or see the table for the closest", result=report)
        winner = next(c for c in cands if c.name == choice["winner"])
        with status(f"writing {out_dir}"):
            _write(winner, out_dir, report)
        report["seconds"] = time.perf_counter() - start
        return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _device_preflight(options: OptimizeOptions, backend: str) -> Any:
    """--device: the device, checked (reachable, runs the backend and the race) before minutes of building."""
    if options.device is None:
        return None
    from edgekit.optimize.device import preflight

    with status(f"checking device {options.device}"):
        return preflight(options.device, backend, config=options.device_config)


def _settings(target: Any, options: OptimizeOptions) -> Any:
    s = target.bench
    over = {k: v for k, v in {"min_duration_s": options.min_duration_s, "max_duration_s": options.max_duration_s}.items() if v is not None}
    if "min_duration_s" in over and "max_duration_s" not in over:
        over["max_duration_s"] = max(s.max_duration_s, over["min_duration_s"])
    return dataclasses.replace(s, **over)


def _build(model: Path, calib: str, variants: list[Any], wanted: list[str], target: Any, options: OptimizeOptions, data: EvalData,
           max_drop: float, workdir: Path, stack: contextlib.ExitStack, settings: Any) -> list[Candidate]:
    """Compile and load every wanted candidate, measure its accuracy; quantize once (twice with the fallback)."""
    from edgekit.quantize import QuantizeOptions

    cands: list[Candidate] = []
    floats = [v for v in variants if v.precision != "int8" and v.name in wanted]
    int8s = [v for v in variants if v.precision == "int8"]
    for v in floats:
        c = candidate_for(v, target)
        with status(f"compiling {c.name}"):
            compile_candidate(c, model, workdir, stack)
        cands.append(c)
    # quantize checks itself (#13) on the same held-out data optimize judges accuracy on, so it calibrates on all the rest
    q = QuantizeOptions(target=options.target, samples=_calib_samples(options, data), recipe=options.recipe, eval_source=data.source,
                        executor=options.executor)
    plain = [v for v in int8s if v.name in wanted]
    if plain:
        cands += _int8_candidates(plain, None, model, calib, q, workdir / "model.int8.onnx", target, stack)
    for c in cands:
        _measure_accuracy(c, data, options.metric, max_drop)
    asked = [v for v in int8s if fallback_name(v.name) in wanted]
    fallback, hopeless = _worth_a_fallback(asked, cands, max_drop)
    if asked and not any(c.accuracy and c.accuracy["meets"] for c in cands if c.variant.precision == "int8"):
        # (timed here: says nothing about a device's speed, so not with --device)
        beaten = _int8_already_beaten(cands, [v.name for v in fallback], data, settings, options.stat) if fallback and not options.device else None
        if beaten:
            hopeless += [(v, beaten) for v in fallback]
            fallback = []
        if fallback:
            # quantize with the budget: its float fallback keeps the most sensitive nodes in float until it holds
            qb = dataclasses.replace(q, eval_source=data.source, max_accuracy_drop=max_drop, metric=options.metric)
            more = _int8_candidates(fallback, fallback_name, model, calib, qb, workdir / "model.int8-fallback.onnx", target, stack)
            for c in more:
                _measure_accuracy(c, data, options.metric, max_drop)
            cands += more
        for v, why in hopeless:
            c = candidate_for(v, target, name=fallback_name(v.name))
            c.error = why
            cands.append(c)
    return cands


CRUDE_SLOWER = 3.0  # a candidate this many times slower than an accurate one in the accuracy pass is not timed


def _crude_ms(c: Candidate) -> float:
    return c.accuracy["pass_run_ms"] if c.accuracy else float("inf")


def _skip_far_slower(cands: list[Candidate]) -> None:
    """Candidates whose runs in the accuracy pass took CRUDE_SLOWER times those of the fastest accurate one cannot
    win, and a slow one would stretch every interleaved round (OpenVINO's INT8 + f16 ran EfficientNet-Lite0 12x slower)."""
    accurate = [c for c in cands if c.built and c.accuracy and c.accuracy["meets"]]
    if not accurate:
        return
    best = min(accurate, key=_crude_ms)
    for c in cands:
        if c.built and c is not best and _crude_ms(c) > CRUDE_SLOWER * _crude_ms(best):
            c.skipped = (f"{_crude_ms(c) / _crude_ms(best):.1f}x slower than {best.name} (accurate) in the accuracy pass "
                         f"(median run {_crude_ms(c):.2f} vs {_crude_ms(best):.2f} ms): it cannot win")


def _int8_already_beaten(cands: list[Candidate], fallback: list[str], data: EvalData, settings: Any, stat: str) -> str | None:
    """Why no fallback variant can win, if one cannot: the fastest all-INT8 variant is already slower than an
    accurate candidate (paired interval above 1, 10 interleaved rounds), and keeping nodes in float does not
    make it faster. Saves the fallback's search (minutes: a sensitivity pass per quantizable node)."""
    from edgekit.bench.stats import GATE_MEASURES
    from edgekit.bench.timer import measure_interleaved
    from edgekit.optimize.race import STAGE_ROUNDS, paired_ratio

    accurate = [c for c in cands if c.built and c.accuracy and c.accuracy["meets"]]
    int8 = [c for c in cands if c.built and c.variant.precision == "int8" and c.variant.name in fallback]
    if not accurate or not int8:
        return None
    # the fastest of each side by the accuracy pass's crude timing: two candidates interleaved, not all of them
    runners = [Runner(c.name, _runner(c, data), True) for c in (min(accurate, key=_crude_ms), min(int8, key=_crude_ms))]
    accurate = accurate[:1]
    with status("timing all-INT8 against the accurate candidates"):
        s = dataclasses.replace(settings, min_duration_s=max(0.2, settings.min_duration_s / 3), min_iterations=1)
        for r, t in zip(runners, measure_interleaved([r.run for r in runners], s, min_rounds=2 * STAGE_ROUNDS, seed=99)):
            assert t.rounds is not None
            r.add(t.latencies_ms, t.rounds, t.wall_s)
    measure = GATE_MEASURES[stat]
    best_acc = min(runners[:len(accurate)], key=lambda r: measure(r.latencies))
    best_int8 = min(runners[len(accurate):], key=lambda r: measure(r.latencies))
    t = paired_ratio(best_int8, best_acc, stat=stat, confidence=settings.confidence)
    if t["ci_low"] <= 1.0:
        return None
    return (f"not built: {best_int8.name}, all INT8, is already slower than {best_acc.name} (accurate): {stat} x{t['ratio']:.2f}, "
            f"interval [{t['ci_low']:.2f}, {t['ci_high']:.2f}]; keeping nodes in float would only slow it")


def _worth_a_fallback(variants: list[Any], cands: list[Candidate], max_drop: float) -> tuple[list[Any], list[tuple[Any, str]]]:
    """(the INT8 variants a float fallback can help, [(variant, why not)]): not those whose float parts alone
    (their drop beyond plain int8's) exceed the budget, which keeping nodes in float, in that same float
    precision, cannot recover (OpenVINO 2026.4's INT8 with f16 for the rest, measured on a Xeon: top-1 0%)."""
    drops = {c.name: c.accuracy["drop"] for c in cands if c.accuracy is not None}
    base = drops.get("int8")
    ok, hopeless = [], []
    for v in variants:
        extra = drops[v.name] - base if base is not None and v.name in drops else None
        if extra is not None and extra > max_drop:
            hopeless.append((v, f"not built: {v.name}'s float parts alone cost {extra:.3g} beyond int8's drop, over the budget: a float fallback cannot recover that"))
        else:
            ok.append(v)
    return ok, hopeless


def _int8_candidates(variants: list[Any], rename: Any, model: Path, calib: str, q: Any, out: Path, target: Any,
                     stack: contextlib.ExitStack) -> list[Candidate]:
    label = "quantizing with the accuracy budget (float fallback)" if q.max_accuracy_drop is not None else "quantizing"
    with status(label):
        qdq, summary, error = quantized_model(model, out, calib=calib, quantize_options=q)
    out_cands = []
    for v in variants:
        c = candidate_for(v, target, name=rename(v.name) if rename else None)
        c.quantize = summary
        if qdq is None:
            c.error = error
        else:
            with status(f"compiling {c.name}"):
                compile_candidate(c, qdq, out.parent, stack)
            if summary and summary.get("note"):
                c.notes.append(summary["note"])
        out_cands.append(c)
    return out_cands


def _calib_samples(options: OptimizeOptions, data: EvalData) -> int | None:
    if data.calib_samples is None:
        return options.samples
    return min(options.samples, data.calib_samples) if options.samples else data.calib_samples


def _measure_accuracy(c: Candidate, data: EvalData, metric: str, max_drop: float) -> None:
    if not c.built:
        return
    engine = c.engine
    assert engine is not None
    with status(f"accuracy of {c.name}"):
        c.accuracy = accuracy(engine.run, data, metric=metric)
    c.accuracy["meets"] = c.accuracy["drop"] <= max_drop


def _runner(c: Candidate, data: EvalData) -> Any:
    engine, feed = c.engine, data.feeds[0]
    assert engine is not None
    return lambda: engine.run(feed)


def _environment(cands: list[Candidate]) -> dict[str, Any]:
    from edgekit.bench.run import environment

    first = next(c for c in cands if c.built)
    assert first.engine is not None
    env = environment(dict(first.engine.info))
    env["cpu_features"] = cpu_features()
    return env


def _report(model: Path, target: Any, options: OptimizeOptions, data: EvalData, max_drop: float, budgets: tuple[Budget, ...],
            cands: list[Candidate], lat: dict[str, Any], choice: dict[str, Any], timing: dict[str, Any], env: dict[str, Any],
            start: float, out_dir: Path) -> dict[str, Any]:
    rows = []
    for c in cands:
        row: dict[str, Any] = {"name": c.name, "precision": c.variant.precision, "why_candidate": c.variant.why,
                               "options": dataclasses.asdict(c.variant.options) if c.variant.options is not None else {},
                               "built": c.built, "error": c.error, "build_s": c.build_s, "quantize": c.quantize, "accuracy": c.accuracy,
                               "notes": c.notes, **lat.get(c.name, {"latency_ms": None, "budgets": [], "stopped": c.skipped, "measured_s": 0.0, "stages": 0}),
                               "verdict": choice["verdicts"].get(c.name, "not built"), "vs_winner": choice["vs_winner"].get(c.name)}
        rows.append(row)
    return {
        "kind": "edgekit.optimize", "schema": 1, "model": str(model), "target": target.name, "backend": target.backend, "device": target.device,
        "accuracy_budget": {"metric": options.metric, "max_drop": max_drop, **data.to_dict()},
        "budgets": [str(b) for b in budgets], "stat": options.stat, "feed": {k: list(v.shape) for k, v in data.feeds[0].items()},
        "candidates": rows, "winner": choice["winner"], "why": choice["why"], "closest": choice.get("closest"),
        "output": str(out_dir) if choice["winner"] else None, "timing": timing, "seconds": time.perf_counter() - start,
        "environment": env,
    }


def _write(winner: Candidate, out_dir: Path, report: dict[str, Any]) -> None:
    """The winner's compile folder, its QDQ source beside it when INT8, a manifest saying why, the report."""
    from edgekit.compile import MANIFEST
    from edgekit.files import atomic_dir, json_default

    assert winner.folder is not None and winner.source is not None
    with atomic_dir(out_dir) as tmp:
        shutil.copytree(winner.folder, tmp, dirs_exist_ok=True)
        manifest = json.loads((tmp / MANIFEST).read_text())
        if winner.variant.precision == "int8":  # the QDQ model is temporary: ship it (pack and rebuilds need it)
            (tmp / "source").mkdir()
            for f in winner.source.parent.glob(winner.source.name + "*"):
                shutil.copy2(f, tmp / "source" / f.name)
            manifest["source"]["path"] = str((out_dir / "source" / winner.source.name).resolve())
        manifest["optimize"] = {"winner": winner.name, "why": report["why"], "report": REPORT,
                                "accuracy": {k: v for k, v in (winner.accuracy or {}).items() if k != "outputs"}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=json_default) + "\n")
        (tmp / REPORT).write_text(json.dumps(report, indent=2, default=json_default) + "\n")
