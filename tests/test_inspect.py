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
