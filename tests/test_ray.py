"""--executor ray on a real two-node Ray cluster on 127.0.0.1: a head and a node that alone holds a device.

The cluster is started once for the module (`ray start --block`, each in its own process group, stopped
by that group's id) with small memory: 1 CPU per node, 100 MB object stores.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit import deps
from edgekit.cli import cli

pytestmark = pytest.mark.skipif(not deps.available("ray"), reason="ray is not installed (pip install 'edgekit[ray]')")

DEVICE = "edgekit-device:dev1"
TARGET = "edgekit-target:quiet-ort"  # the same node also measures for the target quiet-ort (optimize's race goes there)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """ray://127.0.0.1:PORT of a head (1 CPU) and a node (1 CPU) that alone declares edgekit-device:dev1 (and edgekit-target:quiet-ort)."""
    from raycluster import ray_cluster

    with ray_cluster(tmp_path_factory.mktemp("ray-logs"), [{}, {DEVICE: 1, TARGET: 1}]) as address:
        yield address


def _tiny_models(folder: Path, n: int) -> list[Path]:
    """Real ONNX models (MatMul + Relu) of different widths."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = []
    for i in range(n):
        width = 128 * (i + 2)  # 64 rows: about a millisecond a run, so a short bench keeps a few hundred samples
        w = numpy_helper.from_array(np.random.default_rng(i).standard_normal((width, width)).astype(np.float32), "w")
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"), helper.make_node("Relu", ["y"], ["z"], name="relu")], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, width])],
                                  [helper.make_tensor_value_info("z", TensorProto.FLOAT, [64, width])], [w])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 9
        onnx.save(model, folder / f"m{i}.onnx")
        out.append(folder / f"m{i}.onnx")
    return out


PROJECT = """
[defaults]
target = "onnxruntime"
budgets = {{ p99 = "500ms" }}
baseline_dir = "baselines"
max_regression = "900%"

[[bench]]
name = "on-device"
model = "models/m0.onnx"
resource = "{device}"

[[bench]]
name = "anywhere"
model = "models/m1.onnx"

