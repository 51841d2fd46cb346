"""Run an exported decoder step by step: ONNX Runtime with the KV cache passed in and out, OpenVINO with it
kept inside (stateful). Both give the same interface (`reset`, `step`, `generate`), so every check and
benchmark runs the same code on either."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import deps
from edgekit.errors import UsageError

META = "lm.json"


@dataclasses.dataclass(frozen=True)
class LMMeta:
    """What `lm.json` beside the model says: its format and the shape of its cache."""

    format: str  # "onnx" (explicit cache) or "openvino" (stateful IR)
    model: str  # file name inside the folder
    layers: int
    kv_heads: int
    head_dim: int
    eos_token_id: int | None
    weights: str  # "fp32", "int8-g128-sym", ...
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_meta(folder: str | Path) -> LMMeta:
    path = Path(folder) / META
    if not path.is_file():
        raise UsageError(f"{folder} is not an exported LM folder (no {META})", hint="make one with: edgekit lm export SOURCE -o FOLDER")
    d = json.loads(path.read_text())
    return LMMeta(**{f.name: d.get(f.name, {} if f.name == "extra" else None) for f in dataclasses.fields(LMMeta)})


def past_names(layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def present_names(layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


class LM:
    """A decoder at one position of one sequence (batch 1). `step(ids)` feeds the next tokens and returns
    their logits, [len(ids), vocab]."""

    meta: LMMeta
    precision: str

    def __init__(self) -> None:
        self.position = 0

    def reset(self) -> None:
        self.position = 0

    def step(self, ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _feeds(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        s = int(ids.size)
        return {"input_ids": ids.reshape(1, s).astype(np.int64),
                "attention_mask": np.ones((1, self.position + s), np.int64),
                "position_ids": np.arange(self.position, self.position + s, dtype=np.int64)[None]}

    def generate_ids(self, prompt: np.ndarray, max_new_tokens: int, *, stop_at_eos: bool = True) -> list[int]:
        """Greedy continuation of `prompt` (token ids), the new tokens only."""
        self.reset()
        logits = self.step(np.asarray(prompt, np.int64))
        out: list[int] = []
        for _ in range(max_new_tokens):
            nxt = int(np.argmax(logits[-1]))
            out.append(nxt)
            if stop_at_eos and nxt == self.meta.eos_token_id:
                break
            logits = self.step(np.array([nxt], np.int64))
        return out


class OrtLM(LM):
    def __init__(self, folder: Path, meta: LMMeta, *, threads: int | None = None, last_only: bool = False) -> None:
        super().__init__()
        import onnxruntime as ort

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        self.meta, self.precision, self.last_only = meta, "fp32", last_only
        self.session = ort.InferenceSession(str(folder / meta.model), so, providers=["CPUExecutionProvider"])
        self._ortvalue = ort.OrtValue.ortvalue_from_numpy
        self._past_names = past_names(meta.layers)
        self._outputs = ["logits", *present_names(meta.layers)]
        self.reset()

    def reset(self) -> None:
        super().reset()
        empty = self._ortvalue(np.zeros((1, self.meta.kv_heads, 0, self.meta.head_dim), np.float32))
        self.past = {n: empty for n in self._past_names}

    def step(self, ids: np.ndarray) -> np.ndarray:
        # the cache stays in ONNX Runtime's own buffers from one step to the next (OrtValues, never numpy copies)
        feeds = {k: self._ortvalue(v) for k, v in self._feeds(ids).items()}
        outs = self.session.run_with_ort_values(self._outputs, {**feeds, **self.past})
        self.past = dict(zip(self._past_names, outs[1:]))
        self.position += int(ids.size)
        logits = outs[0].numpy()[0]
        return logits[-1:] if self.last_only else logits


def ov_lm_head(model: Any) -> Any:
    """The MatMul of an OpenVINO model that produces `logits` (through any Add/Reshape after it), or None."""
    node = model.output("logits").get_node().input_value(0).get_node()
    while node.get_type_name() != "MatMul" and node.get_input_size():
        node = node.input_value(0).get_node()
    return node if node.get_type_name() == "MatMul" else None


def slice_before_head(model: Any) -> Any:
    """Compute logits for the last position only (what generation needs): the LM head's MatMul gets the last
    hidden state, not the prompt's every one (as OpenVINO GenAI's pipeline does). The head of a 135 M decoder is a
    fifth of a 128-token prefill's work."""
    from openvino import opset13 as ops

    node = ov_lm_head(model)
    if node is None:
        return model
    i64 = np.int64
    last = ops.slice(node.input_value(0), ops.constant(np.array([-1], i64)), ops.constant(np.array([np.iinfo(i64).max], i64)),
                     ops.constant(np.array([1], i64)), ops.constant(np.array([1], i64)))
    node.input(0).replace_source_output(last.output(0))
    model.validate_nodes_and_infer_types()
    return model


class OvLM(LM):
    def __init__(self, folder: Path, meta: LMMeta, *, threads: int | None = None, last_only: bool = False) -> None:
        super().__init__()
        ov = deps.openvino()
        # set, never left to the device: on a CPU with bf16 OpenVINO would otherwise run the float parts in bf16
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.meta, self.precision, self.last_only = meta, "fp32", last_only
        core = ov.Core()
        model = core.read_model(str(folder / meta.model))
        self.compiled = core.compile_model(slice_before_head(model) if last_only else model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self._logits = self.compiled.output("logits")

    def reset(self) -> None:
        super().reset()
        self.request.reset_state()

    def step(self, ids: np.ndarray) -> np.ndarray:
        self.request.infer(self._feeds(ids))
        self.position += int(ids.size)
        return np.array(self.request.get_tensor(self._logits).data[0])


def load_lm(folder: str | Path, *, threads: int | None = None, last_only: bool = False) -> LM:
    """The runner for an exported or weight-compressed LM folder (`lm.json` says which runtime). `last_only`:
    `step` returns the last position's logits only ([1, vocab]), all generation needs; the check wants them all."""
    folder = Path(folder)
    meta = read_meta(folder)
    if meta.format == "onnx":
        return OrtLM(folder, meta, threads=threads, last_only=last_only)
    if meta.format == "openvino":
        return OvLM(folder, meta, threads=threads, last_only=last_only)
    raise UsageError(f"{folder}/{META} names an unknown format {meta.format!r}", hint="re-export it with this edgekit")
