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
import gc
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
from edgekit.llm.runtime import LM, RUNTIMES, load_lm, read_meta
from edgekit.progress import status_line, track

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


def check_options(o: GenerationOptions) -> None:
    if o.prompt_tokens < 1 or o.new_tokens < 2 or o.runs < 1 or o.warmup < 0:
        raise UsageError("need --prompt-tokens >= 1, --new-tokens >= 2, --runs >= 1", hint="e.g. --prompt-tokens 128 --new-tokens 32 --runs 5")


def decide_budget(samples: np.ndarray, b: LMBudget, confidence: float) -> dict[str, Any]:
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


def prompt_ids(folder: str | Path, options: GenerationOptions) -> np.ndarray:
    ids = texts.encode(folder, texts.corpus(options.text))
    if ids.size < options.prompt_tokens:
        raise UsageError(f"the text has {ids.size} tokens, fewer than --prompt-tokens {options.prompt_tokens}", hint="give a longer text")
    return ids[:options.prompt_tokens]


def _budgets_failed(result: dict[str, Any], options: GenerationOptions) -> None:
    failed = [b for b in result["budgets"] if b["verdict"] == "fail" or (options.strict_undecided and b["verdict"] == "undecided")]
    if failed:
        raise GateFailed("generation budget " + ", ".join(f"{b['budget']} {b['verdict']} ({b['stat']} {b['value']:.1f} ms)" for b in failed),
                         hint="a faster weight format (--bits 4), fewer threads' contention, or a budget this device can meet", result=result)


def _result(folder: str | Path, lm: LM, ttft: list[float], tpot: list[float], e2e: list[float], *, options: GenerationOptions,
            load_s: float, label: str | None) -> dict[str, Any]:
    meta = lm.meta
    samples = {"ttft": np.array(ttft), "tpot": np.array(tpot)}
    budgets = [decide_budget(samples[b.metric], b, options.confidence) for b in options.budgets]
    size = sum(f.stat().st_size for f in Path(folder).iterdir() if f.name.startswith("model."))
    return {
        "model": label or str(folder), "weights": meta.weights, "format": meta.format, "precision": lm.precision, "kv_cache": getattr(lm, "kv_cache", "f32"),
        "runtime": RUNTIMES.get(meta.format, meta.format),
        "prompt_tokens": options.prompt_tokens, "new_tokens": options.new_tokens, "runs": len(ttft),
        "ttft_ms": summary(samples["ttft"], confidence=options.confidence),
        "tpot_ms": summary(samples["tpot"], confidence=options.confidence),
        "decode_tokens_per_s": float(1e3 / np.mean(samples["tpot"])),
        "tokens_per_s": float(options.new_tokens * len(e2e) / sum(e2e)),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "model_bytes": size, "load_s": load_s,
        "cpu": {"name": machine.cpu_name(), "int8_features": machine.cpu_features()},
        **({"gpu": lm.info} if meta.format == "tensorrt" else {}),  # TrtLM's GPU, CUDA and TensorRT versions
        "threads": options.threads, "budgets": budgets,
    }


def bench_generation(folder: str | Path, *, options: GenerationOptions = GenerationOptions(), label: str | None = None) -> dict[str, Any]:
    """Bench greedy generation of the LM in `folder` (reported as `label`, default the folder); exit 3 when a
    budget fails (or is undecided, if strict)."""
    check_options(options)
    read_meta(folder)
    prompt = prompt_ids(folder, options)
    t_load = time.perf_counter()
    lm = load_lm(folder, threads=options.threads, last_only=True)
    load_s = time.perf_counter() - t_load
    ttft: list[float] = []
    tpot: list[float] = []
    e2e: list[float] = []
    for r in track(range(options.warmup + options.runs), label="generating", total=options.warmup + options.runs):
        first, steps = time_generation(lm, prompt, options.new_tokens)
        if r >= options.warmup:
            ttft.append(first)
            tpot.extend(steps)
            e2e.append((first + sum(steps)) / 1e3)
    result = _result(folder, lm, ttft, tpot, e2e, options=options, load_s=load_s, label=label)
    _budgets_failed(result, options)
    return result


# --- the paired gate -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class GateOptions:
    """`max_regression`: how much slower per token (and to the first token) the build may be than the baseline.
    `min_phases`: instance pairs (`PHASE_ROUNDS` rounds each) before the first decision; then two at a time until both metrics are decided or
    `max_duration_s` of measuring has passed (undecided then, exit 3 with `strict_undecided`)."""

    max_regression: float = 0.10
    min_phases: int = 6
    max_duration_s: float = 120.0
    strict_undecided: bool = False


