"""The measurement loop: time-based warm-up, then at least N iterations and T seconds (trtexec's method).

One clock read per iteration boundary around a synchronous run: the loop adds about
0.1 µs per iteration, so figures agree with benchmark_app's sync API.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edgekit.config import BenchSettings


@dataclasses.dataclass
class Samples:
    latencies_ms: np.ndarray
    first_ms: float
    warmup_runs: int
    wall_s: float
    rounds: np.ndarray | None = None  # interleaved measurement: the round of each sample
    cpu_s: float = 0.0  # CPU time the whole process got while the timed runs ran (all its threads)
    # interleaved measurement, one entry per block: its round, and the process's CPU ms per run in it
    block_rounds: np.ndarray | None = None
    block_cpu_ms: np.ndarray | None = None
    # other work on the cores this process may use while it measured: their CPU seconds over a span of wall seconds
    # (None where the OS does not tell, i.e. not Linux)
    others_cpu_s: float | None = None
    span_s: float = 0.0

    def extend(self, more: Samples) -> None:
        """Append a later measurement of the same build: interleaved rounds keep their numbers (the
        later one's continue them), runs measured on their own belong to no round (-1)."""
        if self.rounds is not None:
            self.rounds = np.concatenate([self.rounds, more.rounds if more.rounds is not None else np.full(len(more.latencies_ms), -1)])
        if self.block_rounds is not None and more.block_rounds is not None and more.block_cpu_ms is not None:
            assert self.block_cpu_ms is not None
            self.block_rounds = np.concatenate([self.block_rounds, more.block_rounds])
            self.block_cpu_ms = np.concatenate([self.block_cpu_ms, more.block_cpu_ms])
        self.latencies_ms = np.concatenate([self.latencies_ms, more.latencies_ms])
        self.wall_s += more.wall_s
        self.cpu_s += more.cpu_s
        self.others_cpu_s = None if self.others_cpu_s is None or more.others_cpu_s is None else self.others_cpu_s + more.others_cpu_s
        self.span_s += more.span_s

    @property
    def cpu_share(self) -> float:
        """CPU seconds the process got per second of timed wall clock: about the runtime's thread count on
        a quiet machine, less when neighbours took the cores (then wall time says more about them)."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def others_cores(self) -> float | None:
        """How many cores' worth of other work ran beside the measurement (other processes, and the
        hypervisor's steal), on the cores this process may run on; None where unknown."""
        return self.others_cpu_s / self.span_s if self.others_cpu_s is not None and self.span_s > 0 else None


def host_busy_s() -> float | None:
    """CPU seconds all processes have spent on the cores this process may run on, since boot (Linux's
    /proc/stat: user, nice, system, irq, softirq and steal); None elsewhere."""
    try:
        allowed = os.sched_getaffinity(0)
        lines = Path("/proc/stat").read_text().splitlines()
        tick = os.sysconf("SC_CLK_TCK")
    except (AttributeError, OSError, ValueError):
        return None
    busy = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in allowed:
            v = [int(f) for f in fields[:8]] + [0] * (8 - len(fields[:8]))
            busy += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    return busy / tick


class OtherLoad:
    """Reads, over a span, the CPU time other work took on this process's cores: the host's busy time
    minus this process's own."""

    def __init__(self) -> None:
        self.host0, self.own0, self.t0 = host_busy_s(), time.process_time(), time.perf_counter()

    def done(self) -> tuple[float | None, float]:
        """(others' CPU seconds, span seconds) since construction."""
        host1, own1, t1 = host_busy_s(), time.process_time(), time.perf_counter()
        if self.host0 is None or host1 is None:
            return None, t1 - self.t0
        return max(0.0, (host1 - self.host0) - (own1 - self.own0)), t1 - self.t0


def warm_up(run: Callable[[], object], warmup_ms: float) -> tuple[float, int]:
    """First inference time (ms) and the number of warm-up runs (time-based, at least one)."""
    t0 = time.perf_counter()
    run()
    first_ms = (time.perf_counter() - t0) * 1e3
    warmups = 1
    end = time.perf_counter() + warmup_ms / 1e3
    while time.perf_counter() < end:
        run()
        warmups += 1
    return first_ms, warmups


def measure(run: Callable[[], object], settings: BenchSettings, *, min_duration_s: float | None = None,
            warm: bool = True, progress: Callable[[float], None] | None = None) -> Samples:
    """Run `run` until both the iteration and the duration minimums are met; one latency per run."""
    first_ms, warmups = warm_up(run, settings.warmup_ms) if warm else (0.0, 0)
    duration = settings.min_duration_s if min_duration_s is None else min_duration_s
    times: list[float] = []
    clock = time.perf_counter
    others = OtherLoad()
    cpu0 = time.process_time()
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
    cpu_s = time.process_time() - cpu0
    others_s, span_s = others.done()
    return Samples(np.asarray(times) * 1e3, first_ms, warmups, prev - start, cpu_s=cpu_s, others_cpu_s=others_s, span_s=span_s)


def measure_interleaved(runs: Sequence[Callable[[], object]], settings: BenchSettings, *, min_rounds: int = 10,
                        block_s: float = 0.1, settle_s: float = 0.01, seed: int = 0, first_round: int = 0, warm: bool = True,
                        min_duration_s: float | None = None, progress: Callable[[float], None] | None = None) -> list[Samples]:
    """Randomized multiple interleaved trials (Abedi & Brecht, ICPE 2017): short blocks of each `run`
    in a fresh random order every round, until each has its minimum iterations and duration and there
    are `min_rounds` rounds. A shared machine's slow phases last seconds, so every candidate meets the
    same ones and their ratio survives drift that moves each one's latency by a third.

    A block is at least `block_s` seconds and 3 timed runs, after untimed runs for `settle_s` (at least
    one) while the caches the other model evicted refill and its thread pool stops spinning (measured:
    a tiny model's first ~5 runs after a switch are 30% slower, later ones as fast as alone), so each
    build's figures, budgets included, are those of the build measured alone.

    Each block also records the CPU time the process got (`time.process_time`, all threads), read once
    at each end of the block, so the timed loop is unchanged: a neighbour that takes the core away
    inflates wall time but not CPU time. A later call with `first_round` past the last round and
    `warm=False` continues the same measurement (the gate's "measure longer")."""
    rng = np.random.default_rng(seed + first_round)
    warmed = [warm_up(r, settings.warmup_ms) if warm else (0.0, 0) for r in runs]
    duration = settings.min_duration_s if min_duration_s is None else min_duration_s
    times: list[list[float]] = [[] for _ in runs]
    rounds: list[list[int]] = [[] for _ in runs]
    blocks: list[list[tuple[int, float]]] = [[] for _ in runs]
    spent = [0.0] * len(runs)
    cpu = [0.0] * len(runs)
    clock, cpu_clock = time.perf_counter, time.process_time
    others = OtherLoad()
    start = clock()
    next_tick = start + 0.25
    r = 0
    while r < min_rounds or min(spent) < duration or min(len(t) for t in times) < settings.min_iterations:
        for i in rng.permutation(len(runs)):
            run, ts, rs = runs[i], times[i], rounds[i]
            block_start = clock()
            run()  # warm-up after a switch, not counted: caches the other model evicted, its threads still spinning
            while clock() - block_start < settle_s:
                run()
            n = 0
            cpu_start = cpu_clock()
            prev = timed_start = clock()
            end = block_start + block_s
            while n < 3 or prev < end:
                run()
                now = clock()
                ts.append(now - prev)
                prev = now
                n += 1
            block_cpu = cpu_clock() - cpu_start
            rs.extend([first_round + r] * n)
            blocks[i].append((first_round + r, 1e3 * block_cpu / n))
            spent[i] += prev - timed_start
            cpu[i] += block_cpu
        r += 1
        now = clock()
        if progress is not None and now >= next_tick:
            progress(min(1.0, min(min(spent) / max(duration, 1e-9), r / max(min_rounds, 1))))
            next_tick = now + 0.25
    others_s, span_s = others.done()  # one span for all: each side's figure is the machine's during the whole measurement
    return [Samples(np.asarray(ts) * 1e3, f, w, s, np.asarray(rs), cpu_s=c, others_cpu_s=others_s, span_s=span_s,
                    block_rounds=np.asarray([b[0] for b in bl], dtype=int), block_cpu_ms=np.asarray([b[1] for b in bl]))
            for ts, rs, (f, w), s, c, bl in zip(times, rounds, warmed, spent, cpu, blocks)]
