"""A causal LM to ONNX with its KV cache as inputs and outputs, checked against PyTorch on real text.

One graph serves prefill and decode: `input_ids`, `attention_mask` (past + new), `past_key_values.N.key/value`
[batch, kv heads, past, head size] (and, in the traced graph, `position_ids`) in; `logits` and
`present.N.key/value` out. The first step feeds a past of length 0. The graph comes from one of two makers:

- `builder` (default when `onnxruntime-genai` is installed and knows the architecture): onnxruntime-genai's own
  model builder, ONNX Runtime's fused operators (`GroupQueryAttention` with rotary embedding inside, which reads
  and appends a preallocated cache in place; `SkipSimplifiedLayerNormalization`; fused QKV). Measured on a Zen 2,
  INT8 decode: 13.0 ms per token in the same step loop against 17.6 for the traced graph.
- `trace`: the model traced (TorchScript exporter) through a wrapper that builds transformers' own cache object
  from the flat tensors, so the graph is the model's own attention code (any architecture transformers runs).

Either graph gets the same parity check against PyTorch.
"""
from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import deps
from edgekit.errors import GateFailed, UsageError
from edgekit.files import atomic_dir
from edgekit.llm import text as texts
from edgekit.llm.runtime import LM, META, LMMeta, OvLM, load_lm, past_names, present_names
from edgekit.llm.source import kv_shape, load_causal_lm
from edgekit.progress import status

MODEL = "model.onnx"
OV_MODEL = "openvino_model.xml"
GRAPHS = ("auto", "builder", "trace")
PARITY_STEPS = 8  # greedy decode steps that must give PyTorch's tokens
PARITY_RTOL = 1e-3  # prefill logits: max |ONNX - PyTorch| relative to max |PyTorch|


def _cache_kwarg(model: Any) -> str:
    """transformers 5 names the cache argument `cache`, 4.x `past_key_values`."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _layer_kv(cache: Any, i: int) -> tuple[Any, Any]:
    if hasattr(cache, "layers"):
        return cache.layers[i].keys, cache.layers[i].values
    return cache.key_cache[i], cache.value_cache[i]


def _set_layer(cache: Any, i: int, keys: Any, values: Any) -> None:
    """Layer `i` of `cache` holds the past `keys`/`values` as they are. transformers 5's `update` on an empty layer
    concatenates a 1-D empty tensor with them, which the trace records and OpenVINO's converter rejects."""
    layer = cache.layers[i] if hasattr(cache, "layers") and i < len(cache.layers) else None
    if layer is None or not hasattr(layer, "lazy_initialization"):
        cache.update(keys, values, i)
        return
    layer.lazy_initialization(keys, values)
    layer.keys, layer.values = keys, values


def _wrapper(model: Any) -> Any:
    torch = deps.torch()
    from transformers.cache_utils import DynamicCache

    layers = model.config.num_hidden_layers
    kwarg = _cache_kwarg(model)

    class FlatCache(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, *past: Any) -> tuple[Any, ...]:
            try:
                cache = DynamicCache(config=self.m.config)
            except TypeError:
                cache = DynamicCache()
            for i in range(layers):
                _set_layer(cache, i, past[2 * i], past[2 * i + 1])
            out = self.m(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=True, **{kwarg: cache})
            new = getattr(out, "cache", None) or out.past_key_values
            flat: list[Any] = []
            for i in range(layers):
                flat.extend(_layer_kv(new, i))
            return (out.logits, *flat)

    return FlatCache()


def _check_transformers() -> None:
    """transformers 5.x before 5.12 is refused: 5.5.4 and 5.6.2 cannot be traced through their causal-mask code
    (`sdpa_mask` takes the traced query length for a deprecated tensor argument: IndexError); 5.12.1 and 5.25.0
    can (all four tested; 5.7-5.11 not)."""
    import re
    from importlib.metadata import version

    v = version("transformers")
    if (5, 0) <= tuple(int(x) for x in re.findall(r"\d+", v)[:2]) < (5, 12):
        raise UsageError(f"transformers {v} cannot export a causal LM: its mask code breaks under the trace",
                         hint="pip install 'transformers>=5.12' (edgekit[lm] asks for it)")


def _example(model: Any) -> tuple[tuple[Any, ...], list[str], list[str]]:
    """Inputs to trace with (a past of 3 and 4 new tokens: neither is a size a traced branch could special-case),
    and the graph's input and output names."""
    torch = deps.torch()
    layers, kv_heads, head_dim = kv_shape(model.config)
    b, p, s = 1, 3, 4
    args = (torch.randint(0, 100, (b, s)), torch.ones(b, p + s, dtype=torch.long), torch.arange(p, p + s)[None],
            *[torch.zeros(b, kv_heads, p, head_dim) for _ in range(2 * layers)])
    return args, ["input_ids", "attention_mask", "position_ids", *past_names(layers)], ["logits", *present_names(layers)]


