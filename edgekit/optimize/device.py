"""`edgekit optimize --device NAME`: candidates are built and judged here, their latency race runs on the device.

Before any building, one short SSH session asks the device (`doctor`) whether it runs the target's
backend and has an edgekit that knows the race, so a device that cannot take part fails in seconds
(exit 4 naming the fix), not after minutes of quantizing. After the accuracy pass, a second session
ships every timed candidate's compiled artifact in one bundle (with the feed the race runs on),
verifies it there, and runs `edgekit optimize-race` on the device: the same `race` as a local run
(interleaved stages, early stopping of candidates that cannot win), driven by the device's own
edgekit, so every sample is the device's. The samples come back with their rounds, and the
statistics, verdicts and the winner are computed here by the same code as a local race.

The local shortcuts that time candidates on this machine (`_skip_far_slower`, the all-INT8 check
before the fallback search) are not used: this machine's speed says little about the device's.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.config import BenchSettings, Budget
from edgekit.errors import BackendUnavailable, UsageError
from edgekit.optimize.race import Runner

# a candidate whose outputs on the device part from its outputs here by more than this (1 - worst cosine) is not
# the model whose accuracy was judged here: it cannot win (a different runtime version, or a CPU that computes
# a precision differently); fp32 and int8 agree to ~1e-6 when the runtime is the same
DEVICE_TOLERANCE = 0.01
RACE_COMMAND = "optimize-race"  # the hidden command the device runs (edgekit.cli.optimize_race)
SCHEMA = 1


@dataclasses.dataclass
class DeviceRun:
    """The device a race runs on, and what its preflight found."""

    device: Any  # edgekit.devices.Device
    edgekit: str | None  # the device's, as its preflight found it
    preflight_s: float = 0.0
    result: dict[str, Any] = dataclasses.field(default_factory=dict)  # filled by race_on_device: the report's `measured_on`


def not_with_executor(device: str, executor: str) -> UsageError:
    return UsageError(f"--device {device} and --executor {executor}: give one",
                      hint="--device races the latency on that device from here; --executor runs the whole optimize on a node")


def preflight(name: str, backend: str, *, config: str | None = None) -> DeviceRun:
    """The device named `name`, checked in one short session: reachable, with an edgekit that runs the race
    and the target's backend. Raises UsageError (exit 2: an unknown device) or BackendUnavailable (exit 4)."""
    from edgekit.devices import resolve_device
    from edgekit.doctor import diagnose_device
    from edgekit.version import VERSION, older

    t0 = time.perf_counter()
    device = resolve_device(name, config=config)
    found = diagnose_device(name, config=config)  # reachable? raises exit 4 naming the fix
    py = found.get("python_executable") or device.python
    extra = "" if backend == "onnxruntime" else f"[{backend}]"
    theirs = found.get("edgekit")
    if theirs is None:
        raise BackendUnavailable(f"device {device.name}: edgekit is not installed for {py} there",
                                 hint=f"install it there: {py} -m pip install 'edgekit{extra}' (no torch needed), or set python = \"...\" in [devices.{device.name}]")
    if older(theirs, VERSION):
        raise BackendUnavailable(f"device {device.name}: its edgekit {theirs} is older than this one ({VERSION}) and cannot run optimize's latency race",
                                 hint=f"upgrade it there: {py} -m pip install -U 'edgekit{extra}>={VERSION}'")
    status = next((b for b in found.get("backends", []) if b.get("name") == backend), None)
    if status is None or not status.get("available"):
        why = (status or {}).get("reason") or f"its edgekit does not know the {backend} backend"
        raise BackendUnavailable(f"device {device.name} cannot run the target's backend {backend}: {why}",
                                 hint=f"install it there: {py} -m pip install 'edgekit{extra}', or optimize for a target whose backend the device runs (edgekit doctor --device {device.name})")
    return DeviceRun(device, theirs, time.perf_counter() - t0)


