"""`bench`: load an artifact, measure it, and decide budgets and the baseline gate."""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bench.baseline import artifact_sha256, baseline_identity, model_changed_error, resolve_baseline
from edgekit.bench.stats import PairedSide, bootstrap, budget_verdict, paired_regression_test, regression_test, summary
from edgekit.bench.timer import Samples, measure, measure_interleaved
from edgekit.config import BenchSettings, Budget, Target, load_target
from edgekit.errors import UsageError
from edgekit.files import shown
from edgekit.progress import interactive


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    """How to bench. Budgets: the target profile's, then each of `budget_layers` (a project file entry's),
    then `budgets` (the command line's); a later budget replaces an earlier one of the same statistic."""

    budgets: tuple[Budget, ...] = ()  # the last word on each statistic they name
    budget_source: str = "command line"  # where `budgets` came from, as the report says
    budget_layers: tuple[tuple[str, tuple[Budget, ...]], ...] = ()  # (where from, budgets) between the target's and `budgets`
    baseline: str | None = None  # an earlier --json report, or an artifact to measure interleaved with this one
    baseline_missing: str = "error"  # "new": a baseline path without a file yet is a new entry (it passes and says so)
    model_change: str = "error"  # baseline of another model: "error" (exit 2), "new" (this run is a new baseline), "compare" (gate anyway)
    paired: bool | None = None  # re-measure the baseline's artifact interleaved: None = when it is still there, unchanged
    max_regression: float = 0.10
    gate_stat: str = "floor"  # what the baseline gate compares: floor (fastest 5%), p50 or mean
    data: str | None = None
    batch: int | None = None
    shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    min_duration_s: float | None = None
    max_duration_s: float | None = None
    warmup_ms: float | None = None
    min_iterations: int | None = None
    name: str | None = None
    strict_undecided: bool = False  # a budget or baseline gate still undecided after max_duration_s fails (exit 3) instead of a note


