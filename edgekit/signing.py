"""Signed bundles: a device loads only models its owner released.

A bundle's manifest (`bundle.json`) holds the SHA-256 of every file; `bundle.sig` is a
detached Ed25519 signature over an envelope that names the manifest's digest, the key's
id, the signing time, edgekit's version and the release number. Checking a bundle
against trusted keys therefore checks every byte: the signature covers the manifest,
the manifest covers the files. A tar bundle is checked member by member from the
stream before anything is extracted.

Keys are standard formats the `cryptography` package reads and writes (no hand-written
crypto): the private key is PKCS#8 PEM created with mode 0600, the public key is one
OpenSSH line (`ssh-ed25519 AAAA... name`), so users can read and diff it.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
import os
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from edgekit.errors import GateFailed, UsageError
from edgekit.files import tar_problem

SIGNATURE = "bundle.sig"
MANIFEST = "bundle.json"
ENV_TRUSTED = "EDGEKIT_TRUSTED_KEYS"
_ALGORITHM = "ed25519"


def _crypto() -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return serialization, ed25519


@dataclasses.dataclass(frozen=True)
class PublicKey:
    key: Any  # cryptography Ed25519PublicKey
    key_id: str
    source: str  # where it was read from, for messages


def key_id_of(public_key: Any) -> str:
    """The first 16 hex digits of the SHA-256 of the raw 32-byte public key."""
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(name: str | os.PathLike[str]) -> dict[str, str]:
    """Write NAME (private key, mode 0600 from creation) and NAME.pub; refuse to overwrite either."""
    serialization, ed25519 = _crypto()
    priv_path, pub_path = Path(name), Path(f"{name}.pub")
    for p in (priv_path, pub_path):
        if p.exists():
            raise UsageError(f"{p} exists; keygen never overwrites a key", hint="choose another name, or move the old key away first")
    if not priv_path.parent.exists():
        raise UsageError(f"folder {priv_path.parent} does not exist", hint="create it first, or give another -o")
    key = ed25519.Ed25519PrivateKey.generate()
    kid = key_id_of(key.public_key())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    try:
        # O_EXCL + mode 0600: the private key is never readable by others, not even for an instant
        fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot create {priv_path}: {exc.strerror}", hint="choose a writable path") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        os.chmod(priv_path, 0o600)  # the umask cannot widen it, but make it explicit
        pub_path.write_bytes(pub + f" edgekit-{kid}\n".encode())
    except BaseException:
        priv_path.unlink(missing_ok=True)
        pub_path.unlink(missing_ok=True)
        raise
    return {"private_key": str(priv_path), "public_key": str(pub_path), "key_id": kid}


def _key_bytes(path: str | os.PathLike[str], what: str, hint: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the {what} {path}: {exc.strerror}", hint=hint) from exc


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def load_private_key(path: str | os.PathLike[str]) -> Any:
    from cryptography.exceptions import UnsupportedAlgorithm

    serialization, ed25519 = _crypto()
    data = _key_bytes(path, "signing key", "give the private key written by `edgekit keygen`")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        hint = "give the private key (not the .pub file)" if not data.lstrip().startswith(b"-----") else "give the private key written by `edgekit keygen`"
        raise UsageError(f"{path} is not an unencrypted PEM private key ({_first_line(exc)})", hint=hint) from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise UsageError(f"{path} is not an Ed25519 key", hint="make one with `edgekit keygen -o NAME`")
    return key


def load_public_key(path: str | os.PathLike[str]) -> PublicKey:
    from cryptography.exceptions import UnsupportedAlgorithm

    serialization, ed25519 = _crypto()
    data = _key_bytes(path, "trusted key", "give a .pub file written by `edgekit keygen`")
    try:  # PEM starts with its -----BEGIN line; anything else is read as one OpenSSH line (ssh-ed25519, ecdsa-..., ...)
        key = serialization.load_pem_public_key(data) if data.lstrip().startswith(b"-----") else serialization.load_ssh_public_key(data.strip())
    except UnsupportedAlgorithm as exc:
        raise UsageError(f"{path} is not an Ed25519 public key ({_first_line(exc)})", hint="make one with `edgekit keygen -o NAME`") from exc
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{path} is not a public key ({_first_line(exc)})",
                         hint="give the NAME.pub file written by `edgekit keygen`, never the private key") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise UsageError(f"{path} is not an Ed25519 public key", hint="make one with `edgekit keygen -o NAME`")
    return PublicKey(key=key, key_id=key_id_of(key), source=str(path))


def trusted_keys(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] = (), *, env: bool = True) -> list[PublicKey]:
    """Public keys from files and folders of `*.pub` files, plus EDGEKIT_TRUSTED_KEYS (os.pathsep-separated)."""
    if isinstance(paths, (str, os.PathLike)):  # load(b, trusted_keys="release.pub"): one key, not its characters
        paths = [paths]
    items = [str(p) for p in paths]
    if env and os.environ.get(ENV_TRUSTED):
        items += [p for p in os.environ[ENV_TRUSTED].split(os.pathsep) if p]
    keys: dict[str, PublicKey] = {}
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(p.glob("*.pub"))
            if not found:
                raise UsageError(f"trusted key folder {p} holds no *.pub file", hint="put the public keys of your release signers there")
            for f in found:
                k = load_public_key(f)
                keys.setdefault(k.key_id, k)
        else:
            k = load_public_key(p)
            keys.setdefault(k.key_id, k)
    return list(keys.values())


def canonical(data: Any) -> bytes:
    """One byte string per JSON value: sorted keys, no spaces, UTF-8."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign_manifest(manifest: dict[str, Any], key_path: str | os.PathLike[str], *, version: str) -> dict[str, Any]:
    """The detached signature document for `manifest` (written as bundle.sig beside it)."""
    key = load_private_key(key_path)
    envelope = {
        "kind": "edgekit.signature", "schema": 1, "algorithm": _ALGORITHM,
        "key_id": key_id_of(key.public_key()),
        "signed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "edgekit": version,
        "release": manifest.get("release"),
        "manifest_sha256": hashlib.sha256(canonical(manifest)).hexdigest(),
    }
    return {**envelope, "signature": base64.b64encode(key.sign(canonical(envelope))).decode()}