def _export(model: Any, dest: Path, *, opset: int) -> None:
    torch = deps.torch()
    import onnx

    args, ins, outs = _example(model)
    axes: dict[str, dict[int, str]] = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total"},
                                       "position_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}
    axes.update({n: {0: "batch", 2: "past"} for n in ins[3:]})
    axes.update({n: {0: "batch", 2: "total"} for n in outs[1:]})
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp, torch.no_grad():
        raw = Path(tmp) / "raw.onnx"
        torch.onnx.export(_wrapper(model), args, str(raw), input_names=ins, output_names=outs, dynamic_axes=axes,
                          opset_version=opset, dynamo=False)
        proto = onnx.load(str(raw))
        onnx.save(proto, str(dest / MODEL), save_as_external_data=True, location=MODEL + ".data")


def _save_hf(model: Any, tokenizer: Any, folder: Path) -> None:
    """`model` as a Hugging Face folder in FP32. A model transformers dequantized from a GGUF file still carries
    its GGUF quantizer, which refuses to save; its weights are already FP32, so it saves without it."""
    saved = {k: getattr(model, k) for k in ("hf_quantizer", "is_quantized") if hasattr(model, k)}
    qc = getattr(model.config, "quantization_config", None)
    try:
        model.hf_quantizer, model.is_quantized = None, False
        if qc is not None:
            del model.config.quantization_config
        model.save_pretrained(str(folder))
    finally:
        for k, v in saved.items():
            setattr(model, k, v)
        if qc is not None:
            model.config.quantization_config = qc
    tokenizer.save_pretrained(str(folder))


def _export_builder(model: Any, tokenizer: Any, dest: Path) -> str | None:
    """onnxruntime-genai's model builder (`-p fp32 -e cpu`) writes `model.onnx` (+ `.data`) and `genai_config.json`
    into `dest`. Run in a process of its own (it prints progress and sets up logging). None on success, else
    why it did not (an architecture it does not know, say): the caller falls back to the trace."""
    from importlib.metadata import version

    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        hf, built = Path(tmp) / "hf", Path(tmp) / "built"
        _save_hf(model, tokenizer, hf)
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(built), "-p", "fp32",
               "-e", "cpu", "-c", str(Path(tmp) / "cache")]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode != 0 or not (built / MODEL).is_file():
            lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
            return f"onnxruntime-genai {version('onnxruntime-genai')} model builder failed: {lines[-1] if lines else proc.returncode}"
        for name in (MODEL, MODEL + ".data", "genai_config.json"):
            if (built / name).exists():
                shutil.move(str(built / name), str(dest / name))
    return None


def _graph_has(path: Path, op: str) -> bool:
    import onnx

    return any(n.op_type == op for n in onnx.load(str(path), load_external_data=False).graph.node)


def _export_openvino(model: Any, dest: Path) -> None:
    """The same graph converted by OpenVINO from PyTorch itself, as optimum-intel does: attention stays one
    ScaledDotProductAttention op, which the CPU plugin fuses with the cache once the model is stateful (ONNX
    has no such op at opset 17, so the ONNX graph reaches OpenVINO as MatMul/Softmax pieces and decodes 1.85x
    slower at INT8, measured). Saved FP32 and stateless (cache in and out, like the ONNX graph); `edgekit lm quantize --target
    openvino` compresses it and keeps the cache inside."""
    torch, ov = deps.torch(), deps.openvino()
    _, kv_heads, head_dim = kv_shape(model.config)
    args, ins, outs = _example(model)
    with torch.no_grad():
        om = ov.convert_model(_wrapper(model), example_input=args)
    for port, name in zip(om.inputs, ins):
        port.get_tensor().set_names({name})
        port.get_node().set_partial_shape(ov.PartialShape([-1, -1] if name in ins[:3] else [-1, kv_heads, -1, head_dim]))
    for port, name in zip(om.outputs, outs):
        port.get_tensor().set_names({name})
    om.validate_nodes_and_infer_types()
    ov.save_model(om, str(dest / OV_MODEL), compress_to_fp16=False)


def _reference(model: Any, tokenizer: Any, prompt: np.ndarray) -> tuple[np.ndarray, list[int]]:
    torch = deps.torch()
    with torch.no_grad():
        ref = model(torch.tensor(prompt[None])).logits[0].numpy()
        ids = model.generate(torch.tensor(prompt[None]), attention_mask=torch.ones(1, prompt.size, dtype=torch.long),
                             max_new_tokens=PARITY_STEPS, min_new_tokens=PARITY_STEPS, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)[0, prompt.size:].tolist()
    return ref, ids


