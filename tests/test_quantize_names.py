"""Tensor names that collide with the names ONNX Runtime's quantizer makes (#13, basic-pitch).

ONNX Runtime's QDQ quantizer names what it adds after existing tensors (`<w>_quantized`, `<x>_scale`,
`<b><n>` for each extra consumer of a shared bias) and checks only the initializers; exporters name
tensors freely (tf2onnx's basic-pitch: bias `.../conv1d_25`, a Conv output `.../conv1d_252`). These tests
give the trained MNIST CNN such names and check `edgekit quantize` writes a model that loads and keeps
its predictions, where ONNX Runtime's own `quantize_static` writes one that does not load.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import zoo
from edgekit.cli import cli
from edgekit.errors import GateFailed


def _siamese(src: Path, out: Path, rename_b: dict[str, str]) -> Path:
    """Two copies of the CNN sharing every weight and bias (a Siamese pair: inputs `input`, `input_b`);
    the second copy's tensors are `<name>_b` unless `rename_b` names them."""
    m = onnx.load(str(src))
    g = m.graph
    inits = {t.name for t in g.initializer}
    b = lambda x: x if not x or x in inits else rename_b.get(x, x + "_b")
    for n in list(g.node):
        c = g.node.add()
        c.CopyFrom(n)
        c.name = n.name + "_b"
        c.input[:] = [b(x) for x in n.input]
        c.output[:] = [b(x) for x in n.output]
    for vs in (g.input, g.output):
        for v in list(vs):
            vs.add().CopyFrom(v)
            vs[-1].name = b(v.name)
    del g.value_info[:]
    onnx.checker.check_model(m)
    onnx.save(m, str(out))
    return out


def _renamed(src: Path, out: Path, rename: dict[str, str]) -> Path:
    m = onnx.load(str(src))
    for n in m.graph.node:
        n.input[:] = [rename.get(x, x) for x in n.input]
        n.output[:] = [rename.get(x, x) for x in n.output]
    onnx.checker.check_model(m)
    onnx.save(m, str(out))
    return out


def _ort_quantize_static(model: Path, out: Path, feeds: list[dict[str, np.ndarray]]) -> str | None:
    """ONNX Runtime's quantize_static (QDQ, per channel) on `model`: None if the result loads, else the error."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    class Reader:
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    try:
        quantize_static(str(model), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
        ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    except Exception as exc:  # what a user of quantize_static meets: an invalid model or a failure inside it
        return str(exc)
    return None


def _tensor_names(m: onnx.ModelProto) -> set[str]:
    return {t.name for t in m.graph.initializer} | {i.name for i in m.graph.input} | {o for n in m.graph.node for o in n.output}


def _names_kept(fp32: Path, q: onnx.ModelProto) -> None:
    """The written model speaks the FP32 model's names: its activations (those the quantizer kept) and the
    names it derives (`<weight>_quantized`, `<x>_DequantizeLinear_Output`, ...), none of edgekit's own."""
    original = _tensor_names(onnx.load(str(fp32)))
    names = _tensor_names(q)
    assert not any("ekq~" in n for n in names)
    assert all(any(n.startswith(o) for o in original) for n in names), sorted(n for n in names if not any(n.startswith(o) for o in original))
    assert {"relu", "relu_b"} & original <= names


def _agreement(fp32: Path, int8: Path, feeds: dict[str, np.ndarray]) -> list[float]:
    a = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, feeds)
    b = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).run(None, feeds)
    return [float((x.argmax(1) == y.argmax(1)).mean()) for x, y in zip(a, b)]


def test_a_shared_bias_whose_copy_name_is_taken_quantizes_and_keeps_predictions(mnist_onnx: Path, tmp_path: Path) -> None:
    # the second copy's first Conv writes `0.bias0`: the name ONNX Runtime gives its copy of the shared bias `0.bias`
    model = _siamese(mnist_onnx, tmp_path / "siamese.onnx", {"conv2d": "0.bias0"})
    x = zoo.mnist_calibration(256)
    broken = _ort_quantize_static(model, tmp_path / "ort.onnx", [{"input": x[i:i + 1], "input_b": x[i + 1:i + 2]} for i in range(0, 64, 2)])
    assert broken is not None, "ONNX Runtime's quantizer no longer trips on this name: the test must find another collision"
    # the model ONNX Runtime wrote is what edgekit's last guard refuses, with the error ONNX Runtime gives on loading it
    from edgekit.quantize.names import check_quantized, skeleton

    with pytest.raises(GateFailed, match="node_max_pool2d_b.*at least 3 dimensions") as err:
        check_quantized(onnx.load(str(tmp_path / "ort.onnx")), skeleton(onnx.load(str(model))), "ONNX Runtime's QDQ quantizer")
    assert err.value.exit_code == 3
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=x[:128], input_b=x[128:])
    out, js = tmp_path / "q.onnx", tmp_path / "q.json"
    res = CliRunner().invoke(cli, ["quantize", str(model), "-o", str(out), "--calib", str(calib), "--json", str(js)])
    assert res.exit_code == 0, res.output
    assert json.loads(js.read_text())["check"]["passed"]
    q = onnx.load(str(out))
    assert [i.name for i in q.graph.input] == ["input", "input_b"] and [o.name for o in q.graph.output] == ["output", "output_b"]
    _names_kept(model, q)
    held = zoo.mnist_heldout()[0][:400]
    assert min(_agreement(model, out, {"input": held[:200], "input_b": held[200:]})) >= 0.98


