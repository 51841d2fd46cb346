"""SmoothQuant (edgekit.quantize.smoothquant) on real trained models and real sentences / digits."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import zoo
from edgekit.backends import get_backend
from edgekit.backends.base import QuantRecipe, recipe_for_target
from edgekit.backends.onnxruntime import session_from_bytes
from edgekit.data.calibration import calibration_set
from edgekit.quantize.calibstats import tensor_range
from edgekit.config import load_target
from edgekit.onnxmodel import input_specs
from edgekit.quantize import collect_stats, copy_model, prepare_model, quantize_with_ranges
from edgekit.quantize.smoothquant import outlier_ratio, smooth_quant
from edgekit.quantize.graph import name_nodes

CALIB, HELD = zoo.MINILM_SENTENCES[:8], zoo.MINILM_SENTENCES[8:]


@pytest.fixture(scope="module")
def minilm_prepared(minilm_onnx: Path) -> onnx.ModelProto:
    """MiniLM-L6 as `quantize` prepares it (ONNX Runtime's pre-processing)."""
    return prepare_model(minilm_onnx, [])


def _run(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], names: list[str] | None = None) -> list[list[np.ndarray]]:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if names:
        m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    sess = session_from_bytes(m.SerializeToString())
    return [sess.run([o.name for o in m.graph.output], f) for f in feeds]


def _channel_max(runs: list[list[np.ndarray]], k: int) -> np.ndarray:
    return np.max([np.abs(r[k]).reshape(-1, r[k].shape[-1]).max(0) for r in runs], axis=0)


def _all_int8(model: onnx.ModelProto, calib: Path, recipe: QuantRecipe) -> onnx.ModelProto:
    cset = calibration_set(str(calib), input_specs(model))
    stats, _ = collect_stats(model, cset, limit=None, histograms=False)
    ranges = {k: tensor_range(st, "minmax", symmetric=recipe.activation_symmetric) for k, st in stats.items()}
    return quantize_with_ranges(copy_model(model), ranges, recipe, exclude=[])


