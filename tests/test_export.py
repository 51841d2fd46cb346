"""`edgekit export`: real trained models of the three families, and what bad input gets."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import zoo
from edgekit.cli import cli


def _export(tmp_path: Path, source: str, *args: str) -> tuple[object, Path, dict]:
    out = tmp_path / "m.onnx"
    js = tmp_path / "m.json"
    res = CliRunner().invoke(cli, ["export", source, "-o", str(out), "--json", str(js), *args])
    report = json.loads(js.read_text()) if js.exists() else {}
    return res, out, report


def test_mixed_conv_lstm_attention_matches_pytorch_at_batch_1_and_4(tmp_path: Path) -> None:
    res, out, report = _export(tmp_path, "zoo:mixed", "--dynamic-batch")
    assert res.exit_code == 0, res.output
    batches = sorted({p["batch"] for p in report["parity"]})
    assert batches == [1, 4]
    assert all(p["max_abs"] <= 1e-4 for p in report["parity"])
    # the file runs at both batch sizes in ONNX Runtime, on real digits
    model, _ = zoo.mixed()
    import torch

    x, _y = zoo.digits()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for b in (1, 4):
        rows = x[1500:1500 + b]
        got = sess.run(None, {"rows": rows})[0]
        with torch.no_grad():
            ref = model(torch.from_numpy(rows)).numpy()
        assert got.shape == (b, 10)
        assert np.abs(got - ref).max() <= 1e-4


def test_cnn_efficientnet_parity(efficientnet_onnx: Path) -> None:
    sess = ort.InferenceSession(str(efficientnet_onnx), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[0] == "batch"
    from edgekit.examples.efficientnet import RECIPE

    # a real photo (foolbox's ImageNet samples) is classified as labelled in most cases
    hits = 0
    images = zoo.foolbox_images()[:8]
    for path, label in images:
        hits += int(sess.run(None, {"inputs": RECIPE.apply(path)})[0].argmax() == label)
    assert hits >= 6


def test_rnn_silero_vad_parity_on_real_speech(tmp_path: Path, speech_available: None) -> None:
    res, out, report = _export(tmp_path, "zoo:silero_vad", "--dynamic-batch")
    assert res.exit_code == 0, res.output
    assert all(p["max_abs"] <= 1e-4 for p in report["parity"])
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    chunks = zoo.vad_chunks(zoo.speech_16k()[1])
    state = np.zeros((1, 2, 128), np.float32)
    probs = []
    for c in chunks:
        p, state = sess.run(None, {"audio": c[None], "state": state})
        probs.append(float(p[0, 0]))
    assert max(probs) > 0.9 and min(probs) < 0.2  # it hears speech and silence


def test_transformer_minilm_parity(tmp_path: Path) -> None:
    res, out, report = _export(tmp_path, "zoo:minilm", "--dynamic-batch")
    assert res.exit_code == 0, res.output
    assert all(p["max_abs"] <= 1e-4 for p in report["parity"])
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    s = zoo.MINILM_SENTENCES
    feeds = zoo.minilm_feeds([s[9], s[12], s[7]])  # password, same question reworded, stock market
    a, b, c = (sess.run(None, f)[0][0] for f in feeds)
    assert abs(float(a @ a) - 1) < 1e-4  # unit-norm embeddings
    assert float(a @ b) > 0.6 > 0.2 > float(a @ c)  # a paraphrase is close, an unrelated sentence is not


def test_onnx_source_is_validated_and_resaved(tmp_path: Path, efficientnet_onnx: Path) -> None:
    res, out, report = _export(tmp_path, str(efficientnet_onnx))
    assert res.exit_code == 0, res.output
    assert report["source_kind"] == "onnx"
    assert out.stat().st_size > 1_000_000


@pytest.mark.parametrize(
    "make_source, needle",
    [
        (lambda d, m: _truncated(d, m), "not a readable ONNX model"),
        (lambda d, m: str(d / "missing.onnx"), "no such file"),
        (lambda d, m: "zoo_nope.module:build", "cannot import module"),
        (lambda d, m: "zoo:no_such_builder", "has no attribute"),
    ],
    ids=["truncated", "missing", "no-module", "no-callable"],
)
def test_bad_sources_exit_2_with_one_line_and_no_output(tmp_path: Path, efficientnet_onnx: Path, make_source, needle: str) -> None:  # noqa: ANN001
    source = make_source(tmp_path, efficientnet_onnx)
    res, out, _ = _export(tmp_path, source)
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert "Traceback" not in res.output
    assert not out.exists()
    assert not list(tmp_path.glob(".m.onnx.*"))  # no temporary left behind


def _truncated(d: Path, model: Path) -> str:
    p = d / "truncated.onnx"
    p.write_bytes(model.read_bytes()[:5000])
    return str(p)


def test_parity_failure_is_exit_3(tmp_path: Path) -> None:
    res, _out, report = _export(tmp_path, "zoo:mnist_cnn", "--atol", "0")
    assert res.exit_code == 3
    assert "differs from PyTorch" in res.stderr
    assert report["passed"] is False


def test_torchscript_needs_trust_and_pickles_are_refused(tmp_path: Path) -> None:
    import torch

    m, ex = zoo.mnist_cnn()
    ts = tmp_path / "m.pt"
    torch.jit.trace(m, ex).save(str(ts))
    res, out, _ = _export(tmp_path, str(ts))
    assert res.exit_code == 2 and "--trust-torchscript" in res.stderr and not out.exists()
    res, out, report = _export(tmp_path, str(ts), "--trust-torchscript", "--input", "x:1x1x28x28")
    assert res.exit_code == 0, res.output
    pickled = tmp_path / "pickled.pt"
    torch.save(m, str(pickled))
    res, out2, _ = _export(tmp_path, str(pickled), "--trust-torchscript")
    assert res.exit_code == 2 and "never unpickles" in res.stderr
