"""Weight-only quantization of an exported decoder, by the runtimes' own quantizers, checked before it is kept.

- ONNX Runtime: `MatMulNBitsQuantizer` replaces each MatMul with a constant weight by `MatMulNBits`
  (4 or 8 bits in blocks of `group_size` along the input channels, 32 by default as onnxruntime-genai's builder; `accuracy_level=4` lets the CPU kernel
  quantize the activations to int8 on the fly, its fastest path). INT4 `method="hqq"`: ONNX Runtime's half-quadratic
  quantizer (a zero point and scale fitted per group, no data).
- OpenVINO: the ONNX model becomes stateful (the KV cache lives inside the infer request, as OpenVINO
  GenAI's models do), then NNCF `compress_weights` (INT4/INT8, groups; with AWQ and scale estimation on
  calibration text when `data_aware`). NNCF keeps the embeddings and the last layer at INT8 in INT4 modes.
  `bits=None` gives the FP32 stateful IR, saved uncompressed (OpenVINO would otherwise save it in fp16).
- TensorRT: the weight-only ONNX graph TensorRT builds (`edgekit.llm.tensorrt`), checked here on ONNX Runtime.

The result is checked (`edgekit.llm.check`) against the FP32 export on held-out text; below the bar nothing is
written and the error names the measured figures and what to try (exit 3).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import deps
from edgekit.errors import GateFailed, UsageError
from edgekit.files import atomic_dir
from edgekit.llm import text as texts
from edgekit.llm.check import LMBar, check_lm
from edgekit.llm.runtime import KV_CACHE, META, TOKENIZER_FILES, LMMeta, load_lm, ov_lm_head, read_meta, stateful
from edgekit.llm.tensorrt import INT4_BLOCKS
from edgekit.progress import status

TARGETS = ("onnxruntime", "openvino", "tensorrt")


@dataclasses.dataclass(frozen=True)
class WeightOptions:
    target: str = "onnxruntime"
    bits: int | None = 4  # 4, 8, or None (FP32: OpenVINO's stateful IR only)
    group_size: int | None = None  # None: 32 on ONNX Runtime (onnxruntime-genai's choice), 128 on OpenVINO (NNCF's), 64 on TensorRT
    symmetric: bool = True
    lm_head: str = "quantize"  # "quantize" or "float"
    data_aware: bool = False  # OpenVINO: AWQ + scale estimation on calibration text
    method: str = "rtn"  # ONNX Runtime INT4: "rtn" (round to nearest) or "hqq" (half-quadratic, zero points, no data)
    kv_cache: str = "u8"  # OpenVINO: the cache's precision (the check measures its effect with the weights')
    text: str = "python-docs"
    window: int = 256
    held_out: int = 8
    calibration: int = 32
    bar: LMBar = LMBar()
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.group_size is None:
            # measured on SmolLM2-135M, INT8 on ONNX Runtime: g32 +0.6% perplexity, g64 +1.3%, g128 +1.2%
            # TensorRT: 64 rather than ModelOpt's 128, which leaves a part block wherever K is an odd multiple of 64
            # (SmolLM2-135M's 576), and TensorRT's block scales are K / block
            object.__setattr__(self, "group_size", {"onnxruntime": 32, "tensorrt": 64}.get(self.target, 128))

    def label(self) -> str:
        if self.bits is None:
            return "fp32"
        # NNCF's INT8 and TensorRT's: one scale per output channel
        groups = "channel" if (self.bits == 8 and self.target in ("openvino", "tensorrt")) else f"g{self.group_size}"
        scheme = "hqq" if self.method == "hqq" else ("sym" if self.symmetric else "asym")  # HQQ has its zero points
        return f"int{self.bits}-{groups}-{scheme}" + ("-awq" if self.data_aware else "") + ("-head-float" if self.lm_head == "float" else "")


def check_weight_options(o: WeightOptions) -> None:
    if o.target not in TARGETS:
        raise UsageError(f"unknown target {o.target!r} for a decoder", hint=f"use one of {', '.join(TARGETS)}")
    if o.bits not in (4, 8, None):
        raise UsageError(f"--bits {o.bits} is not supported", hint="use 4 or 8")
    if o.bits is None and o.target == "onnxruntime":
        raise UsageError("an FP32 ONNX Runtime model is the export itself", hint="bench the export folder, or give --bits 4 or 8")
    if o.bits is None and o.target == "tensorrt":
        raise UsageError("an FP32 TensorRT engine is built from the export itself", hint="edgekit lm compile EXPORT -o OUT --target tensorrt, or give --bits 4 or 8")
    if o.target == "tensorrt" and not o.symmetric:
        raise UsageError("TensorRT dequantizes symmetric weights only (no zero point)", hint="drop --asymmetric")
    if o.target == "tensorrt" and o.bits == 4 and o.group_size not in INT4_BLOCKS:
        raise UsageError(f"TensorRT's INT4 weights are symmetric in blocks of {' or '.join(map(str, INT4_BLOCKS))}"
                         f" (asked: --group-size {o.group_size})", hint="use --group-size 64 or 128")
    if o.group_size < 16 or o.group_size & (o.group_size - 1):
        raise UsageError(f"--group-size {o.group_size} must be a power of two >= 16", hint="use 32, 64 or 128")
    if o.held_out < 1 or o.window < 16:
        raise UsageError(f"--held-out {o.held_out} --window {o.window}: the check needs at least 1 window of 16 tokens",
                         hint="the defaults are 8 windows of 256 tokens")
    if o.bar.prompt_tokens >= o.window:
        raise UsageError(f"--window {o.window} must be longer than the greedy check's {o.bar.prompt_tokens}-token prompt", hint="use --window 64 or more")
    if o.lm_head not in ("quantize", "float"):
        raise UsageError(f"--lm-head {o.lm_head!r}", hint="use quantize or float")
    if o.kv_cache not in KV_CACHE:
        raise UsageError(f"--kv-cache {o.kv_cache!r}", hint=f"use one of {', '.join(KV_CACHE)}")
    if o.method not in ("rtn", "hqq"):
        raise UsageError(f"--method {o.method!r}", hint="use rtn or hqq")
    if o.method == "hqq" and (o.target != "onnxruntime" or o.bits != 4):
        raise UsageError("--method hqq is ONNX Runtime's INT4 quantizer (HQQWeightOnlyQuantConfig)", hint="use it with --target onnxruntime --bits 4")
    if o.data_aware and o.target != "openvino":  # ModelOpt's AWQ for TensorRT needs a GPU
        raise UsageError("data-aware weight quantization (AWQ, scale estimation) runs through NNCF on OpenVINO",
                         hint="drop --data-aware, or use --target openvino")


def _lm_head_node(model: Any) -> str | None:
    producers = {o: n for n in model.graph.node for o in n.output}
    node = producers.get("logits")
    while node is not None and node.op_type not in ("MatMul", "Gemm"):
        node = producers.get(node.input[0])
    return node.name if node is not None else None


def _onnxruntime(src: Path, dest: Path, meta: LMMeta, o: WeightOptions) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    # its import sets the root logger to INFO and it logs every node; an API caller gets its lines only with edgekit's -v
    if not logging.getLogger("edgekit").isEnabledFor(logging.DEBUG):
        logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)

    model = onnx.load(str(src / meta.model))
    exclude = [n for n in [_lm_head_node(model)] if n] if o.lm_head == "float" else []
    if o.method == "hqq":
        from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig

        config: Any = HQQWeightOnlyQuantConfig(block_size=o.group_size, bits=4)
    else:
        config = DefaultWeightOnlyQuantConfig(block_size=o.group_size, is_symmetric=o.symmetric, bits=o.bits or 4, accuracy_level=4)
    q = MatMulNBitsQuantizer(model, bits=o.bits or 4, block_size=o.group_size, is_symmetric=o.symmetric, accuracy_level=4,
                             nodes_to_exclude=exclude, algo_config=config)
    import warnings

    with warnings.catch_warnings():  # HQQ hands torch a read-only numpy view of each weight, and torch warns of it
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        q.process()
    out = q.model.model
    for node in out.graph.node:  # HQQ's nodes carry no accuracy_level: the int8-activation CPU kernel, as RTN's
        if node.op_type == "MatMulNBits" and not any(a.name == "accuracy_level" for a in node.attribute):
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", 4))
    onnx.save(out, str(dest / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    quantized = sum(1 for n in out.graph.node if n.op_type == "MatMulNBits")
    return {"quantizer": "onnxruntime MatMulNBitsQuantizer" + (" (HQQ)" if o.method == "hqq" else ""), "quantized_matmuls": quantized, "kept_float": exclude,
            "model": "model.onnx", "format": "onnx"}


def _tensorrt(src: Path, dest: Path, meta: LMMeta, o: WeightOptions) -> dict[str, Any]:
    """The weight-only graph TensorRT builds (edgekit.llm.tensorrt); it runs on ONNX Runtime for the check."""
    import onnx

    from edgekit.llm import tensorrt as trt_lm

    graph = onnx.load(str(src / meta.model), load_external_data=False)
    foreign = trt_lm.foreign_ops(graph)
    if foreign:
        raise UsageError(f"{src} was made with ONNX Runtime's fused operators ({', '.join(foreign[:3])}), which TensorRT's parser does not read",
                         hint="export it again with --onnx-graph trace, then quantize that folder")
    del graph
    model = trt_lm.load_at_opset(src / meta.model)
    exclude = {n for n in [_lm_head_node(model)] if n} if o.lm_head == "float" else set()
    ragged = trt_lm.ragged_blocks(model, o.group_size, exclude) if o.bits == 4 else []
    if ragged:
        fits = [b for b in trt_lm.INT4_BLOCKS if not trt_lm.ragged_blocks(model, b, exclude)]
        raise UsageError(f"--group-size {o.group_size} does not divide the input channels of {ragged[0]}" + (f" (+{len(ragged) - 1} more)" if len(ragged) > 1 else ""),
                         hint=f"use --group-size {fits[0]}" if fits else "use --bits 8 (one scale per output channel)")
    out, quantized = trt_lm.weight_only(model, bits=o.bits or 8, group_size=o.group_size, exclude=exclude)
    problems = trt_lm.graph_problems(out)
    if problems:  # edgekit's own graph breaking TensorRT's rules is a bug, not the user's input
        raise RuntimeError(f"the TensorRT weight-only graph breaks a rule: {problems[0]}")
    onnx.save(out, str(dest / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    how = f"int4 blocks of {o.group_size}, ONNX Runtime's MatMulNBitsQuantizer (QDQ)" if o.bits == 4 else "int8 per output channel"
    return {"quantizer": f"TensorRT weight-only DequantizeLinear ({how})", "quantized_matmuls": quantized, "kept_float": sorted(exclude),
            "model": "model.onnx", "format": "onnx", "opset": trt_lm.OPSET}


def _ov_lm_head(model: Any) -> str | None:
    node = ov_lm_head(model)
    return node.get_friendly_name() if node is not None else None


def _nncf_dataset(nncf: Any, windows: list[np.ndarray], meta: LMMeta) -> Any:
    """Each window a prefill from an empty cache. Fed to the model before it is made stateful: a stateful model
    would carry one window's cache into the next."""
    empty = np.zeros((1, meta.kv_heads, 0, meta.head_dim), np.float32)

    def feed(w: np.ndarray) -> dict[str, np.ndarray]:
        return {"input_ids": w[None], "attention_mask": np.ones((1, w.size), np.int64), "position_ids": np.arange(w.size, dtype=np.int64)[None],
                **{f"past_key_values.{i}.{kv}": empty for i in range(meta.layers) for kv in ("key", "value")}}
    return nncf.Dataset(windows, feed)