def check_signature(manifest: dict[str, Any], sig: dict[str, Any] | None, keys: Sequence[PublicKey]) -> dict[str, Any]:
    """Check `sig` over `manifest` against `keys`; GateFailed (exit 3) saying which check failed."""
    from cryptography.exceptions import InvalidSignature

    if sig is None:
        raise GateFailed("the bundle is unsigned and trusted keys were given", hint="ask its publisher for a bundle packed with `edgekit pack --sign KEY`")
    if not isinstance(sig, dict) or sig.get("kind") != "edgekit.signature" or sig.get("algorithm") != _ALGORITHM:
        raise GateFailed(f"{SIGNATURE} is not an edgekit Ed25519 signature", hint="get the bundle again from its publisher")
    by_id = {k.key_id: k for k in keys}
    key = by_id.get(str(sig.get("key_id")))
    if key is None:
        raise GateFailed(f"the bundle is signed by key {sig.get('key_id')}, which is not among the trusted keys ({', '.join(by_id) or 'none'})",
                         hint="add the publisher's .pub with --key if you trust it")
    envelope = {k: v for k, v in sig.items() if k != "signature"}
    try:
        key.key.verify(base64.b64decode(str(sig.get("signature", "")), validate=True), canonical(envelope))
    except (InvalidSignature, ValueError) as exc:
        raise GateFailed(f"the signature by key {key.key_id} does not verify ({SIGNATURE} was altered)", hint="do not use this bundle; get it again") from exc
    if envelope.get("manifest_sha256") != hashlib.sha256(canonical(manifest)).hexdigest():
        raise GateFailed(f"{MANIFEST} is not the manifest key {key.key_id} signed (changed, or the signature belongs to another bundle)",
                         hint="do not use this bundle; get it again")
    if envelope.get("release") != manifest.get("release"):
        raise GateFailed("the signed release number differs from the manifest's", hint="do not use this bundle; get it again")
    return {"signed": True, "trusted": True, "key_id": key.key_id, "key": key.source, "signed_at": envelope.get("signed_at"),
            "edgekit": envelope.get("edgekit")}


def describe_unchecked(sig: dict[str, Any] | None) -> dict[str, Any]:
    """What verify says without trusted keys: unsigned, or signed by a key it did not check."""
    if sig is None:
        return {"signed": False, "trusted": False}
    return {"signed": True, "trusted": False, "key_id": sig.get("key_id"), "signed_at": sig.get("signed_at")}


