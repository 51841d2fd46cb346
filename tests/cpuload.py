"""A stress-like neighbour: one busy-looping process per core, each bounded in time and by its parent's life (it
ends by itself when its deadline passes or whoever started it dies), stopped by its own process id.
`python -m pytest --cpu-load` runs the suite beside it; bench/baseline_gate.py --load measures the gate beside it.

Each loop runs in a session of its own, as `stress` started from another shell or another CI job does. Linux
(sched_autogroup) shares the CPU between sessions first: loops in the suite's own session would halve what only
the suite's in-process work gets, while a process that runs in another session (the SSH device's, under sshd)
escaped them; a loaded run measured in-process benches at 0.5 cores against the device's 1.0 and failed a
comparison of the two. In their own session every process the suite starts meets the same neighbour."""
from __future__ import annotations

import os
import subprocess
import sys

# ends at its deadline, or within a few ms of its parent's death (its parent is then no longer the one it had)
SPIN = ("import os, time\nparent, end = os.getppid(), time.monotonic() + {seconds}\n"
        "while time.monotonic() < end and os.getppid() == parent:\n    for _ in range(20000):\n        pass\n")


def start(n: int | None = None, *, seconds: float = 3 * 3600) -> list[subprocess.Popen]:
    """n (default: every core this process may use) busy loops of at most `seconds` each."""
    count = n if n is not None else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return [subprocess.Popen([sys.executable, "-c", SPIN.format(seconds=seconds)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True) for _ in range(count)]


def stop(procs: list[subprocess.Popen]) -> None:
    """End the loops `start` began (each by its own pid) and reap them."""
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()
