"""Cross-layer equalization and bias correction (edgekit.quantize.equalize) on real trained models and real data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import zoo
from onnx import numpy_helper

from edgekit.backends.onnxruntime import session_from_bytes
from edgekit.quantize.equalize import bias_correct, equalize


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return session_from_bytes(model.SerializeToString()).run(None, {model.graph.input[0].name: x})[0]


def _prepared(path: Path) -> onnx.ModelProto:
    from edgekit.quantize import prepare_model

    return prepare_model(path, [])


def _assert_same_function(before: onnx.ModelProto, after: onnx.ModelProto, x: np.ndarray) -> None:
    a, b = _run(before, x), _run(after, x)
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(np.abs(a).max()))
    assert [(n.name, n.op_type) for n in after.graph.node] == [(n.name, n.op_type) for n in before.graph.node]
    assert [i.name for i in after.graph.input] == [i.name for i in before.graph.input]
    assert [o.name for o in after.graph.output] == [o.name for o in before.graph.output]


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}


def _quantized(model: onnx.ModelProto, calib: np.ndarray, target: str = "onnxruntime") -> onnx.ModelProto:
    """All-INT8 as quantize's check builds it: ranges from the calibration data, the target's recipe."""
    from edgekit.backends import get_backend
    from edgekit.backends.base import recipe_for_target
    from edgekit.quantize.calibstats import tensor_range
    from edgekit.config import load_target
    from edgekit.quantize import collect_stats, copy_model, quantize_with_ranges

    t = load_target(target)
    recipe = recipe_for_target(get_backend(t.backend), model, t)
    stats, _ = collect_stats(model, _ArraySet(model, calib), limit=None, histograms=recipe.method != "minmax")
    ranges = {k: tensor_range(st, recipe.method, symmetric=recipe.activation_symmetric) for k, st in stats.items()}
    return quantize_with_ranges(copy_model(model), ranges, recipe, exclude=[])


class _ArraySet:
    """Calibration feeds from an array (batches of 32), as collect_stats reads a CalibrationSet."""

    def __init__(self, model: onnx.ModelProto, x: np.ndarray) -> None:
        self.name, self.x = model.graph.input[0].name, x
        self.count = (len(x) + 31) // 32

    def feeds(self, _specs: object = None):
        return ({self.name: self.x[i:i + 32]} for i in range(0, len(self.x), 32))


@pytest.fixture(scope="module")
def dwsep(artifacts: Path) -> onnx.ModelProto:
    """A depthwise-separable CNN with BatchNorm + ReLU, trained on real digits, as quantize prepares it (BN folded)."""
    from edgekit.export import ExportOptions, export_model

    out = artifacts / "dwsep_digits.onnx"
    if not out.exists():
        export_model("zoo:dwsep_digits", out, options=ExportOptions(dynamic_batch=True, exporter="torchscript"))
    return _prepared(out)


def test_equalize_mnist_relu_maxpool_flatten_and_gemm(mnist_onnx: Path) -> None:
    model = _prepared(mnist_onnx)
    snapshot = model.SerializeToString()
    eq, info = equalize(model)
    assert model.SerializeToString() == snapshot  # the input is never changed
    # conv -> Relu -> MaxPool -> conv, conv -> Relu -> MaxPool -> flatten -> linear, linear -> Relu -> linear
    assert info["sites"] == 3, info
    json.dumps(info)  # the report carries it as is
    assert [p["between"][-1] for p in info["pairs"]] == ["MaxPool", "Reshape", "Relu"]
    assert info["precision_after"] > info["precision_before"]
    _assert_same_function(model, eq, zoo.mnist_heldout()[0][:200])
    assert eq.graph.node[0].name and any(not np.array_equal(a, _weights(model)[k]) for k, a in _weights(eq).items())


def test_equalize_depthwise_separable(dwsep: onnx.ModelProto) -> None:
    assert not any(n.op_type == "BatchNormalization" for n in dwsep.graph.node)
    eq, info = equalize(dwsep)
    # stem conv -> dw -> pw -> dw -> pw through ReLU (depthwise as second and as first layer), and the last
    # pw -> ReLU -> global average pool (ReduceMean) -> flatten -> linear classifier
    assert info["sites"] == 5, info
    layers = {n.name: n for n in eq.graph.node}
    groups = {n.name: next((a.i for a in n.attribute if a.name == "group"), 1) for n in dwsep.graph.node if n.op_type == "Conv"}
    assert [groups.get(p["second"], 0) > 1 for p in info["pairs"]] == [True, False, True, False, False]
    assert info["pairs"][-1]["between"] == ["Relu", "GlobalAveragePool", "Flatten"] and layers[info["pairs"][-1]["second"]].op_type == "Gemm"
    _assert_same_function(dwsep, eq, zoo.digits()[0][1500:, None])
    # after the sweeps, each pair's per-channel ranges agree: L1's output channel i == L2's input channel i
    w = _weights(eq)
    for p in info["pairs"][:4]:
        w1, w2 = w[layers[p["first"]].input[1]], w[layers[p["second"]].input[1]]
        r1 = np.abs(w1).reshape(w1.shape[0], -1).max(1)
        r2 = np.abs(w2).max(axis=(1, 2, 3)) if groups[p["second"]] > 1 else np.abs(w2).max(axis=(0, 2, 3))
        np.testing.assert_allclose(r1, r2, rtol=0.02)
    assert info["precision_after"] > info["precision_before"] + 0.1


def test_equalize_clip_as_relu_passes_relu6_does_not(dwsep: onnx.ModelProto) -> None:
    """Clip(0, inf) is ReLU written another way (positive-homogeneous); Clip(0, 6) is not: its pair is skipped."""
    model = onnx.ModelProto()
    model.CopyFrom(dwsep)
    relus = [n for n in model.graph.node if n.op_type == "Relu"]
    model.graph.initializer.extend([numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("zero", 0.0), ("six", 6.0))])
    relus[0].op_type, relus[0].input[:] = "Clip", [relus[0].input[0], "zero"]
    relus[1].op_type, relus[1].input[:] = "Clip", [relus[1].input[0], "zero", "six"]
    eq, info = equalize(model)
    assert info["sites"] == 4 and info["skipped"] == {"non-homogeneous Clip": 1}, info
    assert info["pairs"][0]["between"] == ["Clip"]
    _assert_same_function(model, eq, zoo.digits()[0][1500:, None])


def test_equalize_skips_relu6_and_keeps_it(efficientnet_onnx: Path) -> None:
    from edgekit.examples.efficientnet import RECIPE

    model = _prepared(efficientnet_onnx)
    eq, info = equalize(model)
    # EfficientNet-Lite's conv -> ReLU6 -> conv pairs are skipped (ReLU6 is not homogeneous), and said so;
    # the linear bottlenecks' projection -> next expansion (no activation, no residual) are equalized
    assert info["skipped"].get("non-homogeneous Clip", 0) >= 20, info
    assert info["sites"] >= 1 and all(p["between"] == [] for p in info["pairs"])
    x = np.concatenate([RECIPE.apply(f) for f, _ in zoo.foolbox_images()[:4]])
    _assert_same_function(model, eq, x)


def test_bias_correct_mnist(mnist_onnx: Path) -> None:
    model = _prepared(mnist_onnx)
    calib, (held, _) = zoo.mnist_calibration(256), zoo.mnist_heldout()
    q0 = _quantized(model, calib)
    snapshot = model.SerializeToString()
    bc, info = bias_correct(model, q0, lambda: ({model.graph.input[0].name: calib[i:i + 32]} for i in range(0, 256, 32)))
    assert model.SerializeToString() == snapshot
    assert info["sites"] == 4 and info["feeds"] == 8, info  # 2 Conv + 2 Gemm, one pass over 8 batches
    assert info["correction_abs_max"] > 0 and info["convs_with_padding_exact"] == 2
    json.dumps(info)
    # only biases changed
    before, after = _weights(model), _weights(bc)
    biases = {n.input[2] for n in bc.graph.node if n.op_type in ("Conv", "Gemm")}
    assert set(before) == set(after)
    assert all(np.array_equal(before[k], after[k]) for k in before if k not in biases)
    assert all(not np.array_equal(before[k], after[k]) for k in biases)
    assert [(n.name, list(n.input)) for n in bc.graph.node] == [(n.name, list(n.input)) for n in model.graph.node]
    # all-INT8 from the corrected float model: its mean output error against FP32 is not worse on held-out digits
    ref = _run(model, held)
    err0 = np.abs((_run(q0, held) - ref).mean(0)).mean()
    err1 = np.abs((_run(_quantized(bc, calib), held) - ref).mean(0)).mean()
    assert err1 <= err0, (err0, err1)


def test_bias_correct_creates_a_bias_for_depthwise(dwsep: onnx.ModelProto) -> None:
    """Depthwise convolutions (few taps per channel) carry the largest weight-quantization bias; a Conv without
    a bias gets one named edgekit_*."""
    nobias = onnx.ModelProto()
    nobias.CopyFrom(dwsep)
    dw = next(n for n in nobias.graph.node if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute))
    bias = numpy_helper.to_array(next(t for t in nobias.graph.initializer if t.name == dw.input[2]))
    del dw.input[2]  # the trained network minus one depthwise bias (BN folding gave every Conv one)
    index = list(nobias.graph.node).index(dw)
    for n in nobias.graph.node:  # as other tools write them: no node names (the QDQ model is matched by output)
        n.name = ""
    x = zoo.digits()[0]
    calib = x[:256, None]
    q0 = _quantized(nobias, calib)
    bc, info = bias_correct(nobias, q0, lambda: iter([{nobias.graph.input[0].name: calib}]))
    assert info["sites"] == 6, info  # 5 Conv + Gemm
    assert len(dw.input) == 2 and bias.size
    assert not any(n.name for n in bc.graph.node)
    new = bc.graph.node[index]
    assert new.input[2].startswith("edgekit_bias_")
    created = numpy_helper.to_array(next(t for t in bc.graph.initializer if t.name == new.input[2]))
    assert created.shape == (bias.size,) and np.abs(created).max() > 0


def test_nothing_applies_to_a_model_without_layers() -> None:
    """A graph of Relu/Sigmoid/Add only (run on real digits): no site, an unchanged copy."""
    h = onnx.helper
    g = h.make_graph([h.make_node("Relu", ["x"], ["r"], name="relu"), h.make_node("Sigmoid", ["r"], ["s"], name="sig"),
                      h.make_node("Add", ["s", "x"], ["y"], name="add")], "plain",
                     [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 1, 8, 8])],
                     [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 1, 8, 8])])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    x = zoo.digits()[0][:16, None]
    eq, info = equalize(model)
    assert info["sites"] == 0 and eq.SerializeToString() == model.SerializeToString()
    bc, info = bias_correct(model, model, lambda: iter([{"x": x}]))
    assert info["sites"] == 0 and bc.SerializeToString() == model.SerializeToString()