def race_on_device(run: DeviceRun, cands: Sequence[Any], feed: dict[str, np.ndarray], settings: BenchSettings,
                   budgets: Sequence[Budget], *, stat: str) -> tuple[list[Runner], dict[str, Any], dict[str, Any]]:
    """Ship the candidates' artifacts and `feed` to the device, race them there: (runners holding the device's samples
    and rounds, the race's stage log, the device's environment). A candidate the device cannot load is left out,
    with the device's reason on the candidate (`skipped`)."""
    from edgekit.devices.remote import Plan, measured_note, ship_and_run

    t0 = time.perf_counter()
    plan = Plan()
    for c in cands:
        plan.folder_index(Path(c.folder).resolve())
    # each candidate's outputs here on the feed: the device checks its own against them before racing
    expected = {f"c{i}_o{j}": v for i, c in enumerate(cands) for j, v in enumerate(_engine(c).run(feed).values())}
    spec = {"schema": SCHEMA, "stat": stat, "feed": "feed.npz", "expected": "expected.npz", "tolerance": DEVICE_TOLERANCE,  # files beside the spec
            "settings": dataclasses.asdict(settings), "budgets": [[b.stat, b.ms] for b in budgets],
            "candidates": [{"name": c.name, "accurate": bool(c.accuracy and c.accuracy["meets"])} for c in cands]}
    with tempfile.TemporaryDirectory(prefix="edgekit-optimize-device-") as tmp:
        np.savez(Path(tmp) / "feed.npz", **feed)
        np.savez(Path(tmp) / "expected.npz", **expected)
        (Path(tmp) / "race.json").write_text(json.dumps(spec))
        plan.extras = {f"extra/{f}": Path(tmp) / f for f in ("feed.npz", "expected.npz", "race.json")}

        def jobs(dirs: list[str]) -> list[dict[str, Any]]:
            argv = [RACE_COMMAND, "extra/race.json"]
            for c in cands:
                argv += ["--artifact", dirs[plan.folders.index(Path(c.folder).resolve())]]
            return [{"argv": argv}]

        final, events, hello = ship_and_run(run.device, plan, jobs)
    got = final["reports"][0]
    out = got["report"]
    runners = []
    for c, r in zip(cands, out["candidates"]):
        if r.get("error"):
            c.skipped = f"device {run.device.name} could not load it: {r['error']}"
            continue
        if c.accuracy is not None:
            c.accuracy["device_agreement"] = r["agreement"]
            if r["agreement"]["cosine_drop"] > DEVICE_TOLERANCE:
                c.accuracy["meets"] = False  # judged here on outputs the device does not reproduce
                c.notes.append(f"on device {run.device.name} its outputs part from here: cosine drop {r['agreement']['cosine_drop']:.3g} "
                               f"> {DEVICE_TOLERANCE:g} on the race's feed (max abs {r['agreement']['max_abs']:.3g}): the accuracy judged here does not hold there")
        runners.append(Runner(c.name, _not_here, bool(c.accuracy and c.accuracy["meets"]), latencies=np.asarray(r["latencies_ms"], dtype=float),
                              rounds=np.asarray(r["rounds"], dtype=int), spent_s=r["spent_s"], stages=r["stages"], stopped=r["stopped"]))
    record = final["device"]
    env = dict(out["environment"])
    env["device"] = {**record, "throttled": got["throttled"], "throttle_evidence": got["throttle_evidence"],
                     "started": got.get("started"), "ended": got.get("ended"), "before": got["before"], "after": got["after"]}
    cleaned = next((e["folders"] for e in events if e["event"] == "cleaned"), [])
    note = measured_note(run.device, record, hello, env.get("cpu"), got)
    run.result = {**run.device.to_dict(), "edgekit": hello.get("edgekit"), "cpu": env.get("cpu"), "cpu_features": env.get("cpu_features"),
                  "model": record.get("model"), "hostname": record.get("hostname"), "throttled": got["throttled"],
                  "throttle_evidence": got["throttle_evidence"], "note": note, "session_s": time.perf_counter() - t0,
                  "cleaned": [f"removed {len(cleaned)} folder(s) left on {run.device.name} by earlier cut runs"] if cleaned else []}
    timing = dict(out["timing"])
    timing["device_session_s"] = run.result["session_s"]  # shipping, verifying and the race itself
    return runners, timing, env


def _engine(c: Any) -> Any:
    assert c.engine is not None, c.name  # only built candidates are raced
    return c.engine


def _not_here() -> None:
    raise RuntimeError("this candidate was timed on the device")


def annotate(report: dict[str, Any], run: DeviceRun) -> None:
    """The report names the device that measured, as `bench --device` results do."""
    report["target"] = f"{report['target']}@{run.device.name}"
    report["measured_on"] = run.result
    report["timing"]["device_preflight_s"] = run.preflight_s  # the short session before building

