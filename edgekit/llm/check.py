"""The check a weight-quantized decoder must pass: the LM's own measures on held-out real text.

- **Perplexity** of the candidate and of the FP32 export on the same held-out windows (teacher-forced,
  every token after the first of a window predicted from the ones before; the second half of each window
  through the KV cache, so the cache's precision is measured too). The bar is a relative increase:
  `max_ppl_increase=0.10` refuses a model that is more than 10% more perplexed than FP32. Perplexity is the
  measure weight-only quantization is published against (GPTQ, AWQ, NNCF), and the one that moves first.
- **Greedy agreement**: from the first tokens of each held-out window, both models continue greedily; the
  agreement is the share of continuation tokens before the first one that differs, averaged. It is what a
  user sees (the same answer), reported always and a bar when `min_agreement` is set: greedy decoding
  amplifies one near-tie into a different text, so a good INT4 model may agree early and diverge late.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from edgekit.llm.runtime import LM


@dataclasses.dataclass(frozen=True)
class LMBar:
    max_ppl_increase: float = 0.10
    min_agreement: float | None = None
    continuation_tokens: int = 16
    prompt_tokens: int = 32


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def perplexity(lm: LM, windows: list[np.ndarray]) -> float:
    """Each window in two steps, as generation runs: the first half a prefill, the second half read through the
    cache the first half wrote. A single prefill would never read the cache, and its precision (OpenVINO keeps
    it in u8 by default) would go unmeasured."""
    def logits_of(w: np.ndarray) -> np.ndarray:
        lm.reset()
        half = w.size // 2
        return np.concatenate([lm.step(w[:half]), lm.step(w[half:])])
    return perplexity_of(logits_of, windows)


def perplexity_of(logits_of: Callable[[np.ndarray], np.ndarray], windows: list[np.ndarray]) -> float:
    """Teacher-forced perplexity from any runtime's logits of a whole window ([len, vocab])."""
    nll, n = 0.0, 0
    for w in windows:
        logp = _log_softmax(logits_of(w))
        nll -= float(logp[np.arange(w.size - 1), w[1:]].sum())
        n += w.size - 1
    return float(np.exp(nll / n))


def continuations(lm: LM, windows: list[np.ndarray], bar: LMBar) -> list[list[int]]:
    return [lm.generate_ids(w[:bar.prompt_tokens], bar.continuation_tokens, stop_at_eos=False) for w in windows]


def agreement(reference: list[list[int]], candidate: list[list[int]]) -> float:
    shares = []
    for r, c in zip(reference, candidate):
        same = next((i for i, (a, b) in enumerate(zip(r, c)) if a != b), min(len(r), len(c)))
        shares.append(same / max(len(r), 1))
    return float(np.mean(shares))


def check_lm(reference: LM, candidate: LM, windows: list[np.ndarray], *, bar: LMBar = LMBar()) -> dict[str, Any]:
    """Perplexity and greedy agreement of `candidate` against `reference` (FP32) on held-out `windows`."""
    ref_ppl = perplexity(reference, windows)
    ref_cont = continuations(reference, windows, bar)
    ppl = perplexity(candidate, windows)
    agree = agreement(ref_cont, continuations(candidate, windows, bar))
    increase = ppl / ref_ppl - 1.0
    reasons = []
    if increase > bar.max_ppl_increase:
        reasons.append(f"perplexity {ppl:.2f} is {increase:+.1%} over FP32's {ref_ppl:.2f} (bar {bar.max_ppl_increase:+.0%})")
    if bar.min_agreement is not None and agree < bar.min_agreement:
        reasons.append(f"greedy agreement {agree:.2f} < {bar.min_agreement:g}")
    return {"perplexity": ppl, "fp32_perplexity": ref_ppl, "perplexity_increase": increase, "greedy_agreement": agree,
            "bar": dataclasses.asdict(bar), "held_out_windows": len(windows), "held_out_tokens": int(sum(w.size for w in windows)),
            "meets_bar": not reasons, "reasons": reasons}
