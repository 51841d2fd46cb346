"""Bundles: pack, verify and load on the device side; tampering and hostile tars."""
from __future__ import annotations

import io
import json
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import zoo
import edgekit
from edgekit.cli import cli
from edgekit.compile import compile_model, open_engine

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def compiled_int8(efficientnet_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("pack")
    q = d / "model.int8.onnx"
    res = CliRunner().invoke(cli, ["quantize", str(efficientnet_onnx), "-o", str(q), "--calib", str(ROOT / "edgekit" / "examples" / "calibration" / "imagenet-photos.toml"),
                                   "--samples", "4"])
    assert res.exit_code == 0, res.output
    out = [d / "ort"]
    compile_model(q, out[0], target="onnxruntime")
    try:
        import openvino  # noqa: F401

        out.insert(0, d / "ov")
        compile_model(q, out[0], target="openvino", shapes={"inputs": (1, 3, 224, 224)})
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("form", ["bundle.tar", "bundle_dir"])
def test_pack_verify_load_gives_the_same_outputs(form: str, compiled_int8: list[Path], tmp_path: Path) -> None:
    bundle = tmp_path / form
    res = CliRunner().invoke(cli, ["pack", *map(str, compiled_int8), "-o", str(bundle)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["verify", str(bundle), "--json", str(tmp_path / "v.json")])
    assert res.exit_code == 0, res.output
    assert all(a["compatible"] for a in json.loads((tmp_path / "v.json").read_text())["artifacts"])
    image = zoo.foolbox_images()[0][0]
    for i, art in enumerate(compiled_int8):
        backend = json.loads((art / "manifest.json").read_text())["backend"]
        with open_engine(art) as (engine, _m):
            from edgekit.examples.efficientnet import RECIPE

            before = engine.run({"inputs": RECIPE.apply(image)})["output"]
        with edgekit.load(str(bundle), target=backend) as engine:
            assert engine.info["backend"] == backend and engine.info["precision"] == "int8"
            after = engine.run_image(image)["output"]  # the recorded preprocessing applied on the device side
        np.testing.assert_array_equal(before, after)
    if form.endswith(".tar"):
        with tarfile.open(bundle) as tar:
            names = tar.getnames()
        assert "bundle.json" in names and any(n.startswith("source/") and n.endswith(".onnx") for n in names)
        assert not any(n.endswith((".pkl", ".pt", ".pickle")) for n in names)


def test_one_changed_byte_in_any_file_fails_naming_it(compiled_int8: list[Path], tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    assert CliRunner().invoke(cli, ["pack", *map(str, compiled_int8), "-o", str(bundle)]).exit_code == 0
    files = [p for p in bundle.rglob("*") if p.is_file() and p.name != "bundle.json"]
    assert len(files) >= 5
    for f in files:
        original = f.read_bytes()
        data = bytearray(original)
        data[len(data) // 2] ^= 0x01
        f.write_bytes(bytes(data))
        res = CliRunner().invoke(cli, ["verify", str(bundle)])
        f.write_bytes(original)
        rel = f.relative_to(bundle).as_posix()
        assert res.exit_code == 3, rel
        assert rel in res.stderr and "SHA-256" in res.stderr
    assert CliRunner().invoke(cli, ["verify", str(bundle)]).exit_code == 0


def test_version_mismatch_is_exit_3_saying_what_to_do(compiled_int8: list[Path], tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    assert CliRunner().invoke(cli, ["pack", str(compiled_int8[-1]), "-o", str(bundle)]).exit_code == 0
    mf = bundle / "bundle.json"
    m = json.loads(mf.read_text())
    m["artifacts"][0]["versions"]["onnxruntime"] = "0.9.0"
    mf.write_text(json.dumps(m))
    res = CliRunner().invoke(cli, ["verify", str(bundle)])
    assert res.exit_code == 3
    assert "built with onnxruntime 0.9.0" in res.stderr and "recompile" in res.stderr


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"x") -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink"])
def test_hostile_tar_members_are_rejected_before_writing(kind: str, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    if kind == "dotdot":
        m = tarfile.TarInfo("../outside.txt")
        m.size = 1
    elif kind == "absolute":
        m = tarfile.TarInfo(str(outside))
        m.size = 1
    else:
        m = tarfile.TarInfo("link")
        m.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
        m.linkname = str(outside) if kind == "symlink" else "../outside.txt"
    (tmp_path / "t").mkdir()
    evil = _tar_with(tmp_path / "t", m)
    res = CliRunner().invoke(cli, ["verify", str(evil)])
    assert res.exit_code == 2, res.output
    assert "outside the destination" in res.stderr or "is a link" in res.stderr
    # "../outside.txt" would land beside the temporary extraction folder: nothing may appear there either
    assert not outside.exists() and not (Path(tempfile.gettempdir()) / "outside.txt").exists()


def test_verify_of_a_missing_or_foreign_file(tmp_path: Path) -> None:
    assert CliRunner().invoke(cli, ["verify", str(tmp_path / "nope.tar")]).exit_code == 2
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all")
    res = CliRunner().invoke(cli, ["verify", str(junk)])
    assert res.exit_code == 2 and "not a readable tar bundle" in res.stderr


def test_a_cut_short_or_clashing_tar_is_a_one_line_exit_2(tmp_path: Path) -> None:
    """A copy to the device interrupted half-way, a file that is not a tar, a member both file and folder."""
    import os

    good = tmp_path / "good.tar"
    with tarfile.open(good, "w") as t:
        for name, size in (("bundle.json", 100), ("artifacts/a/model.onnx", 200_000)):
            info = tarfile.TarInfo(name)
            info.size = size
            t.addfile(info, io.BytesIO(os.urandom(size)))
    (tmp_path / "cut.tar").write_bytes(good.read_bytes()[:100_000])
    (tmp_path / "text.tar").write_text("not a tar\n")
    with tarfile.open(tmp_path / "clash.tar", "w") as t:
        for name in ("bundle.json", "bundle.json/x"):
            info = tarfile.TarInfo(name)
            info.size = 2
            t.addfile(info, io.BytesIO(b"{}"))
    for name in ("cut.tar", "text.tar", "clash.tar"):
        res = CliRunner().invoke(cli, ["verify", str(tmp_path / name)])
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