# --- the device side: `edgekit optimize-race SPEC --artifact DIR ...` ------------------------------

def race_here(spec_path: str | Path, artifacts: Sequence[str]) -> dict[str, Any]:
    """Run the race a spec describes on this machine over compiled `artifacts` (the spec's candidates, in order):
    every sample with its round, per candidate, and this machine's environment."""
    import contextlib

    from edgekit.bench.run import environment
    from edgekit.compile import open_engine
    from edgekit.errors import EdgekitError
    from edgekit.machine import cpu_features
    from edgekit.optimize.race import race

    spec = json.loads(Path(spec_path).read_text())
    if spec.get("schema") != SCHEMA:
        raise UsageError(f"{spec_path}: race spec schema {spec.get('schema')!r}, this edgekit reads {SCHEMA}",
                         hint="run the same edgekit version here and on the device")
    if len(artifacts) != len(spec["candidates"]):
        raise UsageError(f"{len(artifacts)} --artifact for {len(spec['candidates'])} candidates", hint="give one --artifact per candidate, in order")
    settings = BenchSettings(**spec["settings"])
    budgets = tuple(Budget(s, float(ms)) for s, ms in spec["budgets"])
    with np.load(Path(spec_path).parent / spec["feed"]) as f:
        feed = {k: f[k] for k in f.files}
    with np.load(Path(spec_path).parent / spec["expected"]) as f:
        expected = {k: f[k] for k in f.files}
    rows: list[dict[str, Any]] = []
    runners: list[Runner] = []
    infos = []
    with contextlib.ExitStack() as stack:
        for i, (c, art) in enumerate(zip(spec["candidates"], artifacts)):
            try:
                engine, _manifest = stack.enter_context(open_engine(art))
                got = list(engine.run(feed).values())  # a candidate this device cannot run fails here, not in the middle of the race
            except Exception as exc:  # noqa: BLE001 - e.g. a precision this device's CPU lacks: that candidate sits out, the race goes on
                rows.append({"name": c["name"], "error": str(exc) if isinstance(exc, EdgekitError) else f"{type(exc).__name__}: {str(exc).strip()[:300]}"})
                continue
            infos.append(dict(engine.info))
            agree = _agreement([expected[f"c{i}_o{j}"] for j in range(len(got))], got)
            # outputs that differ from those whose accuracy was judged: timed one stage, for the table, as an inaccurate one
            runners.append(Runner(c["name"], (lambda e=engine: e.run(feed)), bool(c["accurate"]) and agree["cosine_drop"] <= spec["tolerance"]))
            rows.append({"name": c["name"], "agreement": agree})
        if not runners:
            raise BackendUnavailable("no candidate loads on this machine: " + "; ".join(f"{r['name']}: {r['error']}" for r in rows))
        timing = race(runners, settings, budgets, stat=spec["stat"])
    by_name = {r.name: r for r in runners}
    for row in rows:
        r = by_name.get(row["name"])
        if r is not None:
            row.update(latencies_ms=r.latencies.tolist(), rounds=r.rounds.astype(int).tolist(), spent_s=r.spent_s, stages=r.stages, stopped=r.stopped)
    env = environment(infos[0])
    env["cpu_features"] = cpu_features()
    return {"kind": "edgekit.optimize-race", "schema": SCHEMA, "candidates": rows, "timing": timing, "environment": env}


def _agreement(here: Sequence[np.ndarray], there: Sequence[np.ndarray]) -> dict[str, float]:
    """How far outputs computed on the device part from the same candidate's outputs here: 1 - worst cosine
    over the outputs (1 for a different shape or count), and the largest absolute difference."""
    worst, max_abs = 0.0 if len(here) == len(there) else 1.0, 0.0
    for a, b in zip(here, there):
        a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
        if a.shape != b.shape:
            worst = 1.0
            continue
        if a.size:
            max_abs = max(max_abs, float(np.abs(a - b).max()))
        if np.array_equal(a, b):
            continue
        norm = float(np.linalg.norm(a) * np.linalg.norm(b))
        worst = max(worst, 1.0 - float(a @ b) / norm if norm > 0 else 1.0)
    return {"cosine_drop": worst, "max_abs": max_abs}
