"""Bundles for the device: `pack`, `verify` and `load`.

A bundle (a folder or a `.tar`) holds the compiled artifacts, the ONNX they came from
(a TensorRT engine is tied to its TensorRT version and GPU: the device may rebuild it),
the preprocessing recipe, I/O specs, budgets, accuracy and latency results, and a
manifest with the SHA-256 of every file and the versions of every tool. Bundles never
contain pickles; unpacking refuses any member that would land outside its folder.
"""
from __future__ import annotations

import datetime
import json
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import __version__
from edgekit.backends import get_backend
from edgekit.backends.base import EngineBase
from edgekit.compile import MANIFEST, read_artifact, source_manifest, tool_versions
from edgekit.errors import BackendUnavailable, GateFailed, UsageError
from edgekit.files import atomic_dir, atomic_path, sha256_file, tar_problem
from edgekit.preprocess import ImageRecipe

BUNDLE_MANIFEST = "bundle.json"
SIGNATURE = "bundle.sig"  # edgekit.signing: a detached signature over the manifest


def _files_under(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).as_posix() not in (BUNDLE_MANIFEST, SIGNATURE)}


def pack_bundle(artifacts: list[str | Path], output: str | Path, *, bench_report: str | Path | None = None,
                sign_key: str | Path | None = None, release: int | None = None) -> dict[str, Any]:
    """Bundle compiled artifact folders (and the ONNX they came from) into `output` (.tar or folder).

    With `sign_key` (an `edgekit keygen` private key) a detached signature over the manifest is
    added as bundle.sig; `release` is a number `verify --min-release` compares (rollback protection).
    """
    output = Path(output)
    if release is not None and (not isinstance(release, int) or release < 0):
        raise UsageError(f"release {release!r} is not a whole number >= 0", hint="give --release N, e.g. 42")
    if sign_key is not None:
        from edgekit.signing import load_private_key

        load_private_key(sign_key)  # a wrong key file fails before any packing work
    if not artifacts:
        raise UsageError("nothing to pack", hint="give one or more folders written by `edgekit compile`")
    entries, sources = [], {}
    for a in artifacts:
        found = read_artifact(Path(a)) if Path(a).exists() else None
        if found is None:
            raise UsageError(f"{a} is not a compiled artifact", hint="give folders written by `edgekit compile`")
        entries.append(found)
    with tempfile.TemporaryDirectory(prefix="edgekit-pack-") as tmp:
        root = Path(tmp) / "bundle"
        root.mkdir()
        items = []
        for i, (folder, manifest) in enumerate(entries):
            name = f"{i}-{manifest['backend']}-{manifest['precision']}"
            dest = root / "artifacts" / name
            dest.mkdir(parents=True)
            for f in list(manifest["files"]) + [MANIFEST]:
                shutil.copy2(folder / f, dest / f)
            src = Path(manifest["source"]["path"])
            src_rel = None
            if src.exists() and sha256_file(src) == manifest["source"]["sha256"]:
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
        quant = (entries[0][1]["source"].get("manifest") or {})
        bench = json.loads(Path(bench_report).read_text()) if bench_report else None
        if bench is not None:
            for r in bench.get("results", [bench]):
                r.pop("samples_ms", None)
            (root / "bench.json").write_text(json.dumps(bench, indent=2))
        manifest = {
            "kind": "edgekit.bundle", "schema": 1, "edgekit": __version__, "release": release,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "artifacts": items,
            "preprocessing": (quant.get("calibration") or {}).get("preprocessing"),
            "accuracy": quant.get("accuracy"),
            "budgets": sorted({b for e in entries for b in e[1].get("target", {}).get("budgets", [])}),
            "versions": tool_versions(),
            "files": _files_under(root),
        }
        (root / BUNDLE_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if sign_key is not None:
            from edgekit.signing import sign_manifest

            (root / SIGNATURE).write_text(json.dumps(sign_manifest(manifest, sign_key, version=__version__), indent=2) + "\n")
        if output.suffix == ".tar":
            with atomic_path(output) as tmp_tar:
                with tarfile.open(tmp_tar, "w") as tar:
                    for p in sorted(root.rglob("*")):
                        tar.add(p, arcname=p.relative_to(root).as_posix(), recursive=False)
        else:
            with atomic_dir(output) as tmp_dir:
                shutil.copytree(root, tmp_dir, dirs_exist_ok=True)
    return manifest


def safe_extract(tar_path: Path, dest: Path) -> None:
    """Extract only regular files and folders that stay inside `dest`; check every member before writing any."""
    try:
        tar = tarfile.open(tar_path, "r")
    except (tarfile.TarError, OSError) as exc:
        raise UsageError(f"{tar_path} is not a readable tar bundle ({tar_problem(exc)})", hint="pack it again with `edgekit pack`") from exc
    try:
        _extract_checked(tar, dest)
    except (tarfile.TarError, EOFError) as exc:  # cut short on its way to the device: a one-line error, not a traceback
        raise UsageError(f"incomplete or corrupt bundle: {tar_path} ({tar_problem(exc)})", hint="copy it again") from exc
    except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:  # a member both a file and a folder
        raise UsageError(f"bundle {tar_path} has members that clash ({exc.strerror}: {Path(exc.filename or '').name})",
                         hint="this bundle is corrupt: pack it again with `edgekit pack`") from exc


def _extract_checked(tar: tarfile.TarFile, dest: Path) -> None:
    with tar:
        members = tar.getmembers()
        for m in members:
            p = Path(m.name)
            if p.is_absolute() or ".." in p.parts or m.name.startswith(("/", "\\")):
                raise UsageError(f"bundle member {m.name!r} would land outside the destination", hint="this bundle is unsafe: do not use it")
            if m.issym() or m.islnk():
                raise UsageError(f"bundle member {m.name!r} is a link ({m.linkname!r}); bundles hold regular files only", hint="this bundle is unsafe: do not use it")
            if not (m.isfile() or m.isdir()):
                raise UsageError(f"bundle member {m.name!r} is not a regular file", hint="this bundle is unsafe: do not use it")
        for m in members:
            target = dest / m.name
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            assert src is not None
            with open(target, "wb") as f:
                shutil.copyfileobj(src, f)


def _open_bundle(path: Path) -> tuple[Path, tempfile.TemporaryDirectory[str] | None]:
    if not path.exists():
        raise UsageError(f"{path}: no such bundle", hint="check the path")
    if path.is_dir():
        return path, None
    tmp = tempfile.TemporaryDirectory(prefix="edgekit-bundle-")
    try:
        safe_extract(path, Path(tmp.name))
    except BaseException:
        tmp.cleanup()
        raise
    return Path(tmp.name), tmp


def _read_manifest(root: Path) -> dict[str, Any]:
    mf = root / BUNDLE_MANIFEST
    if not mf.exists():
        raise UsageError(f"no {BUNDLE_MANIFEST} in the bundle", hint="pack it with `edgekit pack`")
    try:
        m = json.loads(mf.read_text())
    except json.JSONDecodeError as exc:
        raise GateFailed(f"{BUNDLE_MANIFEST} is corrupt ({exc})", hint="get the bundle again") from exc
    for key, typ in (("kind", str), ("schema", int), ("artifacts", list), ("files", dict), ("versions", dict)):
        if not isinstance(m.get(key), typ):
            raise GateFailed(f"{BUNDLE_MANIFEST} fails the schema: {key!r} missing or not a {typ.__name__}", hint="pack the bundle again")
    if m["kind"] != "edgekit.bundle" or m["schema"] != 1:
        raise GateFailed(f"{BUNDLE_MANIFEST} is {m['kind']} schema {m['schema']}, not an edgekit.bundle schema 1", hint="use a matching edgekit version")
    for a in m["artifacts"]:
        for key in ("dir", "backend", "precision", "entry", "versions"):
            if key not in a:
                raise GateFailed(f"{BUNDLE_MANIFEST} fails the schema: an artifact has no {key!r}", hint="pack the bundle again")
    return m


def _major_minor(v: str) -> str:
    return ".".join(str(v).split("-")[0].split(".")[:2])


def verify_bundle(path: str | Path, *, target: str | None = None, trusted_keys: Sequence[str | Path] | None = None,
                  min_release: int | None = None) -> dict[str, Any]:
    """Hashes, schema and compatibility with this machine. A changed byte or a version mismatch: exit 3.

    With trusted keys (given, or EDGEKIT_TRUSTED_KEYS) the signature and every file are checked
    before anything is extracted: an unsigned bundle, another key, a changed manifest or file is exit 3.
    """
    report, _, tmp = _verified_open(Path(path), target=target, trusted_keys=trusted_keys, min_release=min_release)
    if tmp is not None:
        tmp.cleanup()
    return report


def _verified_open(path: Path, *, target: str | None, trusted_keys: Sequence[str | Path] | None, min_release: int | None,
                   private: bool = False) -> tuple[dict[str, Any], Path, tempfile.TemporaryDirectory[str] | None]:
    """Verify a bundle and return (report, the folder that was verified, its temporary folder or None).

    The files a caller goes on to use are the very files checked here: a tar is extracted once
    into a private temporary folder and its extracted manifest's signature is checked again there, so
    a bundle replaced after the stream check (or after verify) is never what gets loaded. With
    `private` a folder bundle checked against keys is copied into a private folder first, for the same reason.
    """
    from edgekit import signing

    if not path.exists():
        raise UsageError(f"{path}: no such bundle", hint="check the path")
    keys = signing.trusted_keys(trusted_keys or ())
    if keys:
        signing.check_bundle(path, keys)  # refuses a tampered tar before extracting any of it
    if private and keys and path.is_dir():
        tmp: tempfile.TemporaryDirectory[str] | None = tempfile.TemporaryDirectory(prefix="edgekit-bundle-")
        root = Path(tmp.name) / "bundle"
        try:
            shutil.copytree(path, root)  # links followed: the copy holds the bytes checked
        except BaseException:
            tmp.cleanup()
            raise
    else:
        root, tmp = _open_bundle(path)
    try:
        m = _read_manifest(root)
        sig = _read_signature(root)
        signature = signing.check_signature(m, sig, keys) if keys else signing.describe_unchecked(sig)
        signing.check_release(m, min_release)
        on_disk = _files_under(root)
        for name, digest in m["files"].items():
            if name not in on_disk:
                raise GateFailed(f"bundle file {name} is missing", hint="get the bundle again")
            if on_disk[name] != digest:
                raise GateFailed(f"bundle file {name} does not match its SHA-256 (changed after packing)", hint="get the bundle again; do not edit bundles")
        extra = sorted(set(on_disk) - set(m["files"]))
        if extra:
            raise GateFailed(f"bundle has a file the manifest does not list: {extra[0]}", hint="get the bundle again")
        checks = [_compatibility(a, target) for a in m["artifacts"]]
        report = {"bundle": str(path), "files": len(m["files"]), "artifacts": checks, "compatible": any(c["compatible"] for c in checks),
                  "signature": signature, "release": m.get("release"), "manifest": m}
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise
    return report, root, tmp


def _read_signature(root: Path) -> dict[str, Any] | None:
    sig_file = root / SIGNATURE
    if not sig_file.exists():
        return None
    try:
        return json.loads(sig_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GateFailed(f"{SIGNATURE} is corrupt ({exc})", hint="get the bundle again from its publisher") from exc


def _compatibility(a: dict[str, Any], target: str | None) -> dict[str, Any]:
    backend = get_backend(a["backend"])
    st = backend.status()
    out = {"dir": a["dir"], "backend": a["backend"], "precision": a["precision"], "compatible": False, "reason": ""}
    if target is not None:
        from edgekit.config import load_target

        t = load_target(target)
        if t.backend != a["backend"]:
            out["reason"] = f"built for {a['backend']}, the target is {t.backend}"
            return out
    if not st.available:
        out["reason"] = f"{a['backend']} is not available here: {st.reason}"
        return out
    built = a["versions"].get(a["backend"], "")
    if _major_minor(built) != _major_minor(st.version or ""):
        fix = (f"rebuild on the device from the shipped ONNX: edgekit compile {a.get('source') or 'SOURCE.onnx'} --target tensorrt -o engine/"
               if a["backend"] == "tensorrt" else f"install {a['backend']} {_major_minor(built)} or recompile from {a.get('source') or 'the source ONNX'}")
        out["reason"] = f"built with {a['backend']} {built}, this machine has {st.version}; {fix}"
        return out
    gpu = a.get("settings", {}).get("compute_capability")
    if gpu and st.devices and gpu not in " ".join(st.devices) and a.get("settings", {}).get("hardware_compatibility", "none") == "none":
        out["reason"] = f"engine built for compute capability {gpu}, this GPU is {st.devices[0]}; rebuild on the device with edgekit compile"
        return out
    out["compatible"] = True
    return out


def check_verified(report: dict[str, Any]) -> None:
    if not report["compatible"]:
        reasons = "; ".join(f"{c['dir']}: {c['reason']}" for c in report["artifacts"])
        exc_type = BackendUnavailable if all("not available here" in c["reason"] for c in report["artifacts"]) else GateFailed
        raise exc_type(f"no artifact in the bundle runs here: {reasons}")


class BundleEngine(EngineBase):
    """An engine loaded from a verified bundle; `run_image` applies the recorded preprocessing."""

    def __init__(self, engine: Any, recipe: ImageRecipe | None, tmp: Any, manifest: dict[str, Any]) -> None:
        self._engine, self._tmp, self.recipe, self.manifest = engine, tmp, recipe, manifest
        self.inputs, self.outputs, self.info = engine.inputs, engine.outputs, engine.info

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._engine.run(feed)

    def preprocess(self, image: str | Path) -> dict[str, np.ndarray]:
        if self.recipe is None:
            raise UsageError("this bundle records no image preprocessing", hint="build feeds yourself and call run()")
        return {self.inputs[0].name: self.recipe.apply(image)}

    def run_image(self, image: str | Path) -> dict[str, np.ndarray]:
        return self.run(self.preprocess(image))

    def close(self) -> None:
        self._engine.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def load(bundle: str | Path, *, target: str | None = None, trusted_keys: Sequence[str | Path] | None = None,
         min_release: int | None = None) -> BundleEngine:
    """Verify a bundle and load its first artifact that runs here (use as a context manager).

    With trusted keys (given, or EDGEKIT_TRUSTED_KEYS) a bundle that is not signed by one of them,
    or changed since, raises GateFailed before anything is extracted or loaded; `min_release`
    refuses an older release (rollback), as `verify --min-release` does.
    """
    report, root, tmp = _verified_open(Path(bundle), target=target, trusted_keys=trusted_keys, min_release=min_release, private=True)
    try:
        check_verified(report)
        m = report["manifest"]
        idx = next(i for i, c in enumerate(report["artifacts"]) if c["compatible"])
        a = m["artifacts"][idx]
        folder = root / a["dir"]
        art_manifest = json.loads((folder / MANIFEST).read_text())
        from edgekit.compile import _target_for

        tgt = _target_for(art_manifest, target)
        engine = get_backend(a["backend"]).load(folder, art_manifest, options=tgt.options)
        recipe = ImageRecipe.from_dict(m["preprocessing"]) if m.get("preprocessing") else None
        return BundleEngine(engine, recipe, tmp, m)
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise
