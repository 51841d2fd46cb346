"""A stress-like neighbour: one busy-looping process per core, each bounded in time (it ends by itself
even if whoever started it dies), stopped by its own process id. `python -m pytest --cpu-load` runs the
suite beside it; bench/baseline_gate.py --load measures the gate beside it."""
from __future__ import annotations

import os
import subprocess
import sys

SPIN = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


def start(n: int | None = None, *, seconds: float = 3 * 3600) -> list[subprocess.Popen]:
    """n (default: every core this process may use) busy loops of at most `seconds` each."""
    count = n if n is not None else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return [subprocess.Popen([sys.executable, "-c", SPIN.format(seconds=seconds)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(count)]


def stop(procs: list[subprocess.Popen]) -> None:
    """End the loops `start` began (each by its own pid) and reap them."""
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()