def _openvino(src: Path, dest: Path, meta: LMMeta, o: WeightOptions, calibration: list[np.ndarray]) -> dict[str, Any]:
    ov = deps.openvino()
    # the export's own OpenVINO IR (converted from PyTorch: attention stays one op the CPU plugin fuses with the
    # cache); from an older export folder without it, the ONNX graph (attention in pieces, slower decode)
    ir = meta.extra.get("openvino_model")
    graph = ir if ir and (src / ir).exists() else meta.model
    model = ov.Core().read_model(str(src / graph))
    info: dict[str, Any] = {"quantizer": None, "model": "model.xml", "format": "openvino", "graph": graph, "kv_cache": o.kv_cache}
    if o.bits is not None:
        nncf = deps.nncf()
        mode = {(4, True): "INT4_SYM", (4, False): "INT4_ASYM", (8, True): "INT8_SYM", (8, False): "INT8_ASYM"}[(o.bits, o.symmetric)]
        kw: dict[str, Any] = {"mode": getattr(nncf.CompressWeightsMode, mode)}
        head = _ov_lm_head(model) if o.lm_head == "float" else None
        if head:
            kw["ignored_scope"] = nncf.IgnoredScope(names=[head])
        if o.bits == 4:
            kw.update(group_size=o.group_size, ratio=1.0,
                      advanced_parameters=nncf.AdvancedCompressionParameters(group_size_fallback_mode=nncf.GroupSizeFallbackMode.ADJUST))
            if o.data_aware:
                kw.update(dataset=_nncf_dataset(nncf, calibration, meta), awq=True, scale_estimation=True, subset_size=len(calibration))
        model = nncf.compress_weights(model, **kw)
        info["quantizer"] = f"nncf.compress_weights({mode}" + (f", group_size={o.group_size}" if o.bits == 4 else "") + \
            (", awq, scale_estimation" if o.data_aware else "") + ")"
    ov.save_model(stateful(model, meta.layers), str(dest / "model.xml"), compress_to_fp16=False)
    return info


