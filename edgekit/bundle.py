"""Reading bundles on the device: open (safely, even half-copied), verify, and choose the artifact.

A bundle arrives over flaky links: a truncated or corrupt tar is a one-line exit-2 error
("copy it again"), never a traceback, and nothing is left in the temporary folder, also
when the process gets SIGTERM while extracting or loading (see `cleanup_on_termination`).
Which artifact runs follows one stated rule (`choose_artifact`), shared by `edgekit.load`,
`edgekit verify` and `edgekit bench BUNDLE`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from edgekit.backends import get_backend
from edgekit.errors import BackendUnavailable, GateFailed, UsageError
from edgekit.files import sha256_file

BUNDLE_MANIFEST = "bundle.json"
SIGNATURE = "bundle.sig"  # edgekit.signing: a detached signature over the manifest
LABELS = "labels.txt"
LM_KIND = "edgekit.lm"  # a bundle artifact that is a language model's folder (edgekit.pack, edgekit.loader)

# The choice rule, most preferred first. Lower precision runs faster on every runtime here
# (int8 < fp16/bf16 < fp32); between runtimes at the same precision, a device-specific one
# beats the generic reference (ONNX Runtime). Backends not listed come after these.
PRECISION_ORDER = ("int4", "int8", "fp16", "bf16", "fp32")  # int4: weight-only, language models
BACKEND_ORDER = ("tensorrt", "openvino", "onnxruntime")
RULE = ("artifacts that run here; the one named (backend= or artifact=), else the lowest precision "
        f"({' < '.join(PRECISION_ORDER)}), then the device-specific runtime ({', '.join(BACKEND_ORDER)}), then pack order")


def corrupt(path: Path | str, detail: object) -> UsageError:
    return UsageError(f"incomplete or corrupt bundle: {path} ({_one_line(detail)})", hint="copy it again")


def _one_line(detail: object) -> str:
    """tarfile's errors can span lines; one line says it."""
    from edgekit.files import tar_problem

    return tar_problem(detail) if isinstance(detail, BaseException) else (str(detail).strip().splitlines() or [""])[0]


def files_under(root: Path) -> dict[str, str]:
    """SHA-256 of every file under `root` except the manifest, by relative POSIX path."""
    files = (p for p in sorted(root.rglob("*")) if p.is_file())
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in files if p.relative_to(root).as_posix() not in (BUNDLE_MANIFEST, SIGNATURE)}


# --- termination-safe temporary folders -------------------------------------------------------

class _Terminated(BaseException):
    """Raised from our SIGTERM/SIGHUP handler so `finally` blocks run; the signal is re-sent afterwards."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def cleanup_on_termination() -> Iterator[None]:
    """Within this block, SIGTERM, SIGHUP and SIGINT unwind the stack (running cleanups) before the process ends.

    Only signals still at their default disposition (SIGINT: Python's KeyboardInterrupt) are taken
    over, only in the main thread (Python delivers signals there), and the previous handlers are
    restored on the way out. The signal is remembered as well as raised, so one that a library
    swallows (an `except BaseException` in the runtime's loading code) still takes effect when the
    block ends. Then SIGINT raises KeyboardInterrupt, and the others are sent again with the default
    action: the process ends exactly as it would have (killed by that signal), with nothing left behind.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    taken: dict[int, Any] = {}
    pending: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        pending.append(signum)
        raise _Terminated(signum)

    for sig, default in ((signal.SIGTERM, signal.SIG_DFL), (getattr(signal, "SIGHUP", None), signal.SIG_DFL),
                         (signal.SIGINT, signal.default_int_handler)):
        if sig is not None and signal.getsignal(sig) is default:
            taken[sig] = signal.signal(sig, handler)
    try:
        yield
    except _Terminated:
        pass  # handled below, with a signal that was swallowed on the way
    finally:
        for sig, old in taken.items():
            signal.signal(sig, old)
        if pending:
            if pending[0] == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), pending[0])
            raise _Terminated(pending[0])  # only reached where the default action does not end the process


