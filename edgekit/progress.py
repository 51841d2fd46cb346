"""Progress for long work: shown on an interactive terminal, silent in CI logs and pipes."""
from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def interactive() -> bool:
    """True on a terminal that is not a CI job (CI sets CI=true)."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        return False
    if os.environ.get("EDGEKIT_PROGRESS") == "0":
        return False
    return sys.stderr.isatty()


@contextlib.contextmanager
def status(message: str) -> Iterator[None]:
    """`message...` then `message: done in 1.2 s`, on a terminal only."""
    if not interactive():
        yield
        return
    start = time.perf_counter()
    sys.stderr.write(f"{message}...\r")
    sys.stderr.flush()
    try:
        yield
    finally:
        sys.stderr.write(f"\x1b[2K{message}: {time.perf_counter() - start:.1f} s\n")
        sys.stderr.flush()


@contextlib.contextmanager
def status_line(message: str) -> Iterator[Callable[[str], None]]:
    """Like `status`, with a `say(text)` that rewrites the line as the work goes (`message: text`); silent off a terminal."""
    if not interactive():
        yield lambda text: None
        return
    start = time.perf_counter()

    def say(text: str) -> None:
        sys.stderr.write(f"\x1b[2K{message}: {text}\r")
        sys.stderr.flush()

    sys.stderr.write(f"{message}...\r")
    sys.stderr.flush()
    try:
        yield say
    finally:
        sys.stderr.write(f"\x1b[2K{message}: {time.perf_counter() - start:.1f} s\n")
        sys.stderr.flush()


def track(items: Iterable[T], *, label: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar on a terminal; a plain iteration elsewhere."""
    if not interactive():
        yield from items
        return
    import click

    with click.progressbar(items, length=total, label=label, file=sys.stderr) as bar:  # type: ignore[arg-type]
        yield from bar