# Rounds between reloads. Two instances of one LM in one process do not decode equally fast, and the difference stays
# with the instance: in A/A pairs of SmolLM2-135M INT8 on ONNX Runtime (Zen 4, quiet, 2 threads) instances of one
# folder decoded 8.2, 8.1 and 7.7 ms per token (floors), and up to x1.17 apart in a pair, loaded in either order
# (OpenVINO: x1.06). Where an instance's weights land in memory decides it (with glibc's malloc asked for
# transparent huge pages the same instances took 8.6, 6.8 and 7.0 ms). Rounds of one instance pair say nothing
# about the next pair, so both builds are loaded again every PHASE_ROUNDS rounds, both old instances freed first and
# the other build read first (freed one at a time, each build took its own old memory back, and A/A pairs still came
# out x1.05-x1.06 with intervals clear of 1; this way x0.97-x1.01, intervals holding 1), and the bootstrap resamples
# whole phases: the interval carries the instances' spread, as a deployment meets it.
PHASE_ROUNDS = 2
# A pause before each generation: ONNX Runtime's workers spin for a while after a run, and the other build's spinning
# workers took the core from this one's prefill (a 16-token prefill took 38-45 ms right after the other build's run,
# 20-26 ms after its own; with 50 ms between runs, 21-25 ms either way).
SETTLE_S = 0.05


class Turns:
    """One build's interleaved measurement: per round, its decode steps, its first token, its CPU time."""

    def __init__(self) -> None:
        self.lm: LM = None  # type: ignore[assignment]  # loaded (and reloaded) by compare_generation
        self.tpot: list[float] = []
        self.tpot_round: list[int] = []
        self.ttft: list[float] = []
        self.e2e: list[float] = []
        self.cpu_per_token: list[float] = []
        self.block: list[int] = []  # the phase (instance pair) of each generation: the bootstrap's blocks

    def run(self, prompt: np.ndarray, new_tokens: int, block: int) -> None:
        c0 = time.process_time()
        first, steps = time_generation(self.lm, prompt, new_tokens)
        cpu_ms = (time.process_time() - c0) * 1e3
        self.ttft.append(first)
        self.tpot.extend(steps)
        self.tpot_round.extend([block] * len(steps))
        self.e2e.append((first + sum(steps)) / 1e3)
        self.cpu_per_token.append(cpu_ms / new_tokens)  # the process's CPU, all threads: prefill's share included
        self.block.append(block)

    def side(self, metric: str) -> Any:
        from edgekit.bench.stats import PairedSide

        blocks = np.array(self.block)
        if metric == "tpot":
            return PairedSide(np.array(self.tpot), np.array(self.tpot_round), np.array(self.cpu_per_token), blocks)
        return PairedSide(np.array(self.ttft), blocks)


def _combined(gates: dict[str, dict[str, Any]]) -> str:
    verdicts = [g["verdict"] for g in gates.values()]
    if "regressed" in verdicts:
        return "regressed"
    return "pass" if all(v == "pass" for v in verdicts) else "undecided"


