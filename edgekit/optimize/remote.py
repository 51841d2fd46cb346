"""`edgekit optimize --executor ray`: the run as one work unit on the target's node, its quantize spread out.

What must stay together stays together: every candidate is compiled, loaded, judged for accuracy and raced
against the others in ONE unit on one node. The race compares candidates interleaved, round by round, and
the accuracy pass's timings decide which are raced at all, so they must share a CPU and a moment; a compiled
artifact is also the compiling machine's (a TensorRT engine, ONNX Runtime's layout-optimized graph). That unit
holds `edgekit-target:TARGET` when a node declares it (as a bench does, edgekit.executors.bench), else it
runs on any node with a free CPU. What is CPU work anywhere fans out from it: quantize's sensitivity
ranking (the float fallback of quantize's check, and of the `-fallback` candidates) is one Ray unit per
node ranked, through an executor the unit opens on the same cluster.

No file system is shared: the unit carries the model (with its external data), the calibration and eval
sources and a target .toml; it sends back the report and the winner's folder, whose paths are put back to
this machine's, so the report and the artifact read as a local run's, with `ran_on` saying where it ran.
"""
from __future__ import annotations

import dataclasses
import io
import json
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from edgekit.errors import BackendUnavailable, EdgekitError, GateFailed, UsageError

_ERRORS: dict[str, type[EdgekitError]] = {"UsageError": UsageError, "BackendUnavailable": BackendUnavailable, "GateFailed": GateFailed}


@dataclasses.dataclass(frozen=True)
class _Job:
    files: bytes  # an uncompressed tar: model/, calib/, eval/, target/
    places: dict[str, str]  # role -> path inside the tar
    calib: str  # as given, for a source that is not a file (pkg.module:callable, a packaged manifest)
    options: Any  # OptimizeOptions without the executor


def target_needs(target: Any, offered: dict[str, float]) -> dict[str, float]:
    """What the optimize unit holds: `edgekit-target:NAME` when some node declares it, else nothing."""
    from edgekit.executors.bench import TARGET

    return {TARGET + target.name: 1} if offered.get(TARGET + target.name, 0) >= 1 else {}


def optimize_on(executor: Any, model: Path, out_dir: Path, *, calib: str, options: Any) -> dict[str, Any]:
    """optimize_model as one unit on `executor`; the winner written to `out_dir` here, the report returned."""
    from edgekit.config import load_target
    from edgekit.executors.bench import add_source, relocate, relocations

    if not model.is_file():
        raise UsageError(f"{model}: no such file", hint="give the FP32 .onnx model")
    target = load_target(options.target)  # profiles are found here, as bench does; a .toml travels with the unit
    places: dict[str, str] = {}
    originals: dict[str, str] = {}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for role, src in (("model", str(model)), ("calib", calib), ("eval", options.eval_source), ("target", target.source)):
            if src and Path(src).exists():
                places[role], originals[role] = add_source(tar, role, Path(src)), src
    job = _Job(buf.getvalue(), places, calib, dataclasses.replace(options, executor=None))
    done = next(iter(executor.map(_optimize_unit, [job], needs=[target_needs(target, executor.resources())], label="optimize")))
    root, outcome, winner = done.value
    pairs = sorted(set(relocations(Path(root), places, originals) + [(str(Path(root) / "out"), str(out_dir))]), key=lambda p: -len(p[0]))
    kind, name, message, hint, report = outcome
    report = relocate(report, pairs)
    if report is not None:
        report["ran_on"] = done.place()  # with a retry, when the first attempt's worker died
    if kind == "error":
        raise _ERRORS.get(name, EdgekitError)(relocate(message, pairs), hint=relocate(hint, pairs), **({"result": report} if name == "GateFailed" else {}))
    _unpack_winner(winner, root, out_dir, report, pairs)
    return report


def _optimize_unit(job: _Job) -> tuple[str, tuple[str, str | None, str | None, str | None, Any], bytes | None]:
    """On the node: (the folder it ran in, (ok|error, error class, message, hint, report), the winner's folder as a tar)."""
    from edgekit.executors.ray import RayExecutor
    from edgekit.optimize.run import optimize_here

    with tempfile.TemporaryDirectory(prefix="edgekit-optimize-unit-") as tmp:
        root = Path(tmp).resolve()  # resolved: the report's paths and the manifest's resolved ones read alike
        with tarfile.open(fileobj=io.BytesIO(job.files)) as tar:
            tar.extractall(root, filter="data")
        at = {role: str(root / rel) for role, rel in job.places.items()}
        # this worker is on the cluster already: the executor joins it, and quantize's units go wherever Ray has room
        units = RayExecutor()
        opts = dataclasses.replace(job.options, eval_source=at.get("eval", job.options.eval_source), target=at.get("target", job.options.target),
                                   executor=units)
        try:
            report = optimize_here(Path(at["model"]), root / "out", calib=at.get("calib", job.calib), options=opts, ran_on={})
        except GateFailed as exc:
            return str(root), ("error", "GateFailed", exc.message, exc.hint, exc.result), None
        except EdgekitError as exc:
            return str(root), ("error", type(exc).__name__, exc.message, exc.hint, None), None
        finally:
            units.close()
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            tar.add(root / "out", arcname="out")
        return str(root), ("ok", None, None, None, report), out.getvalue()


def _unpack_winner(winner: bytes | None, root: str, out_dir: Path, report: dict[str, Any], pairs: list[tuple[str, str]]) -> None:
    """The winner's folder into `out_dir` (replaced whole, atomically), its manifest's paths as here, the final report beside it."""
    from edgekit.compile import MANIFEST
    from edgekit.executors.bench import relocate
    from edgekit.files import atomic_dir, json_default
    from edgekit.optimize.run import REPORT

    assert winner is not None
    with tempfile.TemporaryDirectory(prefix="edgekit-optimize-winner-") as tmp, atomic_dir(out_dir) as dest:
        with tarfile.open(fileobj=io.BytesIO(winner)) as tar:
            tar.extractall(tmp, filter="data")
        for f in (Path(tmp) / "out").iterdir():
            shutil.move(f, dest / f.name)
        there = str(Path(root) / "out")  # the manifest records the INT8 winner's source resolved, as a local run does
        manifest = relocate(json.loads((dest / MANIFEST).read_text()), [(t, str(out_dir.resolve()) if t == there else h) for t, h in pairs])
        (dest / MANIFEST).write_text(json.dumps(manifest, indent=2, default=json_default) + "\n")
        (dest / REPORT).write_text(json.dumps(report, indent=2, default=json_default) + "\n")
