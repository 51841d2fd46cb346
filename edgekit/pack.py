"""Bundles for the device: `pack` (this module), `verify` (edgekit.bundle) and `load` (edgekit.loader).

A bundle (a folder or a `.tar`) holds the compiled artifacts, the ONNX they came from
(a TensorRT engine is tied to its TensorRT version and GPU: the device may rebuild it;
`include_source=False` leaves it out), the preprocessing recipe with the versions of the
libraries it depends on, optional labels, budgets, accuracy and latency results, and a
manifest with the SHA-256 of every file and the versions of every tool. Bundles never
contain pickles; unpacking refuses any member that would land outside its folder. Files
get the usual modes (the umask's), so a service account can read a bundle root packed.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from edgekit.bundle import BUNDLE_MANIFEST, LABELS, LM_KIND, SIGNATURE, check_verified, files_under, safe_extract, verify_bundle  # noqa: F401 - re-exported
from edgekit.compile import MANIFEST, read_artifact, source_manifest, tool_versions
from edgekit.errors import UsageError
from edgekit.files import atomic_dir, atomic_path, sha256_file
from edgekit.version import VERSION



def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_labels(path: str | Path) -> list[str]:
    """One class label per line (UTF-8); trailing blank lines are dropped, other blank lines are an error."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read labels {path}: {exc}", hint="give a UTF-8 text file with one label per line") from exc
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise UsageError(f"labels file {path} is empty", hint="one label per line, in the order of the model's output classes")
    blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if blank:
        raise UsageError(f"labels file {path} has a blank line ({blank[0]})", hint="one label per line, in the order of the model's output classes")
    return [line.strip() for line in lines]


def _check_labels_fit(labels: list[str], onnx_path: Path, label_path: str | Path) -> None:
    from edgekit.onnxmodel import load_onnx, output_specs

    outs = output_specs(load_onnx(onnx_path, check=False))
    classes = outs[0].shape[-1] if outs and outs[0].shape else None
    if isinstance(classes, int) and classes != len(labels):
        raise UsageError(f"{label_path} has {len(labels)} labels; the model's output {outs[0].name!r} has {classes} classes",
                         hint="one label per output class, in order")


