"""The device install: edgekit's wheel with the runtime extra in a fresh virtual environment (no torch),
then `edgekit verify`, `edgekit.load` and `run_image` on a bundle from another folder."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekit.cli import cli
from edgekit.examples.efficientnet import photo

ROOT = Path(__file__).parents[1]


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)  # type: ignore[call-overload]
    assert res.returncode == 0, f"{cmd}: {res.stdout[-2000:]} {res.stderr[-2000:]}"
    return res


def _no_isolation() -> list[str]:
    """Build with this environment's setuptools when it is new enough (pyproject.toml's floor): 2 s instead of 11."""
    import importlib.metadata

    try:
        major = int(importlib.metadata.version("setuptools").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return []
    return ["--no-build-isolation"] if major >= 68 else []


@pytest.fixture(scope="module")
def device_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with edgekit's wheel (built from this checkout) and the runtime + openvino extras."""
    d = tmp_path_factory.mktemp("device")
    src = d / "src"  # build from a copy: the build leaves build/ and *.egg-info beside the sources
    shutil.copytree(ROOT / "edgekit", src / "edgekit", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    t0 = time.perf_counter()
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *_no_isolation(), str(src), "-w", str(d / "wheel")])
    wheel = next((d / "wheel").glob("edgekit-*.whl"))
    _run([sys.executable, "-m", "venv", str(d / "venv")])
    py = d / "venv" / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{wheel}[runtime,openvino]"])
    seconds = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in (d / "venv").rglob("*") if p.is_file() and not p.is_symlink())
    print(f"device install: {seconds:.1f} s, {size / 2**20:.0f} MiB")  # shown with -s; the README quotes it
    return py


@pytest.mark.slow
@pytest.mark.requires_openvino
def test_device_install_verifies_loads_and_runs_a_bundle_from_another_folder(device_venv: Path, efficientnet_int8_artifacts: list[Path], tmp_path: Path) -> None:
    py = device_venv
    installed = {p["name"].lower() for p in json.loads(_run([str(py), "-m", "pip", "list", "--format", "json"]).stdout)}
    assert "torch" not in installed and "nncf" not in installed and {"onnxruntime", "openvino", "pillow"} <= installed

    # the build machine's OpenVINO and ONNX Runtime artifacts (quantized on real photos), packed ONNX Runtime first
    device = tmp_path / "device"
    device.mkdir()
    assert CliRunner().invoke(cli, ["pack", *map(str, reversed(efficientnet_int8_artifacts)), "-o", str(device / "model.tar")]).exit_code == 0
    shutil.copy(photo(), device / "cat.png")  # the device has no scikit-image
    import edgekit

    with edgekit.load(device / "model.tar", cache_dir=tmp_path / "cache-build") as engine:
        expected = engine.run_image(device / "cat.png")["output"].tolist()

    # the device: its own venv, its own working folder, nothing of this checkout on the path
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["EDGEKIT_CACHE_DIR"] = str(tmp_path / "cache-device")
    edgekit_cmd = str(py.parent / "edgekit")
    res = subprocess.run([edgekit_cmd, "verify", "model.tar"], cwd=device, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "edgekit.load chooses: openvino int8" in res.stdout
    code = textwrap.dedent(
        """
        import json, sys, numpy as np, edgekit
        assert "/src/" not in edgekit.__file__ and "site-packages" in edgekit.__file__, edgekit.__file__
        with edgekit.load("model.tar") as e:
            out = e.run_image("cat.png")["output"]
            info = e.info
        print(json.dumps({"out": out.tolist(), "backend": info["backend"], "chosen": info["chosen"],
                          "torch": any(m.split(".")[0] == "torch" for m in sys.modules)}))
        """
    )
    res = subprocess.run([str(py), "-c", code], cwd=device, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["backend"] == "openvino" and not got["torch"]
    assert got["out"] == expected  # the same artifact, preprocessing and runtime versions: identical logits
