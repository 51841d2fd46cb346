"""The TensorRT backend: everything that runs without a GPU here, and the GPU parts as `requires_tensorrt`.

The QDQ rule checker runs on small real graphs (built with onnx.helper, and run by ONNX Runtime
wherever the graph is valid ONNX, so each one is a model a user could bring).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.backends.tensorrt_check import check_explicit_quantization

ROOT = Path(__file__).parents[1]
RNG = np.random.default_rng(0)


def _conv_qdq(*, opset: int = 13, w_shape: tuple[int, ...] = (4, 3, 3, 3), w_scales: int = 4, axis: int | None = 0,
              zp_nodes: list[onnx.NodeProto] | None = None, zp_name: str = "zp", scale_node: onnx.NodeProto | None = None,
              w_dtype: int = TensorProto.INT8) -> onnx.ModelProto:
    """x -> Q -> DQ -> Conv(DQ(int8 weight, per-channel)) -> y: the form `edgekit quantize --target tensorrt` writes."""
    w = RNG.integers(-127, 128, size=w_shape).astype(np.int8 if w_dtype == TensorProto.INT8 else np.uint8)
    inits = [numpy_helper.from_array(w, "w_q"),
             numpy_helper.from_array(np.full(w_scales, 0.01, np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(w_scales, w.dtype), "w_zp")]
    nodes = list(zp_nodes or [])
    if zp_nodes is None:
        inits.append(numpy_helper.from_array(np.array(0, np.int8), "zp"))
    if scale_node is None:
        inits.append(numpy_helper.from_array(np.array(0.02, np.float32), "scale"))
    else:
        nodes.append(scale_node)
    axis_kw = {} if axis is None else {"axis": axis}
    nodes += [
        helper.make_node("QuantizeLinear", ["x", "scale", zp_name], ["xq"], name="q_x"),
        helper.make_node("DequantizeLinear", ["xq", "scale", zp_name], ["xd"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="dq_w", **axis_kw),
        helper.make_node("Conv", ["xd", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    cin = w_shape[1]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, w_shape[0], 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _runs_in_onnxruntime(model: onnx.ModelProto) -> np.ndarray:
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return sess.run(None, {"x": RNG.standard_normal(shape).astype(np.float32)})[0]


def test_symmetric_int8_per_channel_conv_passes() -> None:
    m = _conv_qdq()
    _runs_in_onnxruntime(m)
    assert check_explicit_quantization(m) == []


def test_per_channel_on_the_input_channel_axis_is_named() -> None:
    m = _conv_qdq(w_shape=(4, 4, 3, 3), axis=1)  # counts match, but axis 1 is Conv's input channel
    _runs_in_onnxruntime(m)
    problems = check_explicit_quantization(m)
    assert len(problems) == 1 and "dq_w" in problems[0] and "output channel (axis 0)" in problems[0]


def test_scale_count_must_equal_the_channel_count() -> None:
    problems = check_explicit_quantization(_conv_qdq(w_scales=3))  # 4 output channels, 3 scales
    assert any("3 scales for 4 channels on axis 0" in p for p in problems)


def test_per_channel_without_an_axis_attribute_is_named() -> None:
    # ONNX reads axis 1, TensorRT's parser axis 0: the same file would compute two different things
    m = _conv_qdq(w_shape=(4, 4, 3, 3), axis=None)
    _runs_in_onnxruntime(m)
    assert any("without an axis attribute" in p for p in check_explicit_quantization(m))


def test_zero_point_through_constant_cast_is_accepted() -> None:
    zp = [helper.make_node("Constant", [], ["zp32"], value=numpy_helper.from_array(np.array(0, np.int32))),
          helper.make_node("Cast", ["zp32"], ["zp8"], to=TensorProto.INT8)]
    m = _conv_qdq(zp_nodes=zp, zp_name="zp8")
    _runs_in_onnxruntime(m)
    assert check_explicit_quantization(m) == []
    # the same chain ending in uint8 is still UINT8 quantization
    zp_u8 = [zp[0], helper.make_node("Cast", ["zp32"], ["zp8"], to=TensorProto.UINT8)]
    assert any("uint8" in p for p in check_explicit_quantization(_conv_qdq(zp_nodes=zp_u8, zp_name="zp8")))


def test_zero_point_computed_at_run_time_is_named() -> None:
    zp = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("ReduceMin", ["s"], ["m"], keepdims=0),
          helper.make_node("Sub", ["m", "m"], ["z64"]), helper.make_node("Cast", ["z64"], ["zrt"], to=TensorProto.INT8)]
    m = _conv_qdq(zp_nodes=zp, zp_name="zrt")
    _runs_in_onnxruntime(m)
    assert any("zero point is computed at run time" in p for p in check_explicit_quantization(m))


def test_constant_with_value_float_scale_does_not_crash() -> None:
    m = _conv_qdq(scale_node=helper.make_node("Constant", [], ["scale"], value_float=0.02))
    _runs_in_onnxruntime(m)
    assert check_explicit_quantization(m) == []
    bad = _conv_qdq(scale_node=helper.make_node("Constant", [], ["scale"], value_float=-0.02))
    assert any("non-positive scale" in p for p in check_explicit_quantization(bad))


def _q_only(opset: int, **attrs: int) -> onnx.ModelProto:
    """x -> Q (no zero point) -> DQ: opset 21 says the type with output_dtype."""
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s"], ["q"], name="q", **attrs),
             helper.make_node("DequantizeLinear", ["q", "s"], ["y"], name="dq")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_opset21_output_dtype_is_read() -> None:
    int8 = _q_only(21, output_dtype=TensorProto.INT8)
    y = _runs_in_onnxruntime(int8)
    assert y.min() < 0  # signed: negative inputs survive, as in TensorRT
    assert check_explicit_quantization(int8) == []
    u8 = _q_only(21, output_dtype=TensorProto.UINT8)
    _runs_in_onnxruntime(u8)
    assert any("uint8 quantization" in p for p in check_explicit_quantization(u8))
    # no zero point and no output_dtype: ONNX's default is UINT8 but TensorRT's is INT8
    default = _q_only(13)
    assert _runs_in_onnxruntime(default).min() >= 0
    assert any("ONNX quantizes to UINT8 here while TensorRT quantizes to INT8" in p for p in check_explicit_quantization(default))


def test_per_channel_needs_opset_13_and_a_weight() -> None:
    assert any("opset >= 13" in p for p in check_explicit_quantization(_conv_qdq(opset=11, axis=0)))
    # a per-channel scale on an activation (x has 3 channels on axis 1)
    m = _conv_qdq()
    for t in m.graph.initializer:
        if t.name in ("scale", "zp"):
            arr = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array(np.full(3, arr, arr.dtype), t.name))
    for n in m.graph.node:
        if n.name in ("q_x", "dq_x"):
            n.attribute.append(helper.make_attribute("axis", 1))
    _runs_in_onnxruntime(m)
    assert any("per-channel scale on an activation" in p for p in check_explicit_quantization(m))


def test_matmul_weights_are_per_output_column() -> None:
    def mm(axis: int) -> onnx.ModelProto:
        inits = [numpy_helper.from_array(RNG.integers(-127, 128, (6, 6)).astype(np.int8), "w_q"),
                 numpy_helper.from_array(np.full(6, 0.01, np.float32), "ws"), numpy_helper.from_array(np.zeros(6, np.int8), "wz")]
        nodes = [helper.make_node("DequantizeLinear", ["w_q", "ws", "wz"], ["w"], name="dq_w", axis=axis),
                 helper.make_node("MatMul", ["x", "w"], ["y"])]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6])], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])

    assert check_explicit_quantization(mm(1)) == []
    assert any("output channel (axis 1)" in p for p in check_explicit_quantization(mm(0)))


# --- placement: TensorRT's residual-Add rule -------------------------------------------------------------------

def _residual_block(downsample: bool) -> onnx.ModelProto:
    """QDQ as ONNX Runtime's quantizer writes it for y = conv2(relu(conv1(x))) + (convd(x) if downsample else x)."""
    c = 4
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq_x")]

    def conv(name: str, src: str) -> str:
        inits.extend([numpy_helper.from_array(RNG.integers(-127, 128, (c, c, 3, 3)).astype(np.int8), f"{name}_w"),
                      numpy_helper.from_array(np.full(c, 0.0005, np.float32), f"{name}_ws"),  # outputs stay in range
                      numpy_helper.from_array(np.zeros(c, np.int8), f"{name}_wz")])
        nodes.extend([helper.make_node("DequantizeLinear", [f"{name}_w", f"{name}_ws", f"{name}_wz"], [f"{name}_wd"], name=f"dq_{name}_w", axis=0),
                      helper.make_node("Conv", [src, f"{name}_wd"], [f"{name}_y"], name=name, pads=[1, 1, 1, 1])])
        return f"{name}_y"

    def qdq(t: str) -> str:
        nodes.extend([helper.make_node("QuantizeLinear", [t, "s", "z"], [t + "_q"], name="q_" + t),
                      helper.make_node("DequantizeLinear", [t + "_q", "s", "z"], [t + "_d"], name="dq_" + t)])
        return t + "_d"

    h = conv("conv1", "xd")
    nodes.append(helper.make_node("Relu", [h], ["r"], name="relu"))
    main = qdq(conv("conv2", qdq("r")))
    side = qdq(conv("convd", "xd")) if downsample else "xd"
    nodes.append(helper.make_node("Add", [main, side], ["y"], name="add"))
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("downsample", [False, True], ids=["identity", "downsample"])
def test_residual_add_keeps_qdq_only_on_its_residual_input(downsample: bool) -> None:
    from edgekit.backends.tensorrt_placement import keep_residual_qdq_only

    m = _residual_block(downsample)
    x = RNG.standard_normal((1, 4, 8, 8)).astype(np.float32)
    before = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    out = keep_residual_qdq_only(m)
    onnx.checker.check_model(out, full_check=True)
    names = {n.name for n in out.graph.node}
    add = next(n for n in out.graph.node if n.op_type == "Add")
    # the fusible side (the longer path: conv2) reads the float conv output; the residual side stays INT8
    assert "q_conv2_y" not in names and "dq_conv2_y" not in names and add.input[0] == "conv2_y"
    assert add.input[1] == ("convd_y_d" if downsample else "xd")
    after = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    # one rounding step fewer: the result moves by at most one quantization step of the removed pair
    assert np.max(np.abs(after - before)) <= 0.02 / 2 + 1e-6 and check_explicit_quantization(out) == []