[[bench]]
name = "too-slow"
model = "models/m2.onnx"
budgets = {{ p50 = "0.00001ms" }}
"""


def _structure(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: _structure(v) for k, v in obj.items() if k not in ("samples_ms", "baseline_samples_ms", "baseline_sample_rounds", "sample_rounds")}
    if isinstance(obj, list):
        return [_structure(v) for v in obj[:1]]
    return "value"


def _bench(folder: Path, *args: str) -> tuple[object, dict, str]:
    js = folder / "out.json"
    js.unlink(missing_ok=True)
    res = CliRunner().invoke(cli, ["bench", "--config", str(folder / "edgekit.toml"), "--min-duration", "0.2", "--max-duration", "1", "--min-iterations", "20",
                                   "--json", str(js), "--junit", str(folder / "junit.xml"), *args])
    return res, (json.loads(js.read_text()) if js.exists() else {}), (folder / "junit.xml").read_text() if (folder / "junit.xml").exists() else ""


def test_bench_config_runs_pinned_entry_on_the_device_node_with_the_local_verdicts(cluster: str, tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    _tiny_models(tmp_path / "models", 3)
    (tmp_path / "edgekit.toml").write_text(PROJECT.format(device=DEVICE))
    res, _, _ = _bench(tmp_path, "--update-baselines")  # local: every entry records a baseline with its artifact copy
    assert res.exit_code == 3, res.output
    local_res, local, local_junit = _bench(tmp_path)
    ray_res, remote, ray_junit = _bench(tmp_path, "--executor", cluster)
    assert local_res.exit_code == ray_res.exit_code == 3, ray_res.output  # too-slow fails its budget both ways
    verdicts = lambda run: [(r["name"], r["passed"], [b["verdict"] for b in r["budgets"]], r["baseline_status"]) for r in run["results"]]  # noqa: E731
    assert verdicts(remote) == verdicts(local)
    assert _structure(remote) == _structure(local)  # the same JSON, key for key
    for lr, rr in zip(local["results"], remote["results"]):  # paths read as here, though the node benched copies
        assert (rr["artifact"], rr["artifact_path"], rr["artifact_sha256"]) == (lr["artifact"], lr["artifact_path"], lr["artifact_sha256"])
        assert rr["baseline"]["baseline"] == lr["baseline"]["baseline"] and rr["baseline"]["note"] == lr["baseline"]["note"], rr["baseline"]
        assert lr["ran_on"]["executor"] == "local" and rr["ran_on"]["executor"] == "ray"
    import xml.etree.ElementTree as ET

    cases = lambda xml: [(c.get("name"), c.find("failure") is not None) for c in ET.fromstring(xml).iter("testcase")]  # noqa: E731
    assert cases(ray_junit) == cases(local_junit)
    import ray

    ray.init(address=cluster.removeprefix("ray://"), logging_level="ERROR")
    try:
        device_node = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get(DEVICE))
    finally:
        ray.shutdown()
    pinned = remote["results"][0]["ran_on"]
    assert pinned["node_id"] == device_node and pinned["attempts"] == 1, pinned


def test_a_device_no_node_offers_is_exit_4_before_anything_runs(cluster: str, tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    _tiny_models(tmp_path / "models", 3)
    (tmp_path / "edgekit.toml").write_text(PROJECT.format(device="edgekit-device:orin-missing"))
    started = time.monotonic()
    res, report, junit = _bench(tmp_path, "--executor", cluster)
    assert res.exit_code == 4, res.output
    assert "edgekit-device:orin-missing" in res.output and "ray start" in res.output
    assert report == {} and "edgekit-device:orin-missing" in junit  # nothing measured; the test tab says why
    assert time.monotonic() - started < 20


@pytest.fixture(scope="module")
def outlier_cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The MNIST CNN with a 1000x outlier channel (as in test_quantize), its calibration set and held-out digits."""
    import zoo

    model, calib, held, _change = zoo.outlier_mnist(tmp_path_factory.mktemp("outlier"))
    return model, calib, held


def _kill_first_unit(stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the first Ray worker seen running a sensitivity unit (its process title names the task)."""
    while not stop.is_set() and not killed:
        for line in subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout.splitlines():
            pid, _, args = line.strip().partition(" ")
            if args.startswith("ray::edgekit:sensitivity"):
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
                return
        time.sleep(0.05)


def test_sensitivity_search_survives_a_killed_worker_and_spreads_over_both_nodes(cluster: str, outlier_cnn: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, calib, held = outlier_cnn
    args = ["quantize", str(model), "--calib", str(calib), "--eval", str(held), "--max-accuracy-drop", "1.0", "--metric", "top1", "--no-cache"]
    res = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "local.onnx"), "--json", str(tmp_path / "local.json")])
    assert res.exit_code == 0, res.output
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first_unit, args=(stop, killed), daemon=True)
    killer.start()
    try:
        res = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "ray.onnx"), "--json", str(tmp_path / "ray.json"), "--executor", cluster])
    finally:
        stop.set()
        killer.join(5)
    assert res.exit_code == 0, res.output
    assert killed, "no worker ran a sensitivity unit long enough to be killed"
    local, remote = (json.loads((tmp_path / f"{n}.json").read_text())["fallback"] for n in ("local", "ray"))
    placed = remote["ranked_on"]
    assert placed["executor"] == "ray" and placed["units"] == local["candidates"]
    assert len(placed["retried"]) == 1 and "died" in placed["retried"][0] and "executor: " in res.output, placed
    assert len(placed["nodes"]) == 2, placed  # the CPU work ran on both nodes
    assert remote["ranking"] == local["ranking"] and remote["kept_in_float"][0]["node"] == local["kept_in_float"][0]["node"]
    assert [k["node"] for k in remote["kept_in_float"]] == [k["node"] for k in local["kept_in_float"]]


def _units_running(kind: str) -> list[int]:
    ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout.splitlines()
    return [int(ln.split()[0]) for ln in ps if ln.split(None, 1)[1:] and ln.split(None, 1)[1].startswith(f"ray::edgekit:{kind}")]


def test_ctrl_c_cancels_every_task(cluster: str, tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    _tiny_models(tmp_path / "models", 3)
    (tmp_path / "edgekit.toml").write_text(PROJECT.format(device=DEVICE))
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "bench", "--config", str(tmp_path / "edgekit.toml"), "--executor", cluster,
                             "--min-duration", "60", "--max-duration", "60"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120  # generous: a busy machine starts Ray workers slowly; a pass takes seconds
        while not _units_running("bench") and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert _units_running("bench"), "no bench unit started"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out
    deadline = time.monotonic() + 60
    while _units_running("bench") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _units_running("bench"), "bench units kept running after Ctrl-C"


# --- a device reached over SSH, benched from the node that declares it --------------------------

@pytest.fixture(scope="module")
def ssh_device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A real sshd on 127.0.0.1 (test_remote's, throwaway keys) and a device Python without torch."""
    from test_remote import Sshd, _keygen, device_python, require_sshd

    require_sshd()
    root = tmp_path_factory.mktemp("ray-ssh")
    key = _keygen(root / "id_user")
    server = Sshd(root / "sshd", key)
    (root / "known_hosts").write_text(server.known_hosts_line())
    try:
        yield {"server": server, "key": key, "known_hosts": root / "known_hosts", "python": device_python(root / "device-python"), "root": root}
    finally:
        server.stop()


def _node_with(cluster: str, resource: str) -> str:
    import ray

    ray.init(address=cluster.removeprefix("ray://"), logging_level="ERROR")
    try:
        return next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get(resource))
    finally:
        ray.shutdown()


