"""`edgekit optimize --device`: candidates built and judged here, their latency race run on a real device.

The device is a real OpenSSH server on 127.0.0.1 (test_remote.py's `Sshd`), whose Python is a
virtual environment without torch running this checkout's edgekit (test_remote.py's `device_python`).
The model is the suite's MNIST CNN trained on real digits, calibrated and judged on real digits.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import zoo
from click.testing import CliRunner
from test_remote import Sshd, _device_table, _keygen, device_python, require_sshd

from edgekit.cli import cli


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict:
    require_sshd()
    root = tmp_path_factory.mktemp("optimize-lab")
    key = _keygen(root / "id_user")
    server = Sshd(root / "sshd", key)
    known = root / "known_hosts"
    known.write_text(server.known_hosts_line())
    yield {"root": root, "key": key, "known_hosts": known, "servers": [server], "python": device_python(root / "device")}
    server.stop()


@pytest.fixture(scope="module")
def digits(mnist_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("optimize-digits")
    name = onnx.load(str(mnist_onnx)).graph.input[0].name
    np.savez(root / "calib.npz", **{name: zoo.mnist_calibration(64)})
    np.savez(root / "eval.npz", **{name: zoo.mnist_heldout()[0][:32]})
    return {"model": mnist_onnx, "calib": root / "calib.npz", "eval": root / "eval.npz"}


def _optimize(tmp_path: Path, d: dict[str, Path], *args: str) -> tuple[object, dict]:
    js = tmp_path / "report.json"
    res = CliRunner().invoke(cli, ["optimize", str(d["model"]), "--calib", str(d["calib"]), "--eval", str(d["eval"]), "-o", str(tmp_path / "out"),
                                   "--min-duration", "0.4", "--max-duration", "1.5", "--json", str(js), *args])
    return res, (json.loads(js.read_text()) if js.exists() else {})


def test_the_race_runs_on_the_device_and_its_winner_lands_in_out(lab: dict, digits: dict[str, Path], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "device-work"
    (tmp_path / "edgekit.toml").write_text(_device_table("lab", lab["servers"][0], lab, lab["python"], work))
    monkeypatch.chdir(tmp_path)  # ./edgekit.toml names the device
    res, report = _optimize(tmp_path, digits, "--target", "onnxruntime", "--device", "lab")
    assert res.exit_code == 0, res.output
    print(res.output)
    # measured by the device's own Python and edgekit, and the report says which device (as bench --device does)
    on = report["measured_on"]
    assert on["name"] == "lab" and on["address"].endswith(f"127.0.0.1:{lab['servers'][0].port}") and on["cpu"]
    assert "measured on device lab" in on["note"] and "throttl" in on["note"] and on["note"] in res.output
    assert report["target"] == "onnxruntime@lab"
    env = report["environment"]
    assert env["device"]["python_executable"] == str(lab["python"]) and "throttled" in env["device"]
    assert env["engine"]["backend"] == "onnxruntime" and report["timing"]["device_session_s"] > 0 and report["timing"]["device_preflight_s"] > 0
    # every candidate timed there, interleaved: each has latency with its interval, from rounds shared with the others
    rows = {c["name"]: c for c in report["candidates"]}
    assert set(rows) == {"fp32", "int8"} and all(c["built"] for c in rows.values())
    for c in rows.values():
        lat = c["latency_ms"]
        assert lat and lat["iterations"] >= 10 and lat["p50"]["ci_low"] <= lat["p50"]["value"] <= lat["p50"]["ci_high"], c["name"]
        assert c["stages"] >= 1 and [b["budget"] for b in c["budgets"]] == []
        assert c["accuracy"]["device_agreement"]["cosine_drop"] < 1e-4  # the device computes what was judged here
    loser = next(c for c in rows.values() if c["verdict"] != "WINNER")
    assert loser["vs_winner"]["rounds"] >= 5 and loser["vs_winner"]["ci_low"] <= loser["vs_winner"]["ratio"] <= loser["vs_winner"]["ci_high"]
    # the winner by the same rule as a local race, its artifact (compiled here, the one the device ran) in -o
    assert rows[report["winner"]]["verdict"] == "WINNER" and rows[report["winner"]]["accuracy"]["meets"]
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["optimize"]["winner"] == report["winner"] and manifest["precision"] == rows[report["winner"]]["precision"]
    assert json.loads((out / "optimize.json").read_text())["measured_on"]["name"] == "lab"
    assert list(work.iterdir()) == []  # the device's run folder is gone

    # a budget nobody meets: exit 3 naming the closest, nothing written; budgets decided on the device's samples
    shutil.rmtree(out)
    res, report = _optimize(tmp_path, digits, "--target", "onnxruntime", "--device", "lab", "--budget", "p50=0.0001ms")
    assert res.exit_code == 3, res.output
    assert "no candidate meets both budgets" in res.output and f"closest {report['closest']}" in res.output
    assert report["winner"] is None and report["closest"] in ("fp32", "int8") and not out.exists()
    assert report["measured_on"]["name"] == "lab"
    for c in report["candidates"]:
        assert [b["verdict"] for b in c["budgets"]] == ["fail"] and c["stopped"].startswith("p50<=0.0001ms") and c["stages"] == 1, c


def test_unknown_device_is_exit_2_and_no_edgekit_there_is_exit_4_before_any_building(lab: dict, digits: dict[str, Path], tmp_path: Path,
                                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "edgekit.toml").write_text(_device_table("lab", lab["servers"][0], lab, tmp_path / "no-such-venv", tmp_path / "work"))
    monkeypatch.chdir(tmp_path)
    res, _ = _optimize(tmp_path, digits, "--device", "lav")
    assert res.exit_code == 2 and "has no device 'lav'" in res.output and "did you mean 'lab'" in res.output, res.output
    res, _ = _optimize(tmp_path, digits, "--device", "lab", "--executor", "ray")
    assert res.exit_code == 2 and "--device lab and --executor ray: give one" in res.output, res.output
    res, _ = _optimize(tmp_path, digits, "--device", "lab")
    assert res.exit_code == 4 and "no Python at" in res.output and "quantiz" not in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "out").exists()


@pytest.mark.requires_openvino
def test_a_device_without_the_targets_backend_is_one_line_exit_4(lab: dict, digits: dict[str, Path], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    py = device_python(tmp_path / "no-openvino", without=("openvino", "nncf"))
    (tmp_path / "edgekit.toml").write_text(_device_table("noov", lab["servers"][0], lab, py, tmp_path / "work"))
    monkeypatch.chdir(tmp_path)
    res, _ = _optimize(tmp_path, digits, "--target", "openvino", "--device", "noov")
    assert res.exit_code == 4, res.output
    assert "device noov cannot run the target's backend openvino" in res.output and f"{py} -m pip install 'edgekit[openvino]'" in res.output
    assert not (tmp_path / "out").exists()


def test_a_toml_entry_on_a_device_chooses_there(lab: dict, digits: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "fast.toml").write_text('backend = "onnxruntime"\n[bench]\nmin_duration_s = 0.3\nmax_duration_s = 1.5\n')
    (tmp_path / "edgekit.toml").write_text(
        _device_table("lab", lab["servers"][0], lab, lab["python"], tmp_path / "work")
        + f'[[bench]]\nname = "digits"\nmodel = "{digits["model"]}"\ntarget = "fast.toml"\ndata = "{digits["calib"]}"\ndevice = "lab"\n'
        'budgets = { p99 = "1s" }\noptimize = { candidates = ["fp32", "int8"] }\n')
    res = CliRunner().invoke(cli, ["bench", "--config", str(tmp_path / "edgekit.toml"), "--json", str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "b.json").read_text())["results"][0]
    chosen = json.loads((Path(r["artifact"]) / "optimize.json").read_text())
    assert chosen["measured_on"]["name"] == "lab" and r["device"]["name"] == "lab"  # chosen on the device it is benched on
    assert r["precision"] == next(c["precision"] for c in chosen["candidates"] if c["name"] == chosen["winner"])


def test_the_device_side_race_checks_outputs_and_a_candidate_it_cannot_load_sits_out(mnist_onnx: Path, tmp_path: Path) -> None:
    """`edgekit optimize-race`, the device side, here in-process: a candidate whose outputs differ from those
    judged for accuracy cannot win (timed one stage), one that does not load sits out, the others race."""
    from edgekit.compile import compile_model
    from edgekit.optimize.device import DEVICE_TOLERANCE, RACE_COMMAND

    name = onnx.load(str(mnist_onnx)).graph.input[0].name
    digits = zoo.mnist_heldout()[0]
    feed, other = {name: digits[:1]}, {name: digits[7:8]}  # two real digits
    arts = []
    for i in range(3):
        arts.append(tmp_path / f"a{i}")
        manifest = compile_model(mnist_onnx, arts[-1], target="onnxruntime", shapes={name: (1, 1, 28, 28)})
    (arts[2] / manifest["entry"]).write_bytes(b"not an onnx model")  # the device cannot load this one
    import onnxruntime as ort

    sess = ort.InferenceSession(str(mnist_onnx), providers=["CPUExecutionProvider"])
    right, wrong = sess.run(None, feed)[0], sess.run(None, other)[0]  # "wrong": what it computes for another digit
    extra = tmp_path / "extra"
    extra.mkdir()
    np.savez(extra / "feed.npz", **feed)
    np.savez(extra / "expected.npz", c0_o0=right, c1_o0=wrong, c2_o0=right)
    spec = {"schema": 1, "stat": "floor", "feed": "feed.npz", "expected": "expected.npz", "tolerance": DEVICE_TOLERANCE,
            "settings": {"warmup_ms": 20.0, "min_iterations": 10, "min_duration_s": 0.6, "max_duration_s": 1.0}, "budgets": [],
            "candidates": [{"name": n, "accurate": True} for n in ("same", "differs", "broken")]}
    (extra / "race.json").write_text(json.dumps(spec))
    args = [RACE_COMMAND, str(extra / "race.json"), "--json", str(tmp_path / "race.out.json")]
    for a in arts:
        args += ["--artifact", str(a)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads((tmp_path / "race.out.json").read_text())["candidates"]}
    assert rows["same"]["agreement"]["cosine_drop"] < 1e-6 and rows["same"]["stopped"] is None
    assert rows["differs"]["agreement"]["cosine_drop"] > DEVICE_TOLERANCE and rows["differs"]["stopped"].startswith("misses the accuracy budget")
    assert rows["differs"]["stages"] == 1 and rows["same"]["stages"] >= 2 and len(rows["same"]["latencies_ms"]) == len(rows["same"]["rounds"])
    assert "latencies_ms" not in rows["broken"] and rows["broken"]["error"]
    assert "optimize-race" not in CliRunner().invoke(cli, ["--help"]).output  # internal: not offered to users
