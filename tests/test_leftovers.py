"""Issue #23's guard: every command leaves exactly the outputs asked for, in an empty working folder,
and nothing new in the system temporary folder; runs sharing a folder do not collide.

Each command runs as the user runs it: `python -m edgekit ...` in its own process, its working folder
a fresh empty one, TMPDIR a fresh empty one, the calibration cache in a folder of its own.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import zoo

ROOT = Path(__file__).parents[1]


def _files(folder: Path) -> set[str]:
    """Every file and folder under `folder`, relative, hidden ones included."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def _env(tmpdir: Path, cache: Path) -> dict[str, str]:
    path = os.pathsep.join([str(ROOT), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "TORCHINDUCTOR_CACHE_DIR")}  # edgekit's own defaults
    return {**env, "TMPDIR": str(tmpdir), "TMP": str(tmpdir), "TEMP": str(tmpdir), "PYTHONPATH": path,
            "EDGEKIT_CACHE": str(cache), "EDGEKIT_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}


def run_clean(base: Path, name: str, args: list[str], *, outputs: set[str], exit_codes: tuple[int, ...] = (0,),
              env: dict[str, str] | None = None) -> Path:
    """Run `edgekit ARGS` in a new empty folder `base/name`; assert the exit code, that the folder then holds
    exactly `outputs` (top-level names; an output folder's contents are its own) and that TMPDIR is empty."""
    cwd, tmpdir = base / name, base / f"{name}.tmp"
    cwd.mkdir()
    tmpdir.mkdir()
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "edgekit", *args], cwd=cwd, env={**_env(tmpdir, base / "cache"), **(env or {})},
                         capture_output=True, text=True, timeout=600)
    print(f"edgekit {args[0]} ({name}): {time.perf_counter() - start:.1f} s")
    assert res.returncode in exit_codes, f"edgekit {' '.join(args)}: exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    top = {p.name for p in cwd.iterdir()}
    assert top == outputs, f"edgekit {args[0]} left {sorted(top - outputs)} and lacks {sorted(outputs - top)} in its folder"
    hidden = [f for f in _files(cwd) if any(part.startswith(".") for part in f.split("/"))]
    assert not hidden, f"edgekit {args[0]} left temporary files {hidden}"
    assert not _files(tmpdir), f"edgekit {args[0]} left {sorted(_files(tmpdir))} in TMPDIR"
    return cwd


def symbolic_shape_breaker(path: Path) -> Path:
    """A model on which ONNX Runtime's symbolic shape pass gives up ("Incomplete symbolic shape
    inference"), so that it saves `sym_shape_infer_temp.onnx` and a `<uuid>.data` of the weights in the
    working folder: an additive mask whose shape is read from an input (ConstantOfShape of data), as
    exported sequence models with a computed mask have; a 64x64 MatMul around it."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32) / 8, "W")
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["mask"], value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("Add", ["x", "mask"], ["a"]),
        helper.make_node("MatMul", ["a", "W"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "W"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "mask", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 64]),
                                              helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 64])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _mask_feeds(folder: Path, n: int = 8) -> Path:
    folder.mkdir()
    x = zoo.digits()[0][:n].reshape(n, 64)  # real 8x8 digits as 64-vectors
    for i in range(n):
        np.savez(folder / f"{i}.npz", x=x[i:i + 1], shape=np.array([1, 64], np.int64))
    return folder


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("leftovers")


def test_every_command_leaves_only_its_outputs(work: Path) -> None:
    """export -> quantize (with the float fallback) -> compile (onnxruntime, openvino) -> bench -> compare -> pack -> verify."""
    # one torch thread: zoo's few seconds of training take 100 s when two threads contend on a loaded machine
    d = run_clean(work, "export", ["export", "zoo:mnist_cnn", "-o", "m.onnx", "--dynamic-batch"], outputs={"m.onnx"},
                  env={"OMP_NUM_THREADS": "1"})
    model = d / "m.onnx"
    data = work / "calib.npz"
    name = onnx.load(str(model)).graph.input[0].name
    np.savez(data, **{name: zoo.mnist_calibration(64)})
    run_clean(work, "quantize", ["quantize", str(model), "-o", "q.onnx", "--calib", str(data), "--json", "r.json"],
              outputs={"q.onnx", "q.onnx.json", "r.json"})
    # an impossible budget: the fallback search runs to its end, writes the best model and its exclusion list, exits 3
    q = run_clean(work, "fallback", ["quantize", str(model), "-o", "q.onnx", "--calib", str(data), "--max-accuracy-drop", "0", "--metric", "maxabs"],
                  outputs={"q.onnx", "q.onnx.json", "q.onnx.exclude.txt"}, exit_codes=(0, 3)) / "q.onnx"
    ort = run_clean(work, "compile-ort", ["compile", str(q), "--target", "onnxruntime", "-o", "art"], outputs={"art"}) / "art"
    try:
        import openvino  # noqa: F401

        run_clean(work, "compile-ov", ["compile", str(q), "--target", "openvino", "-o", "art", "--shape", f"{name}:1x1x28x28"],
                  outputs={"art"})
    except ImportError:
        pass
    run_clean(work, "bench", ["bench", str(ort), "--min-duration", "0.2", "--warmup", "20", "--json", "b.json"], outputs={"b.json"})
    run_clean(work, "compare", ["compare", str(model), str(q), "--data", str(data), "--samples", "4", "--min-cosine", "0.9", "--json", "c.json"],
              outputs={"c.json"})
    bundle = run_clean(work, "pack", ["pack", str(ort), "-o", "bundle.tar"], outputs={"bundle.tar"}) / "bundle.tar"
    run_clean(work, "verify", ["verify", str(bundle)], outputs=set())


def test_symbolic_shape_failure_leaves_nothing_behind(work: Path) -> None:
    model = symbolic_shape_breaker(work / "mask.onnx")
    feeds = _mask_feeds(work / "mask-calib")
    d = run_clean(work, "mask", ["quantize", str(model), "-o", "q.onnx", "--calib", str(feeds), "--json", "r.json"],
                  outputs={"q.onnx", "q.onnx.json", "r.json"})
    import json

    notes = json.loads((d / "r.json").read_text())["notes"]
    assert any("skipped the symbolic shape pass" in n for n in notes), notes  # the pass did give up here


def test_two_runs_at_once_in_one_folder_both_succeed_identically(work: Path) -> None:
    """Both runs give up in the symbolic shape pass at the same moment: under a shared fixed name they collided."""
    model = symbolic_shape_breaker(work / "mask2.onnx")
    feeds = _mask_feeds(work / "mask2-calib")
    cwd, tmpdir = work / "together", work / "together.tmp"
    cwd.mkdir()
    tmpdir.mkdir()
    env = _env(tmpdir, work / "cache2")
    procs = [subprocess.Popen([sys.executable, "-m", "edgekit", "quantize", str(model), "-o", name, "--calib", str(feeds)],
                              cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("a.onnx", "b.onnx")]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, out + err
    assert _files(cwd) == {"a.onnx", "a.onnx.json", "b.onnx", "b.onnx.json"}
    assert (cwd / "a.onnx").read_bytes() == (cwd / "b.onnx").read_bytes()
    assert not _files(tmpdir)