def check_release(manifest: dict[str, Any], min_release: int | None) -> None:
    if min_release is None:
        return
    rel = manifest.get("release")
    if not isinstance(rel, int) or rel < min_release:
        raise GateFailed(f"the bundle is release {rel if rel is not None else '(none)'}, older than --min-release {min_release}",
                         hint="this would roll the device back: install a newer bundle")


def _read_json_member(tar: tarfile.TarFile, name: str) -> Any:
    try:
        m = tar.getmember(name)
    except KeyError:
        return None
    f = tar.extractfile(m)
    if f is None:
        raise GateFailed(f"{name} in the bundle is not a regular file", hint="do not use this bundle")
    try:
        return json.loads(f.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GateFailed(f"{name} in the bundle is corrupt ({exc})", hint="get the bundle again") from exc


def check_bundle(path: Path, keys: Sequence[PublicKey]) -> dict[str, Any]:
    """Check a bundle (folder or tar) against trusted keys before anything is extracted or loaded.

    The signature covers the manifest; every file is then hashed against it (a tar straight
    from its stream), so a swapped, added or removed member is refused here.
    """
    if path.is_dir():
        manifest = _read_json_file(path / MANIFEST)
        sig = _read_json_file(path / SIGNATURE) if (path / SIGNATURE).exists() else None
        result = check_signature(manifest, sig, keys)
        seen = {p.relative_to(path).as_posix(): p for p in path.rglob("*") if p.is_file() and p.name not in (MANIFEST, SIGNATURE)}
        _match_files(manifest, {name: _sha256_path(p) for name, p in seen.items()})
        return result
    try:
        tar = tarfile.open(path, "r:")  # plain tar only: nothing untrusted is decompressed before its check
    except (tarfile.TarError, OSError) as exc:
        raise UsageError(f"incomplete or corrupt bundle: {path} ({tar_problem(exc)})", hint="copy it again") from exc
    try:
        with tar:
            manifest = _read_json_member(tar, MANIFEST)
            if manifest is None:
                raise GateFailed(f"no {MANIFEST} in the bundle", hint="pack it with `edgekit pack`")
            result = check_signature(manifest, _read_json_member(tar, SIGNATURE), keys)
            digests: dict[str, str] = {}
            for m in tar.getmembers():
                if m.isdir() or m.name in (MANIFEST, SIGNATURE):
                    continue
                f = tar.extractfile(m) if m.isfile() else None
                if f is None:
                    raise GateFailed(f"bundle member {m.name!r} is not a regular file", hint="do not use this bundle")
                h = hashlib.sha256()
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
                if m.name in digests:
                    raise GateFailed(f"bundle member {m.name!r} appears twice", hint="do not use this bundle")
                digests[m.name] = h.hexdigest()
    except (tarfile.TarError, EOFError) as exc:
        raise UsageError(f"incomplete or corrupt bundle: {path} ({tar_problem(exc)})", hint="copy it again") from exc
    _match_files(manifest, digests)
    return result


def _match_files(manifest: dict[str, Any], digests: dict[str, str]) -> None:
    files = manifest.get("files") or {}
    for name, digest in files.items():
        if name not in digests:
            raise GateFailed(f"bundle file {name} is missing", hint="get the bundle again")
        if digests[name] != digest:
            raise GateFailed(f"bundle file {name} does not match the signed manifest (changed after signing)", hint="do not use this bundle; get it again")
    extra = sorted(set(digests) - set(files))
    if extra:
        raise GateFailed(f"bundle has a file the signed manifest does not list: {extra[0]}", hint="do not use this bundle; get it again")


def read_signature(p: Path) -> Any:
    """bundle.sig as JSON; a damaged one is exit 3 in one line, never a traceback."""
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GateFailed(f"{SIGNATURE} is corrupt ({exc})", hint="get the bundle again from its publisher") from exc


def _read_json_file(p: Path) -> Any:
    if not p.exists():
        raise GateFailed(f"no {p.name} in the bundle", hint="pack it with `edgekit pack`")
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GateFailed(f"{p.name} is corrupt ({exc})", hint="get the bundle again") from exc


def _sha256_path(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