def compress_weights_lm(src: str | Path, out: str | Path, *, options: WeightOptions = WeightOptions()) -> dict[str, Any]:
    """Weight-only quantize the exported LM folder `src` into `out` for `options.target`, and check it. Exit 3
    (nothing written) when it misses the bar."""
    check_weight_options(options)
    src, out = Path(src), Path(out)
    meta = read_meta(src)
    if meta.format != "onnx" or meta.weights != "fp32":
        raise UsageError(f"{src} holds a {meta.weights} {meta.format} model; weight quantization starts from the FP32 export",
                         hint="give the folder `edgekit lm export` wrote")
    split = texts.token_windows(src, texts.corpus(options.text), window=options.window, held_out=options.held_out,
                                calibration=options.calibration)
    t0 = time.perf_counter()
    with atomic_dir(out) as tmp:
        with status(f"quantizing weights ({options.label()}, {options.target})"):
            info = (_onnxruntime(src, tmp, meta, options) if options.target == "onnxruntime"
                    else _tensorrt(src, tmp, meta, options) if options.target == "tensorrt"
                    else _openvino(src, tmp, meta, options, split.calibration))
        for name in TOKENIZER_FILES:
            if (src / name).exists():
                shutil.copy2(src / name, tmp / name)
        new = dataclasses.replace(meta, format=info["format"], model=info["model"], weights=options.label(),
                                  extra={**{k: v for k, v in meta.extra.items() if k != "openvino_model"}, "quantizer": info["quantizer"],
                                         "target": options.target, **({"kv_cache": info["kv_cache"]} if "kv_cache" in info else {})})
        (tmp / META).write_text(json.dumps(new.to_dict(), indent=2))
        quantize_s = time.perf_counter() - t0
        with status("checking perplexity and greedy agreement on held-out text"):
            check = check_lm(load_lm(src, threads=options.threads), load_lm(tmp, threads=options.threads), split.held_out, bar=options.bar)
        size = sum(f.stat().st_size for f in tmp.iterdir() if f.name.startswith("model."))
        src_size = sum(f.stat().st_size for f in src.iterdir() if f.name.startswith("model."))
        result = {"out": str(out), "target": options.target, "weights": options.label(), "quantize_s": quantize_s,
                  "model_bytes": size, "fp32_model_bytes": src_size, "text": {"source": options.text, **split.to_dict()},
                  "check": check, **{k: v for k, v in info.items() if k not in ("model", "format")}}
        if not check["meets_bar"]:
            hint = "nothing was written; try --bits 8" if options.bits == 4 else "nothing was written; keep the FP32 export"
            if options.bits == 4 and options.target == "onnxruntime" and options.method != "hqq":
                hint += ", --method hqq"
            if options.bits == 4 and options.group_size > (min(INT4_BLOCKS) if options.target == "tensorrt" else 16):
                hint += f", a smaller --group-size than {options.group_size}"
            if options.bits is not None and options.lm_head != "float":
                hint += ", or --lm-head float"
            raise GateFailed(f"{options.label()} misses the bar: {'; '.join(check['reasons'])}", hint=hint, result=result)
        (tmp / "quantize.json").write_text(json.dumps(result, indent=2, default=str))
    return result
