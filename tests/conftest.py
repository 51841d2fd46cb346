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


@pytest.fixture(scope="session")
def efficientnet_onnx(artifacts: Path) -> Path:
    """EfficientNet-Lite0 (ImageNet weights) exported once, dynamic batch."""
    from edgekit.export import ExportOptions, export_model

    out = artifacts / "efficientnet.onnx"
    export_model("edgekit.examples.efficientnet:model", out, options=ExportOptions(dynamic_batch=True))
    return out


@pytest.fixture(scope="session")
def photos(artifacts: Path) -> Path:
    return zoo.photo_dir(artifacts / "photos")


@pytest.fixture(scope="session")
def speech_available() -> None:
    if not zoo.SPEECH_DIR.exists():
        pytest.skip("real speech clips missing: apt-get install alsa-utils")