def _compiled_tiny(folder: Path) -> Path:
    (folder / "models").mkdir()
    model = _tiny_models(folder / "models", 1)[0]
    res = CliRunner().invoke(cli, ["compile", str(model), "--target", "onnxruntime", "-o", str(folder / "art")])
    assert res.exit_code == 0, res.output
    return folder / "art"


def test_a_device_entry_is_benched_over_ssh_from_the_node_that_declares_the_device(cluster: str, ssh_device: dict, tmp_path: Path) -> None:
    from test_remote import _device_table

    art = _compiled_tiny(tmp_path)
    work = tmp_path / "device-work"
    lab = {"key": ssh_device["key"], "known_hosts": ssh_device["known_hosts"]}
    (tmp_path / "edgekit.toml").write_text(
        _device_table("dev1", ssh_device["server"], lab, ssh_device["python"], work)
        + f'[[bench]]\nname = "on-dev1"\nmodel = "{art}"\ntarget = "onnxruntime"\ndevice = "dev1"\nbudgets = {{ p99 = "5000ms", p50 = "0.00001ms" }}\n')
    local_res, local, _ = _bench(tmp_path)
    ray_res, remote, _ = _bench(tmp_path, "--executor", cluster)
    assert local_res.exit_code == ray_res.exit_code == 3, ray_res.output  # the p50 budget fails both ways, p99 passes
    verdicts = lambda run: [(r["name"], r["target"], r["passed"], [b["verdict"] for b in r["budgets"]]) for r in run["results"]]  # noqa: E731
    assert verdicts(remote) == verdicts(local) == [("on-dev1", "onnxruntime@dev1", False, ["pass", "fail"])]
    assert _structure(remote) == _structure(local)
    lr, rr = local["results"][0], remote["results"][0]
    assert (rr["artifact"], rr["artifact_path"], rr["artifact_sha256"]) == (lr["artifact"], lr["artifact_path"], lr["artifact_sha256"])
    assert rr["environment"]["device"]["python_executable"] == str(ssh_device["python"])  # measured by the device's Python, over SSH
    assert any("measured on device dev1" in n for n in rr["notes"]) and list(work.iterdir()) == []
    assert lr["ran_on"]["executor"] == "local"
    assert rr["ran_on"]["executor"] == "ray" and rr["ran_on"]["node_id"] == _node_with(cluster, DEVICE), rr["ran_on"]


