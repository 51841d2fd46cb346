"""Decoders on TensorRT: plain TensorRT, the KV cache as the engine's inputs and outputs, kept on the GPU.

- Weights (`edgekit lm quantize --target tensorrt`): weight-only quantization as TensorRT reads it from ONNX and as
  NVIDIA ModelOpt's ONNX INT4 exporter writes it: each constant MatMul weight [K, N] becomes an integer initializer
  and a `DequantizeLinear` that feeds the MatMul's second input directly (modelopt/onnx/export/int4_exporter.py
  rewrites DQ -> Reshape -> Transpose -> MatMul into exactly that). INT4: symmetric (TensorRT's IDequantizeLayer:
  "Only symmetric quantization is supported", NvInfer.h release/10.13 lines 5513-5579, release/11.1 lines
  5493-5559), blocks along K of 64 or 128 (the "Quantization Schemes" page of TensorRT's documentation: "The supported
  block sizes are {64, 128}"), `axis=0` written out (the parser's default axis changed after 10.1), opset 21.
  INT8: one scale per output channel (`axis=1`, as ModelOpt's INT8 layers). The graph is made by ONNX Runtime's
  `MatMulNBitsQuantizer` in its QDQ format for INT4; INT8 per channel is a few lines of numpy here.
  The same graph runs on ONNX Runtime, so the perplexity check measures what TensorRT will build, here on the CPU.
- Engine (`edgekit lm compile --target tensorrt`): two optimisation profiles, prefill (1 to `max_prompt` new
  tokens) and decode (1 token), both with a past of 0 to `max_context - 1` (a zero dimension is allowed:
  "0 <= minDims.d[i]", NvInferRuntime.h IOptimizationProfile::setDimensions, release/10.13 line 2684).
- Runtime (`edgekit.llm.runtime.TrtLM`): one execution context per profile; two device buffers per cache tensor, each the whole
  context, swapped every step (the step reads the past from one and writes the present into the other: one address
  bound as both an input and an output is only defined for TensorRT's KVCacheUpdate layer, ICudaEngine::
  getAliasedInputTensor, release/11.1 lines 3145-3161).

Not verified here (no NVIDIA GPU in this workplace): whether TensorRT keeps INT8 weight-only weights in INT8 in memory
or folds them to the activations' type, and the speed of either. For LLM serving NVIDIA points to TensorRT-LLM and,
on Jetson Thor, TensorRT Edge-LLM (its own plugins for INT4 GEMM and attention); this path is for a decoder that
must run under plain TensorRT beside the rest of an application's engines.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import deps
from edgekit.errors import BackendUnavailable, UsageError
from edgekit.llm.runtime import META, TOKENIZER_FILES, LMMeta, read_meta

INT4_BLOCKS = (64, 128)
OPSET = 21  # DequantizeLinear with int4 and block_size
STANDARD_DOMAINS = ("", "ai.onnx")
PRECISIONS = ("fp16", "fp32")


def _weight_matmuls(model: Any, exclude: set[str]) -> list[tuple[Any, Any]]:
    """(MatMul node, its 2-D constant weight initializer) for each MatMul whose second input is a weight."""
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type == "MatMul" and n.name not in exclude and n.input[1] in inits and len(inits[n.input[1]].dims) == 2:
            out.append((n, inits[n.input[1]]))
    return out


def foreign_ops(model: Any) -> list[str]:
    """Op types outside the standard ONNX domain (ONNX Runtime's fused GroupQueryAttention and the like)."""
    return sorted({f"{n.domain}.{n.op_type}" for n in model.graph.node if n.domain not in STANDARD_DOMAINS})


def load_at_opset(path: Path, opset: int = OPSET) -> Any:
    """The ONNX model at `path` at `opset` of the standard domain, converted op by op by ONNX's version converter
    (ReduceMean's axes become an input at 18, for instance), then its weights read. The graph is converted without its
    weights: the converter serializes the model, which protobuf cannot do past 2 GB (a decoder of ~500 M parameters)."""
    import onnx
    from onnx import version_converter
    from onnx.external_data_helper import load_external_data_for_model

    model = onnx.load(str(path), load_external_data=False)
    current = next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), 0)
    if current < opset:
        model = version_converter.convert_version(model, opset)  # ONNX Runtime's check run validates the result
    load_external_data_for_model(model, str(path.parent))
    return model


def int8_per_channel(model: Any, exclude: set[str]) -> int:
    """Each constant MatMul weight [K, N] becomes int8 with one symmetric scale per output channel, and a
    DequantizeLinear(axis=1) feeding the MatMul. Returns how many were quantized."""
    from onnx import helper, numpy_helper

    g = model.graph
    done = 0
    made: dict[str, str] = {}  # a weight shared by several MatMuls is quantized once
    for node, init in _weight_matmuls(model, exclude):
        if init.name in made:
            node.input[1] = made[init.name]
            continue
        w = numpy_helper.to_array(init).astype(np.float32)
        scale = np.abs(w).max(axis=0) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        qname, sname, out = f"{init.name}_DQ_Q8", f"{init.name}_DQ_scales", f"{init.name}_DQ_Q8_output"
        g.initializer.extend([numpy_helper.from_array(q, qname), numpy_helper.from_array(scale, sname)])
        index = list(g.node).index(node)
        g.node.insert(index, helper.make_node("DequantizeLinear", [qname, sname], [out], name=f"{node.name}_DQ_Q8", axis=1))
        node.input[1] = made[init.name] = out
        done += 1
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return done


