"""Calibration statistics merged as samples stream through: memory does not grow with samples.

Per tensor: min, max, and a histogram of |x| whose range doubles (merging bin pairs)
when a larger value arrives. Ranges for MinMax, Percentile and Entropy (KL) come from
these; nothing per sample is kept.
"""
from __future__ import annotations

import dataclasses

import numpy as np

BINS = 2048
VERSION = 2  # part of the calibration cache key: bump when a range computation changes
METHODS = ("minmax", "percentile", "entropy")


@dataclasses.dataclass
class RunningStats:
    lo: float = np.inf
    hi: float = -np.inf
    width: float = 0.0  # histogram covers [0, width * BINS)
    hist: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(BINS, np.int64))
    history: list[float] = dataclasses.field(default_factory=list)  # absmax after each sample (floats only)
    histogram: bool = True  # MinMax needs none: skipping it makes calibration about 2x faster

    def add(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        xmin, xmax = float(x.min()), float(x.max())
        self.lo, self.hi = min(self.lo, xmin), max(self.hi, xmax)
        amax = max(abs(xmin), abs(xmax))
        self.history.append(max(abs(self.lo), abs(self.hi)))
        if not self.histogram:
            return
        if amax == 0:
            self.hist[0] += x.size
            return
        if self.width == 0:
            self.width = amax / BINS * 1.0001
        while amax >= self.width * BINS:
            # double the range: bin pairs merge, so earlier samples keep counting exactly
            self.hist = self.hist.reshape(-1, 2).sum(1)
            self.hist = np.concatenate([self.hist, np.zeros(BINS // 2, np.int64)])
            self.width *= 2
        idx = (np.abs(x, dtype=np.float32).ravel() * np.float32(1 / self.width)).astype(np.int32)
        np.minimum(idx, BINS - 1, out=idx)
        self.hist += np.bincount(idx, minlength=BINS)

    def absmax_at(self, fraction: float) -> float:
        """|range| after the first `fraction` of the samples (for "have the ranges settled")."""
        if not self.history:
            return 0.0
        return self.history[max(0, int(len(self.history) * fraction) - 1)]


def _percentile_threshold(st: RunningStats, pct: float) -> float:
    total = st.hist.sum()
    if total == 0:
        return 0.0
    cdf = np.cumsum(st.hist) / total
    i = int(np.searchsorted(cdf, pct / 100.0))
    return float(min((i + 1) * st.width, max(abs(st.lo), abs(st.hi))))


def _entropy_threshold(st: RunningStats, levels: int = 128) -> float:
    """TensorRT's KL-divergence calibration over the |x| histogram."""
    hist = st.hist.astype(np.float64)
    # the zero bin of a ReLU output dwarfs the rest and drags the threshold down (as in
    # NVIDIA's pytorch-quantization, it counts like its neighbour)
    hist[0] = hist[1]
    nz = np.nonzero(hist)[0]
    if len(nz) == 0:
        return 0.0
    last = int(nz[-1]) + 1
    if last <= levels:
        return float(last * st.width)
    best_kl, best_i = np.inf, last
    step = max(1, (last - levels) // 256)  # about 256 candidate thresholds
    for i in range(levels, last + 1, step):
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()
        nonzero = hist[:i] != 0
        # quantize the first i bins to `levels` levels, spread each level over its non-empty bins
        edges = np.linspace(0, i, levels + 1).astype(np.int64)
        q = np.zeros(i)
        sums = np.add.reduceat(hist[:i], edges[:-1])
        counts = np.add.reduceat(nonzero.astype(np.float64), edges[:-1])
        for j in range(levels):
            a, b = edges[j], edges[j + 1]
            if b > a and counts[j] > 0:
                q[a:b] = np.where(nonzero[a:b], sums[j] / counts[j], 0)
        ps, qs = p.sum(), q.sum()
        if qs == 0:
            continue
        p_n, q_n = p / ps, q / qs
        mask = p_n > 0
        q_safe = np.where(q_n[mask] > 0, q_n[mask], 1e-12)
        kl = float(np.sum(p_n[mask] * np.log(p_n[mask] / q_safe)))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(best_i * st.width)


def tensor_range(st: RunningStats, method: str, *, percentile: float = 99.999, symmetric: bool = False) -> tuple[float, float]:
    """(low, high) to quantize this tensor with; a non-negative tensor keeps low = 0."""
    lo, hi = float(st.lo), float(st.hi)
    if not np.isfinite(lo) or not np.isfinite(hi):
        return 0.0, 0.0
    if method == "minmax":
        t = max(abs(lo), abs(hi))
    elif method == "percentile":
        t = _percentile_threshold(st, percentile)
    elif method == "entropy":
        # a non-negative tensor in unsigned INT8 has 256 levels on its side, a signed one 128
        t = _entropy_threshold(st, 256 if lo >= 0 and not symmetric else 128)
    else:
        raise ValueError(method)
    if symmetric:
        return -t, t
    return max(lo, -t), min(hi, t)
