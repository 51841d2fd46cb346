"""`edgekit bench --device`: pack, ship, verify and bench on the device, bring the report back.

The device's own edgekit measures, with the same settings, budgets and baseline rules as a local
run: the command line sent there is built from the same `BenchOptions`. A paired baseline ships the
baseline's artifact in the same bundle, and the device measures both interleaved.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edgekit.bench.run import BenchOptions
from edgekit.devices.config import Device
from edgekit.devices.session import agent_error, run_agent
from edgekit.errors import EdgekitError, UsageError
from edgekit.progress import interactive
from edgekit.version import VERSION


@dataclasses.dataclass(frozen=True)
class DeviceJob:
    """One `edgekit bench` to run on a device."""

    artifact: str
    target: str | None
    options: BenchOptions


def _compiled(path: str | Path, what: str) -> Path:
    from edgekit.compile import read_artifact

    p = Path(path)
    found = read_artifact(p) if p.exists() else None
    if found is None:
        raise UsageError(f"{what} {p} is not a compiled artifact, and only compiled artifacts go to a device",
                         hint=f"compile it first: edgekit compile {p} --target TARGET -o DIR, then bench DIR --device NAME")
    return found[0].resolve()


@dataclasses.dataclass
class Plan:
    """What goes to the device: artifact folders (packed as one bundle), extra files, and each job's command line."""

    folders: list[Path] = dataclasses.field(default_factory=list)
    extras: dict[str, Path] = dataclasses.field(default_factory=dict)  # name in the payload -> local file
    commands: list[tuple[int, list[str], Path | None]] = dataclasses.field(default_factory=list)  # (folder index, args, baseline folder)

    def folder_index(self, folder: Path) -> int:
        if folder not in self.folders:
            self.folders.append(folder)
        return self.folders.index(folder)


def _plan(jobs: list[DeviceJob]) -> Plan:
    from edgekit.bench.baseline import resolve_baseline

    from edgekit.bench.run import budget_plan
    from edgekit.compile import read_artifact, target_for

    plan = Plan()
    for i, job in enumerate(jobs):
        o = job.options
        folder = _compiled(job.artifact, "ARTIFACT")
        idx = plan.folder_index(folder)
        args: list[str] = []
        if job.target:
            if job.target.endswith(".toml") and Path(job.target).is_file():
                plan.extras[f"extra/target-{i}.toml"] = Path(job.target)
                args += ["--target", f"extra/target-{i}.toml"]
            else:
                args += ["--target", job.target]
        # every budget as the device's command line: there it replaces the profile's of the same statistic,
        # so the device decides on the same budgets as here (command line > project entry > profile)
        found = read_artifact(folder)
        assert found is not None
        for b, _source in budget_plan(target_for(found[1], job.target), o):
            args += ["--budget", f"{b.stat}={b.ms:g}ms"]
        args += ["--max-regression", f"{100 * o.max_regression:g}%", "--gate-stat", o.gate_stat]
        if o.model_change == "new":
            args.append("--allow-model-change")
        if o.strict_undecided:
            args.append("--strict-undecided")
        base_folder = None
        if o.baseline and not Path(o.baseline).exists() and o.baseline_missing == "new":
            pass  # a project entry's first run: no baseline yet, the report says it is new
        elif o.baseline:
            recorded, base_artifact, _note = resolve_baseline(o.baseline, o.paired)
            if base_artifact is not None:
                base_folder = _compiled(base_artifact, "the baseline")
                args += ["--baseline", "@BASELINE@"]
            else:
                plan.extras[f"extra/baseline-{i}.json"] = Path(o.baseline)
                args += ["--baseline", f"extra/baseline-{i}.json"]
        if o.paired is not None:
            args.append("--paired" if o.paired else "--unpaired")
        if o.data:
            if not (Path(o.data).is_file() and o.data.endswith(".npz")):
                raise UsageError(f"--data {o.data}: with --device, the data must be one .npz file of feeds (it is copied to the device)",
                                 hint="save the feeds with numpy.savez, or drop --data to bench on generated inputs")
            plan.extras[f"extra/data-{i}.npz"] = Path(o.data)
            args += ["--data", f"extra/data-{i}.npz"]
        for flag, value in (("--batch", o.batch), ("--min-duration", o.min_duration_s), ("--max-duration", o.max_duration_s),
                            ("--min-iterations", o.min_iterations), ("--warmup", o.warmup_ms)):
            if value is not None:
                args += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
        for name, shape in o.shapes.items():
            args += ["--shape", f"{name}:{'x'.join(map(str, shape))}"]
        plan.commands.append((idx, args, base_folder))
    for _, _, base in plan.commands:
        if base is not None:
            plan.folder_index(base)
    return plan