def compare_generation(folder: str | Path, baseline: str | Path, *, options: GenerationOptions = GenerationOptions(),
                       gate: GateOptions = GateOptions(), label: str | None = None, baseline_label: str | None = None) -> dict[str, Any]:
    """The paired regression gate for generation: the build in `folder` and the `baseline` LM folder loaded side by
    side in this process, one generation of each per round in alternating order (the machine's drift and its
    neighbours fall on both), the same prompt, both reloaded every `PHASE_ROUNDS` rounds in the other order, a pause
    (`SETTLE_S`) before each generation. Time per output token (the floor of the decode steps, and the
    process's CPU per token beside it) and time to first token are each decided on a round-block bootstrap
    interval of the ratio (`edgekit.bench.stats.paired_regression_test`, as `edgekit bench --baseline`): regressed
    when either lies wholly above 1 + max_regression (exit 3), pass when both lie under it; undecided after
    `max_duration_s` otherwise. Budgets apply to the build's own samples."""
    from edgekit.bench.stats import paired_regression_test
    from edgekit.bench.timer import OtherLoad
    from edgekit.bench.run import BUSY_CORES

    check_options(options)
    if not 0 <= gate.max_regression < 10 or gate.min_phases < 4 or gate.max_duration_s <= 0:
        raise UsageError("need 0 <= --max-regression < 1000%, at least 4 phases and --max-duration > 0", hint="e.g. --max-regression 10% --max-duration 120")
    meta, base_meta = read_meta(folder), read_meta(baseline)
    vocab, base_vocab = meta.extra.get("vocab_size"), base_meta.extra.get("vocab_size")
    if vocab != base_vocab:
        raise UsageError(f"{baseline} has a vocabulary of {base_vocab} tokens, {folder} one of {vocab}: not builds of one model",
                         hint="compare builds of the same model (another weight format, runtime or edgekit version)")
    prompt = prompt_ids(folder, options)
    cur, base = Turns(), Turns()
    load_s = 0.0

    def load_pair(cur_first: bool) -> None:
        nonlocal load_s
        pairs = [(cur, folder), (base, baseline)]
        cur.lm = base.lm = None  # type: ignore[assignment]
        gc.collect()  # both old instances' memory goes first: the first one read now takes what the other had
        for side, path in pairs if cur_first else pairs[::-1]:
            t = time.perf_counter()
            side.lm = load_lm(path, threads=options.threads, last_only=True)
            if side is cur and not load_s:
                load_s = time.perf_counter() - t
        for _ in range(options.warmup):
            for side, _path in pairs if cur_first else pairs[::-1]:
                time_generation(side.lm, prompt, options.new_tokens)

    load = OtherLoad()
    t0 = time.perf_counter()
    gates: dict[str, dict[str, Any]] = {}
    rounds = phase = 0
    verdict = "undecided"
    with status_line("measuring the build and its baseline in turns") as say:
        while True:
            first, second = (cur, base) if phase % 2 == 0 else (base, cur)  # loaded, warmed up and run first in turn
            load_pair(cur_first=first is cur)
            for r in range(PHASE_ROUNDS):
                for side in ((first, second) if r % 2 == 0 else (second, first)):
                    time.sleep(SETTLE_S)
                    side.run(prompt, options.new_tokens, phase)
                rounds += 1
            phase += 1
            if phase % 2 or phase < gate.min_phases or rounds < options.runs:
                continue  # decided on as many phases of each loading order
            others, span = load.done()
            busy = others is not None and span > 0 and others / span >= BUSY_CORES
            gates = {m: paired_regression_test(cur.side(m), base.side(m), max_regression=gate.max_regression, stat="floor",
                                               confidence=options.confidence, busy=busy) for m in ("tpot", "ttft")}
            verdict = _combined(gates)
            say(f"round {rounds}: per token x{gates['tpot']['ratio']:.3f} ({gates['tpot']['verdict']}), "
                f"first token x{gates['ttft']['ratio']:.3f} ({gates['ttft']['verdict']})")
            if verdict != "undecided" or time.perf_counter() - t0 >= gate.max_duration_s:
                break
    wall_s = time.perf_counter() - t0
    others, span = load.done()
    result = _result(folder, cur.lm, cur.ttft, cur.tpot, cur.e2e, options=options, load_s=load_s, label=label)
    limit = 1 + gate.max_regression
    result["baseline"] = {
        "model": baseline_label or str(baseline), "weights": base_meta.weights, "mode": "paired", "rounds": rounds, "phases": phase, "wall_s": wall_s,
        "max_regression": gate.max_regression, "verdict": verdict,
        "others_cores": others / span if others is not None and span > 0 else None,
        "tpot": gates["tpot"], "ttft": gates["ttft"],
        "baseline_ttft_ms": summary(np.array(base.ttft), confidence=options.confidence),
        "baseline_tpot_ms": summary(np.array(base.tpot), confidence=options.confidence),
    }
    if verdict == "undecided":
        result["baseline"]["reason"] = (f"undecided after {rounds} rounds ({wall_s:.0f} s of {gate.max_duration_s:g} s): per token "
                                        f"x{gates['tpot']['ratio']:.3f} [{gates['tpot']['ci_low']:.3f}, {gates['tpot']['ci_high']:.3f}], first token "
                                        f"x{gates['ttft']['ratio']:.3f} [{gates['ttft']['ci_low']:.3f}, {gates['ttft']['ci_high']:.3f}] against x{limit:.2f}; "
                                        "the machine is too noisy to tell: raise --max-duration or re-run on a quieter runner")
    _budgets_failed(result, options)
    if verdict == "regressed":
        slow = [f"{'per token' if m == 'tpot' else 'first token'} x{g['ratio']:.3f} [{g['ci_low']:.3f}, {g['ci_high']:.3f}]"
                for m, g in gates.items() if g["verdict"] == "regressed"]
        raise GateFailed(f"slower than the baseline {baseline_label or baseline}: {', '.join(slow)} > x{limit:.2f}",
                         hint="find what changed (weights, runtime, threads), or accept it with a new baseline", result=result)
    if verdict == "undecided" and gate.strict_undecided:
        raise GateFailed(result["baseline"]["reason"], hint="raise --max-duration or re-run on a quieter runner", result=result)
    return result