# --- opening ---------------------------------------------------------------------------------

def safe_extract(tar_path: Path, dest: Path) -> dict[str, str]:
    """Extract only regular files and folders that stay inside `dest`; check every member before writing any.

    Returns the SHA-256 of every file written (hashed on the way, so verifying reads nothing twice).
    A truncated or damaged tar (a partial copy) is an exit-2 "copy it again" error.
    """
    try:
        tar = tarfile.open(tar_path, "r:")  # plain tar only (edgekit writes no other): nothing is decompressed before it is checked
    except (tarfile.TarError, EOFError, OSError) as exc:
        if tar_path.stat().st_size and _looks_like_tar_start(tar_path):
            raise corrupt(tar_path, exc) from exc
        raise UsageError(f"{tar_path} is not a readable tar bundle ({_one_line(exc)})", hint="pack it again with `edgekit pack`") from exc
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise corrupt(tar_path, exc) from exc
        for m in members:
            p = Path(m.name)
            if p.is_absolute() or ".." in p.parts or m.name.startswith(("/", "\\")):
                raise UsageError(f"bundle member {m.name!r} would land outside the destination", hint="this bundle is unsafe: do not use it")
            if m.issym() or m.islnk():
                raise UsageError(f"bundle member {m.name!r} is a link ({m.linkname!r}); bundles hold regular files only", hint="this bundle is unsafe: do not use it")
            if not (m.isfile() or m.isdir()):
                raise UsageError(f"bundle member {m.name!r} is not a regular file", hint="this bundle is unsafe: do not use it")
        digests: dict[str, str] = {}
        for m in members:
            target = dest / m.name
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            h = hashlib.sha256()
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                assert src is not None
                with open(target, "wb") as f:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        h.update(chunk)
                        f.write(chunk)
            except (tarfile.TarError, EOFError) as exc:
                raise corrupt(tar_path, f"{m.name}: {exc}") from exc
            except (IsADirectoryError, NotADirectoryError, FileExistsError) as exc:  # a member both file and folder
                raise corrupt(tar_path, f"member {m.name} clashes with another member ({exc.strerror})") from exc
            digests[target.relative_to(dest).as_posix()] = h.hexdigest()
        return digests


def _looks_like_tar_start(path: Path) -> bool:
    """A file that starts like a tar header (the 'ustar' magic at 257) but does not open: a cut copy."""
    with open(path, "rb") as f:
        head = f.read(512)
    # edgekit writes its manifest first (older bundles and other tar writers may start with a PAX header)
    return head[257:262] == b"ustar" or head.startswith((BUNDLE_MANIFEST.encode(), b"././@PaxHeader"))


