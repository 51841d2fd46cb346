"""The baseline: which earlier build a run is compared with, and how it is kept.

A baseline is an earlier `--json` report or an artifact. A report whose artifact is still there, byte
for byte, is re-measured interleaved with the build under test (paired); otherwise its recorded samples
are the reference. Its identity (graph, input shapes, target, precision) must match the run's, so a
mixed-up CI cache fails loudly instead of comparing two models. The gate's statistics live in
`edgekit.bench.stats`; the decide-or-measure-longer loop in `edgekit.bench.run`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgekit.errors import UsageError
from edgekit.files import artifact_digest, shown


def model_changed_error(baseline: str, base: dict[str, Any], current: dict[str, Any], changed: list[str]) -> UsageError:
    from edgekit.bench.identity import describe

    return UsageError(f"baseline {shown(baseline)} was measured on another model ({' and '.join(changed)} differ): "
                      f"{describe(base, changed)}; this run: {describe(current, changed)}",
                      hint="for a deliberate change pass --allow-model-change (this run is reported as a new baseline; record it with "
                           "--update-baselines); otherwise give this model's baseline (check the CI cache key)")


def baseline_identity(recorded: dict[str, Any] | None, base_artifact: Path | None) -> dict[str, Any]:
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


def resolve_baseline(path: str, paired: bool | None) -> tuple[dict[str, Any] | None, Path | None, str | None]:
    """(recorded report, artifact to re-measure interleaved, a note on what was chosen and why).

    A report whose artifact is still where it was, byte for byte, is re-measured beside the current
    build (unless `paired` is False): a recorded run met other neighbours than this one, and on a
    shared runner that alone moves latency by more than a typical regression threshold."""
    p = Path(path)
    if p.exists() and not is_report(p):
        if paired is False:
            raise UsageError(f"--unpaired needs a recorded report, and {shown(p)} is an artifact", hint="give a --json report as --baseline, or drop --unpaired")
        return None, p, None
    data = load_baseline(path)
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
    elif artifact_sha256(found) != data["artifact_sha256"]:
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
    keep = src.exists() and not (src.is_file() and src.suffix == ".onnx" and has_external_data(src))  # weights in other files: the report alone
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


def has_external_data(model: Path) -> bool:
    import onnx

    proto = onnx.load(str(model), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


def artifact_sha256(artifact: Path) -> str:
    """The artifact's identity: a whole compile folder even when one of its files is named."""
    from edgekit.compile import read_artifact

    found = read_artifact(artifact)
    return artifact_digest(found[0] if found else artifact)


def is_report(p: Path) -> bool:
    if not p.is_file() or p.suffix.lower() != ".json":
        return False
    try:
        return json.loads(p.read_text()).get("kind") != "edgekit.artifact"
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return True  # _load_baseline says what is wrong with it


def load_baseline(path: str) -> dict[str, Any]:
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
