"""Run an exported decoder step by step: ONNX Runtime with the KV cache passed in and out, OpenVINO with it
kept inside (stateful), TensorRT with it on the GPU (`TrtLM`, the engine of edgekit.llm.tensorrt). All give the
same interface (`reset`, `step`, `generate`), so every check and benchmark runs the same code on each."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import deps
from edgekit.errors import BackendUnavailable, UsageError

META = "lm.json"
KV_CACHE = ("u8", "f16", "f32")  # OpenVINO's KV cache precisions on the CPU
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "chat_template.jinja", "generation_config.json", "genai_config.json")  # copied with the model
RUNTIMES = {"onnx": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}  # lm.json's format -> the runtime that runs it


@dataclasses.dataclass(frozen=True)
class LMMeta:
    """What `lm.json` beside the model says: its format and the shape of its cache."""

    format: str  # "onnx" (explicit cache), "openvino" (stateful IR) or "tensorrt" (an engine, the cache on the GPU)
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

    def greedy(self, prompt: np.ndarray, max_new_tokens: int, *, stop_at_eos: bool = True) -> Iterator[int]:
        """Greedy continuation of `prompt` (token ids), one new token at a time (EOS included when it comes)."""
        self.reset()
        logits = self.step(np.asarray(prompt, np.int64))
        for i in range(max_new_tokens):
            nxt = int(np.argmax(logits[-1]))
            yield nxt
            if (stop_at_eos and nxt == self.meta.eos_token_id) or i == max_new_tokens - 1:
                return
            logits = self.step(np.array([nxt], np.int64))

    def generate_ids(self, prompt: np.ndarray, max_new_tokens: int, *, stop_at_eos: bool = True) -> list[int]:
        """Greedy continuation of `prompt` (token ids), the new tokens only."""
        return list(self.greedy(prompt, max_new_tokens, stop_at_eos=stop_at_eos))


class OrtLM(LM):
    """ONNX Runtime, the cache in and out. A graph whose attention is `GroupQueryAttention` (lm.json's
    `kv_buffer: shared`, onnxruntime-genai's builder) reads and appends one preallocated buffer per layer in place,
    bound as both the past input and the present output (as onnxruntime-genai's own loop does); any other graph
    gets each step's present back as the next step's past."""

    CAPACITY = 256  # initial cache length of a shared buffer; it doubles (one copy) when a sequence outgrows it

    def __init__(self, folder: Path, meta: LMMeta, *, threads: int | None = None, last_only: bool = False) -> None:
        super().__init__()
        import onnxruntime as ort

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        self.meta, self.precision, self.last_only = meta, "fp32", last_only
        model: Any = str(folder / meta.model)
        if last_only:  # the graph, changed in memory, reads its weights from the folder's external data file
            model = onnx_slice_before_head(model)
            so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
        self.session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self.session.get_inputs()}
        self._ortvalue = ort.OrtValue.ortvalue_from_numpy
        self._past_names = past_names(meta.layers)
        self._present_names = present_names(meta.layers)
        self._outputs = ["logits", *self._present_names]
        self.shared = meta.extra.get("kv_buffer") == "shared"
        self._binding = self.session.io_binding() if self.shared else None
        if self._binding is not None:
            self._binding.bind_output("logits")  # bound first, so it stays the binding's output 0 when the cache is re-bound
        self.reset()

    def reset(self) -> None:
        super().reset()
        if self.shared:
            self._buffers: list[np.ndarray] = []
            self._grow(self.CAPACITY)
        else:
            empty = self._ortvalue(np.zeros((1, self.meta.kv_heads, 0, self.meta.head_dim), np.float32))
            self.past = {n: empty for n in self._past_names}

    def _grow(self, capacity: int) -> None:
        m = self.meta
        new = [np.zeros((1, m.kv_heads, capacity, m.head_dim), np.float32) for _ in self._past_names]
        for old, buf in zip(self._buffers, new):
            buf[:, :, : self.position] = old[:, :, : self.position]
        self._buffers = new
        b = self._binding
        assert b is not None
        for past, present, buf in zip(self._past_names, self._present_names, new):
            value = self._ortvalue(buf)  # shares the numpy array's memory: ONNX Runtime writes the new rows into it
            b.bind_ortvalue_input(past, value)
            b.bind_ortvalue_output(present, value)

    def _feeds(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v for k, v in super()._feeds(ids).items() if k in self._inputs}

    def step(self, ids: np.ndarray) -> np.ndarray:
        if self.shared:
            return self._step_shared(ids)
        # the cache stays in ONNX Runtime's own buffers from one step to the next (OrtValues, never numpy copies)
        feeds = {k: self._ortvalue(v) for k, v in self._feeds(ids).items()}
        outs = self.session.run_with_ort_values(self._outputs, {**feeds, **self.past})
        self.past = dict(zip(self._past_names, outs[1:]))
        self.position += int(ids.size)
        logits = outs[0].numpy()[0]
        return logits[-1:] if self.last_only else logits

    def _step_shared(self, ids: np.ndarray) -> np.ndarray:
        need = self.position + int(ids.size)
        if need > self._buffers[0].shape[2]:
            self._grow(max(2 * self._buffers[0].shape[2], need))
        b = self._binding
        assert b is not None
        for name, value in self._feeds(ids).items():
            b.bind_cpu_input(name, value)
        b.bind_output("logits")  # anew each step: the last step's logits, of another length, are not reused as a buffer
        self.session.run_with_iobinding(b)
        self.position = need
        logits = b.get_outputs()[0].numpy()[0]
        return logits[-1:] if self.last_only else logits


def onnx_slice_before_head(path: str) -> bytes:
    """The ONNX graph at `path` (its weights left in the external data file) with the LM head fed the last
    position only, as `slice_before_head` does for OpenVINO: `logits` becomes [batch, 1, vocab]."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(path, load_external_data=False)
    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    head = producers.get("logits")
    while head is not None and head.op_type not in ("MatMul", "MatMulNBits", "Gemm"):
        head = producers.get(head.input[0])
    if head is None:
        return model.SerializeToString()
    i64 = np.int64
    consts = {"edgekit_last_start": np.array([-1], i64), "edgekit_last_end": np.array([np.iinfo(i64).max], i64),
              "edgekit_last_axis": np.array([1], i64)}
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    nodes = list(g.node)
    nodes.insert(nodes.index(head), helper.make_node("Slice", [head.input[0], *consts], ["edgekit_last_hidden"], name="edgekit_last_position"))
    head.input[0] = "edgekit_last_hidden"
    del g.node[:]
    g.node.extend(nodes)  # still in topological order: the Slice comes right before the head
    for o in g.output:
        if o.name == "logits" and len(o.type.tensor_type.shape.dim) == 3:
            o.type.tensor_type.shape.dim[1].Clear()
            o.type.tensor_type.shape.dim[1].dim_value = 1
    return model.SerializeToString()


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


def stateful(ov_model: Any, layers: int) -> Any:
    """Keep the KV cache inside: each `past_key_values.N.*` input and its `present.N.*` output become one
    variable, initialised to an empty cache of the batch `input_ids` has, and read through a Gather by the
    `beam_idx` input (which sequence of the batch each row continues), as OpenVINO GenAI's models are. That
    Gather is what the CPU plugin's stateful attention fusion looks for: with it, attention reads and appends
    the cache in place (u8 by default) instead of concatenating it anew at every step."""
    ov = deps.openvino()  # exit 4, naming the extra, when OpenVINO is missing
    from openvino import opset13 as ops
    from openvino._offline_transformations import apply_make_stateful_transformation

    batch_dim = ov_model.input("input_ids").get_partial_shape()[0]
    beam_idx = ops.parameter(ov.PartialShape([batch_dim]), ov.Type.i32, name="beam_idx")
    beam_idx.output(0).get_tensor().set_names({"beam_idx"})
    ov_model.add_parameters([beam_idx])
    for name in (f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")):
        port = ov_model.input(name)
        consumers = list(port.get_target_inputs())
        gather = ops.gather(port, beam_idx, ops.constant(0))
        for consumer in consumers:
            consumer.replace_source_output(gather.output(0))
    ov_model.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(ov_model, {f"past_key_values.{i}.{kv}": f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")})
    batch = ops.gather(ops.shape_of(ov_model.input("input_ids"), output_type="i64"), ops.constant([0]), ops.constant(0))
    for op in ov_model.get_ops():
        if op.get_type_name() == "ReadValue":
            shape = op.get_output_partial_shape(0)
            dims = [batch if k == 0 else ops.constant(np.array([shape[k].get_min_length()], np.int64)) for k in range(shape.rank.get_length())]
            op.set_arguments([ops.broadcast(ops.constant(0.0, dtype=op.get_output_element_type(0)), ops.concat(dims, axis=0))])
    ov_model.validate_nodes_and_infer_types()
    return ov_model


class OvLM(LM):
    """`model_file`: another IR of the folder than lm.json's (the export's FP32 one); an IR that still takes the cache
    as inputs is made stateful in memory. `kv_cache`: the precision OpenVINO keeps the cache in, always set (its CPU
    plugin would otherwise choose u8 by itself); by default what lm.json records, else f32."""

    def __init__(self, folder: Path, meta: LMMeta, *, threads: int | None = None, last_only: bool = False,
                 model_file: str | None = None, kv_cache: str | None = None) -> None:
        super().__init__()
        ov = deps.openvino()
        self.kv_cache = kv_cache or meta.extra.get("kv_cache") or "f32"
        if self.kv_cache not in KV_CACHE:
            raise UsageError(f"{folder}/{META} asks for a {self.kv_cache!r} KV cache", hint=f"use one of {', '.join(KV_CACHE)}")
        # set, never left to the device: on a CPU with bf16 OpenVINO would otherwise run the float parts in bf16
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": self.kv_cache}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.meta, self.precision, self.last_only = meta, "fp32", last_only
        core = ov.Core()
        model = core.read_model(str(folder / (model_file or meta.model)))
        if any("past_key_values.0.key" in i.get_names() for i in model.inputs):
            model = stateful(model, meta.layers)
        self.compiled = core.compile_model(slice_before_head(model) if last_only else model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self._logits = self.compiled.output("logits")
        self._beam_idx = any("beam_idx" in i.get_names() for i in self.compiled.inputs)
        self.fused_attention = sum(1 for op in self.compiled.get_runtime_model().get_ops()
                                   if op.get_rt_info()["layerType"].astype(str) == "ScaledDotProductAttention")

    def reset(self) -> None:
        super().reset()
        self.request.reset_state()

    def step(self, ids: np.ndarray) -> np.ndarray:
        feeds = self._feeds(ids)
        if self._beam_idx:
            feeds["beam_idx"] = np.zeros(1, np.int32)  # one sequence: row 0 continues row 0
        # no copies in and out but the logits' own (1.7 ms of a 17 ms INT8 decode step of SmolLM2-135M, measured)
        self.request.infer(feeds, share_inputs=True, share_outputs=True)
        self.position += int(ids.size)
        return self.request.get_tensor(self._logits).data[0].copy()


class TrtLM(LM):
    """A TensorRT decoder engine (lm.json format "tensorrt"). Needs TensorRT, cuda-python and an NVIDIA GPU."""

    def __init__(self, folder: Path, meta: LMMeta, *, threads: int | None = None, last_only: bool = False) -> None:
        super().__init__()
        from edgekit.backends import tensorrt_cuda
        from edgekit.backends.tensorrt import feed_for

        trt = deps.tensorrt()
        tensorrt_cuda.check_cuda_matches_tensorrt()
        self._feed_for = feed_for  # imported once, not in every step
        self.meta, self.last_only = meta, last_only
        self.precision = str(meta.extra.get("precision", "fp32"))
        self.capacity = int(meta.extra.get("max_context", 0))
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # kept: the engine is not to outlive its runtime
        engine = self._runtime.deserialize_cuda_engine((folder / meta.model).read_bytes())
        if engine is None:
            raise UsageError(f"{folder / meta.model} does not deserialize with TensorRT {trt.__version__}",
                             hint="rebuild it on this device with `edgekit lm compile --target tensorrt`")
        self._engine = engine
        self._buffers = tensorrt_cuda.DeviceBuffers()
        stream = self._buffers.stream_handle
        self._contexts = []
        for p in range(engine.num_optimization_profiles):  # prefill, decode
            ctx = engine.create_execution_context()
            if not ctx.set_optimization_profile_async(p, stream):  # returns bool (pyCore.cpp release/10.0)
                raise BackendUnavailable(f"TensorRT could not select optimisation profile {p} of {folder / meta.model}")
            self._contexts.append(ctx)
        self._buffers.synchronize()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = {n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
        self._dtype = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self._past, self._present = past_names(meta.layers), present_names(meta.layers)
        if self._dtype[self._past[0]] != self._dtype[self._present[0]]:
            raise UsageError(f"{folder / meta.model} reads its cache as {self._dtype[self._past[0]]} and writes it as {self._dtype[self._present[0]]}",
                             hint="rebuild it with `edgekit lm compile` (the cache stays FP32)")
        self.last_position = meta.extra.get("logits") == "last"
        if self.last_position and not last_only:
            raise UsageError(f"{folder} computes the last position's logits only (what generation needs)",
                             hint="check perplexity on the ONNX folder it was built from (the same graph, on ONNX Runtime)")
        kv_bytes = meta.kv_heads * max(self.capacity, 1) * meta.head_dim * self._dtype[self._past[0]].itemsize
        # two whole-context buffers per cache tensor: side s holds the past, side 1 - s receives the present
        self._kv = [[self._buffers.pointer(f"kv{side}.{k}", kv_bytes) for k in range(len(self._past))] for side in (0, 1)]
        self._side = 0
        self.info = {"backend": "tensorrt", "version": trt.__version__, "precision": self.precision, **tensorrt_cuda.device_info()}

    def reset(self) -> None:
        super().reset()
        self._side = 0

    def step(self, ids: np.ndarray) -> np.ndarray:
        s = int(ids.size)
        if self.position + s > self.capacity:
            raise UsageError(f"the sequence would reach {self.position + s} tokens; this engine holds {self.capacity}",
                             hint="compile it again with a larger --max-context")
        ctx = self._contexts[1 if s == 1 and len(self._contexts) > 1 else 0]
        keep = []  # host arrays stay alive until the stream has copied them
        for name, value in self._feeds(ids).items():
            if name not in self._inputs:
                continue
            value = self._feed_for(name, value, self._dtype[name])
            keep.append(value)
            if not ctx.set_input_shape(name, tuple(value.shape)):
                raise UsageError(f"{name} of shape {list(value.shape)} is outside the engine's profile",
                                 hint="compile it again with a larger --max-prompt or --max-context")
            ctx.set_tensor_address(name, self._buffers.upload(name, value))
        past_shape = (1, self.meta.kv_heads, self.position, self.meta.head_dim)
        for k, (past, present) in enumerate(zip(self._past, self._present)):
            if not ctx.set_input_shape(past, past_shape):
                raise UsageError(f"a past of {self.position} tokens is outside the engine's profile", hint="compile it again with a larger --max-context")
            ctx.set_tensor_address(past, self._kv[self._side][k])
            ctx.set_tensor_address(present, self._kv[1 - self._side][k])
        shape = tuple(ctx.get_tensor_shape("logits"))  # [1, s, vocab], or [1, 1, vocab] from the last position only
        nbytes = int(np.prod(shape)) * self._dtype["logits"].itemsize
        ctx.set_tensor_address("logits", self._buffers.pointer("logits", nbytes))
        if not ctx.execute_async_v3(self._buffers.stream_handle):
            raise BackendUnavailable("TensorRT could not run the decoder step (execute_async_v3 returned False; see its log above)")
        rows = 1 if self.last_only else shape[1]
        logits = np.empty((rows, shape[-1]), self._dtype["logits"])
        self._buffers.download("logits", logits, offset=(shape[1] - rows) * shape[-1] * self._dtype["logits"].itemsize)
        self._buffers.synchronize()
        del keep
        self._side = 1 - self._side
        self.position += s
        return logits.astype(np.float32, copy=False)

    def close(self) -> None:
        """Free the GPU memory now: the contexts, the engine, the cache and the stream."""
        self._contexts = []
        self._engine = None
        if getattr(self, "_buffers", None) is not None:
            self._buffers.close()
            self._buffers = None

    def __del__(self) -> None:  # a reload (the paired gate, optimize) drops the old instance: its GPU memory goes with it
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit CUDA may already be gone
            pass


def load_lm(folder: str | Path, *, threads: int | None = None, last_only: bool = False) -> LM:
    """The runner for an exported or weight-compressed LM folder (`lm.json` says which runtime). `last_only`:
    `step` returns the last position's logits only ([1, vocab]), all generation needs; the check wants them all."""
    folder = Path(folder)
    meta = read_meta(folder)
    if meta.format == "onnx":
        return OrtLM(folder, meta, threads=threads, last_only=last_only)
    if meta.format == "openvino":
        return OvLM(folder, meta, threads=threads, last_only=last_only)
    if meta.format == "tensorrt":
        return TrtLM(folder, meta, threads=threads, last_only=last_only)
    raise UsageError(f"{folder}/{META} names an unknown format {meta.format!r}", hint="re-export it with this edgekit")
