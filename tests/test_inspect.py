from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from edgekit.cli import cli


def test_inspect_efficientnet(efficientnet_onnx: Path, tmp_path: Path) -> None:
    js = tmp_path / "i.json"
    res = CliRunner().invoke(cli, ["inspect", str(efficientnet_onnx), "--json", str(js)])
    assert res.exit_code == 0, res.output
    s = json.loads(js.read_text())
    assert 4.6e6 < s["parameters"] < 4.7e6  # EfficientNet-Lite0: 4.65 M
    assert 3.5e8 < s["macs"] < 4.2e8  # about 0.4 GMACs at 224x224
    assert s["ops"]["Conv"] == 49
    assert s["quantized"] is False
    assert s["inputs"][0]["shape"] == ["batch", 3, 224, 224]
    assert "Conv 49" in res.output


def test_minus_one_dimensions_from_other_converters_are_dynamic(efficientnet_onnx: Path, tmp_path: Path) -> None:
    """Paddle2ONNX and old TensorFlow converters declare "any size" as -1 (ONNX Runtime runs such files);
    edgekit reads it as a dynamic dimension instead of refusing the model. Real weights: EfficientNet-Lite0
    with its declared input rewritten the way those converters write it."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    m = onnx.load(str(efficientnet_onnx))
    dims = m.graph.input[0].type.tensor_type.shape.dim
    for i in (0, 2, 3):
        dims[i].Clear()
        dims[i].dim_value = -1
    path = tmp_path / "minus_one.onnx"
    onnx.save(m, str(path))
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"inputs": x})  # the runtime accepts it
    js = tmp_path / "i.json"
    res = CliRunner().invoke(cli, ["inspect", str(path), "--json", str(js)])
    assert res.exit_code == 0, res.output
    shape = json.loads(js.read_text())["inputs"][0]["shape"]
    assert shape[1] == 3 and all(isinstance(d, str) for d in (shape[0], shape[2], shape[3])), shape