def test_a_device_no_node_reaches_is_exit_4_naming_its_resource(cluster: str, tmp_path: Path) -> None:
    art = _compiled_tiny(tmp_path)
    (tmp_path / "edgekit.toml").write_text(f'[devices.orin9]\nhost = "127.0.0.1"\nport = 1\n\n'
                                           f'[[bench]]\nname = "on-orin9"\nmodel = "{art}"\ntarget = "onnxruntime"\ndevice = "orin9"\n')
    res, report, junit = _bench(tmp_path, "--executor", cluster)
    assert res.exit_code == 4, res.output
    assert "edgekit-device:orin9" in res.output and "ray start" in res.output and report == {} and "edgekit-device:orin9" in junit


# --- optimize --executor ray ---------------------------------------------------------------------

def test_optimize_races_on_one_node_ranks_on_the_cluster_and_chooses_as_local(cluster: str, outlier_cnn: tuple[Path, Path, Path], tmp_path: Path) -> None:
    import shutil

    model, calib, held = outlier_cnn
    few = tmp_path / "held"  # 40 digits: quantize's check fails on the outlier channel, its fallback ranks every node
    few.mkdir()
    for f in sorted(held.iterdir())[:40]:
        shutil.copy(f, few / f.name)
    # a target profile of this folder (it travels with the unit) whose node is declared: the race runs there
    (tmp_path / "quiet-ort.toml").write_text('backend = "onnxruntime"\ndevice = "CPU"\n\n[options]\noptimization = "extended"\n')
    # INT8 misses a budget this tight whatever the timing: the verdicts and the winner do not depend on the machine's load
    args = ["optimize", str(model), "--calib", str(calib), "--eval", str(few), "--target", str(tmp_path / "quiet-ort.toml"), "--candidates", "fp32,int8",
            "--max-accuracy-drop", "1e-7", "--min-duration", "0.3"]
    runs = {}
    for name, extra in (("local", []), ("ray", ["--executor", cluster])):
        res = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / f"out-{name}"), "--json", str(tmp_path / f"{name}.json"), *extra])
        assert res.exit_code == 0, res.output
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    local, remote = runs["local"], runs["ray"]
    verdicts = lambda r: [(c["name"], c["built"], c["verdict"], c["accuracy"]["meets"], c["quantize"] and c["quantize"]["kept_in_float"]) for c in r["candidates"]]  # noqa: E731
    assert verdicts(remote) == verdicts(local) and remote["winner"] == local["winner"] == "fp32"
    assert [c["accuracy"]["drop"] for c in remote["candidates"]] == pytest.approx([c["accuracy"]["drop"] for c in local["candidates"]], rel=1e-6, abs=1e-12)
    assert set(remote) == set(local) and (remote["model"], remote["output"]) == (str(model), str(tmp_path / "out-ray"))  # paths as here
    assert local["ran_on"]["executor"] == "local" and local["candidates"][1]["quantize"]["ranked_on"] is None
    race = remote["ran_on"]  # every compile, accuracy pass and the interleaved race: one unit, on the node that declares the target
    assert race["executor"] == "ray" and race["node_id"] == _node_with(cluster, TARGET) and race["attempts"] == 1, race
    assert remote["target"] == local["target"] == "quiet-ort"
    ranked = remote["candidates"][1]["quantize"]["ranked_on"]  # quantize's sensitivity units, from that unit, over the cluster
    assert ranked["executor"] == "ray" and ranked["units"] >= 2 and sum(ranked["nodes"].values()) == ranked["units"], ranked
    # the winner was written here, from the node, as a local run writes it
    manifest = json.loads((tmp_path / "out-ray" / "manifest.json").read_text())
    assert manifest["optimize"]["winner"] == "fp32" and manifest["precision"] == "fp32"
    assert json.loads((tmp_path / "out-ray" / "optimize.json").read_text())["ran_on"] == race
    bench = CliRunner().invoke(cli, ["bench", str(tmp_path / "out-ray"), "--min-duration", "0.1"])
    assert bench.exit_code == 0, bench.output
