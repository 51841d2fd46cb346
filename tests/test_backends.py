"""The backend contract: every backend compiles, loads and runs a real trained model the same way."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import zoo
from edgekit.cli import cli
from edgekit.compile import compile_model, open_engine
from edgekit.examples.efficientnet import RECIPE

BACKENDS = [
    pytest.param("onnxruntime", id="onnxruntime"),
    pytest.param("openvino", id="openvino", marks=pytest.mark.requires_openvino),
    pytest.param("tensorrt", id="tensorrt", marks=pytest.mark.requires_tensorrt),
]


@pytest.fixture(scope="module")
def real_batch() -> tuple[np.ndarray, np.ndarray]:
    images = zoo.foolbox_images()[:6]
    return np.concatenate([RECIPE.apply(p) for p, _ in images]), np.array([label for _, label in images])


@pytest.fixture(scope="module")
def reference(efficientnet_onnx: Path, real_batch: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """ONNX Runtime FP32 on the plain exported ONNX: the reference every backend is held to."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(efficientnet_onnx), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"inputs": x[None]})[0] for x in real_batch[0]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp32_reproduces_onnxruntime_within_1e4(backend: str, efficientnet_onnx: Path, tmp_path: Path,
                                                 real_batch: tuple[np.ndarray, np.ndarray], reference: np.ndarray) -> None:
    out = tmp_path / "artifact"
    manifest = compile_model(efficientnet_onnx, out, target=backend, precision="fp32", shapes={"inputs": (1, 3, 224, 224)})
    assert manifest["precision"] == "fp32" and manifest["backend"] == backend
    assert set(manifest["files"]) <= {p.name for p in out.iterdir()}
    with open_engine(out) as (engine, _m):
        assert engine.info["precision"] == "fp32"
        got = np.concatenate([engine.run({"inputs": x[None]})[engine.outputs[0].name] for x in real_batch[0]])
    assert np.abs(got - reference).max() <= 1e-4
    assert (got.argmax(1) == reference.argmax(1)).all()


@pytest.mark.requires_openvino
def test_openvino_reports_the_precision_it_runs(efficientnet_onnx: Path, tmp_path: Path) -> None:
    """bf16 compiles where the CPU has it and is refused (exit 4) where OpenVINO would run f32 instead."""
    import openvino as ov

    has_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    res = CliRunner().invoke(cli, ["compile", str(efficientnet_onnx), "--target", "openvino", "--precision", "bf16",
                                   "-o", str(tmp_path / "bf16"), "--shape", "inputs:1x3x224x224"])
    if has_bf16:
        assert res.exit_code == 0, res.output
        m = json.loads((tmp_path / "bf16" / "manifest.json").read_text())
        assert m["settings"]["inference_precision"] == "bf16"
    else:
        assert res.exit_code == 4 and "runs f32, not the requested bf16" in res.stderr
        assert not (tmp_path / "bf16").exists()


def test_tensorrt_compile_here_is_exit_4_with_one_line(efficientnet_onnx: Path, tmp_path: Path) -> None:
    from edgekit.backends import get_backend

    if get_backend("tensorrt").status().available:
        pytest.skip("TensorRT works on this machine: the unavailable path cannot be shown")
    res = CliRunner().invoke(cli, ["compile", str(efficientnet_onnx), "--target", "tensorrt", "-o", str(tmp_path / "e")])
    assert res.exit_code == 4
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "tensorrt" in lines[0].lower() and "pip install" in lines[0]
    assert not (tmp_path / "e").exists()


def test_doctor_is_truthful(tmp_path: Path) -> None:
    import onnxruntime

    js = tmp_path / "d.json"
    res = CliRunner().invoke(cli, ["doctor", "--json", str(js)])
    assert res.exit_code == 0, res.output
    report = {b["name"]: b for b in json.loads(js.read_text())["backends"]}
    assert report["onnxruntime"]["available"] and report["onnxruntime"]["version"] == onnxruntime.__version__
    try:
        import openvino

        assert report["openvino"]["available"] and report["openvino"]["version"] == openvino.get_version()
        assert any(d.startswith("CPU") for d in report["openvino"]["devices"])
    except ImportError:
        assert not report["openvino"]["available"]
    try:
        import tensorrt  # noqa: F401

        trt_importable = True
    except ImportError:
        trt_importable = False
    if not trt_importable:
        assert not report["tensorrt"]["available"] and "not installed" in report["tensorrt"]["reason"]


@pytest.mark.requires_openvino
def test_unavailable_device_is_exit_4(efficientnet_onnx: Path, tmp_path: Path) -> None:
    import openvino as ov

    if any(d.startswith("NPU") for d in ov.Core().available_devices):
        pytest.skip("this machine has an NPU")
    prof = tmp_path / "npu.toml"
    prof.write_text('backend = "openvino"\ndevice = "NPU"\n')
    res = CliRunner().invoke(cli, ["compile", str(efficientnet_onnx), "--target", str(prof), "-o", str(tmp_path / "o")])
    assert res.exit_code == 4 and "NPU is not available" in res.stderr


@pytest.mark.parametrize(
    "profile, needle",
    [
        ('backend = "openvino"\n[options]\nthreds = 2\n', "did you mean 'threads'"),
        ('backend = "openvinoo"\n', "did you mean 'openvino'"),
        ('backend = "onnxruntime"\nprecision = "int4"\n', "precision 'int4'"),
        ('backend = "tensorrt"\n[options]\nworkspace_mib = "big"\n', "must be an integer"),
        ('backend = "openvino"\n[budgets]\np42 = "3ms"\n', "unknown statistic"),
        ('backend = "openvino"\n[bench]\nbatch = 0\n', "batch >= 1"),
    ],
)
def test_bad_profiles_are_exit_2_naming_the_key(profile: str, needle: str, efficientnet_onnx: Path, tmp_path: Path) -> None:
    prof = tmp_path / "p.toml"
    prof.write_text(profile)
    res = CliRunner().invoke(cli, ["compile", str(efficientnet_onnx), "--target", str(prof), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert needle in res.stderr


def test_shipped_profiles_load() -> None:
    from edgekit.config import load_target

    names = {p.stem for p in (Path(__file__).parents[1] / "targets").glob("*.toml")}
    assert {"cpu-openvino", "cpu-onnxruntime", "jetson-orin-nano", "nvidia-desktop"} <= names
    for n in names:
        t = load_target(n)
        assert t.budgets and t.backend in ("openvino", "onnxruntime", "tensorrt")


@pytest.mark.requires_openvino
def test_openvino_shape_for_an_unknown_input_is_a_one_line_usage_error(efficientnet_onnx: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgekit.cli import cli

    res = CliRunner().invoke(cli, ["compile", str(efficientnet_onnx), "--target", "openvino", "--shape", "image:1x3x224x224", "-o", str(tmp_path / "ov")])
    assert res.exit_code == 2 and "'image', which is not an input" in res.output and "inputs" in res.output, res.output
    assert not (tmp_path / "ov").exists()
