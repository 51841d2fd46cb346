"""Generation benchmarks the way a decoder is judged: time to first token (TTFT) for a prompt of a given
length, time per output token (TPOT) over the decode steps, tokens per second, and peak memory.

Each run starts from an empty cache: TTFT is the prefill of the prompt plus the choice of the first token;
each later token is one decode step, timed alone. Budgets are statistics of those samples with the same
confidence-interval decision as `edgekit bench` (pass when the interval's top is under the limit, fail when
its bottom is over, undecided between): `ttft=200ms` (p50), `ttft_p90=...`, `tpot=30ms` (p50),
`tpot_p99=50ms`.
"""
from __future__ import annotations

import dataclasses
import re
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import machine
from edgekit.bench.stats import bootstrap, budget_verdict, summary
from edgekit.errors import GateFailed, UsageError
from edgekit.llm import text as texts
from edgekit.llm.runtime import LM, load_lm, read_meta
from edgekit.progress import track

METRICS = ("ttft", "tpot")
STATS = ("p50", "p90", "p95", "p99", "mean", "max")


@dataclasses.dataclass(frozen=True)
class LMBudget:
    metric: str  # ttft or tpot
    stat: str
    ms: float

    @classmethod
    def parse(cls, text: str) -> LMBudget:
        m = re.fullmatch(r"\s*(ttft|tpot)(?:_(\w+))?\s*=\s*([0-9.]+)\s*(ms|s)\s*", text.lower())
        if not m or (m.group(2) or "p50") not in STATS:
            raise UsageError(f"bad generation budget {text!r}",
                             hint=f"write it like ttft=200ms or tpot_p99=50ms (metrics {', '.join(METRICS)}; statistics {', '.join(STATS)})")
        ms = float(m.group(3)) * (1000.0 if m.group(4) == "s" else 1.0)
        if ms <= 0:
            raise UsageError(f"bad generation budget {text!r}: must be > 0")
        return cls(m.group(1), m.group(2) or "p50", ms)

    def __str__(self) -> str:
        return f"{self.metric}_{self.stat}<={self.ms:g}ms"


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    prompt_tokens: int = 128
    new_tokens: int = 32
    runs: int = 5
    warmup: int = 1
    threads: int | None = None
    budgets: tuple[LMBudget, ...] = ()
    strict_undecided: bool = False
    confidence: float = 0.95
    text: str = "python-docs"


def _check(o: GenerationOptions) -> None:
    if o.prompt_tokens < 1 or o.new_tokens < 2 or o.runs < 1 or o.warmup < 0:
        raise UsageError("need --prompt-tokens >= 1, --new-tokens >= 2, --runs >= 1", hint="e.g. --prompt-tokens 128 --new-tokens 32 --runs 5")


def _decide(samples: np.ndarray, b: LMBudget, confidence: float) -> dict[str, Any]:
    st = bootstrap(samples, b.stat, confidence=confidence)
    verdict = budget_verdict(st, b.ms)
    return {"budget": str(b), "metric": b.metric, "stat": b.stat, "limit_ms": b.ms, "verdict": verdict, **st.to_dict()}


def time_generation(lm: LM, prompt: np.ndarray, new_tokens: int) -> tuple[float, list[float]]:
    """One greedy generation from an empty cache: (time to first token, [time of each later step]) in ms."""
    lm.reset()
    t0 = time.perf_counter()
    nxt = int(np.argmax(lm.step(prompt)[-1]))
    first = (time.perf_counter() - t0) * 1e3
    steps = []
    for _ in range(new_tokens - 1):
        s0 = time.perf_counter()
        nxt = int(np.argmax(lm.step(np.array([nxt], np.int64))[-1]))
        steps.append((time.perf_counter() - s0) * 1e3)
    return first, steps


def bench_generation(folder: str | Path, *, options: GenerationOptions = GenerationOptions()) -> dict[str, Any]:
    """Bench greedy generation of the LM in `folder`; exit 3 when a budget fails (or is undecided, if strict)."""
    _check(options)
    meta = read_meta(folder)
    ids = texts.encode(folder, texts.corpus(options.text))
    if ids.size < options.prompt_tokens:
        raise UsageError(f"the text has {ids.size} tokens, fewer than --prompt-tokens {options.prompt_tokens}", hint="give a longer text")
    prompt = ids[:options.prompt_tokens]
    t_load = time.perf_counter()
    lm = load_lm(folder, threads=options.threads, last_only=True)
    load_s = time.perf_counter() - t_load
    ttft, tpot, e2e = [], [], []
    for r in track(range(options.warmup + options.runs), label="generating", total=options.warmup + options.runs):
        first, steps = time_generation(lm, prompt, options.new_tokens)
        if r >= options.warmup:
            ttft.append(first)
            tpot.extend(steps)
            e2e.append((first + sum(steps)) / 1e3)
    samples = {"ttft": np.array(ttft), "tpot": np.array(tpot)}
    budgets = [_decide(samples[b.metric], b, options.confidence) for b in options.budgets]
    size = sum(f.stat().st_size for f in Path(folder).iterdir() if f.name.startswith("model."))
    result = {
        "model": str(folder), "weights": meta.weights, "format": meta.format, "precision": lm.precision, "kv_cache": getattr(lm, "kv_cache", "f32"),
        "runtime": "openvino" if meta.format == "openvino" else "onnxruntime",
        "prompt_tokens": options.prompt_tokens, "new_tokens": options.new_tokens, "runs": options.runs,
        "ttft_ms": summary(samples["ttft"], confidence=options.confidence),
        "tpot_ms": summary(samples["tpot"], confidence=options.confidence),
        "decode_tokens_per_s": float(1e3 / np.mean(samples["tpot"])),
        "tokens_per_s": float(options.new_tokens * len(e2e) / sum(e2e)),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "model_bytes": size, "load_s": load_s,
        "cpu": {"name": machine.cpu_name(), "int8_features": machine.cpu_features()},
        "threads": options.threads, "budgets": budgets,
    }
    failed = [b for b in budgets if b["verdict"] == "fail" or (options.strict_undecided and b["verdict"] == "undecided")]
    if failed:
        raise GateFailed("generation budget " + ", ".join(f"{b['budget']} {b['verdict']} ({b['stat']} {b['value']:.1f} ms)" for b in failed),
                         hint="a faster weight format (--bits 4), fewer threads' contention, or a budget this device can meet", result=result)
    return result
