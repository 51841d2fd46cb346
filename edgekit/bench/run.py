"""`bench`: load an artifact, measure it, and decide budgets and the baseline gate."""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bench.stats import bootstrap, paired_regression_test, regression_test, summary
from edgekit.bench.timer import measure, measure_interleaved
from edgekit.config import BenchSettings, Budget, Target, load_target
from edgekit.errors import UsageError
from edgekit.files import artifact_digest
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


def environment(engine_info: dict[str, Any]) -> dict[str, Any]:
    from edgekit.compile import tool_versions
    from edgekit.doctor import cpu_name

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


def shown(path: str | Path | None) -> str:
    """A path for a message: relative to the working folder when under it, never a runner's absolute path."""
    if path is None:
        return "?"
    p = Path(path)
    if not p.is_absolute():
        return str(p)
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(Path("…", p.parent.name, p.name))


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
    from edgekit.compile import _target_for, read_artifact, resolve_precision

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
        tgt = _target_for(manifest, tgt)
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
        recorded, base_artifact, _ = _resolve_baseline(options.baseline, options.paired)
        base = _baseline_identity(recorded, base_artifact)
        changed = mismatch(ident, base)
        if changed and options.model_change == "error":
            raise _model_changed(options.baseline, base, ident, changed)
    return ident


def _model_changed(baseline: str, base: dict[str, Any], current: dict[str, Any], changed: list[str]) -> UsageError:
    from edgekit.bench.identity import describe

    return UsageError(f"baseline {shown(baseline)} was measured on another model ({' and '.join(changed)} differ): "
                      f"{describe(base, changed)}; this run: {describe(current, changed)}",
                      hint="for a deliberate change pass --allow-model-change (this run is reported as a new baseline; record it with "
                           "--update-baselines); otherwise give this model's baseline (check the CI cache key)")


def _baseline_identity(recorded: dict[str, Any] | None, base_artifact: Path | None) -> dict[str, Any]:
    """What the baseline measured: the report's identity (older reports: their inputs, target and
    precision, and the graph from their artifact's manifest when it is at hand), or a baseline artifact's."""
    from edgekit.bench.identity import manifest_graph, onnx_facts
    from edgekit.compile import read_artifact

    ident: dict[str, Any] = {}
    if recorded is not None:
        ident = dict(recorded.get("identity") or {"model": Path(str(recorded.get("artifact", "?"))).name, "inputs": recorded.get("inputs"),
                                                  "target": recorded.get("target"), "precision": recorded.get("precision")})
    if base_artifact is not None and ident.get("graph") is None:
        found = read_artifact(base_artifact)
        if found is not None:
            source = found[1].get("source") or {}
            ident.setdefault("model", Path(source["path"]).name if source.get("path") else base_artifact.name)
            ident["graph"] = manifest_graph(found[1])
            ident.setdefault("precision", found[1].get("precision"))
        elif base_artifact.suffix == ".onnx":
            ident.setdefault("model", base_artifact.name)
            ident["graph"] = onnx_facts(base_artifact)[0]
    return ident


