"""`edgekit bench` entries as work units: on this machine, or shipped to the node that holds their device.

No file system is shared with the nodes: a shipped unit carries the bytes of every file its bench reads
(the artifact, its data, its baseline report with the artifact copy beside it, a target .toml is resolved
here into a Target), unpacks them into a temporary folder on the node, benches there, and the result's
paths are put back to this machine's, so a result reads exactly as a local run's.

An entry on a device reached over SSH (`device`, edgekit.devices) is a unit like the others: it holds
`edgekit-device:NAME`, so it runs on the node that declares it (the one whose ~/.ssh reaches the device),
one at a time per device, and that node runs the device bench (`bench_on_device`) from there.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import tarfile
import tempfile
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from edgekit.bench.run import BenchOptions, Target
from edgekit.executors import Done, Executor

DEVICE = "edgekit-device:"  # + NAME: declared by the node that holds (or reaches) that device, count 1
TARGET = "edgekit-target:"  # + target name: declared by nodes that measure for that target, when a cluster dedicates some


@dataclasses.dataclass(frozen=True)
class BenchJob:
    artifact: str
    target: Target | str | None
    options: BenchOptions
    label: str | None = None  # how messages name the project entry; None for a single artifact
    resource: str | None = None  # the custom resource its bench must hold (edgekit-device:NAME)
    device: str | None = None  # a device reached over SSH (edgekit.devices: a [devices.NAME] or ssh://...): benched there


def needs_of(job: BenchJob, offered: Mapping[str, float]) -> dict[str, float]:
    """What a bench asks of the node it runs on: its `resource` when it names one, else `edgekit-device:NAME`
    for a job on a device (the node that reaches it declares that), else `edgekit-target:TARGET` when some
    node declares that, else nothing (any node with a free CPU)."""
    if job.resource:
        return {job.resource: 1}
    if job.device:
        return {DEVICE + job.device: 1}
    name = job.target.name if isinstance(job.target, Target) else job.target
    if name and offered.get(TARGET + name, 0) >= 1:
        return {TARGET + name: 1}
    return {}


def bench_jobs(jobs: Sequence[BenchJob], *, executor: Executor, config: str | None = None) -> Iterator[dict[str, Any]]:
    """Bench every job on `executor`; yield the results in the order of `jobs`, each with `ran_on`.
    `config`: the project file a job's `device` name is looked up in (default ./edgekit.toml)."""
    remote = executor.name != "local"
    offered = executor.resources() if remote else {}
    if remote:  # before anything is packed: a device no node reaches is exit 4 now, not after minutes of tarring
        executor.check([needs_of(j, offered) for j in jobs])
    units = [_ship(j, config) if remote else j for j in jobs]
    for unit, done in zip(units, executor.map(_bench_unit, units, needs=[needs_of(j, offered) for j in jobs], label="bench")):
        result = done.value if isinstance(unit, BenchJob) else relocate(done.value[1], _relocations(Path(done.value[0]), unit))
        if not isinstance(unit, BenchJob):  # the two fields that hold the same path, as given and resolved
            result["artifact"], result["artifact_path"] = unit.job.artifact, str(Path(unit.job.artifact).resolve())
        result["ran_on"] = done.place()
        if done.retry:
            result["notes"].append(f"executor: {done.retry}")
        yield result


def run_bench_jobs(jobs: Sequence[tuple[str, Any, BenchOptions]], devices: Sequence[str | None], *, executor: Executor,
                   over_ssh: Callable[[list[tuple[Any, ...]]], list[dict[str, Any]]], labels: Mapping[str | None, str] | None,
                   resources: Mapping[str | None, str | None], config: str | None = None) -> Iterator[dict[str, Any]]:
    """`edgekit bench`'s dispatch, results in the order of `jobs`. Local: every job as edgekit.devices runs
    them (`over_ssh`: a device's over SSH, the others here). Ray: every job a Ray unit, a device's on the
    node that declares `edgekit-device:NAME`, which benches it over SSH from there."""
    here = Done(None, executor="local", node_id=None, host=socket.gethostname()).place()
    if executor.name == "local":
        for r in over_ssh([(a, t, o, d) for (a, t, o), d in zip(jobs, devices)]):
            r.setdefault("ran_on", here)
            yield r
        return
    yield from bench_jobs([BenchJob(a, t, o, labels.get(o.name) if labels else None, resources.get(o.name), d) for (a, t, o), d in zip(jobs, devices)],
                          executor=executor, config=config)


