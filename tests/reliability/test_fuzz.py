"""Fuzzing: mutated ONNX files and calibration arrays either work or exit 2, never crash or hang."""
from __future__ import annotations


import numpy as np
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile_inputs import tiny_model

from edgekit.cli import cli

# derandomized: the same cases every run, so the suite cannot go red by a new draw (a new case is found by
# running it locally with derandomize=False; the case the loaded run 3 found is a test of its own below);
# no deadline: a per-example time limit is a timing test, and a busy machine would fail it by chance
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(data=st.data())
def test_mutated_onnx_bytes(tmp_path_factory, data) -> None:  # noqa: ANN001
    d = tmp_path_factory.mktemp("fz")
    raw = bytearray(tiny_model(d / "m.onnx").read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        i = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del raw[i:i + data.draw(st.integers(1, 64))]
        else:
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=16))
    p = d / "fuzz.onnx"
    p.write_bytes(bytes(raw))
    for args in (["inspect", str(p)], ["export", str(p), "-o", str(d / "o.onnx")]):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code in (0, 2), (args[0], res.exit_code, repr(res.exception))
        if res.exit_code == 2:
            assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.lists(st.integers(0, 6), min_size=0, max_size=5), dtype=st.sampled_from(["float32", "float64", "int64", "uint8"]),
       poison=st.sampled_from([None, np.nan, np.inf, -np.inf, 1e38]), name=st.sampled_from(["x", "y", "X"]))
def test_mutated_calibration_arrays(tmp_path_factory, shape, dtype, poison, name) -> None:  # noqa: ANN001
    d = tmp_path_factory.mktemp("fc")
    model = tiny_model(d / "m.onnx")
    arr = np.random.default_rng(0).standard_normal(shape).astype(dtype) if shape else np.array(1.0, dtype=dtype)
    if poison is not None and arr.size and arr.dtype.kind == "f":
        arr.flat[0] = poison
    np.savez(d / "calib.npz", **{name: arr})
    res = CliRunner().invoke(cli, ["quantize", str(model), "-o", str(d / "q.onnx"), "--calib", str(d / "calib.npz"), "--no-cache"])
    assert res.exit_code in (0, 2), (res.exit_code, repr(res.exception), res.output)
    if res.exit_code == 2:
        assert len(res.stderr.strip().splitlines()) == 1 and not (d / "q.onnx").exists()


def test_a_model_with_no_outputs_is_a_usage_error(tmp_path) -> None:  # noqa: ANN001
    """Found by the fuzzer above: a graph whose outputs are gone made ONNX Runtime raise (exit 1)."""
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])], [])
    p = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    for args in (["inspect", str(p)], ["export", str(p), "-o", str(tmp_path / "o.onnx")]):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 2 and "has no graph outputs" in res.output, (args[0], res.output)