# --- what each TensorRT version has (decided without TensorRT) ------------------------------------------------

def _request(precision: str = "int8", **options: object):  # noqa: ANN202
    from edgekit.backends.base import CompileRequest
    from edgekit.backends.tensorrt import TensorRtOptions

    return CompileRequest(precision=precision, device="GPU", options=TensorRtOptions(**options))


@pytest.mark.parametrize("version,ok", [((10, 0, 1), False), ((10, 8, 0), False), ((10, 9, 0), True), ((11, 1, 0), True)])
def test_same_compute_capability_needs_10_9(version: tuple[int, ...], ok: bool) -> None:
    from edgekit.backends.tensorrt import TensorRtBackend
    from edgekit.errors import BackendUnavailable

    req = _request(hardware_compatibility="same_compute_capability")
    if ok:
        TensorRtBackend.check_version(version, req)
    else:
        with pytest.raises(BackendUnavailable, match="needs TensorRT 10.9 or later") as exc:
            TensorRtBackend.check_version(version, req)
        assert exc.value.exit_code == 4
    TensorRtBackend.check_version(version, _request(hardware_compatibility="ampere_plus"))  # AMPERE_PLUS: every 10.x/11.x


@pytest.mark.parametrize("version,ok", [((10, 3, 0), True), ((10, 7, 0), True), ((10, 8, 0), False), ((10, 16, 0), False),
                                        ((11, 3, 0), False), ((11, 4, 0), False), ((11, 4, 1), True)])