def ragged_blocks(model: Any, group_size: int, exclude: set[str]) -> list[str]:
    """MatMuls whose input channels K are not a multiple of `group_size` (TensorRT's block scales are K / block)."""
    return [f"{n.name} (K={init.dims[0]})" for n, init in _weight_matmuls(model, exclude) if init.dims[0] % group_size]


def weight_only(model: Any, *, bits: int, group_size: int, exclude: set[str]) -> tuple[Any, int]:
    """The TensorRT weight-only graph of the FP32 decoder `model` (at opset 21, `load_at_opset`, with its weights),
    and the count of quantized MatMuls."""
    if bits == 8:
        return model, int8_per_channel(model, exclude)
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=group_size, is_symmetric=True, bits=4, quant_format=QuantFormat.QDQ)
    q = MatMulNBitsQuantizer(model, bits=4, block_size=group_size, is_symmetric=True, nodes_to_exclude=sorted(exclude), algo_config=config)
    q.process()
    out = q.model.model
    return out, sum(1 for n in out.graph.node if n.op_type == "DequantizeLinear")


def graph_problems(model: Any) -> list[str]:
    """What TensorRT's ONNX parser or its weight-only rules would refuse in the decoder graph `model` (loaded
    without its weights is enough): foreign ops, and each DequantizeLinear that is not a symmetric weight-only one
    of the form described above."""
    from onnx import TensorProto

    problems = [f"{op} is not a standard ONNX operator" for op in foreign_ops(model)]
    inits = {i.name: i for i in model.graph.initializer}
    if len(inits) < len(model.graph.initializer):
        problems.append("two initializers share a name")
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    opset = next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), 0)
    for n in model.graph.node:
        if n.op_type != "DequantizeLinear":
            continue
        attrs = {a.name: a.i for a in n.attribute}
        w = inits.get(n.input[0])
        if w is None:
            problems.append(f"{n.name}: dequantizes a computed tensor; weight-only DequantizeLinear reads a weight")
            continue
        if len(n.input) > 2 and n.input[2]:
            zp = inits.get(n.input[2])
            if zp is None or np.any(_array(zp) != 0):
                problems.append(f"{n.name}: a non-zero zero point (TensorRT dequantizes symmetric weights only)")
        users = consumers.get(n.output[0], [])
        if not users or any(u.op_type != "MatMul" or list(u.input).index(n.output[0]) != 1 for u in users):
            problems.append(f"{n.name}: its output must feed MatMul weights (the second input) and nothing else")
        if w.data_type == TensorProto.INT4:
            if opset < OPSET:
                problems.append(f"{n.name}: int4 weights need opset {OPSET} (the model has {opset})")
            if attrs.get("axis", 1) != 0 or attrs.get("block_size") not in INT4_BLOCKS:
                problems.append(f"{n.name}: int4 needs blocks of {' or '.join(map(str, INT4_BLOCKS))} along K (axis 0); "
                                f"it has axis {attrs.get('axis', 1)}, block_size {attrs.get('block_size')}")
            elif w.dims and w.dims[0] % attrs["block_size"]:
                problems.append(f"{n.name}: K={w.dims[0]} is not a multiple of its block of {attrs['block_size']}")
        elif w.data_type == TensorProto.INT8:
            if attrs.get("block_size"):
                problems.append(f"{n.name}: int8 weights take one scale per output channel, not blocks")
        else:
            problems.append(f"{n.name}: weights of ONNX type {TensorProto.DataType.Name(w.data_type)}; TensorRT's weight-only types are INT4 and INT8")
    return problems


def _array(init: Any) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(init)


@dataclasses.dataclass(frozen=True)
class LMEngineOptions:
    """How `compile_lm` builds: the longest sequence (prompt and output), the longest prompt, the activations."""

    max_context: int = 2048
    max_prompt: int | None = None  # None: max_context
    opt_prompt: int = 128  # the prefill shape TensorRT tunes for
    precision: str = "fp16"
    workspace_mib: int = 2048
    timing_cache: str = ""

    def __post_init__(self) -> None:
        if self.max_context < 2:
            raise UsageError(f"--max-context {self.max_context}: a decoder needs at least 2 positions", hint="use e.g. 2048")
        if self.max_prompt is not None and not 1 <= self.max_prompt <= self.max_context:
            raise UsageError(f"--max-prompt {self.max_prompt} must be between 1 and --max-context {self.max_context}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision {self.precision!r} for a TensorRT decoder", hint=f"use one of {', '.join(PRECISIONS)}")


