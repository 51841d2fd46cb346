"""Where a causal LM comes from: a Hugging Face folder, a GGUF file, or `module:callable` -> (model, tokenizer)."""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from edgekit import deps
from edgekit.errors import UsageError

HINT = ("give a Hugging Face model folder (config.json + weights + tokenizer), a .gguf file, or module:callable "
        "returning (model, tokenizer)")


def load_causal_lm(spec: str) -> tuple[Any, Any]:
    """The PyTorch model (FP32, eval mode) and its tokenizer. A GGUF file's weights are dequantized to FP32:
    that dequantized model is the float reference every later check compares with."""
    torch = deps.torch()
    path = Path(spec)
    if path.suffix == ".gguf" or path.is_dir():
        if not path.exists():
            raise UsageError(f"{spec} does not exist", hint=HINT)
        tf = deps.transformers()
        where, kw = (str(path.parent), {"gguf_file": path.name}) if path.suffix == ".gguf" else (str(path), {})
        if path.suffix == ".gguf" and not deps.available("gguf"):
            from edgekit.errors import BackendUnavailable
            raise BackendUnavailable("the gguf package is not importable; transformers needs it to read a .gguf file", hint="pip install 'edgekit[lm]'")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            tok = tf.AutoTokenizer.from_pretrained(where, **kw)
            model = tf.AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kw)
        except (OSError, ValueError, KeyError) as exc:
            raise UsageError(f"{spec} is not a causal LM transformers can load: {str(exc).splitlines()[0]}", hint=HINT) from None
    elif ":" in spec:
        mod, _, attr = spec.partition(":")
        try:
            made = getattr(importlib.import_module(mod), attr)()
        except (ImportError, AttributeError) as exc:
            raise UsageError(f"cannot load {spec}: {exc}", hint=HINT) from None
        if not (isinstance(made, tuple) and len(made) == 2):
            raise UsageError(f"{spec} returned {type(made).__name__}, not (model, tokenizer)", hint=HINT)
        model, tok = made
    else:
        raise UsageError(f"{spec} is not a model source", hint=HINT)
    if not hasattr(model, "config") or not hasattr(model.config, "num_hidden_layers"):
        raise UsageError(f"{spec} is not a transformers causal LM (no config.num_hidden_layers)", hint=HINT)
    float_types = {torch.float32}
    if any(p.dtype not in float_types for p in model.parameters()):
        raise UsageError(f"{spec} has weights in {sorted({str(p.dtype) for p in model.parameters()} - {str(torch.float32)})}, not float32",
                         hint="load or convert it in float32 (model.float()) before export; edgekit quantizes from the float model")
    return model.eval(), tok


def kv_shape(config: Any) -> tuple[int, int, int]:
    """(layers, key/value heads, head size) of a decoder's cache."""
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return int(config.num_hidden_layers), int(kv), int(head_dim)