def _bench_unit(unit: BenchJob | _Shipped) -> Any:
    """A job's result; for a shipped job, (the folder it was unpacked in on the node, its result)."""
    from edgekit.bench.project import naming
    from edgekit.bench.run import bench_artifact

    if isinstance(unit, BenchJob):
        with naming(unit.label, unit.options.name) if unit.label else contextlib.nullcontext():
            return bench_artifact(unit.artifact, target=unit.target, options=unit.options)
    with tempfile.TemporaryDirectory(prefix="edgekit-unit-") as tmp:
        root = Path(tmp)
        with tarfile.open(fileobj=io.BytesIO(unit.files)) as tar:
            tar.extractall(root, filter="data")
        job = unit.job
        at = {role: str(root / rel) for role, rel in unit.places.items()}
        opts = dataclasses.replace(job.options, data=at.get("data", job.options.data), baseline=at.get("baseline", job.options.baseline))
        with naming(job.label, job.options.name) if job.label else contextlib.nullcontext():
            if unit.device is not None:  # over SSH from this node, as `bench --device` does from a laptop
                from edgekit.devices import DeviceJob, bench_on_device

                return str(root), bench_on_device(unit.device, [DeviceJob(at["artifact"], at.get("target", job.target), opts)])[0]  # type: ignore[arg-type]
            return str(root), bench_artifact(at["artifact"], target=job.target, options=opts)


@dataclasses.dataclass(frozen=True)
class _Shipped:
    job: BenchJob
    files: bytes  # an uncompressed tar (artifacts are mostly weights: compressing costs more than it saves)
    places: dict[str, str]  # role (artifact, data, baseline, target) -> its path inside the tar
    originals: dict[str, str]  # role -> the path as given here
    device: Any = None  # edgekit.devices.Device, looked up here: the node reaches it over SSH


def _ship(job: BenchJob, config: str | None = None) -> _Shipped:
    from edgekit.compile import load_target, read_artifact

    buf = io.BytesIO()
    places: dict[str, str] = {}
    originals: dict[str, str] = {}
    with tarfile.open(fileobj=buf, mode="w") as tar:
        src = Path(job.artifact)
        found = read_artifact(src)
        if found is not None and found[0] != src:  # a file in a compile folder: the whole folder
            tar.add(found[0], arcname=f"artifact/{found[0].name}")
            places["artifact"] = f"artifact/{found[0].name}/{src.relative_to(found[0])}"
        else:
            tar.add(src, arcname=f"artifact/{src.name}")
            places["artifact"] = f"artifact/{src.name}"
            for extra in _external_data(src):
                tar.add(extra, arcname=f"artifact/{extra.relative_to(src.parent)}")
        originals["artifact"] = job.artifact
        if job.options.data and Path(job.options.data).exists():
            places["data"], originals["data"] = add_source(tar, "data", Path(job.options.data)), job.options.data
        if job.options.baseline and Path(job.options.baseline).exists():
            _ship_baseline(tar, Path(job.options.baseline))
            places["baseline"] = f"baseline/{Path(job.options.baseline).name}"
            originals["baseline"] = job.options.baseline
        device = None
        if job.device:  # the device's own edgekit reads the target: a profile by name there, a .toml file sent along
            from edgekit.devices import resolve_device

            device = resolve_device(job.device, config=config)
            if isinstance(job.target, str) and job.target.endswith(".toml") and Path(job.target).is_file():
                tar.add(job.target, arcname=f"target/{Path(job.target).name}")
                places["target"], originals["target"] = f"target/{Path(job.target).name}", job.target
    if device is not None:
        return _Shipped(job, buf.getvalue(), places, originals, device)
    target = load_target(job.target) if isinstance(job.target, str) else job.target  # profiles found here, not on the node
    return _Shipped(dataclasses.replace(job, target=target), buf.getvalue(), places, originals)