def test_activations_named_like_generated_tensors(mnist_onnx: Path, tmp_path: Path) -> None:
    rename = {
        "view": "3.weight_quantized",  # an activation named as the second Conv's quantized weight
        "relu_1": "3.bias_quantized",  # ... as its quantized bias (ONNX Runtime writes a cycle)
        "max_pool2d": "relu_scale",  # ... as the scale of the activation before it
    }
    model = _renamed(mnist_onnx, tmp_path / "renamed.onnx", rename)
    x = zoo.mnist_calibration(160)
    assert _ort_quantize_static(model, tmp_path / "ort.onnx", [{"input": x[i:i + 1]} for i in range(16)]) is not None
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=x)
    out = tmp_path / "q.onnx"
    res = CliRunner().invoke(cli, ["quantize", str(model), "-o", str(out), "--calib", str(calib), "--no-cache", "--no-check"])
    assert res.exit_code == 0, res.output
    _names_kept(model, onnx.load(str(out)))
    assert _agreement(model, out, {"input": zoo.mnist_heldout()[0][:300]})[0] >= 0.98


@pytest.mark.requires_openvino
def test_renaming_is_invisible_when_no_name_collides(mnist_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a collision the written model is byte for byte what the quantizer makes on the original names
    (OpenVINO's recipe: regions, hoisting; bench: the same on 12 zoo models x 3 targets)."""
    from edgekit.backends import get_backend
    from edgekit.backends.base import recipe_for_target
    from edgekit.config import load_target
    from edgekit.quantize import copy_model, names, prepare_model, quantize_with_ranges

    model = prepare_model(mnist_onnx, [])
    t = load_target("openvino")
    recipe = recipe_for_target(get_backend(t.backend), model, t)
    acts = [o for n in model.graph.node for o in n.output]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend([onnx.helper.make_tensor_value_info(a, onnx.TensorProto.FLOAT, None) for a in acts if a != "output"])
    vals = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": zoo.mnist_calibration(32)})
    ranges = {o.name: (float(min(v.min(), 0)), float(max(v.max(), 0))) for o, v in zip(probe.graph.output, vals)}
    ranges["input"] = (0.0, 1.0)
    ours = quantize_with_ranges(copy_model(model), ranges, recipe, exclude=[])
    monkeypatch.setattr(names, "canonical_names", lambda m: ({n: n for n in names.tensor_names(m)}, "ekq~"))
    plain = quantize_with_ranges(copy_model(model), ranges, recipe, exclude=[])
    assert ours.SerializeToString(deterministic=True) == plain.SerializeToString(deterministic=True)
    assert any(t.name == "0.weight_quantized" for t in ours.graph.initializer)  # ONNX Runtime's usual names


def test_a_graph_that_reads_an_undefined_tensor_is_refused(mnist_onnx: Path) -> None:
    from edgekit.quantize.names import check_quantized, skeleton

    m = onnx.load(str(mnist_onnx))
    check_quantized(m, skeleton(m), "test")
    m.graph.node[1].input[0] = "nowhere"
    with pytest.raises(GateFailed, match="'nowhere' is read but never defined"):
        check_quantized(m, skeleton(m), "test")


def test_qdq_hoisted_over_a_transpose_keeps_the_graph_output_layout(mnist_onnx: Path, tmp_path: Path) -> None:
    """OpenVINO's recipe moves a Q/DQ pair above a Transpose; when the Transpose writes a graph output (an NHWC
    feature map beside the logits), the output must stay the Transpose's (was: the DQ's, NCHW, silently)."""
    from onnx import TensorProto, helper

    m = onnx.load(str(mnist_onnx))
    m.graph.node.append(helper.make_node("Transpose", ["max_pool2d_1"], ["features"], name="to_nhwc", perm=[0, 2, 3, 1]))
    m.graph.output.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 7, 7, 32]))
    model = tmp_path / "nhwc.onnx"
    onnx.save(m, str(model))
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=zoo.mnist_calibration(160))
    out = tmp_path / "q.onnx"
    res = CliRunner().invoke(cli, ["quantize", str(model), "-o", str(out), "--calib", str(calib), "--target", "openvino", "--no-cache", "--no-check"])
    assert res.exit_code == 0, res.output
    q = onnx.load(str(out))
    moved = [n for n in q.graph.node if n.op_type == "Transpose"]
    assert [p.op_type for p in q.graph.node if p.output[0] == moved[0].input[0]] == ["DequantizeLinear"]  # the pair did move
    feed = {"input": zoo.mnist_heldout()[0][:100]}
    fp = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(["features"], feed)[0]
    i8 = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["features"], feed)[0]
    assert i8.shape == fp.shape == (100, 7, 7, 32)
    a, b = fp.reshape(100, -1), i8.reshape(100, -1)
    assert ((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min() > 0.99