def environment(engine_info: dict[str, Any]) -> dict[str, Any]:
    from edgekit.compile import tool_versions
    from edgekit.machine import cpu_name

    env: dict[str, Any] = {
        "cpu": cpu_name(), "cores": os.cpu_count(), "os": platform.platform(), "versions": tool_versions(),
        "engine": engine_info, "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    gov = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    cur = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    env["governor"] = gov.read_text().strip() if gov.exists() else None
    env["clock_mhz"] = int(cur.read_text()) / 1000 if cur.exists() else None
    return env


def _settings(target: Target, options: BenchOptions) -> BenchSettings:
    s = target.bench
    over = {k: v for k, v in {"min_duration_s": options.min_duration_s, "warmup_ms": options.warmup_ms,
                              "min_iterations": options.min_iterations, "batch": options.batch,
                              "max_duration_s": options.max_duration_s}.items() if v is not None}
    if "min_duration_s" in over and "max_duration_s" not in over:
        over["max_duration_s"] = max(s.max_duration_s, over["min_duration_s"])
    return dataclasses.replace(s, **over)


def _feed(engine: Any, settings: BenchSettings, options: BenchOptions) -> dict[str, np.ndarray]:
    from edgekit.data.feeds import generated_feed

    if options.data:
        from edgekit.data.calibration import calibration_set

        return next(iter(calibration_set(options.data, engine.inputs).feeds(engine.inputs)))  # checked as it is read
    shapes = {**{k: tuple(v) for k, v in settings.shapes.items()}, **options.shapes}
    return generated_feed(engine.inputs, batch=settings.batch, shapes=shapes)


MODEL_CHANGE = ("error", "new", "compare")


def budget_plan(target: Target, options: BenchOptions) -> list[tuple[Budget, str]]:
    """Each statistic's budget once, with where it came from: command line > project entry > target profile."""
    layers = [(f"target profile {target.name}", tuple(target.budgets)), *options.budget_layers, (options.budget_source, tuple(options.budgets))]
    chosen: dict[str, tuple[Budget, str]] = {}
    for source, budgets in layers:
        seen: set[str] = set()
        for b in budgets:
            if b.stat in seen:
                raise UsageError(f"{source}: two budgets for {b.stat}", hint=f"keep one {b.stat} budget there")
            seen.add(b.stat)
            chosen.pop(b.stat, None)
            chosen[b.stat] = (b, source)
    return list(chosen.values())


def _check_options(options: BenchOptions) -> None:
    from edgekit.bench.stats import GATE_STATS

    if options.max_regression < 0:
        raise UsageError("--max-regression must be >= 0")
    if options.gate_stat not in GATE_STATS:
        raise UsageError(f"unknown gate statistic {options.gate_stat!r}", hint=f"use one of {', '.join(GATE_STATS)}")
    if options.model_change not in MODEL_CHANGE or options.baseline_missing not in ("error", "new"):
        raise UsageError(f"model_change must be one of {', '.join(MODEL_CHANGE)}, baseline_missing error or new")


def check_bench(artifact: str | Path, *, target: Target | str | None = None, options: BenchOptions = BenchOptions()) -> dict[str, Any]:
    """What can be checked before measuring: the artifact is there, the target loads and suits it, the
    budgets, the baseline file and its identity (graph, target, precision, and input shapes where the
    source ONNX tells them). Raises the error `bench_artifact` would raise later; returns the identity
    known so far. `edgekit bench --config` runs this for every entry before measuring any."""
    from edgekit.bench.identity import manifest_graph, mismatch, onnx_facts
    from edgekit.compile import read_artifact, resolve_precision, target_for

    artifact = Path(artifact)
    _check_options(options)
    tgt = load_target(target) if isinstance(target, str) else target
    if not artifact.exists():
        raise UsageError(f"{artifact}: no such file or folder", hint="check the path (a project file's paths are relative to its folder)")
    if options.data and not Path(options.data).exists():
        raise UsageError(f"data {options.data}: no such file or folder", hint="give a .npz, a folder of feeds or a calibration .toml")
    found = read_artifact(artifact)
    ident: dict[str, Any] = {}
    specs = None
    if found is not None:
        manifest = found[1]
        tgt = target_for(manifest, tgt)
        source = manifest.get("source") or {}
        ident = {"model": Path(source["path"]).name if source.get("path") else artifact.name, "graph": manifest_graph(manifest),
                 "target": tgt.name, "precision": manifest.get("precision")}
        if ident["graph"] is not None and source.get("path") and Path(source["path"]).is_file():
            specs = onnx_facts(source["path"])[2]
        overrides = {k: tuple(v) for k, v in (manifest.get("shapes") or {}).items()}
    elif artifact.suffix == ".onnx":
        tgt = tgt or load_target("onnxruntime")
        graph, qdq, specs = onnx_facts(artifact)
        ident = {"model": artifact.name, "graph": graph, "target": tgt.name, "precision": resolve_precision(qdq, tgt, None)}
        overrides = {}
    if tgt is not None:
        budget_plan(tgt, options)
        settings = _settings(tgt, options)
        if specs is not None and not options.data:
            from edgekit.data.feeds import concrete_shape

            over = {**overrides, **{k: tuple(v) for k, v in settings.shapes.items()}, **options.shapes}
            ident["inputs"] = {s.name: list(concrete_shape(s, batch=settings.batch, overrides=over)) for s in specs}
    if options.baseline and (Path(options.baseline).exists() or options.baseline_missing == "error"):
        recorded, base_artifact, _ = resolve_baseline(options.baseline, options.paired)
        base = baseline_identity(recorded, base_artifact)
        changed = mismatch(ident, base)
        if changed and options.model_change == "error":
            raise model_changed_error(options.baseline, base, ident, changed)
    return ident


def _decide(samples: np.ndarray, budget: Budget, confidence: float) -> tuple[str, dict[str, Any]]:
    st = bootstrap(samples, budget.stat, confidence=confidence)
    verdict = budget_verdict(st, budget.ms)
    return verdict, {"budget": str(budget), "stat": budget.stat, "limit_ms": budget.ms, **st.to_dict()}


def _decide_all(samples: np.ndarray, plan: list[tuple[Budget, str]], confidence: float) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for b, source in plan:
        verdict, d = _decide(samples, b, confidence)
        out.append((verdict, {**d, "source": source}))
    return out


def bench_artifact(artifact: str | Path, *, target: Target | str | None = None, options: BenchOptions = BenchOptions()) -> dict[str, Any]:
    """Measure `artifact` on `target`; the result says pass/fail per budget and for the baseline."""
    from edgekit.compile import open_engine, read_artifact

    from edgekit.bench.identity import manifest_graph, mismatch

    wall0 = time.perf_counter()
    artifact = Path(artifact)
    if target is None:
        found = read_artifact(artifact) if artifact.exists() else None
        tgt = None if found else load_target("onnxruntime")
    else:
        tgt = load_target(target) if isinstance(target, str) else target
    _check_options(options)
    status = new_note = None  # "new: ..." when there is no baseline to compare with yet, and why
    if options.baseline and options.baseline_missing == "new" and not Path(options.baseline).exists():
        recorded, base_artifact, base_note = None, None, None
        status = "new: no baseline yet"
        new_note = f"no baseline at {shown(options.baseline)} yet: this run passes on its budgets; record it with --update-baselines"
    else:
        recorded, base_artifact, base_note = resolve_baseline(options.baseline, options.paired) if options.baseline else (None, None, None)
    digest = artifact_sha256(artifact) if artifact.exists() else None
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        engine, manifest = stack.enter_context(open_engine(artifact, target=tgt))
        load_s = time.perf_counter() - t0
        from edgekit.compile import target_for

        tgt = target_for(manifest, tgt)
        settings = _settings(tgt, options)
        feed = _feed(engine, settings, options)
        plan = budget_plan(tgt, options)
        source = manifest.get("source") or {}
        identity = {"model": Path(source["path"]).name if source.get("path") else artifact.name, "graph": manifest_graph(manifest),
                    "inputs": {k: list(v.shape) for k, v in feed.items()}, "target": tgt.name, "precision": manifest.get("precision") or engine.info.get("precision")}
        base_identity = baseline_identity(recorded, base_artifact) if (recorded is not None or base_artifact is not None) else None
        show = interactive()

        def tick(frac: float) -> None:
            if show:
                import sys

                sys.stderr.write(f"\rbenchmarking {artifact.name}: {100 * frac:3.0f}%")
                sys.stderr.flush()

        run = lambda: engine.run(feed)  # noqa: E731
        base_samples: Samples | None = None
        if base_artifact is not None:
            try:
                base_engine, _ = stack.enter_context(open_engine(base_artifact, target=tgt))
            except UsageError as exc:
                raise UsageError(f"baseline artifact {shown(base_artifact)}: {exc.message}", hint=exc.hint) from exc
            base_feed = _feed(base_engine, settings, options)
            assert base_identity is not None
            if base_identity.get("inputs") is None:
                base_identity["inputs"] = {k: list(v.shape) for k, v in base_feed.items()}
        changed: list[str] = []
        if base_identity is not None:
            changed = mismatch(identity, base_identity)
            if changed and options.model_change == "error":
                assert options.baseline is not None
                raise model_changed_error(options.baseline, base_identity, identity, changed)
            if changed and options.model_change == "new":
                from edgekit.bench.identity import describe

                status = "new: the model changed"
                new_note = (f"the model changed since {shown(options.baseline)} (--allow-model-change): was {describe(base_identity, changed)}, "
                            f"now {describe(identity, changed)}; no comparison, this run is the new baseline (record it with --update-baselines)")
                recorded = base_artifact = base_note = None
        if base_artifact is not None:
            samples, base_samples = measure_interleaved([run, lambda: base_engine.run(base_feed)], settings, progress=tick)
        else:
            samples = measure(run, settings, progress=tick)
        load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

        def gate() -> dict[str, Any] | None:
            if base_samples is not None:
                return paired_gate(samples, base_samples, options, settings)
            if recorded is not None:
                return regression_test(samples.latencies_ms, np.asarray(recorded["samples_ms"]), max_regression=options.max_regression,
                                       stat=options.gate_stat, confidence=settings.confidence)
            return None

        decisions = _decide_all(samples.latencies_ms, plan, settings.confidence)
        base_result = gate()
        from edgekit.backends.base import cpu_feature_notes

        cpu_missing, cpu_notes = cpu_feature_notes((manifest.get("source") or {}).get("manifest"))
        notes: list[str] = ([f"baseline: {new_note}"] if new_note else []) + cpu_notes
        # an interval that straddles a budget, or a gate that cannot tell: measure longer (up to the cap), then decide;
        # with a baseline artifact both builds go on interleaved, so the gate stays paired
        def measured_s() -> float:  # both builds' timed seconds when paired: --max-duration caps the whole measurement
            return samples.wall_s + (base_samples.wall_s if base_samples is not None else 0.0)

        while (any(v == "undecided" for v, _ in decisions) or (base_result or {}).get("verdict") == "undecided") \
                and measured_s() < settings.max_duration_s:
            more = min(max(settings.min_duration_s, 1.0), settings.max_duration_s - measured_s())
            more = more / 2 if base_samples is not None else more
            if base_samples is not None:
                assert samples.rounds is not None
                cur_more, base_more = measure_interleaved([run, lambda: base_engine.run(base_feed)], settings, first_round=int(samples.rounds.max()) + 1,
                                                          warm=False, min_duration_s=more, progress=tick)
                samples.extend(cur_more)
                base_samples.extend(base_more)
            else:
                samples.extend(measure(run, settings, min_duration_s=more, warm=False, progress=tick))
            decisions = _decide_all(samples.latencies_ms, plan, settings.confidence)
            base_result = gate()
        if show:
            import sys

            sys.stderr.write("\r\x1b[2K")
        info = dict(engine.info)
        if changed and status is None:  # model_change == "compare"
            from edgekit.bench.identity import describe

            notes.append(f"baseline: compared with another model ({', '.join(changed)}): {describe(base_identity, changed)}")
    lat = samples.latencies_ms
    budget_results = []
    for verdict, d in decisions:
        busy_reason = busy_budget(verdict, d, samples)
        if busy_reason is not None:
            d.update(reason=busy_reason, statistical_verdict=verdict, busy=True)
            notes.append(f"{d['budget']}: {busy_reason}" + ("; --strict-undecided: this fails the run" if options.strict_undecided
                                                            else "; not a failure (--strict-undecided makes it one)"))
            d.update(verdict="undecided", failed=options.strict_undecided)
            budget_results.append(d)
            continue
        if verdict == "undecided":
            point = "pass" if d["value"] <= d["limit_ms"] else "fail"
            d["reason"] = (f"the {int(100 * settings.confidence)}% interval [{d['ci_low']:.3f}, {d['ci_high']:.3f}] ms still straddles "
                           f"{d['limit_ms']:g} ms after {measured_s():.1f} s (cap {settings.max_duration_s:g} s): "
                           + ("undecided, which fails with --strict-undecided" if options.strict_undecided else "decided on the point estimate"))
            notes.append(f"{d['budget']}: {d['reason']}")
            verdict = "undecided" if options.strict_undecided else point
        else:
            d["reason"] = (f"the {int(100 * settings.confidence)}% interval [{d['ci_low']:.3f}, {d['ci_high']:.3f}] ms lies "
                           f"{'under' if verdict == 'pass' else 'above'} {d['limit_ms']:g} ms")
        d.update(verdict=verdict, failed=verdict != "pass")
        budget_results.append(d)
    if base_result is not None:
        base_result["baseline"] = options.baseline
        base_result["baseline_p50_ms"] = float(np.median(base_samples.latencies_ms if base_samples is not None else recorded["samples_ms"]))
        base_result["load_average"] = [load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else None]  # 1-minute, at the start and end
        base_result["cpu_share"] = samples.cpu_share  # CPU seconds the process got per timed second (threads x busy)
        base_result["others_cores"] = samples.others_cores  # other work beside the measurement, in cores (None: unknown)
        if base_samples is not None:
            assert base_samples.rounds is not None and samples.rounds is not None
            base_result.update(baseline_artifact=str(base_artifact), baseline_samples_ms=base_samples.latencies_ms.round(6).tolist(),
                               baseline_sample_rounds=base_samples.rounds.tolist(), sample_rounds=samples.rounds.tolist())
        if base_note:
            base_result["note"] = base_note
            notes.append(f"baseline: {base_note}")
        if base_samples is None and recorded is not None:
            recorded_busy(base_result, samples.others_cores, recorded.get("others_cores"))
        if base_result["verdict"] == "undecided":
            notes.append(f"baseline: {base_result.get('busy_reason') or undecided_reason(base_result, measured_s(), settings.max_duration_s)}"
                         + ("; --strict-undecided: this fails the run" if options.strict_undecided else "; not a failure (--strict-undecided makes it one)"))
    if base_result is not None:  # what the run's verdict takes from the gate
        base_result["failed"] = base_result["verdict"] == "regressed" or (options.strict_undecided and base_result["verdict"] == "undecided")
    passed = not any(b["failed"] for b in budget_results) and not (base_result and base_result["failed"])
    return {
        "kind": "edgekit.bench", "schema": 1,
        "name": options.name or artifact.name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "artifact": str(artifact), "artifact_path": str(artifact.resolve()), "artifact_sha256": digest, "target": tgt.name, "backend": tgt.backend, "precision": info.get("precision"),
        "batch": settings.batch, "inputs": {k: list(v.shape) for k, v in feed.items()},
        "settings": dataclasses.asdict(settings),
        "load_s": load_s, "first_inference_ms": samples.first_ms, "warmup_runs": samples.warmup_runs,
        "duration_s": samples.wall_s, "throughput_per_s": settings.batch * len(lat) / max(samples.wall_s, 1e-9),
        "latency_ms": summary(lat, confidence=settings.confidence),
        "budgets": budget_results, "baseline": base_result, "baseline_status": status, "identity": identity, "notes": notes,
        "others_cores": samples.others_cores, "cpu_share": samples.cpu_share,
        "cpu_features_missing": cpu_missing, "passed": passed, "wall_s": time.perf_counter() - wall0,
        "environment": environment(info), "samples_ms": lat.round(6).tolist(),
    }


def paired_gate(current: Samples, baseline: Samples, options: BenchOptions, settings: BenchSettings) -> dict[str, Any]:
    """The paired gate over everything measured so far, wall clock and the process's CPU time."""
    def side(x: Samples) -> PairedSide:
        assert x.rounds is not None
        return PairedSide(x.latencies_ms, x.rounds, x.block_cpu_ms, x.block_rounds)

    busy = current.others_cores is not None and current.others_cores >= BUSY_CORES
    return paired_regression_test(side(current), side(baseline), max_regression=options.max_regression, stat=options.gate_stat,
                                  confidence=settings.confidence, busy=busy)


BUSY_CORES = 0.5  # other work on at least half a core beside a measurement: a recorded comparison cannot be trusted


def busy_budget(verdict: str, d: dict[str, Any], samples: Samples) -> str | None:
    """Why a budget the wall clock misses cannot be called failed on a busy machine, or None.

    Other work on the cores (>= BUSY_CORES, measured while timing) makes each run wait for its threads:
    wall-clock latency then measures the neighbours as much as the build. The CPU time the process spent
    per run does not grow with that wait, and its threads' total is at least what one run needs on one
    core: when even that total lies within the budget, the build could have met it, and the miss is the
    machine's. Such a "fail" (or an interval still straddling the budget) becomes undecided, with the
    reason. A real regression still fails: its CPU time per run grows past the budget too (a build that
    needs more than the budget of CPU per run is never excused)."""
    others = samples.others_cores
    if verdict == "pass" or others is None or others < BUSY_CORES or not len(samples.latencies_ms):
        return None
    cpu_ms = 1e3 * samples.cpu_s / len(samples.latencies_ms)
    if cpu_ms > d["limit_ms"]:
        return None
    return (f"undecided: {d['stat']} {d['value']:.3f} ms is over {d['limit_ms']:g} ms, but other work used {others:.1f} core(s) "
            f"while it was measured and this process spent {cpu_ms:.3f} ms of CPU per run (all its threads), within the "
            "budget: the wait for the cores, not the build, made it late; measure on a quiet runner or a dedicated core")


def recorded_busy(gate: dict[str, Any], now: float | None, then: float | None) -> None:
    """Against recorded samples, the machine's load is part of the ratio. A run measured while other work
    took the cores (`now` >= BUSY_CORES) is slow for that reason too, so its "regressed" cannot be told
    from the load; a baseline recorded busy was slow, so a "pass" against it means nothing. Either becomes
    undecided, with the reason; the paired gate, which meets the load on both sides, is the fix."""
    verdict = gate["verdict"]
    busy_now, busy_then = now is not None and now >= BUSY_CORES, then is not None and then >= BUSY_CORES
    if (verdict == "regressed" and busy_now) or (verdict == "pass" and busy_then):
        when = (f"this run was measured while other work used {now:.1f} core(s)" if verdict == "regressed"
                else f"the baseline was recorded while other work used {then:.1f} core(s)")
        gate.update(verdict="undecided", regressed=False, statistical_verdict=verdict,
                    busy_reason=(f"undecided: {when}, and against a recorded baseline that cannot be told from a change "
                                 f"(x{gate['ratio']:.3f}): measure paired (the baseline's artifact beside this one, the default "
                                 "while it is still there) or on a quiet runner"))


def undecided_reason(gate: dict[str, Any], wall_s: float, cap_s: float) -> str:
    """Why the gate could not decide, in one line a CI maintainer can act on."""
    limit = 1 + gate["max_regression"]
    text = (f"undecided: the {gate['stat']} ratio is x{gate['ratio']:.3f} with a {int(100 * gate['confidence'])}% interval "
            f"[{gate['ci_low']:.3f}, {gate['ci_high']:.3f}] that holds both 1 and the threshold x{limit:.2f}")
    cpu = gate.get("cpu")
    if cpu:
        text += f" (CPU time per run x{cpu['ratio']:.3f} [{cpu['ci_low']:.3f}, {cpu['ci_high']:.3f}]: {cpu['verdict']})"
    load = gate.get("load_average") or [None]
    return (text + f", after {wall_s:.1f} s of {cap_s:g} s" + (f" at load {load[0]:.1f}" if load[0] is not None else "")
            + "; the machine is too noisy to tell: re-run on a quieter runner, raise --max-duration, or pin the bench to a dedicated core")
