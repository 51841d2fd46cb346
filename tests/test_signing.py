"""Signed bundles (#19): a device loads only what its owner released.

Real parts throughout: a CNN trained on real MNIST digits, exported and compiled for ONNX Runtime,
packed into real bundles, signed with real Ed25519 keys from the `cryptography` package.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

import edgekit
import zoo
from edgekit.cli import cli
from edgekit.compile import compile_model
from edgekit.errors import GateFailed


@pytest.fixture(scope="module")
def artifact(mnist_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("signing")
    compile_model(mnist_onnx, d / "ort", target="onnxruntime")
    return d / "ort"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    for name in ("release", "rotated", "stranger"):
        res = CliRunner().invoke(cli, ["keygen", "-o", str(d / name)])
        assert res.exit_code == 0, res.output
    return {n: d / n for n in ("release", "rotated", "stranger")}


def _cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, list(args))
    return res.exit_code, res.output


def _pack(artifact: Path, out: Path, *extra: str) -> Path:
    code, output = _cli("pack", str(artifact), "-o", str(out), *extra)
    assert code == 0, output
    return out


def _rewrite_tar(src: Path, dst: Path, edit) -> None:  # noqa: ANN001
    """Copy a tar bundle member by member, letting `edit(name, bytes) -> bytes` change members."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin.getmembers():
            if m.isdir():
                tout.addfile(m)
                continue
            data = edit(m.name, tin.extractfile(m).read())
            info = tarfile.TarInfo(m.name)
            info.size, info.mode = len(data), m.mode
            tout.addfile(info, io.BytesIO(data))


