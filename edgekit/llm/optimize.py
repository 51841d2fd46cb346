"""`edgekit lm optimize`: the fastest weight format of a decoder that meets the perplexity bar and the generation
budgets, measured here, among INT8, INT4 at several group sizes (and the LM head kept in float, and OpenVINO's FP32).

1. Every candidate is made and checked as `edgekit lm quantize` does (`compress_weights_lm`); one below the bar is
   reported with its figures and not measured.
2. The rest are measured in turns, in phases: each phase frees every instance, loads all candidates in a new order
   (instances of one LM decode up to x1.17 apart by where their weights land, `edgekit.llm.bench`), warms them up,
   then runs `PHASE_ROUNDS` rounds of one generation each, in a rotated order, a pause before each.
3. The winner: the lowest per-token floor among candidates that meet every budget; a candidate whose phase-block
   bootstrap interval of the per-token ratio to it holds 1 is as fast within this machine's noise, and among those the
   lowest perplexity wins (then the smaller model).

Worst case: one quantize + check per candidate (SmolLM2-135M: ~45 s each on 2 cores, plus ~30 s of check), then
`phases x PHASE_ROUNDS` generations of each candidate that passed.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import random
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import machine
from edgekit.bench.stats import GATE_MEASURES, paired_regression_test
from edgekit.errors import GateFailed, UsageError
from edgekit.files import atomic_dir
from edgekit.llm.bench import PHASE_ROUNDS, SETTLE_S, GenerationOptions, check_options, decide_budget, prompt_ids, Turns, time_generation
from edgekit.llm.runtime import load_lm, read_meta
from edgekit.llm.weights import WeightOptions, check_weight_options, compress_weights_lm
from edgekit.progress import status, status_line

DEFAULT_CANDIDATES = {
    "onnxruntime": ("int8-g32", "int4-g32", "int4-g64", "int4-g128", "int4-g32-head-float", "int4-g32-hqq-head-float"),
    "openvino": ("fp32", "int8", "int4-g64", "int4-g128", "int4-g128-head-float"),
}
_SPEC = re.compile(r"(fp32|int8|int4)(?:-g(\d+))?(-asym|-hqq)?(-head-float)?")


def parse_candidate(spec: str, base: WeightOptions) -> WeightOptions:
    """`int8`, `int4-g64`, `int4-g32-asym-head-float`, `int4-g32-hqq`, `fp32` (OpenVINO) -> the WeightOptions that make it."""
    m = _SPEC.fullmatch(spec.strip().lower())
    if not m:
        raise UsageError(f"unknown candidate {spec!r}", hint="write it like int8, int4-g64, int4-g32-head-float or fp32 (OpenVINO)")
    kind, group, scheme, head = m.groups()
    return dataclasses.replace(base, bits=None if kind == "fp32" else int(kind[3:]), group_size=int(group) if group else None,
                               symmetric=scheme is None, method="hqq" if scheme == "-hqq" else "rtn", lm_head="float" if head else "quantize")


@dataclasses.dataclass(frozen=True)
class LMOptimizeOptions:
    candidates: tuple[str, ...] = ()  # empty: DEFAULT_CANDIDATES of the target
    phases: int = 4
    generation: GenerationOptions = GenerationOptions(prompt_tokens=128, new_tokens=32)

    def __post_init__(self) -> None:
        if self.phases < 4:  # as the paired gate's minimum: fewer phase blocks make an interval of a handful of ratios
            raise UsageError(f"--phases {self.phases}: the comparison needs at least 4 loadings of every candidate", hint="use 4 or more")


def optimize_lm(src: str | Path, out: str | Path, *, weights: WeightOptions = WeightOptions(),
                options: LMOptimizeOptions = LMOptimizeOptions()) -> dict[str, Any]:
    """Make, check and measure each candidate weight format of the export `src` for `weights.target`; write the
    winner's folder to `out` (with optimize.json). Exit 3 when no candidate meets the bar and the budgets."""
    gen = options.generation
    check_options(gen)
    if weights.target not in DEFAULT_CANDIDATES:
        raise UsageError(f"lm optimize measures on this machine; {weights.target} cannot run here",
                         hint="optimize for onnxruntime or openvino, or quantize for tensorrt and bench on the GPU host")
    specs = [c.strip().lower() for c in (options.candidates or DEFAULT_CANDIDATES[weights.target]) if c.strip()]
    made: list[tuple[str, WeightOptions]] = []
    for spec in specs:  # every candidate's own options are checked before the first one is made; one weight format once
        w = parse_candidate(spec, weights)
        check_weight_options(w)
        if all(w.label() != other.label() for _, other in made):
            made.append((spec, w))
    read_meta(src)
    prompt = prompt_ids(src, gen)  # a prompt longer than the text fails now, not after every candidate is made
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder", hint="give a folder path for this output")
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekit-lm-optimize-", dir=out.parent if out.parent.exists() else None) as work:
        folders: dict[str, Path] = {}
        for spec, w in made:
            folder = Path(work) / re.sub(r"\W", "_", spec)
            row: dict[str, Any] = {"candidate": spec}
            with status(f"making {spec}"):
                try:
                    r = compress_weights_lm(src, folder, options=w)
                except GateFailed as exc:
                    r = exc.result or {}
                    row["reason"] = exc.message
            row.update(weights=r.get("weights"), model_bytes=r.get("model_bytes"), quantize_s=r.get("quantize_s"),
                       check={k: r["check"][k] for k in ("perplexity", "fp32_perplexity", "perplexity_increase", "greedy_agreement", "meets_bar")}
                       if r.get("check") else None)
            if "reason" not in row:
                folders[spec] = folder
            rows.append(row)
        measured = _measure(folders, prompt, gen, options.phases) if folders else {}
        for row in rows:
            side = measured.get(row["candidate"])
            if side is None:
                continue
            row["tpot_ms"] = float(np.median(side.tpot))
            row["tpot_floor_ms"] = float(GATE_MEASURES["floor"](np.array(side.tpot)))
            row["ttft_ms"] = float(np.median(side.ttft))
            row["budgets"] = [decide_budget(np.array(side.tpot if b.metric == "tpot" else side.ttft), b, gen.confidence) for b in gen.budgets]
            failed = [b for b in row["budgets"] if b["verdict"] == "fail" or (gen.strict_undecided and b["verdict"] == "undecided")]
            if failed:
                row["reason"] = "budget " + ", ".join(f"{b['budget']} {b['verdict']} ({b['stat']} {b['value']:.1f} ms)" for b in failed)
        winner = choose(rows, measured, confidence=gen.confidence)
        result = {"out": str(out), "target": weights.target, "candidates": rows, "winner": winner["candidate"] if winner else None,
                  "phases": options.phases, "rounds_per_phase": PHASE_ROUNDS, "wall_s": time.perf_counter() - t0,
                  "prompt_tokens": gen.prompt_tokens, "new_tokens": gen.new_tokens,
                  "cpu": {"name": machine.cpu_name(), "int8_features": machine.cpu_features()}, "threads": gen.threads}
        if winner is None:
            # the fastest that met the bar (all missed a budget), else the closest to the bar
            timed = [r for r in rows if "tpot_ms" in r]
            best = (min(timed, key=lambda r: r["tpot_floor_ms"]) if timed
                    else min((r for r in rows if r.get("check")), key=lambda r: r["check"]["perplexity_increase"], default=None))
            hint = (f"the best was {best['candidate']} ({best['check']['perplexity_increase']:+.1%} perplexity"
                    + (f", {best['tpot_ms']:.1f} ms per token" if "tpot_ms" in best else "") + f": {best.get('reason')})" if best
                    else "check the export folder")
            raise GateFailed(f"no candidate of {', '.join(s for s, _ in made)} meets the bar and the budgets", hint=hint + "; nothing was written",
                             result=result)
        for side in measured.values():
            side.lm = None  # type: ignore[assignment]
        with atomic_dir(out) as tmp:
            shutil.copytree(folders[winner["candidate"]], tmp, dirs_exist_ok=True)
            q = json.loads((tmp / "quantize.json").read_text()) if (tmp / "quantize.json").is_file() else None
            if q is not None:  # it named the candidate's folder, gone with the work folder
                (tmp / "quantize.json").write_text(json.dumps({**q, "out": str(out)}, indent=2, default=str))
            (tmp / "optimize.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def choose(rows: list[dict[str, Any]], measured: dict[str, Turns], *, confidence: float = 0.95) -> dict[str, Any] | None:
    """The winner among `rows` (each a candidate's record; measured ones have their `Turns`), marked in place: the
    lowest per-token floor among those with no `reason` against them (below the bar, a budget missed); candidates whose
    phase-block interval of the per-token ratio to it holds 1 are as fast, and among those the lowest perplexity wins,
    then the smaller model. Each loser gets its reason. None when no candidate is eligible."""
    eligible = [r for r in rows if r["candidate"] in measured and "reason" not in r]
    if not eligible:
        return None
    floor = {r["candidate"]: float(GATE_MEASURES["floor"](np.array(measured[r["candidate"]].tpot))) for r in eligible}
    fastest = min(eligible, key=lambda r: floor[r["candidate"]])
    for r in eligible:
        test = paired_regression_test(measured[r["candidate"]].side("tpot"), measured[fastest["candidate"]].side("tpot"),
                                      max_regression=0.0, stat="floor", confidence=confidence)
        r["vs_fastest"] = {k: test[k] for k in ("ratio", "ci_low", "ci_high")}
        r["fastest"] = r is fastest
        r["as_fast"] = r is fastest or test["ci_low"] <= 1.0
    ties = [r for r in eligible if r["as_fast"]]
    winner = min(ties, key=lambda r: (r["check"]["perplexity"] if r.get("check") else float("inf"), r.get("model_bytes") or 0))
    winner["winner"] = True
    for r in eligible:
        if r is not winner:
            r["reason"] = (f"slower per token than {fastest['candidate']}" if not r["as_fast"]
                           else f"as fast within the noise, higher perplexity than {winner['candidate']}")
    return winner


def _measure(folders: dict[str, Path], prompt: np.ndarray, gen: GenerationOptions, phases: int) -> dict[str, Turns]:
    """Every candidate's generations of `prompt` in turns, reloaded each phase (see the module's docstring)."""
    sides = {spec: Turns() for spec in folders}
    order = list(folders)
    rng = random.Random(0)
    with status_line("measuring the candidates in turns") as say:
        for phase in range(phases):
            for side in sides.values():
                side.lm = None  # type: ignore[assignment]
            gc.collect()  # every old instance's memory goes before the first new one is read
            rng.shuffle(order)
            for spec in order:
                sides[spec].lm = load_lm(folders[spec], threads=gen.threads, last_only=True)
            for _ in range(gen.warmup):
                for spec in order:
                    time_generation(sides[spec].lm, prompt, gen.new_tokens)
            for r in range(PHASE_ROUNDS):
                for spec in order[r % len(order):] + order[: r % len(order)]:
                    time.sleep(SETTLE_S)
                    sides[spec].run(prompt, gen.new_tokens, phase)
            say(f"phase {phase + 1}/{phases}: " + ", ".join(f"{s} {np.median(sides[s].tpot):.1f} ms/token" for s in order))
    return sides