@contextlib.contextmanager
def opened_bundle(path: str | Path, *, private: bool = False) -> Iterator[tuple[Path, dict[str, str] | None]]:
    """(the bundle's root folder, SHA-256 of its files when already known): the folder itself, or a
    private temporary extraction of a tar, removed on any exit (errors, KeyboardInterrupt, SIGTERM/SIGHUP).

    private=True copies a folder bundle too, so what is verified is what is loaded: someone who can
    write to the bundle cannot swap a file between the check and the runtime reading it."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such bundle", hint="check the path")
    if path.is_dir() and not private:
        yield path, None
        return
    with cleanup_on_termination():
        tmp = Path(tempfile.mkdtemp(prefix="edgekit-bundle-"))
        try:
            if path.is_dir():
                shutil.copytree(path, tmp, dirs_exist_ok=True, symlinks=True)
                yield tmp, None
            else:
                yield tmp, safe_extract(path, tmp)
        finally:
            _remove(tmp)


def _remove(folder: Path) -> None:
    """rmtree that a SIGTERM arriving during the removal cannot cut short (it is re-raised afterwards)."""
    pending: _Terminated | None = None
    for _ in range(3):
        try:
            shutil.rmtree(folder, ignore_errors=True)
            break
        except _Terminated as t:
            pending = t
    if pending is not None:
        raise pending


def read_manifest(root: Path, *, label: Path | str | None = None) -> dict[str, Any]:
    mf = root / BUNDLE_MANIFEST
    label = label or root
    if not mf.exists():
        if any(root.iterdir()):  # some members arrived, the manifest did not
            raise corrupt(label, f"no {BUNDLE_MANIFEST}")
        raise UsageError(f"no {BUNDLE_MANIFEST} in {label}", hint="pack it with `edgekit pack`")
    try:
        m = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
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


# --- verifying -------------------------------------------------------------------------------

def trusted_key_list(trusted_keys: Any) -> list[Any]:
    """The trusted public keys: those given (paths, folders of *.pub, or one path) plus EDGEKIT_TRUSTED_KEYS."""
    from edgekit import signing

    return signing.trusted_keys(trusted_keys or ())


def signature_before_opening(path: Path, keys: Sequence[Any]) -> dict[str, Any] | None:
    """With trusted keys, edgekit.signing checks the signature and every file before anything is
    extracted (exit 3 if anything is off); None without. `verify_root(keys=...)` checks the opened copy again."""
    from edgekit import signing

    return signing.check_bundle(path, keys) if keys else None


def verify_root(root: Path, *, label: Path | str, target: str | None = None, digests: dict[str, str] | None = None,
                check_all: bool = True, signature: dict[str, Any] | None = None, min_release: int | None = None,
                keys: Sequence[Any] = ()) -> dict[str, Any]:
    """Hashes, schema, compatibility and preprocessing of an opened bundle (see `verify_bundle`);
    `digests`: the files' SHA-256 as `safe_extract` computed them. check_all=False leaves each
    artifact's compatibility unchecked (None) for `choose_artifact` to check in the rule's order,
    stopping at the first that runs: loading an OpenVINO artifact never imports ONNX Runtime."""
    from edgekit import signing

    m = read_manifest(root, label=label)
    if keys:
        # The copy that will be used is checked again: the bundle may have changed since the check before
        # opening it. Its manifest must carry a trusted signature, and its files (hashed as they were
        # written here, below) must match that manifest.
        sig_file = root / SIGNATURE
        signature = signing.check_signature(m, signing.read_signature(sig_file) if sig_file.exists() else None, keys)
    elif signature is None:
        sig_file = root / SIGNATURE
        signature = signing.describe_unchecked(signing.read_signature(sig_file) if sig_file.exists() else None)
    signing.check_release(m, min_release)
    on_disk = {k: v for k, v in digests.items() if k not in (BUNDLE_MANIFEST, SIGNATURE)} if digests is not None else files_under(root)
    for name, digest in m["files"].items():
        if name not in on_disk:
            raise corrupt(label, f"file {name} is missing")
        if on_disk[name] != digest:
            raise GateFailed(f"bundle file {name} does not match its SHA-256 (changed after packing)", hint="get the bundle again; do not edit bundles")
    extra = sorted(set(on_disk) - set(m["files"]))
    if extra:
        raise GateFailed(f"bundle has a file the manifest does not list: {extra[0]}", hint="get the bundle again")
    checks = [_compatibility(a, target) if check_all else _unchecked(a) for a in m["artifacts"]]
    report = {"bundle": str(label), "files": len(m["files"]), "artifacts": checks,
              "compatible": any(c["compatible"] for c in checks) if check_all else None,
              "preprocessing": _preprocessing_check(m), "signature": signature, "release": m.get("release"), "target": target, "manifest": m}
    if report["compatible"]:
        idx, why = choose_artifact(report)
        report["chosen"] = {"dir": checks[idx]["dir"], "why": why}
    return report


def verify_bundle(path: str | Path, *, target: str | None = None, trusted_keys: Sequence[str | os.PathLike[str]] | None = None,
                  min_release: int | None = None) -> dict[str, Any]:
    """Hashes, schema, compatibility with this machine and its preprocessing libraries.

    A changed byte or a version mismatch: exit 3; a truncated copy or a missing file: exit 2.
    With trusted keys (given, or EDGEKIT_TRUSTED_KEYS) the signature and every file are checked
    before anything is extracted: an unsigned bundle, another key, a changed manifest or file is exit 3.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such bundle", hint="check the path")
    keys = trusted_key_list(trusted_keys)
    signature = signature_before_opening(path, keys)
    with opened_bundle(path, private=bool(keys)) as (root, digests):
        return verify_root(root, label=path, target=target, digests=digests, signature=signature, min_release=min_release, keys=keys)


