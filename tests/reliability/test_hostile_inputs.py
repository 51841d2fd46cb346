"""Bad input, hostile files and interrupted runs: exit 2 with one line naming the problem, and no
half-written output (the previous output, if any, intact)."""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import zoo
from edgekit.cli import cli


def tiny_model(path: Path, *, dim: int = 4) -> Path:
    """A small real graph (Conv + Relu) to corrupt in many ways."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"), helper.make_node("Relu", ["c"], ["y"], name="relu")],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, dim, dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, dim, dim])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _one_line_exit_2(res, needle: str) -> None:  # noqa: ANN001
    assert res.exit_code == 2, (res.exit_code, res.output)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    assert "Traceback" not in res.output


def _export_onnx(src: Path, out: Path) -> object:
    return CliRunner().invoke(cli, ["export", str(src), "-o", str(out)])


def test_pickle_that_would_run_code_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, (f"touch {marker}",))

    import torch

    bad = tmp_path / "evil.pt"
    bad.write_bytes(pickle.dumps(Evil()))  # a bare pickle whose loading would run a shell command
    res = CliRunner().invoke(cli, ["export", str(bad), "-o", str(tmp_path / "o.onnx"), "--trust-torchscript"])
    _one_line_exit_2(res, "not a TorchScript archive")
    zipped = tmp_path / "evil_zip.pt"
    torch.save({"x": torch.zeros(1)}, str(zipped))  # a torch.save checkpoint: a pickle inside a zip
    res = CliRunner().invoke(cli, ["export", str(zipped), "-o", str(tmp_path / "o.onnx"), "--trust-torchscript"])
    _one_line_exit_2(res, "never unpickles")
    assert not marker.exists() and not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_external_data_escaping_the_model_folder(kind: str, tmp_path: Path) -> None:
    model = onnx.load(str(tiny_model(tmp_path / "m.onnx")))
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.zeros(8 * 27, np.float32).tobytes())
    folder = tmp_path / "models"
    folder.mkdir()
    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    loc = {"dotdot": "../secret.bin", "absolute": str(secret), "symlink": "link.bin"}[kind]
    if kind == "symlink":
        os.symlink(secret, folder / "link.bin")
    w.external_data.add(key="location", value=loc)
    onnx.save(model, str(folder / "m.onnx"))
    res = CliRunner().invoke(cli, ["inspect", str(folder / "m.onnx")])
    _one_line_exit_2(res, "outside the model's folder" if kind != "symlink" else "is a link that leaves")


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"", "is empty"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "Git LFS pointer"),
        (b"this is a text file, not a model\n" * 10, "not a readable ONNX model"),
    ],
    ids=["empty", "lfs-pointer", "text"],
)
def test_not_a_model(content: bytes, needle: str, tmp_path: Path) -> None:
    p = tmp_path / "m.onnx"
    p.write_bytes(content)
    _one_line_exit_2(_export_onnx(p, tmp_path / "o.onnx"), needle)
    assert not (tmp_path / "o.onnx").exists()


def test_absurd_dimension_and_cycle(tmp_path: Path) -> None:
    m = onnx.load(str(tiny_model(tmp_path / "m.onnx")))
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 10**12
    onnx.save(m, str(tmp_path / "huge.onnx"))
    _one_line_exit_2(CliRunner().invoke(cli, ["inspect", str(tmp_path / "huge.onnx")]), "impossible dimension")
    m = onnx.load(str(tmp_path / "m.onnx"))
    m.graph.node[0].input[0] = "y"  # conv reads relu's output: a cycle
    onnx.save(m, str(tmp_path / "cycle.onnx"))
    _one_line_exit_2(CliRunner().invoke(cli, ["inspect", str(tmp_path / "cycle.onnx")]), "fails the ONNX checker")


def test_unreadable_image_and_mixed_sizes(tmp_path: Path) -> None:
    from edgekit.export import ExportOptions, export_model

    model = tmp_path / "m.onnx"
    export_model("zoo:mnist_cnn", model, options=ExportOptions())
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    from PIL import Image

    Image.new("L", (28, 28), 128).save(imgs / "a.png")
    Image.new("L", (30, 28), 128).save(imgs / "b.png")
    res = CliRunner().invoke(cli, ["quantize", str(model), "-o", str(tmp_path / "q.onnx"), "--calib", str(imgs), "--channels", "GRAY", "--no-cache", "--scale", "0.0039"])
    assert res.exit_code == 2
    (imgs / "b.png").unlink()
    (imgs / "c.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    res = CliRunner().invoke(cli, ["quantize", str(model), "-o", str(tmp_path / "q.onnx"), "--calib", str(imgs), "--channels", "GRAY", "--crop", "28", "--no-cache"])
    _one_line_exit_2(res, "cannot read image")
    assert "c.png" in res.stderr and not (tmp_path / "q.onnx").exists()


def test_killed_mid_run_leaves_the_previous_output_intact(tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    previous = tiny_model(out).read_bytes()
    env = {**os.environ, "PYTHONPATH": str(Path(zoo.__file__).parent)}
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "export", "zoo:minilm", "-o", str(out), "--dynamic-batch"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(8)  # well inside loading/tracing/exporting MiniLM
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert out.read_bytes() == previous


def test_two_runs_writing_one_output_do_not_corrupt_it(tmp_path: Path) -> None:
    a, b = tiny_model(tmp_path / "a.onnx", dim=4), tiny_model(tmp_path / "b.onnx", dim=6)
    out = tmp_path / "out.onnx"
    procs = [subprocess.Popen([sys.executable, "-m", "edgekit", "export", str(src), "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for src in (a, b, a, b)]
    assert all(p.wait() == 0 for p in procs)
    final = onnx.load(str(out))
    onnx.checker.check_model(final)
    assert final.graph.input[0].type.tensor_type.shape.dim[2].dim_value in (4, 6)
    assert not list(tmp_path.glob(".out.onnx.*"))


def test_full_disk_is_a_clear_error(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root and mount rights)")
    try:
        src = tiny_model(tmp_path / "m.onnx", dim=4)
        big = onnx.load(str(src))
        big.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w"))
        big.graph.initializer.append(numpy_helper.from_array(np.ones(200_000, np.float32), "pad"))
        onnx.save(big, str(tmp_path / "big.onnx"))
        res = CliRunner().invoke(cli, ["export", str(tmp_path / "big.onnx"), "-o", str(mnt / "o.onnx")])
        _one_line_exit_2(res, "no space left")
        assert not list(mnt.iterdir())
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.mark.requires_openvino
def test_op_the_backend_does_not_support(tmp_path: Path) -> None:
    """silero-vad's shipped silero_vad.onnx has an If node that OpenVINO rejects."""
    src = zoo.package_dir("silero_vad") / "data" / "silero_vad.onnx"
    res = CliRunner().invoke(cli, ["compile", str(src), "--target", "openvino", "-o", str(tmp_path / "ov")])
    assert res.exit_code == 2, res.output
    assert "OpenVINO cannot" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ov").exists()


def test_dynamic_shape_without_a_profile_for_tensorrt(tmp_path: Path) -> None:
    from edgekit.backends.base import CompileRequest
    from edgekit.backends.tensorrt import BACKEND, TensorRtOptions
    from edgekit.errors import UsageError

    m = onnx.load(str(tiny_model(tmp_path / "m.onnx")))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    with pytest.raises(UsageError, match="no optimisation profile"):
        BACKEND.validate(m, CompileRequest(precision="fp32", device="GPU", options=TensorRtOptions()))
    ok = BACKEND.validate(m, CompileRequest(precision="fp32", device="GPU", options=TensorRtOptions(profiles={"x": [[1, 3, 4, 4], [2, 3, 4, 4], [8, 3, 4, 4]]})))
    assert ok["x"][2] == [8, 3, 4, 4]


def test_outputs_get_the_modes_of_any_new_file(tmp_path: Path) -> None:
    """Atomic writes go through mkstemp/mkdtemp (0600/0700); outputs must not stay private to the user
    that made them (a device service running as another user reads the compile folder and the model)."""
    import stat

    from edgekit.files import atomic_dir, write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "out.txt", "x")
        with atomic_dir(tmp_path / "folder") as d:
            (d / "f").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755