def add_source(tar: tarfile.TarFile, role: str, path: Path) -> str:
    """Put a file a unit reads into `tar` under ROLE/ and return its path there: a calibration .toml with the
    folder it names files in, an .onnx with its external data, a folder whole."""
    if path.suffix == ".toml":  # a calibration manifest names files beside it
        tar.add(path.parent, arcname=f"{role}/{path.parent.name}")
        return f"{role}/{path.parent.name}/{path.name}"
    tar.add(path, arcname=f"{role}/{path.name}")
    for extra in _external_data(path):
        tar.add(extra, arcname=f"{role}/{extra.relative_to(path.parent)}")
    return f"{role}/{path.name}"


def _ship_baseline(tar: tarfile.TarFile, path: Path) -> None:
    """A baseline report with what pairing needs: the artifact copy beside it (NAME.artifact), or the
    artifact it recorded when that is still here; or a baseline that is an artifact itself."""
    from edgekit.bench.baseline import is_report

    if not is_report(path):
        tar.add(path, arcname=f"baseline/{path.name}")
        return
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        tar.add(path, arcname=f"baseline/{path.name}")  # the node says what is wrong with it, as here
        return
    copy = path.parent / data["baseline_artifact"] if isinstance(data, dict) and data.get("baseline_artifact") else None
    if copy is not None and copy.exists():
        top = Path(data["baseline_artifact"]).parts[0]
        tar.add(path.parent / top, arcname=f"baseline/{top}")
    elif isinstance(data, dict) and data.get("artifact_path") and Path(data["artifact_path"]).exists():
        recorded = Path(data["artifact_path"])
        tar.add(recorded, arcname=f"baseline/recorded/{recorded.name}")
        data = dict(data, baseline_artifact=f"recorded/{recorded.name}")
    raw = json.dumps(data).encode()
    info = tarfile.TarInfo(f"baseline/{path.name}")
    info.size = len(raw)
    tar.addfile(info, io.BytesIO(raw))


def _external_data(model: Path) -> list[Path]:
    if model.suffix != ".onnx" or not model.is_file():
        return []
    import onnx

    proto = onnx.load(str(model), load_external_data=False)
    files = {e.value for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL for e in t.external_data if e.key == "location"}
    return [model.parent / f for f in sorted(files) if (model.parent / f).exists()]


def _relocations(root: Path, unit: _Shipped) -> list[tuple[str, str]]:
    return relocations(root, unit.places, unit.originals)


def relocations(root: Path, places: Mapping[str, str], originals: Mapping[str, str]) -> list[tuple[str, str]]:
    """(the node's path text, this machine's), most specific first: paths as given, resolved, and as messages
    show them (`shown` on the node: a path outside its working folder reads `…/PARENT/NAME`)."""
    from edgekit.files import shown

    pairs = []
    for role, rel in places.items():
        there, here = root / rel, Path(originals[role])
        pairs += [(str(there), str(here)), (str(Path("…", there.parent.name, there.name)), shown(here))]
        beside = str(root / rel.split("/")[0]) + "/"  # files beside it (a baseline's copy), as `here.parent / NAME` reads here
        pairs.append((beside, "" if str(here.parent) == "." else f"{here.parent}/"))
    return sorted(set(pairs), key=lambda p: -len(p[0]))


def relocate(obj: Any, pairs: list[tuple[str, str]]) -> Any:
    """`obj` (strings, dicts, lists) with every node path text replaced by this machine's."""
    if isinstance(obj, str):
        for there, here in pairs:
            if there in obj:
                obj = obj.replace(there, here)
        return obj
    if isinstance(obj, dict):
        return {k: relocate(v, pairs) for k, v in obj.items()}
    if isinstance(obj, list):
        return [relocate(v, pairs) for v in obj]
    return obj