def pack_bundle(artifacts: list[str | Path], output: str | Path, *, bench_report: str | Path | None = None,
                labels: str | Path | None = None, include_source: bool = True,
                sign_key: str | Path | None = None, release: int | None = None) -> dict[str, Any]:
    """Bundle compiled artifact folders (and, unless `include_source=False`, the ONNX they came from)
    into `output` (.tar or folder), with `labels` (a text file, one class per line) when given.

    With `sign_key` (an `edgekit keygen` private key) a detached signature over the manifest is
    added as bundle.sig; `release` is a number `verify --min-release` compares (rollback protection).
    """
    output = Path(output)
    if release is not None and (not isinstance(release, int) or release < 0):
        raise UsageError(f"release {release!r} is not a whole number >= 0", hint="give --release N, e.g. 42")
    if sign_key is not None:
        from edgekit.signing import load_private_key

        load_private_key(sign_key)  # a wrong key file fails before any packing work
    label_list = read_labels(labels) if labels is not None else None
    if not artifacts:
        raise UsageError("nothing to pack", hint="give one or more folders written by `edgekit compile`")
    entries, sources = [], {}
    for a in artifacts:
        found = (_lm_artifact(Path(a)) or read_artifact(Path(a))) if Path(a).exists() else None
        if found is None:
            raise UsageError(f"{a} is not a compiled artifact", hint="give folders written by `edgekit compile` or `edgekit lm quantize`")
        entries.append(found)
    kinds = {m.get("kind") for _, m in entries}
    if len(kinds) > 1:
        raise UsageError("a bundle holds one model: these are a language model and a compiled artifact",
                         hint="pack the language model's folders in a bundle of their own")
    with tempfile.TemporaryDirectory(prefix="edgekit-pack-") as tmp:
        root = Path(tmp) / "bundle"
        root.mkdir()
        items = []
        for i, (folder, manifest) in enumerate(entries):
            name = f"{i}-{manifest['backend']}-{manifest['precision']}"
            dest = root / "artifacts" / name
            dest.mkdir(parents=True)
            if manifest.get("kind") == LM_KIND:
                for f in manifest["files"]:
                    (dest / f).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(folder / f, dest / f)
                items.append({"dir": f"artifacts/{name}", "kind": LM_KIND,
                              **{k: manifest[k] for k in ("backend", "device", "precision", "weights", "entry", "versions", "check")},
                              "settings": {}, "target": {}, "source": None})
                continue
            for f in list(manifest["files"]) + [MANIFEST]:
                shutil.copy2(folder / f, dest / f)
            src = Path(manifest["source"]["path"])
            src_rel = None
            if label_list is not None and i == 0:
                model_file = src if src.exists() else dest / manifest["entry"]
                if model_file.suffix == ".onnx":
                    _check_labels_fit(label_list, model_file, labels)
            if include_source and src.exists() and sha256_file(src) == manifest["source"]["sha256"]:
                src_rel = sources.get(manifest["source"]["sha256"])
                if src_rel is None:
                    src_rel = f"source/{src.name}"
                    (root / "source").mkdir(exist_ok=True)
                    shutil.copy2(src, root / src_rel)
                    if source_manifest(src) is not None:  # only a sidecar that describes this model
                        shutil.copy2(src.with_name(src.name + ".json"), root / (src_rel + ".json"))
                    sources[manifest["source"]["sha256"]] = src_rel
            items.append({"dir": f"artifacts/{name}", "backend": manifest["backend"], "device": manifest["device"],
                          "precision": manifest["precision"], "entry": manifest["entry"], "versions": manifest["versions"],
                          "settings": manifest.get("settings", {}), "target": manifest.get("target", {}), "source": src_rel})
        quant = (entries[0][1].get("source", {}).get("manifest") or {})
        bench = json.loads(Path(bench_report).read_text()) if bench_report else None
        if bench is not None:
            for r in bench.get("results", [bench]):
                r.pop("samples_ms", None)
            (root / "bench.json").write_text(json.dumps(bench, indent=2))
        if label_list is not None:
            (root / LABELS).write_text("\n".join(label_list) + "\n", encoding="utf-8")
        recipe = (quant.get("calibration") or {}).get("preprocessing")
        manifest = {
            "kind": "edgekit.bundle", "schema": 1, "edgekit": VERSION, "release": release,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "artifacts": items,
            "preprocessing": recipe,
            **(_preprocessing_record(recipe) if recipe else {}),
            "labels": LABELS if label_list is not None else None,
            "accuracy": quant.get("accuracy"),
            "budgets": sorted({b for e in entries for b in e[1].get("target", {}).get("budgets", [])}),
            "versions": tool_versions(),
            "files": files_under(root),
        }
        (root / BUNDLE_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if sign_key is not None:
            from edgekit.signing import sign_manifest

            (root / SIGNATURE).write_text(json.dumps(sign_manifest(manifest, sign_key, version=VERSION), indent=2) + "\n")
        mask = _umask()
        if output.suffix == ".tar":
            with atomic_path(output) as tmp_tar:
                with tarfile.open(tmp_tar, "w") as tar:
                    # the manifest first: a cut copy is recognisable as one, and readers can stop early
                    paths = [root / BUNDLE_MANIFEST] + [p for p in sorted(root.rglob("*")) if p.name != BUNDLE_MANIFEST or p.parent != root]
                    for p in paths:
                        tar.add(p, arcname=p.relative_to(root).as_posix(), recursive=False, filter=_normal_member)
                os.chmod(tmp_tar, 0o666 & ~mask)  # mkstemp makes 0600; a bundle is for others to read
        else:
            with atomic_dir(output) as tmp_dir:
                shutil.copytree(root, tmp_dir, dirs_exist_ok=True)
                os.chmod(tmp_dir, 0o777 & ~mask)  # mkdtemp makes 0700
    return manifest


def _lm_artifact(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """(folder, an artifact manifest) for a language model's folder (`lm.json`, as `edgekit lm export|quantize` wrote it);
    None for anything else. Its check (perplexity and agreement against FP32) comes from its quantize.json."""
    from edgekit.llm.runtime import META, RUNTIMES, read_meta

    if not (folder.is_dir() and (folder / META).is_file()):
        return None
    meta = read_meta(folder)
    backend = RUNTIMES.get(meta.format)
    if backend is None:
        raise UsageError(f"{folder}/{META} names an unknown format {meta.format!r}", hint="re-export it with this edgekit")
    versions = tool_versions()
    if backend == "openvino":
        from edgekit.backends import get_backend

        versions["openvino"] = get_backend("openvino").status().version or ""
    elif backend == "tensorrt":  # the version the engine was built with (the packing machine may have none)
        versions.update(meta.extra.get("tensorrt") or {})
    q = folder / "quantize.json"
    check = json.loads(q.read_text()).get("check") if q.is_file() else None
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return folder, {"kind": LM_KIND, "backend": backend, "device": "GPU" if backend == "tensorrt" else "cpu", "precision": meta.weights.split("-")[0],
                    "weights": meta.weights, "entry": meta.model, "versions": versions, "files": files,
                    **({"activations": meta.extra.get("precision")} if backend == "tensorrt" else {}),
                    "check": {k: check[k] for k in ("meets_bar", "perplexity", "fp32_perplexity", "perplexity_increase", "greedy_agreement", "bar") if k in check} if check else None}


def _normal_member(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """No owner names or ids from the build machine; the usual modes for files and folders."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = int(info.mtime)  # a fractional mtime would add a PAX header before each member
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def _preprocessing_record(recipe: dict[str, Any]) -> dict[str, Any]:
    """Versions of the preprocessing libraries, and a fingerprint of how this Pillow resizes (checked by verify)."""
    from edgekit import deps
    from edgekit.data.preprocess import ImageRecipe, preprocessing_versions, resize_fingerprint

    record: dict[str, Any] = {"preprocessing_versions": preprocessing_versions()}
    if deps.available("PIL"):
        record["preprocessing_check"] = resize_fingerprint(ImageRecipe.from_dict(recipe))
    return record


def __getattr__(name: str) -> Any:
    """`edgekit.pack.load` / `BundleEngine` moved to edgekit.loader (imported lazily: it needs the backends)."""
    if name in ("load", "BundleEngine"):
        import edgekit.loader as _load_mod

        return getattr(_load_mod, name)
    raise AttributeError(name)