def lm_profiles(meta: LMMeta, inputs: list[str], options: LMEngineOptions) -> list[dict[str, list[list[int]]]]:
    """The two optimisation profiles, prefill then decode, for a decoder with these graph `inputs`: each gives every
    input its [min, opt, max] shape. The past is 0 to max_context - 1 long; the mask covers past and new tokens."""
    ctx = options.max_context
    prompt = min(options.max_prompt or ctx, ctx)
    opt_prompt = min(options.opt_prompt, prompt)
    kv = (1, meta.kv_heads)

    def profile(new: tuple[int, int, int], past: tuple[int, int, int]) -> dict[str, list[list[int]]]:
        shapes: dict[str, list[list[int]]] = {}
        for name in inputs:
            if name in ("input_ids", "position_ids"):
                shapes[name] = [[1, new[0]], [1, new[1]], [1, new[2]]]
            elif name == "attention_mask":
                shapes[name] = [[1, new[0] + past[0]], [1, new[1] + past[1]], [1, min(new[2] + past[2], ctx)]]
            elif name.startswith("past_key_values."):
                shapes[name] = [[*kv, p, meta.head_dim] for p in past]
            else:
                raise UsageError(f"the decoder graph has an input {name!r} that edgekit cannot give a shape",
                                 hint="export it with: edgekit lm export SOURCE -o FOLDER --onnx-graph trace")
        return shapes

    prefill = profile((1, opt_prompt, prompt), (0, 0, ctx - 1))
    decode = profile((1, 1, 1), (0, min(ctx - 1, opt_prompt), ctx - 1))
    return [prefill, decode]


def compile_lm(src: str | Path, out: str | Path, *, options: LMEngineOptions = LMEngineOptions()) -> dict[str, Any]:
    """Build a TensorRT engine for the LM folder `src` (an export with the traced graph, or its `--target tensorrt`
    weights) into the folder `out`: model.engine, the tokenizer, lm.json (format "tensorrt") and the source's check."""
    import onnx

    from edgekit.backends import tensorrt_compat as compat
    from edgekit.backends.base import CompileRequest
    from edgekit.backends.tensorrt import TensorRtBackend, TensorRtOptions
    from edgekit.files import atomic_dir
    src, out = Path(src), Path(out)
    meta = read_meta(src)
    if meta.format != "onnx":
        raise UsageError(f"{src} holds a {meta.format} model; a TensorRT engine is built from an ONNX LM folder",
                         hint="give the folder of `edgekit lm quantize --target tensorrt` or of `edgekit lm export --onnx-graph trace`")
    graph = onnx.load(str(src / meta.model), load_external_data=False)
    problems = graph_problems(graph)
    if problems:
        hint = ("export with --onnx-graph trace, then `edgekit lm quantize --target tensorrt`" if foreign_ops(graph)
                else "quantize the FP32 export again with `edgekit lm quantize --target tensorrt`")
        raise UsageError(f"{src} is not a graph TensorRT builds: {problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""), hint=hint)
    inputs = [i.name for i in graph.graph.input if i.name not in {x.name for x in graph.graph.initializer}]
    profiles = lm_profiles(meta, inputs, options)
    del graph
    trt = deps.tensorrt()  # exit 4 naming the extra: nothing below runs without TensorRT
    backend = TensorRtBackend()
    trt_options = TensorRtOptions(workspace_mib=options.workspace_mib, timing_cache=options.timing_cache)
    request = CompileRequest(precision=options.precision, device="GPU", options=trt_options)
    backend.check_version(compat.parse_version(trt.__version__), request)
    if options.precision == "fp16":
        deps.modelopt_autocast()
    st = backend.status()
    if not st.available:
        raise BackendUnavailable(st.reason or "TensorRT is not usable here")
    from edgekit.backends.tensorrt_build import build_engine
    from edgekit.llm.runtime import onnx_slice_before_head

    with atomic_dir(out) as tmp:
        # the LM head on the last position only, as the ONNX Runtime and OpenVINO runners do: a 2048-token prefill
        # would otherwise compute (and hold) 2048 x vocab logits; the graph reads its weights from the source folder
        graph_file = tmp / "graph.onnx"
        graph_file.write_bytes(onnx_slice_before_head(str(src / meta.model)))
        links = []
        for f in src.iterdir():
            if f.name.startswith(Path(meta.model).name) and f.name != meta.model:  # model.onnx.data
                (tmp / f.name).symlink_to(f.resolve())
                links.append(tmp / f.name)
        try:
            built = build_engine(trt, graph_file, tmp, request=request, options=trt_options, profiles=profiles)
        finally:
            for f in (graph_file, *links):
                f.unlink(missing_ok=True)
        for name in (*TOKENIZER_FILES, "quantize.json"):
            if (src / name).exists():
                shutil.copy2(src / name, tmp / name)
        new = dataclasses.replace(meta, format="tensorrt", model=built["entry"], extra={
            **meta.extra, "precision": options.precision, "max_context": options.max_context, "logits": "last",
            "max_prompt": options.max_prompt or options.max_context, "tensorrt": built["versions"], "settings": built["settings"]})
        (tmp / META).write_text(json.dumps(new.to_dict(), indent=2))
    return {"out": str(out), "weights": meta.weights, "precision": options.precision, "max_context": options.max_context,
            "profiles": profiles, **built}