def test_dla_is_gated_by_version(version: tuple[int, ...], ok: bool) -> None:
    from edgekit.backends.tensorrt import TensorRtBackend
    from edgekit.errors import BackendUnavailable

    req = _request(dla_core=0)
    if ok:
        TensorRtBackend.check_version(version, req)
    else:
        with pytest.raises(BackendUnavailable, match="10.7 was the last 10.x release with DLA"):
            TensorRtBackend.check_version(version, req)


def test_dla_fp32_and_version_strings() -> None:
    from edgekit.backends.tensorrt import BACKEND
    from edgekit.backends.tensorrt_compat import parse_version
    from edgekit.errors import UsageError

    m = _conv_qdq()
    with pytest.raises(UsageError, match="DLA core runs fp16 or int8"):
        BACKEND.validate(onnx.load_from_string(_float_conv().SerializeToString()), _request("fp32", dla_core=0))
    assert BACKEND.validate(m, _request("int8")) == {}
    assert parse_version("10.3.0.30") == (10, 3, 0, 30) and parse_version("11.4.1b2") == (11, 4, 1)


def _float_conv() -> onnx.ModelProto:
    inits = [numpy_helper.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")]
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_timing_cache_path_never_lands_in_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.backends.tensorrt_compat import timing_cache_path

    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    assert timing_cache_path("trt-desktop.cache") == tmp_path / "cache" / "tensorrt" / "trt-desktop.cache"
    assert timing_cache_path(str(tmp_path / "mine.cache")) == tmp_path / "mine.cache"
    assert timing_cache_path("") is None


def test_feeds_cast_only_without_loss() -> None:
    from edgekit.backends.tensorrt import feed_for
    from edgekit.errors import UsageError

    assert feed_for("x", np.ones((2, 3), np.float64), np.dtype(np.float32)).dtype == np.float32
    assert feed_for("ids", np.array([[101, 2023]], np.int64), np.dtype(np.int32)).dtype == np.int32
    with pytest.raises(UsageError, match="int64; this engine takes int32"):
        feed_for("ids", np.array([2**40], np.int64), np.dtype(np.int32))
    with pytest.raises(UsageError, match="float32; this engine takes int32"):
        feed_for("ids", np.ones(3, np.float32), np.dtype(np.int32))


def test_fp16_without_modelopt_is_exit_4_naming_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.backends.tensorrt_build import fp16_onnx
    from edgekit.errors import BackendUnavailable

    monkeypatch.setitem(__import__("sys").modules, "modelopt", None)  # as on a machine without ModelOpt
    src = tmp_path / "m.onnx"
    onnx.save(_float_conv(), str(src))
    with pytest.raises(BackendUnavailable, match=r"edgekit\[tensorrt-fp16\]") as exc:
        fp16_onnx(src, tmp_path / "m16.onnx")
    assert exc.value.exit_code == 4 and not (tmp_path / "m16.onnx").exists()


# --- a real model: EfficientNet-Lite0 quantized for TensorRT, and the first-GPU script's dry run -------------------

@pytest.fixture(scope="module")
def tensorrt_qdq(efficientnet_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from click.testing import CliRunner

    from edgekit.cli import cli

    d = tmp_path_factory.mktemp("trt-qdq")
    out, js = d / "q.onnx", d / "q.json"
    res = CliRunner().invoke(cli, ["quantize", str(efficientnet_onnx), "-o", str(out), "--json", str(js), "--calib",
                                   str(ROOT / "calibration" / "imagenet-photos.toml"), "--target", "tensorrt",
                                   "--eval", str(ROOT / "calibration" / "imagenet-val-foolbox.toml"), "--samples", "8"])
    assert res.exit_code == 0, res.output
    return out, json.loads(js.read_text())


def test_tensorrt_recipe_meets_the_rules_and_places_qdq_where_tensorrt_fuses(tensorrt_qdq: tuple[Path, dict], efficientnet_onnx: Path,
                                                                              tmp_path: Path) -> None:
    out, report = tensorrt_qdq
    m = onnx.load(str(out))
    assert check_explicit_quantization(m) == []
    assert report["accuracy"]["top1_drop_points"] <= 5.0  # exact QDQ arithmetic: at most one of 20 images
    producer = {o: n.op_type for n in m.graph.node for o in n.output}
    adds = [n for n in m.graph.node if n.op_type == "Add" and all(producer.get(i) for i in n.input)]
    assert len(adds) == 9  # EfficientNet-Lite0's residual blocks
    # TensorRT fuses the Add into the projection Conv: only the residual input arrives through Q/DQ
    assert all(sum(producer[i] == "DequantizeLinear" for i in n.input) == 1 for n in adds)
    # nothing quantizes an op's output for its own sake: every Q feeds a DQ that feeds a weighted op, pooling or an Add
    consumers = {i: n.op_type for n in m.graph.node for i in n.input}
    qs = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    dq_of = {n.input[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear"}
    assert {consumers[dq_of[q.output[0]].output[0]] for q in qs} <= {"Conv", "Gemm", "Add", "MaxPool", "AveragePool", "GlobalAveragePool"}
    # the ONNX Runtime recipe (U8, asymmetric) is not what TensorRT takes, and the checker says why
    from click.testing import CliRunner

    from edgekit.cli import cli

    u8 = tmp_path / "u8.onnx"
    res = CliRunner().invoke(cli, ["quantize", str(efficientnet_onnx), "-o", str(u8), "--calib", str(ROOT / "calibration" / "imagenet-photos.toml"),
                                   "--target", "onnxruntime", "--samples", "4"])
    assert res.exit_code == 0, res.output
    assert any("uint8 quantization; TensorRT needs signed INT8" in p for p in check_explicit_quantization(onnx.load(str(u8))))


def test_gpu_check_dry_run(tensorrt_qdq: tuple[Path, dict], efficientnet_onnx: Path, tmp_path: Path) -> None:
    """bench/gpu_check.sh --dry-run: every GPU command line parses and stops at TensorRT with exit 4 (or at the
    engine folder an earlier GPU step would have built); the summary JSON lists every step."""
    res = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--skip-collect", "--model", str(efficientnet_onnx),
                          "--int8", str(tensorrt_qdq[0]), "--out", str(tmp_path / "check")], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHON": sys.executable})
    summary = json.loads((tmp_path / "check" / "gpu_check.json").read_text())
    assert res.returncode == 0 and summary["ok"], res.stdout + res.stderr
    steps = [s["step"] for s in summary["steps"]]
    assert len(steps) == 16 and steps[0] == "versions" and steps[-1] == "bench with a budget"
    assert all(s["rc"] in (2, 4) for s in summary["steps"] if s["gpu"] and "rc" in s)


# --- on a GPU with TensorRT (skipped elsewhere; bench/gpu_check.sh runs them first) -----------------------------

def _gpu_target(model: Path, **options: object):  # noqa: ANN202
    from edgekit.config import target_from_dict

    name = onnx.load(str(model), load_external_data=False).graph.input[0].name
    opts = {"profiles": {name: [[1, 3, 224, 224], [2, 3, 224, 224], [4, 3, 224, 224]]}, **options}
    return name, target_from_dict({"backend": "tensorrt", "precision": "fp32", "options": opts}, name="gpu-test")


@pytest.mark.requires_tensorrt
def test_timing_cache_is_saved_reused_and_survives_corruption(efficientnet_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.compile import compile_model

    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    _, target = _gpu_target(efficientnet_onnx, timing_cache="t.cache")
    states = []
    for folder in ("a", "b"):
        tc = compile_model(efficientnet_onnx, tmp_path / folder, target=target)["settings"]["timing_cache"]
        states.append((tc["state"], tc["saved"]))
    assert states == [("new", True), ("loaded", True)]
    cache = tmp_path / "cache" / "tensorrt" / "t.cache"
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2] + b"\0" * 64)
    tc = compile_model(efficientnet_onnx, tmp_path / "c", target=target)["settings"]["timing_cache"]
    assert (tmp_path / "c" / "model.engine").exists() and tc["saved"], tc


@pytest.mark.requires_tensorrt
def test_shape_outside_the_profile_is_exit_2_and_feeds_are_cast(efficientnet_onnx: Path, tmp_path: Path) -> None:
    from edgekit.compile import compile_model, open_engine
    from edgekit.errors import UsageError

    name, target = _gpu_target(efficientnet_onnx, version_compatible=True)
    compile_model(efficientnet_onnx, tmp_path / "e", target=target)
    x = RNG.standard_normal((2, 3, 224, 224))
    with open_engine(tmp_path / "e") as (engine, manifest):
        assert manifest["settings"]["version_compatible"] and manifest["settings"]["tf32"] is False
        out = engine.run({name: x})  # float64 feed: cast losslessly to the engine's float32
        assert next(iter(out.values())).shape[0] == 2
        with pytest.raises(UsageError, match=r"outside the engine's optimisation profile \(\[1, 3, 224, 224\] to \[4, 3, 224, 224\]\)") as exc:
            engine.run({name: np.zeros((8, 3, 224, 224), np.float32)})
        assert exc.value.exit_code == 2