def _decide(samples: np.ndarray, budget: Budget, confidence: float) -> tuple[str, dict[str, Any]]:
    st = bootstrap(samples, budget.stat, confidence=confidence)
    if st.ci_high <= budget.ms:
        verdict = "pass"
    elif st.ci_low > budget.ms:
        verdict = "fail"
    else:
        verdict = "undecided"
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
        recorded, base_artifact, base_note = _resolve_baseline(options.baseline, options.paired) if options.baseline else (None, None, None)
    digest = _digest(artifact) if artifact.exists() else None
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        engine, manifest = stack.enter_context(open_engine(artifact, target=tgt))
        load_s = time.perf_counter() - t0
        from edgekit.compile import _target_for

        tgt = _target_for(manifest, tgt)
        settings = _settings(tgt, options)
        feed = _feed(engine, settings, options)
        plan = budget_plan(tgt, options)
        source = manifest.get("source") or {}
        identity = {"model": Path(source["path"]).name if source.get("path") else artifact.name, "graph": manifest_graph(manifest),
                    "inputs": {k: list(v.shape) for k, v in feed.items()}, "target": tgt.name, "precision": manifest.get("precision") or engine.info.get("precision")}
        base_identity = _baseline_identity(recorded, base_artifact) if (recorded is not None or base_artifact is not None) else None
        show = interactive()

        def tick(frac: float) -> None:
            if show:
                import sys

                sys.stderr.write(f"\rbenchmarking {artifact.name}: {100 * frac:3.0f}%")
                sys.stderr.flush()

        run = lambda: engine.run(feed)  # noqa: E731
        base_samples = None
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
                raise _model_changed(options.baseline, base_identity, identity, changed)
            if changed and options.model_change == "new":
                from edgekit.bench.identity import describe

                status = "new: the model changed"
                new_note = (f"the model changed since {shown(options.baseline)} (--allow-model-change): was {describe(base_identity, changed)}, "
                            f"now {describe(identity, changed)}; no comparison, this run is the new baseline (record it with --update-baselines)")
                recorded = base_artifact = base_note = None
        if base_artifact is not None:
            samples, base_samples = measure_interleaved([run, lambda: base_engine.run(base_feed)], settings, progress=tick)
            paired_current, paired_rounds = samples.latencies_ms, samples.rounds  # before any longer measuring for a budget
        else:
            samples = measure(run, settings, progress=tick)
        decisions = _decide_all(samples.latencies_ms, plan, settings.confidence)
        from edgekit.backends.base import cpu_feature_notes

        cpu_missing, cpu_notes = cpu_feature_notes((manifest.get("source") or {}).get("manifest"))
        notes: list[str] = ([f"baseline: {new_note}"] if new_note else []) + cpu_notes
        # an interval that straddles a budget: measure longer (up to the cap) before deciding
        while any(v == "undecided" for v, _ in decisions) and samples.wall_s < settings.max_duration_s:
            more = min(max(settings.min_duration_s, 1.0), settings.max_duration_s - samples.wall_s)
            samples.extend(measure(run, settings, min_duration_s=more, warm=False, progress=tick))
            decisions = _decide_all(samples.latencies_ms, plan, settings.confidence)
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
        if verdict == "undecided":
            point = "pass" if d["value"] <= d["limit_ms"] else "fail"
            d["reason"] = (f"the {int(100 * settings.confidence)}% interval [{d['ci_low']:.3f}, {d['ci_high']:.3f}] ms still straddles "
                           f"{d['limit_ms']:g} ms after {samples.wall_s:.1f} s (cap {settings.max_duration_s:g} s): decided on the point estimate")
            notes.append(f"{d['budget']}: {d['reason']}")
            verdict = point
        else:
            d["reason"] = (f"the {int(100 * settings.confidence)}% interval [{d['ci_low']:.3f}, {d['ci_high']:.3f}] ms lies "
                           f"{'under' if verdict == 'pass' else 'above'} {d['limit_ms']:g} ms")
        d["verdict"] = verdict
        budget_results.append(d)
    base_result = None
    if base_samples is not None:
        assert paired_rounds is not None and base_samples.rounds is not None
        base_result = paired_regression_test(paired_current, paired_rounds, base_samples.latencies_ms, base_samples.rounds,
                                             max_regression=options.max_regression, stat=options.gate_stat, confidence=settings.confidence)
        base_result.update(baseline_artifact=str(base_artifact), baseline_samples_ms=base_samples.latencies_ms.round(6).tolist(),
                           baseline_sample_rounds=base_samples.rounds.tolist(), sample_rounds=paired_rounds.tolist())
    elif recorded is not None:
        base_result = regression_test(lat, np.asarray(recorded["samples_ms"]), max_regression=options.max_regression, stat=options.gate_stat)
    if base_result is not None:
        base_result["baseline"] = options.baseline
        base_result["baseline_p50_ms"] = float(np.median(base_samples.latencies_ms if base_samples is not None else recorded["samples_ms"]))
        if base_note:
            base_result["note"] = base_note
            notes.append(f"baseline: {base_note}")
    passed = all(b["verdict"] == "pass" for b in budget_results) and not (base_result and base_result["regressed"])
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
        "cpu_features_missing": cpu_missing, "passed": passed, "wall_s": time.perf_counter() - wall0,
        "environment": environment(info), "samples_ms": lat.round(6).tolist(),
    }