def _unchecked(a: dict[str, Any]) -> dict[str, Any]:
    return {"dir": a["dir"], "backend": a["backend"], "precision": a["precision"], "compatible": None, "reason": "not checked"}


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


def _preprocessing_check(m: dict[str, Any]) -> dict[str, Any]:
    """The recorded image preprocessing against this machine's libraries: present, and resizing identically."""
    recipe = m.get("preprocessing")
    if not recipe:
        return {"needed": False, "ok": True, "reason": ""}
    from edgekit import deps
    from edgekit.data.preprocess import ImageRecipe, preprocessing_versions, resize_fingerprint

    built = m.get("preprocessing_versions") or {}
    out: dict[str, Any] = {"needed": True, "ok": False, "built": built, "here": preprocessing_versions(), "reason": ""}
    if not deps.available("PIL"):
        out["reason"] = "the bundle's image preprocessing needs Pillow, which is not installed: pip install 'edgekit[runtime]'"
        return out
    want = m.get("preprocessing_check")
    if want:
        got = resize_fingerprint(ImageRecipe.from_dict(recipe))
        if got != want:
            out["reason"] = (f"Pillow {out['here'].get('pillow')} here resizes differently from Pillow {built.get('pillow', '?')} on the build machine "
                             f"(the accuracy was measured on the latter): pip install pillow=={built.get('pillow', '?')}")
            return out
    out["ok"] = True
    if built.get("pillow") and built.get("pillow") != out["here"].get("pillow"):
        out["reason"] = f"Pillow {out['here'].get('pillow')} here, {built['pillow']} at build: resizing checked identical"
    return out


def check_verified(report: dict[str, Any], *, need_preprocessing: bool = True) -> None:
    """Raise when nothing in the bundle runs here (exit 4 if only backends are missing, else 3), or when
    the preprocessing would differ from the build machine's (3), or needs a missing library (4)."""
    if report["compatible"] is False:
        reasons = "; ".join(f"{c['dir']}: {c['reason']}" for c in report["artifacts"])
        exc_type = BackendUnavailable if all("not available here" in c["reason"] for c in report["artifacts"]) else GateFailed
        raise exc_type(f"no artifact in the bundle runs here: {reasons}")
    pre = report.get("preprocessing") or {}
    if pre.get("needed") and not pre.get("ok"):
        if "not installed" in pre["reason"]:
            if need_preprocessing:
                raise BackendUnavailable(pre["reason"])
        else:
            raise GateFailed(f"preprocessing: {pre['reason']}")


# --- choosing --------------------------------------------------------------------------------