def parity(lm: LM, reference: tuple[np.ndarray, list[int]], *, prompt: np.ndarray) -> dict[str, Any]:
    """Prefill logits and PARITY_STEPS greedy tokens of `lm` against PyTorch's (`_reference`), on `prompt`."""
    ref, ref_ids = reference
    lm.reset()
    got = lm.step(prompt)
    rel = float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-12))
    ids = lm.generate_ids(prompt, PARITY_STEPS, stop_at_eos=False)
    return {"prompt_tokens": int(prompt.size), "prefill_logits_max_rel_diff": rel, "rtol": PARITY_RTOL,
            "greedy_steps": PARITY_STEPS, "greedy_tokens_equal": ids == ref_ids, "passed": rel <= PARITY_RTOL and ids == ref_ids}


def export_causal_lm(source: str | tuple[Any, Any], out: str | Path, *, opset: int = 17, text: str = "python-docs",
                     openvino: bool | None = None, graph: str = "auto") -> dict[str, Any]:
    """Export `source` (a spec for `load_causal_lm`, or (model, tokenizer)) into the folder `out`: `model.onnx`
    (+ `.data`), the tokenizer's files and `lm.json`; and, with `openvino` (by default when OpenVINO is
    installed), `openvino_model.xml`, OpenVINO's own conversion. `graph`: who makes the ONNX graph (`builder`,
    `trace`, or `auto`: the builder when onnxruntime-genai is installed, the trace where it fails). Exit 3
    (nothing written) when a parity check fails."""
    if openvino is None:
        openvino = deps.available("openvino")
    if graph not in GRAPHS:
        raise UsageError(f"unknown ONNX graph maker {graph!r}", hint=f"use one of {', '.join(GRAPHS)}")
    builder = graph == "builder" or (graph == "auto" and deps.available("onnxruntime_genai"))
    if graph == "builder" and not deps.available("onnxruntime_genai"):
        from edgekit.errors import BackendUnavailable
        raise BackendUnavailable("onnxruntime-genai (its model builder makes the fused ONNX graph) is not installed",
                                 hint="pip install 'edgekit[lm]', or --onnx-graph trace")
    _check_transformers()
    with status("loading the model"):
        model, tokenizer = load_causal_lm(source) if isinstance(source, str) else source
    layers, kv_heads, head_dim = kv_shape(model.config)
    prompt = texts.token_windows(tokenizer, texts.corpus(text), window=32, held_out=1, calibration=0).held_out[0]
    out = Path(out)
    with atomic_dir(out) as tmp:
        made: dict[str, Any] = {}
        if builder:
            with status("building the ONNX graph with onnxruntime-genai's model builder"):
                refused = _export_builder(model, tokenizer, tmp)
            if refused and graph == "builder":
                raise UsageError(refused, hint="give --onnx-graph trace (any architecture transformers runs)")
            made = {"onnx_graph": "onnxruntime-genai model builder"} if not refused else {"onnx_graph_builder_refused": refused}
        if not made.get("onnx_graph"):
            with status("exporting to ONNX with the KV cache"):
                _export(model, tmp, opset=opset)
            made["onnx_graph"] = "torch.onnx (TorchScript trace)"
        if _graph_has(tmp / MODEL, "GroupQueryAttention"):
            made["kv_buffer"] = "shared"  # one preallocated cache per layer, read and appended in place
        if openvino:
            with status("converting to OpenVINO from PyTorch"):
                _export_openvino(model, tmp)
        tokenizer.save_pretrained(str(tmp))
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else getattr(model.config, "eos_token_id", None)
        meta = LMMeta(format="onnx", model=MODEL, layers=layers, kv_heads=kv_heads, head_dim=head_dim,
                      eos_token_id=int(eos) if isinstance(eos, int) else None, weights="fp32",
                      extra={"architecture": type(model).__name__, "parameters": int(sum(p.numel() for p in model.parameters())),
                             "vocab_size": int(model.config.vocab_size), "source": source if isinstance(source, str) else "python object",
                             **made, **({"openvino_model": OV_MODEL} if openvino else {})})
        (tmp / META).write_text(json.dumps(meta.to_dict(), indent=2))
        with status("checking parity with PyTorch on real text"):
            reference = _reference(model, tokenizer, prompt)
            checks = {"onnx": parity(load_lm(tmp), reference, prompt=prompt)}
            if openvino:
                checks["openvino"] = parity(OvLM(tmp, meta, model_file=OV_MODEL, kv_cache="f32"), reference, prompt=prompt)
        result = {"out": str(out), "meta": meta.to_dict(), "parity": checks["onnx"], **({"parity_openvino": checks["openvino"]} if openvino else {})}
        failed = [k for k, c in checks.items() if not c["passed"]]
        if failed:
            c = checks[failed[0]]
            raise GateFailed(f"the exported LM ({failed[0]}) differs from PyTorch: prefill logits {c['prefill_logits_max_rel_diff']:.2e} "
                             f"relative (bar {PARITY_RTOL:g}), greedy tokens equal: {c['greedy_tokens_equal']}",
                             hint="report it with the model's config; nothing was written", result=result)
    return result