def _payload(plan: Plan, tmp: Path) -> tuple[Path, list[str]]:
    """The tar sent to the device: `bundle/` (an edgekit bundle) and `extra/`; the bundle folder of each artifact."""
    from edgekit.pack import pack_bundle

    manifest = pack_bundle(plan.folders, tmp / "bundle")
    dirs = [a["dir"] for a in manifest["artifacts"]]
    payload = tmp / "payload.tar"
    with tarfile.open(payload, "w") as tar:
        tar.add(tmp / "bundle", arcname="bundle")
        for name, src in plan.extras.items():
            tar.add(src, arcname=name, recursive=False)
    return payload, [f"bundle/{d}" for d in dirs]


def _backends(plan: Plan) -> str:
    import json

    from edgekit.compile import MANIFEST

    def backend(f: Path) -> str:
        if (f / MANIFEST).is_file():
            return str(json.loads((f / MANIFEST).read_text())["backend"])
        return "openvino" if json.loads((f / "lm.json").read_text()).get("format") == "openvino" else "onnxruntime"  # a language model's folder

    names = sorted({backend(f) for f in plan.folders} - {"onnxruntime"})  # onnxruntime: in edgekit itself
    return ",".join(names)


def _throttle_note(verdict: bool | None, evidence: list[str]) -> str:
    if verdict is None:
        return "throttling: not readable on this device"
    return "THROTTLED during the run: " + "; ".join(evidence) if verdict else "no throttling seen"


def measured_note(device: Device, record: dict[str, Any], hello: dict[str, Any], cpu: str | None, got: dict[str, Any]) -> str:
    """`measured on device NAME (address, model or CPU, edgekit X[, power mode]): throttling`, for a job's report `got`."""
    return (f"measured on device {device.name} ({device.address}, {record.get('model') or cpu}, edgekit {hello.get('edgekit')}"
            + (f", power mode {record['jetson_power_mode']}" if record.get("jetson_power_mode") else "") + f"): {_throttle_note(got['throttled'], got['throttle_evidence'])}")


def _say(device: Device, text: str) -> None:
    if interactive():
        sys.stderr.write(f"{device.name}: {text}\n")
        sys.stderr.flush()


@contextlib.contextmanager
def _bundles_opened(jobs: list[DeviceJob]) -> Iterator[list[DeviceJob]]:
    """The jobs with each bundle ARTIFACT replaced by its artifact folder, extracted here with its hashes
    checked but not its compatibility with this machine (a Jetson's engine does not run on the laptop):
    the artifact whose backend the job's target names, else the bundle's first."""
    from edgekit.bundle import is_bundle, opened_bundle, verify_root

    with contextlib.ExitStack() as stack:
        out = []
        for job in jobs:
            path = Path(job.artifact)
            if not is_bundle(path):
                out.append(job)
                continue
            root, digests = stack.enter_context(opened_bundle(path))
            items = verify_root(root, label=path, digests=digests, check_all=False)["manifest"]["artifacts"]
            backend = None
            if job.target:
                from edgekit.config import load_target

                backend = load_target(job.target).backend
            chosen = next((a for a in items if a["backend"] == backend), items[0])
            out.append(dataclasses.replace(job, artifact=str(root / chosen["dir"])))
        yield out


def bench_on_device(device: Device, jobs: list[DeviceJob]) -> list[dict[str, Any]]:
    """Run `jobs` on `device` over one SSH session; one bench report per job, as a local run gives, plus `device`.
    An ARTIFACT may be a compiled artifact folder or a bundle."""
    with _bundles_opened(jobs) as opened:
        results = _bench_on_device(device, opened)
    for job, r in zip(jobs, results):
        r["artifact"] = job.artifact  # the bundle, when one was given
    return results


def ship_and_run(device: Device, plan: Plan, header_jobs: Callable[[list[str]], list[dict[str, Any]]]) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """Pack `plan` into one payload and run the agent's jobs on `device` in one SSH session: (its `result`
    event, every event, its `hello`). `header_jobs(bundle dirs, in plan.folders' order)` gives the jobs: each
    `{"artifact", "args"}` (an `edgekit bench`) or `{"argv"}` (any edgekit command line, run in the run folder).
    An `error` event raises, naming the fix."""
    with tempfile.TemporaryDirectory(prefix="edgekit-device-") as tmp:
        payload, dirs = _payload(plan, Path(tmp))
        header = {"mode": "bench", "workdir": device.workdir, "jobs": header_jobs(dirs), "edgekit": VERSION}
        _say(device, f"sending {payload.stat().st_size / 2 ** 20:.1f} MiB to {device.address}")
        messages = {"ready": "verifying and benchmarking", "cleaned": "removed folders of earlier cut runs"}
        final, events = run_agent(device, header, payload=payload, on_event=lambda e: _say(device, messages[e["event"]]) if e["event"] in messages else None)
    hello = next((e for e in events if e["event"] == "hello"), {})
    if final["event"] == "error":
        raise agent_error(device, final, hello, _backends(plan))
    return final, events, hello