def _worst_cosine(reference: list[np.ndarray], q: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> float:
    got = [r[0] for r in _run(q, feeds)]
    return min(float(x.ravel() @ y.ravel() / np.linalg.norm(x) / np.linalg.norm(y)) for x, y in zip(reference, got))


def test_minilm_smoothing_keeps_the_function_flattens_outliers_and_quantizes_better(minilm_prepared: onnx.ModelProto, tmp_path: Path) -> None:
    calib, held = zoo.minilm_feeds(CALIB), zoo.minilm_feeds(HELD)
    original = minilm_prepared.SerializeToString()
    passes = []
    smoothed, info = smooth_quant(minilm_prepared, lambda: passes.append(1) or iter(calib))
    assert passes == [1] and info["samples"] == len(calib)  # one pass over the calibration data
    assert minilm_prepared.SerializeToString() == original  # the input is not touched
    json.dumps(info, allow_nan=False)
    # BERT's LayerNorm outputs also feed the residual Add: 1/s cannot fold there, a Mul goes in before the MatMuls
    assert info["sites"] > 0 and info["folded"] + info["inserted"] == info["sites"] and info["matmuls"] >= info["sites"]
    assert all(p["ratio_after"] < p["ratio_before"] for p in info["per_site"])
    named = onnx.ModelProto()
    named.CopyFrom(minilm_prepared)
    name_nodes(named)
    old, new = {n.name for n in named.graph.node}, {n.name for n in smoothed.graph.node}
    assert old <= new and all(n.startswith("edgekit_") for n in new - old) and len(new - old) == info["inserted"]
    assert [i.name for i in smoothed.graph.input] == [i.name for i in named.graph.input]
    assert [o.name for o in smoothed.graph.output] == [o.name for o in named.graph.output]
    onnx.checker.check_model(smoothed)

    # the float function is unchanged on sentences it never saw
    sites = info["per_site"]
    by_name = {n.name: n for n in smoothed.graph.node}
    inputs_now = [by_name[p["nodes"][0]].input[0] for p in sites]
    before = _run(minilm_prepared, held, [p["tensor"] for p in sites])
    after = _run(smoothed, held, inputs_now)
    for a, b in zip(before, after):
        np.testing.assert_allclose(b[0], a[0], rtol=1e-4, atol=1e-5)
    # what the smoothed MatMuls read has flatter channels, measured by running both models on held-out sentences
    for k, p in enumerate(sites, start=1):
        r0, r1 = outlier_ratio(_channel_max(before, k)), outlier_ratio(_channel_max(after, k))
        assert r1 < r0, (p["tensor"], r0, r1)

    # all INT8 as `quantize` re-quantizes a transformed model: ranges collected again on the same sentences, ONNX
    # Runtime's recipe for the original, edgekit's QDQ placement. Smoothed beats plain on the held-out sentences.
    folder = tmp_path / "calib"
    folder.mkdir()
    for i, f in enumerate(calib):
        np.savez(folder / f"{i}.npz", **f)
    recipe = recipe_for_target(get_backend("onnxruntime"), minilm_prepared, load_target("onnxruntime"))
    reference = [r[0] for r in before]  # FP32 embeddings of the held-out sentences
    plain, smooth = (_worst_cosine(reference, _all_int8(m, folder, recipe), held) for m in (minilm_prepared, smoothed))
    # measured 0.948 -> 0.963; about half of it the inserted Muls alone give (the residual Adds then read the float
    # LayerNorm outputs, not their Q/DQ): 0.956 with Muls by 1 (bench/smoothquant.py, "Mul by 1")
    assert smooth > plain + 0.005, (plain, smooth)


def _ffn_block(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """MiniLM's first LayerNorm whose output one MatMul reads (the FFN's up-projection), cut out with its trained
    weights: from the LayerNorm's input to the MatMul's output. The residual Add stays outside, so the
    LayerNorm's output has no other reader."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    inits = {t.name for t in model.graph.initializer}
    for n in model.graph.node:
        mm = [r for r in readers.get(n.output[0], []) if r.op_type == "MatMul" and r.input[1] in inits]
        if n.op_type == "LayerNormalization" and len(mm) == 1:
            return onnx.utils.Extractor(model).extract_model([n.input[0]], [mm[0].output[0]]), n.input[0]
    raise AssertionError("no LayerNorm -> one MatMul in MiniLM")


def _decompose_layernorm(model: onnx.ModelProto) -> None:
    """LayerNormalization written out as the TorchScript exporter writes it: ... Div -> Mul(gamma) -> Add(beta)."""
    (i, ln), = [(i, n) for i, n in enumerate(model.graph.node) if n.op_type == "LayerNormalization"]
    x, gamma, beta = ln.input
    eps = next(a.f for a in ln.attribute if a.name == "epsilon")
    model.graph.initializer.extend([numpy_helper.from_array(np.array([-1], np.int64), "ln_axes"),
                                    numpy_helper.from_array(np.array(eps, np.float32), "ln_eps")])
    t = [f"ln_{k}" for k in range(8)]
    nodes = [helper.make_node("ReduceMean", [x, "ln_axes"], [t[0]]), helper.make_node("Sub", [x, t[0]], [t[1]]),
             helper.make_node("Mul", [t[1], t[1]], [t[2]]), helper.make_node("ReduceMean", [t[2], "ln_axes"], [t[3]]),
             helper.make_node("Add", [t[3], "ln_eps"], [t[4]]), helper.make_node("Sqrt", [t[4]], [t[5]]),
             helper.make_node("Div", [t[1], t[5]], [t[6]]), helper.make_node("Mul", [t[6], gamma], [t[7]], name="ln_gamma"),
             helper.make_node("Add", [t[7], beta], [ln.output[0]], name="ln_beta")]
    del model.graph.node[i]
    for k, n in enumerate(nodes):
        model.graph.node.insert(i + k, n)


@pytest.mark.parametrize("form", ["LayerNormalization", "decomposed"])
def test_one_over_s_folds_into_a_layernorm_that_only_the_matmul_reads(form: str, minilm_prepared: onnx.ModelProto) -> None:
    block, x = _ffn_block(minilm_prepared)
    if form == "decomposed":
        _decompose_layernorm(block)
    feeds = [{x: r[-1]} for r in _run(minilm_prepared, zoo.minilm_feeds(CALIB[:4]), [x])]
    ops = [n.op_type for n in block.graph.node]
    smoothed, info = smooth_quant(block, lambda: iter(feeds))
    assert info["sites"] == 1 and info["folded"] == 1 and info["inserted"] == 0, info
    assert [n.op_type for n in smoothed.graph.node] == ops  # nothing added: the scale lives in gamma and beta
    site = info["per_site"][0]
    assert site["ratio_before"] >= 5 and site["ratio_after"] < site["ratio_before"] / 2, site
    ln = next(n.name for n in block.graph.node if n.op_type == "LayerNormalization") if form != "decomposed" else "ln_gamma"
    assert site["where"].startswith("folded into") and ln in site["where"] and (form != "decomposed" or "ln_beta" in site["where"]), site
    held = [{x: r[-1]} for r in _run(minilm_prepared, zoo.minilm_feeds(HELD), [x])]
    for a, b in zip(_run(block, held), _run(smoothed, held)):
        np.testing.assert_allclose(b[0], a[0], rtol=1e-4, atol=1e-4)


def test_cnn_without_outlier_channels_is_left_unchanged(mnist_onnx: Path) -> None:
    """The MNIST CNN's two Gemms read activations without outlier channels (max/median 3.3 and 2.5); its conv part has
    no MatMul at all."""
    model = onnx.load(str(mnist_onnx))
    name = model.graph.input[0].name
    x = zoo.mnist_calibration(64)
    feeds = [{name: x[i:i + 16]} for i in range(0, 64, 16)]
    out, info = smooth_quant(model, lambda: iter(feeds))
    assert info["sites"] == 0 and info["candidates"] == 2 and len(info["not_smoothed"]) == 2, info
    assert out.SerializeToString() == model.SerializeToString() and out is not model
    # below the rule's bar the transform still applies when asked: both Gemms (transB=1, trained weights), same function
    forced, info = smooth_quant(model, lambda: iter(feeds), min_ratio=1.0)
    assert info["sites"] == 2 and info["inserted"] == 2 and all(p["ratio_after"] < p["ratio_before"] for p in info["per_site"]), info
    held = {name: zoo.mnist_heldout()[0][:200]}
    (a,), (b,) = _run(model, [held]), _run(forced, [held])
    np.testing.assert_allclose(b[0], a[0], rtol=1e-4, atol=1e-4)
    flatten = next(n for n in model.graph.node if n.op_type in ("Reshape", "Flatten"))
    convs = onnx.utils.Extractor(model).extract_model([name], [flatten.input[0]])
    out, info = smooth_quant(convs, lambda: iter(feeds))
    assert info["sites"] == 0 and info["candidates"] == 0 and out.SerializeToString() == convs.SerializeToString()
