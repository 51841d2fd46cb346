"""`compile`: an ONNX model -> a target's artifact folder with a manifest; and loading artifacts.

The artifact folder holds the backend's files and `manifest.json`: what produced it,
from what (hashes), with which versions and settings, and at which precision.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import platform
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgekit.backends import get_backend
from edgekit.backends.base import PRECISIONS, CompileRequest, Engine, cpu_feature_notes
from edgekit.config import Target, load_target
from edgekit.errors import UsageError
from edgekit.files import atomic_dir, sha256_file
from edgekit.onnxmodel import is_qdq, load_onnx
from edgekit.progress import status
from edgekit.version import VERSION

MANIFEST = "manifest.json"


def tool_versions() -> dict[str, str]:
    import numpy
    import onnx
    import onnxruntime

    return {"edgekit": VERSION, "python": platform.python_version(), "numpy": numpy.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def resolve_precision(model_is_qdq: bool, target: Target, precision: str | None) -> str:
    if precision is not None:
        if precision not in PRECISIONS:
            raise UsageError(f"unknown precision {precision!r}", hint=f"use one of {', '.join(PRECISIONS)}")
        return precision
    if model_is_qdq:
        return "int8"
    if target.precision == "int8":
        raise UsageError(
            f"target {target.name} runs int8 but this model is not quantized",
            hint="run `edgekit quantize MODEL --target ...` first, or pass --precision fp32",
        )
    return target.precision


def source_manifest(model: Path) -> dict[str, Any] | None:
    """The manifest `edgekit quantize` wrote beside a QDQ model (`model.int8.onnx.json`), if any and if
    it describes this model (its recorded output digest matches the file)."""
    side = model.with_name(model.name + ".json")
    if not side.exists():
        return None
    try:
        data = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    digest = data.get("output", {}).get("sha256") if isinstance(data, dict) else None
    if digest is not None and digest != sha256_file(model):
        return None  # stale: the model was written again (or the run died) after this sidecar
    return data


def compile_model(model: str | Path, out_dir: str | Path, *, target: Target | str, precision: str | None = None,
                  shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, Any]:
    """Build `target`'s artifact from `model` into `out_dir` (replaced whole, atomically); return the manifest."""
    model, out_dir = Path(model), Path(out_dir)
    target = load_target(target) if isinstance(target, str) else target
    backend = get_backend(target.backend)
    proto = load_onnx(model)
    prec = resolve_precision(is_qdq(proto), target, precision)
    from edgekit.bench.identity import graph_digest

    graph = graph_digest(proto)  # the architecture, so a baseline knows which model it measured
    del proto
    request = CompileRequest(precision=prec, device=target.device, options=target.options, shapes=dict(shapes or {}))
    with atomic_dir(out_dir) as tmp, status(f"compiling for {target.name} ({prec})"):
        part = backend.compile(model, tmp, request=request)
        manifest = {
            "kind": "edgekit.artifact",
            "schema": 1,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "backend": target.backend,
            "device": target.device,
            "precision": prec,
            "entry": part["entry"],
            "target": target.to_dict(),
            "source": {"path": str(model.resolve()), "sha256": sha256_file(model), "graph": graph, "manifest": source_manifest(model)},
            "files": {f: sha256_file(tmp / f) for f in part["files"]},
            "versions": {**tool_versions(), **part["versions"]},
            "settings": part.get("settings", {}),
            "shapes": {k: list(v) for k, v in (shapes or {}).items()},
        }
        manifest["cpu_features_missing"], manifest["notes"] = cpu_feature_notes(manifest["source"]["manifest"])
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_artifact(path: Path) -> tuple[Path, dict[str, Any]] | None:
    """(artifact folder, manifest) for a compile output folder or a file inside one; None otherwise."""
    folder = path if path.is_dir() else path.parent
    mf = folder / MANIFEST
    if not mf.exists():
        if path.is_dir():
            raise UsageError(f"{path} is a folder without {MANIFEST}", hint="give a folder written by `edgekit compile`, or an .onnx file")
        return None
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{mf} is not valid JSON ({exc})", hint="compile the model again") from exc
    if manifest.get("kind") != "edgekit.artifact" or "entry" not in manifest:
        raise UsageError(f"{mf} is not an edgekit artifact manifest", hint="compile the model again")
    return folder, manifest


@contextlib.contextmanager
def open_engine(artifact: str | Path, *, target: Target | str | None = None, precision: str | None = None) -> Iterator[tuple[Engine, dict[str, Any]]]:
    """Load an artifact (compile folder, a file in one, or an .onnx compiled on the fly) as an engine."""
    artifact = Path(artifact)
    if not artifact.exists():
        raise UsageError(f"{artifact}: no such file or folder", hint="check the path")
    found = read_artifact(artifact)
    if found is not None:
        folder, manifest = found
        tgt = target_for(manifest, target)
        engine = get_backend(manifest["backend"]).load(folder, manifest, options=tgt.options)
        with engine:
            yield engine, manifest
        return
    if artifact.suffix != ".onnx":
        raise UsageError(f"{artifact} is neither an .onnx file nor a compiled artifact", hint="pass an .onnx file or a folder written by `edgekit compile`")
    tgt = load_target(target) if isinstance(target, str) else target or load_target("onnxruntime")
    with tempfile.TemporaryDirectory(prefix="edgekit-") as tmp:
        shapes = {k: tuple(v) for k, v in tgt.bench.shapes.items()}
        manifest = compile_model(artifact, Path(tmp) / "artifact", target=tgt, precision=precision, shapes=shapes)
        engine = get_backend(tgt.backend).load(Path(tmp) / "artifact", manifest, options=tgt.options)
        with engine:
            yield engine, manifest


def target_for(manifest: dict[str, Any], target: Target | str | None) -> Target:
    """The target to run an artifact with: the one given (same backend), else the recorded one."""
    from edgekit.config import target_from_dict

    if target is not None:
        tgt = load_target(target) if isinstance(target, str) else target
        if tgt.backend != manifest["backend"]:
            raise UsageError(
                f"the artifact was compiled for {manifest['backend']}, the target is {tgt.backend}",
                hint=f"compile the source ONNX for {tgt.backend}, or bench with a {manifest['backend']} target",
            )
        return tgt
    t = manifest.get("target", {})
    data = {"backend": manifest["backend"], "device": manifest.get("device", "CPU"), "precision": manifest["precision"],
            "options": t.get("options", {}), "bench": t.get("bench", {})}
    recorded = target_from_dict(data, name=t.get("name", manifest["backend"]))
    from edgekit.config import Budget

    return dataclasses.replace(recorded, budgets=tuple(Budget.parse(b) for b in t.get("budgets", [])))
