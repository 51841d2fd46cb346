"""Shared fixtures and hardware markers (probed at run time, never an `if` in a test body)."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("EDGEKIT_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).parent))

import zoo  # noqa: E402


def _openvino_reason() -> str | None:
    if importlib.util.find_spec("openvino") is None:
        return "OpenVINO is not installed (pip install 'edgekit[openvino]')"
    return None


def _tensorrt_reason() -> str | None:
    from edgekit.backends import get_backend

    st = get_backend("tensorrt").status()
    return None if st.available else f"TensorRT cannot run here: {st.reason}"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cpu-load", action="store_true",
                     help="keep every core busy with a bounded busy loop while the suite runs (tests/cpuload.py): "
                          "the suite must stay green on a busy machine")


def pytest_configure(config: pytest.Config) -> None:
    # once per run: in pytest-xdist's controller (or a run without workers), never again in each worker
    if config.getoption("--cpu-load", default=False) and not hasattr(config, "workerinput"):
        import cpuload

        config._edgekit_cpu_load = cpuload.start()  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    procs = getattr(config, "_edgekit_cpu_load", None)
    if procs:
        import cpuload

        cpuload.stop(procs)


def pytest_report_header(config: pytest.Config) -> str:
    procs = getattr(config, "_edgekit_cpu_load", None)
    return f"cpu load: {len(procs)} busy loop(s), pids {' '.join(str(p.pid) for p in procs)}" if procs else "cpu load: none added"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    probes = {"requires_openvino": _openvino_reason, "requires_tensorrt": _tensorrt_reason}
    cache: dict[str, str | None] = {}
    for item in items:
        for marker, probe in probes.items():
            if item.get_closest_marker(marker):
                if marker not in cache:
                    cache[marker] = probe()
                if cache[marker]:
                    item.add_marker(pytest.mark.skip(reason=cache[marker]))


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


def _exported(artifacts: Path, source: str, name: str) -> Path:
    from edgekit.export import ExportOptions, export_model

    out = artifacts / name
    export_model(source, out, options=ExportOptions(dynamic_batch=True))
    return out


@pytest.fixture(scope="session")
def efficientnet_onnx(artifacts: Path) -> Path:
    """EfficientNet-Lite0 (ImageNet weights) exported once, dynamic batch."""
    return _exported(artifacts, "edgekit.examples.efficientnet:model", "efficientnet.onnx")


@pytest.fixture(scope="session")
def mnist_onnx(artifacts: Path) -> Path:
    """The small CNN trained on real MNIST digits (tests/zoo.py), exported once, dynamic batch."""
    return _exported(artifacts, "zoo:mnist_cnn", "mnist.onnx")


@pytest.fixture(scope="session")
def minilm_onnx(artifacts: Path) -> Path:
    """all-MiniLM-L6-v2 sentence embeddings (tests/zoo.py) exported once, dynamic batch."""
    return _exported(artifacts, "zoo:minilm", "minilm.onnx")


@pytest.fixture(scope="session")
def silero_vad_onnx(artifacts: Path) -> Path:
    """silero-vad (STFT conv + magnitude, convs, LSTM; tests/zoo.py) exported once, dynamic batch."""
    return _exported(artifacts, "zoo:silero_vad", "silero_vad.onnx")


@pytest.fixture(scope="session")
def photos(artifacts: Path) -> Path:
    return zoo.photo_dir(artifacts / "photos")


@pytest.fixture(scope="session")
def speech_available() -> None:
    if not zoo.SPEECH_DIR.exists():
        pytest.skip("real speech clips missing: apt-get install alsa-utils")


@pytest.fixture(scope="session")
def efficientnet_int8_artifacts(efficientnet_onnx: Path, artifacts: Path) -> list[Path]:
    """EfficientNet-Lite0 quantized once (4 real photos) and compiled for OpenVINO (batch 1, when
    installed) and ONNX Runtime (dynamic batch), in that order: the device-side tests' bundles."""
    from click.testing import CliRunner

    from edgekit.cli import cli
    from edgekit.compile import compile_model

    q = artifacts / "efficientnet.int8.onnx"
    res = CliRunner().invoke(cli, ["quantize", str(efficientnet_onnx), "-o", str(q), "--calib",
                                   str(Path(__file__).parents[1] / "calibration" / "imagenet-photos.toml"), "--samples", "4"])
    assert res.exit_code == 0, res.output
    out = [artifacts / "efficientnet-int8-ort"]
    compile_model(q, out[0], target="onnxruntime")
    if importlib.util.find_spec("openvino") is not None:
        out.insert(0, artifacts / "efficientnet-int8-ov")
        compile_model(q, out[0], target="openvino", shapes={"inputs": (1, 3, 224, 224)})
    return out
