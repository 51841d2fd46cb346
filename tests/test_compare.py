"""`edgekit compare`: two models or artifacts on the same real inputs, and where they part ways."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

import zoo
from edgekit.cli import cli
from edgekit.compile import compile_model

ROOT = Path(__file__).parents[1]
VAL = str(ROOT / "calibration" / "imagenet-val-foolbox.toml")


def test_fp32_vs_its_compiled_artifacts_agree(efficientnet_onnx: Path, tmp_path: Path) -> None:
    art = tmp_path / "ov"
    compile_model(efficientnet_onnx, art, target="openvino", precision="fp32", shapes={"inputs": (1, 3, 224, 224)})
    js = tmp_path / "c.json"
    res = CliRunner().invoke(cli, ["compare", str(efficientnet_onnx), str(art), "--data", VAL, "--samples", "4", "--atol", "1e-4", "--json", str(js)])
    assert res.exit_code == 0, res.output
    r = json.loads(js.read_text())
    assert r["b"]["backend"] == "openvino" and r["outputs"][0]["max_abs"] <= 1e-4 and r["outputs"][0]["top1_agreement"] == 1.0


def test_per_node_finds_where_an_outlier_layer_breaks(tmp_path: Path) -> None:
    fp, calib, held, _change = zoo.outlier_mnist(tmp_path, calib=64, held=16)
    q = tmp_path / "q.onnx"
    # --no-check: the all-INT8 model, which the default check would fix by keeping the outlier in float
    assert CliRunner().invoke(cli, ["quantize", str(fp), "-o", str(q), "--calib", str(calib), "--no-cache", "--no-check"]).exit_code == 0
    js = tmp_path / "c.json"
    res = CliRunner().invoke(cli, ["compare", str(fp), str(q), "--data", str(held), "--per-node", "--json", str(js)])
    assert res.exit_code == 3 and "worst cosine" in res.stderr  # the outlier wrecks INT8
    first = json.loads(js.read_text())["per_node"]["first"]
    assert first is not None and any(p in first["node"] for p in ("/3/", "/4/", "/5/", "/6/", "/7/")), first
