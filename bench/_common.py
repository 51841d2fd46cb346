"""Shared pieces of the benchmark scripts: the models under test, their real data, interleaved timing."""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

RESULTS = HERE / "results"
PHOTOS = HERE.parent / "calibration" / "imagenet-photos.toml"
IMAGENET_VAL = HERE.parent / "calibration" / "imagenet-val-foolbox.toml"


def image_feeds(manifest: Path, name: str, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    from edgekit.data.calibration import calibration_set
    from edgekit.onnxmodel import TensorSpec

    spec = TensorSpec(name, ("batch", 3, 224, 224), np.dtype(np.float32))
    feeds = list(calibration_set(str(manifest), [spec]).feeds([spec]))
    return feeds[:limit] if limit else feeds


def prepare(name: str, workdir: Path) -> dict[str, Any]:
    """(fp32 onnx, calibration feeds, held-out feeds) for one benchmark model."""
    import zoo

    from edgekit.export import ExportOptions, export_model

    out = workdir / f"{name}.onnx"
    source = {"resnet18": "models:resnet18", "mobilenetv2": "models:mobilenet_v2", "efficientnet-lite0": "edgekit.examples.efficientnet:model",
              "minilm-l6": "zoo:minilm"}[name]
    export_model(source, out, options=ExportOptions(exporter="torchscript" if name == "minilm-l6" else "auto"))
    if name == "minilm-l6":
        s = zoo.MINILM_SENTENCES
        calib = zoo.minilm_feeds(s[:8])
        held = zoo.minilm_feeds(s[8:])
    else:
        import onnx

        input_name = onnx.load(str(out), load_external_data=False).graph.input[0].name
        calib = image_feeds(PHOTOS, input_name)
        held = image_feeds(IMAGENET_VAL, input_name, 8)
    return {"name": name, "onnx": out, "calib": calib, "held": held, "weights": "random" if name in ("resnet18", "mobilenetv2") else "trained"}


def save_feeds(feeds: list[dict[str, np.ndarray]], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(feeds):
        np.savez(folder / f"{i:04d}.npz", **f)
    return folder


def write_results(name: str, data: Any) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")
    return path


def tmpdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