def _bench_on_device(device: Device, jobs: list[DeviceJob]) -> list[dict[str, Any]]:
    from edgekit.bench.baseline import artifact_sha256

    plan = _plan(jobs)

    def header_jobs(dirs: list[str]) -> list[dict[str, Any]]:
        out = []
        for idx, args, base in plan.commands:
            args = [dirs[plan.folders.index(base)] if a == "@BASELINE@" and base is not None else a for a in args]
            out.append({"artifact": dirs[idx], "args": args})
        return out

    final, events, hello = ship_and_run(device, plan, header_jobs)
    cleaned = next((e["folders"] for e in events if e["event"] == "cleaned"), [])
    record = final["device"]
    results = []
    for job, (idx, _args, base), got in zip(jobs, plan.commands, final["reports"]):
        r = got["report"]["results"][0] if "results" in got["report"] else got["report"]  # the device's `bench --json` run
        remote_artifact = r.get("artifact_path")
        r["name"] = job.options.name or Path(job.artifact).name
        r["artifact"], r["artifact_path"], r["artifact_sha256"] = job.artifact, str(Path(job.artifact).resolve()), artifact_sha256(Path(job.artifact))
        r["target"] = f"{r['target']}@{device.name}"
        if r.get("baseline"):
            r["baseline"]["baseline"] = job.options.baseline
            if base is not None:
                r["baseline"]["baseline_artifact"] = str(base)
        r["device"] = {**device.to_dict(), "edgekit": hello.get("edgekit"), "artifact_path": remote_artifact}
        # the device's bench already recorded CPU, cores, versions, governor and clock; add what only the agent reads
        r["environment"]["device"] = {**record, "throttled": got["throttled"], "throttle_evidence": got["throttle_evidence"],
                                      "started": got.get("started"), "ended": got.get("ended"), "before": got["before"], "after": got["after"]}
        env = r["environment"]
        r["notes"] = list(r.get("notes", [])) + [measured_note(device, record, hello, env.get("cpu"), got)]
        if cleaned:
            r["notes"].append(f"removed {len(cleaned)} folder(s) left on {device.name} by earlier cut runs")
        results.append(r)
    return results


def bench_on_devices(groups: dict[Device, list[DeviceJob]]) -> dict[Device, list[dict[str, Any]]]:
    """Every device at once, one connection each. Any device failing fails the whole run (exit of the first failure)."""
    if not groups:
        return {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="edgekit-device") as pool:
        futures = {d: pool.submit(bench_on_device, d, jobs) for d, jobs in groups.items()}
        concurrent.futures.wait(list(futures.values()))
    errors = [(d, f.exception()) for d, f in futures.items() if f.exception() is not None]
    if errors:
        first = errors[0][1]
        if len(errors) > 1 and isinstance(first, EdgekitError):
            first.message += f" (and {len(errors) - 1} more device(s) failed: {', '.join(d.name for d, _ in errors[1:])})"
            first.args = (first.message if not first.hint else f"{first.message}; {first.hint}",)
        raise first  # type: ignore[misc]
    return {d: f.result() for d, f in futures.items()}


def lm_bench_on_device(device: Device, folder: str | Path, args: list[str], *, baseline: str | Path | None = None,
                       label: str | None = None, baseline_label: str | None = None) -> tuple[dict[str, Any], int]:
    """`edgekit lm bench --device`: the LM folder (and the baseline's, for the paired gate, measured there in turns)
    packed as one bundle, verified and benched by the device's own edgekit with the command line `args`; (its report,
    with `device` and a note of where it was measured, and the device's exit code: 0, or 3 when a gate failed there)."""
    plan = Plan()
    idx = plan.folder_index(Path(folder).resolve())
    base_idx = plan.folder_index(Path(baseline).resolve()) if baseline is not None else None

    def header_jobs(dirs: list[str]) -> list[dict[str, Any]]:
        argv = ["lm", "bench", dirs[idx], *args] + (["--baseline", dirs[base_idx]] if base_idx is not None else [])
        return [{"argv": argv}]

    final, _events, hello = ship_and_run(device, plan, header_jobs)
    got = final["reports"][0]
    r = got["report"]
    r["model"] = label or str(folder)
    if r.get("baseline"):
        r["baseline"]["model"] = baseline_label or str(baseline)
    r["device"] = {**device.to_dict(), "edgekit": hello.get("edgekit"), "throttled": got["throttled"], "throttle_evidence": got["throttle_evidence"],
                   **final["device"]}
    r["notes"] = list(r.get("notes", [])) + [measured_note(device, final["device"], hello, r.get("cpu", {}).get("name"), got)]
    return r, int(got["exit_code"])
