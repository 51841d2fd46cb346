"""`edgekit lm optimize`'s choice among measured candidates (edgekit.llm.optimize.choose), on measurements built
here with a fixed seed: the real model's run is in test_lm.py."""
from __future__ import annotations

import numpy as np

from edgekit.llm.bench import Turns
from edgekit.llm.optimize import choose, parse_candidate
from edgekit.llm.weights import WeightOptions


def _turns(ms_per_token: float, rng: np.random.Generator, *, phases: int = 6, steps: int = 30) -> Turns:
    t = Turns()
    for phase in range(phases):
        for _ in range(2):
            tokens = ms_per_token * (1 + rng.gamma(2.0, 0.02, size=steps))  # a floor and a right tail, as decode steps are
            t.tpot.extend(tokens.tolist())
            t.tpot_round.extend([phase] * steps)
            t.ttft.append(5 * ms_per_token)
            t.e2e.append(float(tokens.sum()) / 1e3)
            t.cpu_per_token.append(float(tokens.mean()) * 2)
            t.block.append(phase)
    return t


def _row(name: str, ppl: float, size: int, reason: str | None = None) -> dict:
    row = {"candidate": name, "check": {"perplexity": ppl}, "model_bytes": size}
    if reason:
        row["reason"] = reason
    return row


def test_the_fastest_wins_and_among_the_equally_fast_the_lowest_perplexity() -> None:
    rng = np.random.default_rng(7)
    rows = [_row("int4-g128", 24.0, 100), _row("int4-g32", 22.0, 120), _row("int8", 21.7, 200), _row("int4-g64", 40.0, 110, "misses the bar")]
    measured = {"int4-g128": _turns(8.0, rng), "int4-g32": _turns(8.0, rng), "int8": _turns(12.0, rng)}
    winner = choose(rows, measured)
    by = {r["candidate"]: r for r in rows}
    assert winner is by["int4-g32"] and winner["winner"] and winner["as_fast"]
    assert by["int4-g128"]["reason"] == "as fast within the noise, higher perplexity than int4-g32"
    assert by["int8"]["reason"].startswith("slower per token than") and by["int8"]["vs_fastest"]["ci_low"] > 1.3
    assert by["int4-g64"]["reason"] == "misses the bar" and "vs_fastest" not in by["int4-g64"]


def test_a_candidate_that_missed_a_budget_never_wins_and_none_eligible_is_none() -> None:
    rng = np.random.default_rng(8)
    rows = [_row("int4-g32", 22.0, 120, "budget tpot_p99<=5ms fail"), _row("int8", 21.7, 200)]
    assert choose(rows, {"int4-g32": _turns(4.0, rng), "int8": _turns(12.0, rng)})["candidate"] == "int8"
    assert choose([_row("int8", 21.7, 200, "budget tpot<=1ms fail")], {"int8": _turns(12.0, rng)}) is None


def test_candidate_names_make_the_weight_options_they_say() -> None:
    base = WeightOptions(target="onnxruntime")
    assert parse_candidate("int4-g64-asym-head-float", base).label() == "int4-g64-asym-head-float"
    assert parse_candidate(" INT8 ", base).label() == "int8-g32-sym"
    assert parse_candidate("fp32", WeightOptions(target="openvino")).bits is None


def test_hqq_is_onnx_runtimes_int4_and_says_so_in_its_label() -> None:
    import pytest

    from edgekit.errors import UsageError
    from edgekit.llm.weights import check_weight_options

    hqq = parse_candidate("int4-g32-hqq-head-float", WeightOptions(target="onnxruntime"))
    assert hqq.method == "hqq" and hqq.label() == "int4-g32-hqq-head-float"
    check_weight_options(hqq)
    for target, bits in (("openvino", 4), ("onnxruntime", 8), ("tensorrt", 4)):
        with pytest.raises(UsageError, match="--method hqq"):
            check_weight_options(WeightOptions(target=target, bits=bits, method="hqq"))
