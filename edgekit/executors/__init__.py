"""Where edgekit's work units run: here, one after another (`local`), or on a Ray cluster (`ray`).

A work unit is a picklable `fn(item)`; `Executor.map(fn, items, needs=...)` runs one unit per item and
yields `Done` records in the order of `items`, each saying which node ran it and whether a retry was
needed. `needs` gives per item the custom resources a unit must hold while it runs (a bench asks for
`edgekit-device:NAME` = 1, which only the node holding that device declares, so it runs there and one
at a time); the local executor has every resource.

    with executor_from_spec("ray://10.0.0.1:6379") as ex:
        for done in ex.map(work, items, needs=[{"edgekit-device:orin1": 1}, {}], label="bench"):
            print(done.value, done.place())

Callers pass an Executor (or None for today's in-process loop); nothing here imports Ray unless a Ray
executor is made (edgekit.deps.ray(), the `edgekit[ray]` extra). `base` holds what every executor shares (the
protocol, Done, LocalExecutor), `ray` the Ray executor, `bench` bench entries as work units.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from edgekit.executors.base import Done, Executor, LocalExecutor, Needs, parse_spec, placement

__all__ = ["Done", "Executor", "LocalExecutor", "Needs", "executor_from_spec", "parse_spec", "placement"]


@contextlib.contextmanager
def executor_from_spec(spec: str | None) -> Iterator[Executor]:
    """The executor `spec` names, connected for the duration of the block."""
    kind, address = parse_spec(spec or "local")
    if kind == "local":
        yield LocalExecutor()
        return
    from edgekit.executors.ray import RayExecutor

    ex = RayExecutor(address)
    try:
        yield ex
    finally:
        ex.close()