def choose_artifact(report: dict[str, Any], *, backend: str | None = None, artifact: str | None = None) -> tuple[int, str]:
    """(index in the manifest's artifacts, why) of the artifact to load, by `RULE`. Artifacts whose
    compatibility is unchecked (None) are checked here, in the rule's order, until one runs."""
    checks = report["artifacts"]
    named = list(range(len(checks)))
    if artifact is not None:
        named = [i for i, c in enumerate(checks) if artifact in (c["dir"], Path(c["dir"]).name)]
        if not named:
            raise UsageError(f"the bundle has no artifact {artifact!r}", hint=f"it has: {', '.join(Path(c['dir']).name for c in checks)}")
    if backend is not None:
        get_backend(backend)  # an unknown name is a usage error with a suggestion
        named = [i for i in named if checks[i]["backend"] == backend]
        if not named:
            raise UsageError(f"the bundle has no {backend} artifact", hint=f"it has: {', '.join(sorted({c['backend'] for c in checks}))}")

    def rank(i: int) -> tuple[int, int, int]:
        c = checks[i]
        p = PRECISION_ORDER.index(c["precision"]) if c["precision"] in PRECISION_ORDER else len(PRECISION_ORDER)
        b = BACKEND_ORDER.index(c["backend"]) if c["backend"] in BACKEND_ORDER else len(BACKEND_ORDER)
        return p, b, i

    ranked = sorted(named, key=rank)
    best = None
    for i in ranked:
        if checks[i]["compatible"] is None:
            checks[i].update(_compatibility(report["manifest"]["artifacts"][i], report.get("target")))
        if checks[i]["compatible"]:
            best = i
            break
    if best is None:
        reasons = "; ".join(f"{checks[i]['dir']}: {checks[i]['reason']}" for i in named)
        exc_type = BackendUnavailable if all("not available here" in checks[i]["reason"] for i in named) else GateFailed
        raise exc_type(f"no {'chosen ' if len(named) < len(checks) else ''}artifact in the bundle runs here: {reasons}")
    c = checks[best]
    if artifact is not None:
        why = f"named: {c['dir']}"
    else:
        after = ranked[ranked.index(best) + 1:]
        others = [f"{checks[i]['backend']} {checks[i]['precision']}" for i in after]
        skipped = [f"{checks[i]['backend']} {checks[i]['precision']} (does not run here)" for i in ranked[:ranked.index(best)]]
        why = (f"{c['backend']} {c['precision']} ({c['dir']})" + (f", backend={backend}" if backend else "")
               + (f"; preferred over {', '.join(others)}" if others else "") + (f"; skipped {', '.join(skipped)}" if skipped else "")
               + f" [rule: {RULE}]")
    return best, why


def is_bundle(path: Path) -> bool:
    return (path.is_dir() and (path / BUNDLE_MANIFEST).exists()) or (path.is_file() and path.suffix == ".tar")


@contextlib.contextmanager
def artifact_from_bundle(path: str | Path, *, name: str | None = None, target: str | None = None,
                         announce: Callable[[str], None] | None = None, lm: bool = False) -> Iterator[Path]:
    """For `edgekit bench BUNDLE`: the verified, extracted folder of the artifact `edgekit.load` would
    choose (or the one `name`d). Its manifest carries the budgets it was packed with. A path that is
    not a bundle comes back unchanged. `lm`: for `edgekit lm bench`, which takes a language model's bundle
    (and only that kind; `edgekit bench` only the other)."""
    path = Path(path)
    if not is_bundle(path):
        if name is not None:
            raise UsageError("--artifact picks an artifact inside a bundle", hint=f"{path} is not a bundle (.tar or a folder with {BUNDLE_MANIFEST})")
        yield path
        return
    keys = trusted_key_list(None)  # EDGEKIT_TRUSTED_KEYS applies here as in edgekit.load
    signature = signature_before_opening(path, keys)
    with opened_bundle(path, private=bool(keys)) as (root, digests):
        report = verify_root(root, label=path, target=target, digests=digests, check_all=False, signature=signature, keys=keys)
        check_verified(report, need_preprocessing=False)
        idx, why = choose_artifact(report, artifact=name)
        is_lm = report["manifest"]["artifacts"][idx].get("kind") == LM_KIND
        if is_lm != lm:
            raise UsageError(f"{path} holds {'a language model' if is_lm else 'a compiled model, not a language model'}",
                             hint=f"bench it with: edgekit {'lm bench' if is_lm else 'bench'} {path}")
        if announce is not None:
            announce(f"bundle {path}: benching {why}")
        yield root / report["manifest"]["artifacts"][idx]["dir"]