def _resolve_baseline(path: str, paired: bool | None) -> tuple[dict[str, Any] | None, Path | None, str | None]:
    """(recorded report, artifact to re-measure interleaved, a note on what was chosen and why).

    A report whose artifact is still where it was, byte for byte, is re-measured beside the current
    build (unless `paired` is False): a recorded run met other neighbours than this one, and on a
    shared runner that alone moves latency by more than a typical regression threshold."""
    p = Path(path)
    if p.exists() and not _is_report(p):
        if paired is False:
            raise UsageError(f"--unpaired needs a recorded report, and {shown(p)} is an artifact", hint="give a --json report as --baseline, or drop --unpaired")
        return None, p, None
    data = _load_baseline(path)
    if paired is False:
        return data, None, "compared with the recorded samples (--unpaired): drift between runs on this machine counts as a change"
    where = [p.parent / data["baseline_artifact"]] if data.get("baseline_artifact") else []  # the copy recorded beside it
    where += [Path(x) for x in (data.get("artifact_path"), data.get("artifact")) if x]
    found = next((w for w in where if w.exists()), None)
    why = None
    if not data.get("artifact_sha256"):
        why = "the report records no artifact digest"
    elif found is None:
        why = f"its artifact {shown(data.get('artifact'))} is not here"
    elif _digest(found) != data["artifact_sha256"]:
        why = f"its artifact {shown(found)} has changed since"
    if why is None:
        assert found is not None
        return data, found, f"re-measured the baseline's artifact {shown(found)} interleaved with this one (paired)"
    if paired:
        raise UsageError(f"baseline {shown(p)}: cannot pair, {why}", hint="give the baseline artifact itself as --baseline, or drop --paired")
    return data, None, (f"compared with the samples recorded on {data.get('created', '?')} ({why}): drift between runs on a shared "
                        "machine counts as a change; give the baseline artifact for a paired comparison")


def save_baseline_report(result: dict[str, Any], path: str | Path) -> None:
    """Record `result` as the baseline at `path`, with a copy of its artifact beside it (`NAME.artifact`),
    so that later runs re-measure this build interleaved with theirs (paired) wherever the folder of
    baselines is restored (a CI cache), not only on the machine that recorded it."""
    import shutil

    from edgekit.compile import read_artifact
    from edgekit.files import atomic_dir, write_json

    path = Path(path)
    src = Path(result["artifact_path"])
    found = read_artifact(src) if src.exists() else None
    src = found[0] if found else src
    copy = path.with_name(path.stem + ".artifact")
    report = dict(result, baseline_status="recorded")
    keep = src.exists() and not (src.is_file() and src.suffix == ".onnx" and _has_external_data(src))  # weights in other files: the report alone
    if keep:
        with atomic_dir(copy) as tmp:
            if src.is_dir():
                shutil.copytree(src, tmp, dirs_exist_ok=True)
            else:
                shutil.copy2(src, tmp / src.name)
        report["baseline_artifact"] = copy.name if src.is_dir() else f"{copy.name}/{src.name}"
    elif copy.is_dir():
        shutil.rmtree(copy)  # an earlier baseline's build
    write_json(path, report)
    result["baseline_status"] = "recorded"
    result["notes"].append(f"baseline recorded: {shown(path)}" + (f" (and its artifact, {shown(copy)})" if keep else " (no copy of its artifact: its weights are in other files)"))


def _has_external_data(model: Path) -> bool:
    import onnx

    proto = onnx.load(str(model), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


def _digest(artifact: Path) -> str:
    """The artifact's identity: a whole compile folder even when one of its files is named."""
    from edgekit.compile import read_artifact

    found = read_artifact(artifact)
    return artifact_digest(found[0] if found else artifact)


def _is_report(p: Path) -> bool:
    if not p.is_file() or p.suffix.lower() != ".json":
        return False
    try:
        return json.loads(p.read_text()).get("kind") != "edgekit.artifact"
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return True  # _load_baseline says what is wrong with it


def _load_baseline(path: str) -> dict[str, Any]:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise UsageError(f"baseline {p}: no such file", hint="record one with --save-baseline PATH") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"baseline {p} is not valid JSON ({exc})", hint="record it again with --save-baseline") from exc
    if isinstance(data, dict) and "results" in data and len(data["results"]) == 1:
        data = data["results"][0]
    if not isinstance(data, dict) or "samples_ms" not in data or len(data["samples_ms"]) < 5:
        raise UsageError(f"baseline {p} has no latency samples", hint="use a report written by `edgekit bench --json` or --save-baseline")
    return data