def _flip_and_rehash(name: str, data: bytes, state: dict[str, bytes]) -> bytes:
    """The attack: change the model's bytes, then write the new SHA-256 into bundle.json."""
    if name.endswith("model.onnx") and name.startswith("artifacts/"):
        changed = bytearray(data)
        changed[len(changed) // 2] ^= 0x01
        state["model"] = bytes(changed)
        state["name"] = name.encode()
        return bytes(changed)
    return data


def _attacked(bundle: Path, out: Path) -> Path:
    state: dict[str, bytes] = {}
    _rewrite_tar(bundle, out.with_suffix(".stage.tar"), lambda n, d: _flip_and_rehash(n, d, state))

    def rehash(name: str, data: bytes) -> bytes:
        if name == "bundle.json":
            m = json.loads(data)
            m["files"][state["name"].decode()] = hashlib.sha256(state["model"]).hexdigest()
            return (json.dumps(m, indent=2) + "\n").encode()
        return data

    _rewrite_tar(out.with_suffix(".stage.tar"), out, rehash)
    return out


def test_keygen_writes_a_0600_private_key_never_printed_and_never_overwrites(keys: dict[str, Path]) -> None:
    priv, pub = keys["release"], keys["release"].with_name("release.pub")
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert pub.read_text().startswith("ssh-ed25519 ")
    secret = priv.read_text()
    assert "PRIVATE KEY" in secret
    code, output = _cli("keygen", "-o", str(priv))
    assert code == 2 and "never overwrites" in output and secret.splitlines()[1] not in output
    assert priv.read_text() == secret


def test_byte_flip_and_rehash_is_refused_with_a_key_and_accepted_unsigned_without(artifact: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    pub = str(keys["release"]) + ".pub"
    # unsigned bundle: the hashes cannot catch the attack; verify says it is unsigned
    unsigned = _attacked(_pack(artifact, tmp_path / "unsigned.tar"), tmp_path / "unsigned-attacked.tar")
    code, output = _cli("verify", str(unsigned))
    assert code == 0 and "unsigned" in output
    code, output = _cli("verify", str(unsigned), "--key", pub)
    assert code == 3 and "unsigned" in output
    # signed bundle: without a key the attack passes (and verify says the signature was not checked) ...
    signed = _pack(artifact, tmp_path / "signed.tar", "--sign", str(keys["release"]))
    code, output = _cli("verify", str(signed), "--key", pub)
    assert code == 0 and "signature ok" in output, output
    attacked = _attacked(signed, tmp_path / "signed-attacked.tar")
    code, output = _cli("verify", str(attacked))
    assert code == 0 and "NOT checked" in output
    # ... with the key it is refused, one line, naming the manifest
    code, output = _cli("verify", str(attacked), "--key", pub)
    assert code == 3 and "bundle.json is not the manifest key" in output and len(output.strip().splitlines()) == 1, output


def test_changed_file_without_rehash_and_untrusted_key_are_refused(artifact: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    signed = _pack(artifact, tmp_path / "b", "--sign", str(keys["release"]))  # a folder bundle
    model = next((signed / "artifacts").glob("*/model.onnx"))
    code, output = _cli("verify", str(signed), "--key", str(keys["stranger"]) + ".pub")
    assert code == 3 and "not among the trusted keys" in output
    data = bytearray(model.read_bytes())
    data[-1] ^= 0x01
    model.write_bytes(bytes(data))
    code, output = _cli("verify", str(signed), "--key", str(keys["release"]) + ".pub")
    assert code == 3 and "does not match the signed manifest" in output and model.name in output


def test_a_signature_moved_onto_another_bundle_is_refused(artifact: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    a = _pack(artifact, tmp_path / "a", "--sign", str(keys["release"]), "--release", "1")
    b = _pack(artifact, tmp_path / "b", "--release", "2")
    shutil.copy(a / "bundle.sig", b / "bundle.sig")
    code, output = _cli("verify", str(b), "--key", str(keys["release"]) + ".pub")
    assert code == 3 and "signature belongs to another bundle" in output, output
    # editing the signature document itself (e.g. its release number) breaks the signature
    sig = json.loads((a / "bundle.sig").read_text())
    sig["release"] = 2
    (a / "bundle.sig").write_text(json.dumps(sig))
    code, output = _cli("verify", str(a), "--key", str(keys["release"]) + ".pub")
    assert code == 3 and "does not verify" in output


def test_a_tar_with_a_swapped_member_is_refused_before_anything_is_extracted(artifact: Path, keys: dict[str, Path], tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    signed = _pack(artifact, tmp_path / "signed.tar", "--sign", str(keys["release"]))
    other_model = (artifact / "model.onnx").read_bytes()[:-16] + b"\0" * 16  # same size, other bytes
    swapped = tmp_path / "swapped.tar"
    _rewrite_tar(signed, swapped, lambda n, d: other_model if n.endswith("model.onnx") and n.startswith("artifacts/") else d)
    import edgekit.bundle as bundle  # where bundles are extracted

    extracted: list[Path] = []
    real = bundle.safe_extract
    monkeypatch.setattr(bundle, "safe_extract", lambda *a, **k: (extracted.append(a[0]), real(*a, **k))[1])
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    with pytest.raises(GateFailed, match="does not match the signed manifest"):
        edgekit.load(str(swapped), trusted_keys=[str(keys["release"]) + ".pub"])
    assert extracted == [] and list(tmp.iterdir()) == []
    # the same bundle unswapped loads and runs the trained CNN on real held-out digits
    x, y = zoo.mnist_heldout()
    with edgekit.load(str(signed), trusted_keys=[str(keys["release"]) + ".pub"]) as engine:
        logits = engine.run({engine.inputs[0].name: x[:64]})[engine.outputs[0].name]
    assert (logits.argmax(1) == y[:64]).mean() > 0.9
    assert list(tmp.iterdir()) == []


def test_key_rotation_folder_and_environment(artifact: Path, keys: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    for n in ("release", "rotated"):
        shutil.copy(str(keys[n]) + ".pub", trusted)
    for n in ("release", "rotated"):  # either key of a rotation is accepted
        b = _pack(artifact, tmp_path / f"{n}.tar", "--sign", str(keys[n]))
        code, output = _cli("verify", str(b), "--key", str(trusted))
        assert code == 0 and "signature ok" in output, output
    stranger = _pack(artifact, tmp_path / "stranger.tar", "--sign", str(keys["stranger"]))
    monkeypatch.setenv("EDGEKIT_TRUSTED_KEYS", str(trusted))
    with pytest.raises(GateFailed, match="not among the trusted keys"):
        edgekit.load(str(stranger))
    with edgekit.load(str(tmp_path / "rotated.tar")) as engine:
        assert engine.info["backend"] == "onnxruntime"


def test_min_release_refuses_a_rollback(artifact: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    b = _pack(artifact, tmp_path / "r3.tar", "--sign", str(keys["release"]), "--release", "3")
    pub = str(keys["release"]) + ".pub"
    code, output = _cli("verify", str(b), "--key", pub, "--min-release", "3", "--json", str(tmp_path / "v.json"))
    assert code == 0 and "release 3" in output
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["release"] == 3 and report["signature"]["trusted"] is True
    code, output = _cli("verify", str(b), "--key", pub, "--min-release", "4")
    assert code == 3 and "older than --min-release 4" in output
    with pytest.raises(GateFailed, match="older than --min-release 4"):  # the application's rollback check
        edgekit.load(str(b), trusted_keys=[pub], min_release=4)
    with edgekit.load(str(b), trusted_keys=[pub], min_release=3) as engine:
        assert engine.manifest["release"] == 3


def test_private_key_given_as_trusted_key_is_a_usage_error(artifact: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    b = _pack(artifact, tmp_path / "s.tar", "--sign", str(keys["release"]))
    code, output = _cli("verify", str(b), "--key", str(keys["release"]))
    assert code == 2 and "not a public key" in output
    code, output = _cli("pack", str(artifact), "-o", str(tmp_path / "t.tar"), "--sign", str(keys["release"]) + ".pub")
    assert code == 2 and "not the .pub file" in output and not (tmp_path / "t.tar").exists()
    assert os.listdir(tmp_path) == ["s.tar"]


def test_a_bundle_swapped_after_its_check_is_never_what_gets_loaded(artifact: Path, keys: dict[str, Path], tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The attack on a device: replace the bundle file between the signature check and the load."""
    import numpy as np

    import edgekit.bundle as bundle
    import edgekit.loader as loader
    import edgekit.signing as signing
    from edgekit.compile import open_engine

    pub = str(keys["release"]) + ".pub"
    signed = _pack(artifact, tmp_path / "signed.tar", "--sign", str(keys["release"]))
    evil = _attacked(_pack(artifact, tmp_path / "other.tar"), tmp_path / "evil.tar")  # unsigned, self-consistent hashes
    good = signed.read_bytes()
    real_check = signing.check_bundle

    def check_then_swap(path: Path, trusted: list) -> dict:  # noqa: ANN001
        result = real_check(path, trusted)
        path.write_bytes(evil.read_bytes())  # the swap, right after the stream check
        return result

    monkeypatch.setattr(signing, "check_bundle", check_then_swap)
    with pytest.raises(GateFailed, match="unsigned"):
        edgekit.load(str(signed), trusted_keys=[pub])
    signed.write_bytes(good)
    with pytest.raises(GateFailed, match="unsigned"):
        bundle.verify_bundle(str(signed), trusted_keys=[pub])
    monkeypatch.setattr(signing, "check_bundle", real_check)
    # a swap after verification: load() runs the files it verified (one extraction), not a second read of the path
    signed.write_bytes(good)
    real_verified = loader.check_verified
    monkeypatch.setattr(loader, "check_verified", lambda r, **k: (signed.write_bytes(evil.read_bytes()), real_verified(r, **k))[1])
    x, _ = zoo.mnist_heldout()
    with edgekit.load(str(signed), trusted_keys=[pub]) as engine:
        got = engine.run({engine.inputs[0].name: x[:16]})[engine.outputs[0].name]
    with open_engine(artifact) as (ref, _m):
        want = ref.run({ref.inputs[0].name: x[:16]})[ref.outputs[0].name]
    np.testing.assert_array_equal(got, want)
    assert signed.read_bytes() == evil.read_bytes()  # the swap did happen


def test_a_corrupt_signature_file_is_a_one_line_refusal(artifact: Path, tmp_path: Path) -> None:
    b = _pack(artifact, tmp_path / "b")
    (b / "bundle.sig").write_text("{not json")
    code, output = _cli("verify", str(b))
    assert code == 3 and "bundle.sig is corrupt" in output and "Traceback" not in output, output


def test_one_trusted_key_given_as_a_string(keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.signing import trusted_keys

    monkeypatch.delenv("EDGEKIT_TRUSTED_KEYS", raising=False)
    pub = str(keys["release"]) + ".pub"
    assert [k.source for k in trusted_keys(pub)] == [pub]
    assert [k.source for k in trusted_keys(Path(pub))] == [pub]


def test_other_key_types_are_a_one_line_error(tmp_path: Path) -> None:
    """An ECDSA key, or a key type cryptography does not know, given as a trusted key (was a traceback)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from edgekit.errors import UsageError
    from edgekit.signing import load_public_key

    ecdsa = tmp_path / "ecdsa.pub"
    ecdsa.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b" someone\n")
    odd = tmp_path / "odd.pub"
    odd.write_text("ssh-foo AAAAB3NzaC1kc3MAAACBAP someone\n")
    for f in (ecdsa, odd):
        with pytest.raises(UsageError, match="is not an Ed25519 public key"):
            load_public_key(f)
    code, output = _cli("verify", str(tmp_path), "--key", str(odd))  # the key is read before the bundle
    assert code == 2 and "odd.pub is not an Ed25519 public key" in output and len(output.strip().splitlines()) == 1, output
