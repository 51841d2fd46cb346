"""Generative decoders (causal language models) on the device: export with the KV cache as inputs and
outputs, weight-only quantization checked by the LM's own measures, generation benchmarks in tokens.

The pipeline is the one every model takes, in the units a decoder is judged by:

- `export_causal_lm` (source -> ONNX folder): one graph for prefill and decode (`past_key_values.N.key/value`
  in, `present.N.key/value` out, past length 0 at the first step), parity against PyTorch on real text;
- `compress_weights_lm` (ONNX folder -> ONNX Runtime MatMulNBits folder or OpenVINO stateful IR folder):
  weight-only INT8/INT4 in groups, by ONNX Runtime's and NNCF's own quantizers, then the check;
- `check_lm`: perplexity on held-out real text and greedy-continuation agreement with FP32, against a bar;
- `bench_generation`: time to first token, time per output token (p50/p90/p99), tokens/s, peak memory,
  against budgets.

Every module imports without torch, transformers or OpenVINO (they load through `edgekit.deps`).
"""
from __future__ import annotations

from edgekit.llm.bench import GenerationOptions, bench_generation
from edgekit.llm.check import LMBar, check_lm
from edgekit.llm.export import export_causal_lm
from edgekit.llm.runtime import load_lm
from edgekit.llm.weights import WeightOptions, compress_weights_lm

__all__ = ["GenerationOptions", "LMBar", "WeightOptions", "bench_generation", "check_lm", "compress_weights_lm",
           "export_causal_lm", "load_lm"]
