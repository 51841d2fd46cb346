"""Atomic output: write beside the destination, then rename into place.

A run killed mid-write, or one that fails, leaves the previous output intact and
no partial file behind.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgekit.errors import UsageError


def _check_writable(dest: Path) -> None:
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.exists():
        parent.mkdir(parents=True, exist_ok=True)
    if dest.is_dir() and not dest.is_symlink():
        raise UsageError(f"{dest} is a folder", hint="give a file path for this output")


def _os_error(dest: Path, exc: OSError) -> UsageError:
    if exc.errno == errno.ENOSPC:
        return UsageError(f"no space left on the device while writing {dest}", hint="free some disk space and run again")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UsageError(f"cannot write {dest}: {exc.strerror}", hint="choose a writable output path")
    return UsageError(f"cannot write {dest}: {exc}")


def _umask() -> int:
    """The process umask (reading it means setting it; edgekit sets it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str], *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it is renamed onto `dest`."""
    dest = Path(dest)
    try:
        _check_writable(dest)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix or ".tmp", dir=dest.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the modes any new file gets
    except OSError as exc:
        raise _os_error(dest, exc) from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    except OSError as exc:
        raise _os_error(dest, exc) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside `dest`; on success it replaces `dest` whole."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists() and not dest.is_dir():
            raise UsageError(f"{dest} exists and is not a folder", hint="give a folder path for this output")
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a service user must be able to read a compile folder
    except OSError as exc:
        raise _os_error(dest, exc) from exc
    try:
        yield tmp
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
            os.replace(dest, old / "x")
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise _os_error(dest, exc) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(dest: str | os.PathLike[str], text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(dest: str | os.PathLike[str], data: Any) -> None:
    write_text(dest, json.dumps(data, indent=2, sort_keys=False, default=json_default) + "\n")


def json_default(obj: Any) -> Any:
    """`json.dumps(default=...)` for reports: numpy scalars and arrays, paths, and objects with `to_dict()`."""
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def artifact_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, or of a folder's files (relative paths and contents, in sorted order)."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(f"{f.relative_to(p).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def tar_problem(exc: BaseException) -> str:
    """One line for what `tarfile` found wrong (its open error lists every compression it tried, one per line)."""
    text = str(exc).strip()
    if "could not be opened successfully" in text:
        return "not a tar file, or cut short before its first member"
    return text.splitlines()[0] if text else type(exc).__name__


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
