"""The measurement loop: time-based warm-up, then at least N iterations and T seconds (trtexec's method).

One clock read per iteration boundary around a synchronous run: the loop adds about
0.1 µs per iteration, so figures agree with benchmark_app's sync API.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

from edgekit.config import BenchSettings


@dataclasses.dataclass
class Samples:
    latencies_ms: np.ndarray
    first_ms: float
    warmup_runs: int
    wall_s: float

    def extend(self, more: Samples) -> None:
        self.latencies_ms = np.concatenate([self.latencies_ms, more.latencies_ms])
        self.wall_s += more.wall_s


def measure(run: Callable[[], object], settings: BenchSettings, *, min_duration_s: float | None = None,
            warm: bool = True, progress: Callable[[float], None] | None = None) -> Samples:
    """Run `run` until both the iteration and the duration minimums are met; one latency per run."""
    first_ms = 0.0
    warmups = 0
    if warm:
        t0 = time.perf_counter()
        run()
        first_ms = (time.perf_counter() - t0) * 1e3
        warmups = 1
        end = time.perf_counter() + settings.warmup_ms / 1e3
        while time.perf_counter() < end:
            run()
            warmups += 1
    duration = settings.min_duration_s if min_duration_s is None else min_duration_s
    times: list[float] = []
    clock = time.perf_counter
    start = prev = clock()
    deadline = start + duration
    next_tick = start + 0.25
    while len(times) < settings.min_iterations or prev < deadline:
        run()
        now = clock()
        times.append(now - prev)
        prev = now
        if progress is not None and now >= next_tick:
            progress(min(1.0, (now - start) / max(duration, 1e-9)))
            next_tick = now + 0.25
    return Samples(np.asarray(times) * 1e3, first_ms, warmups, prev - start)
