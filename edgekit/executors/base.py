"""What every executor shares: the `Executor` protocol, `Done` records, `Needs`, the in-process
`LocalExecutor`, `placement` for reports and `parse_spec` for `--executor`. Imports no executor."""
from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar

from edgekit.errors import UsageError

T = TypeVar("T")
R = TypeVar("R")

Needs = Mapping[str, float]


@dataclasses.dataclass(frozen=True)
class Done(Generic[R]):
    """The result of one work unit and where it ran."""

    value: R
    executor: str  # "local" or "ray"
    node_id: str | None  # Ray's node id (hex); None for local
    host: str
    attempts: int = 1
    retry: str | None = None  # what went wrong on the first attempt and where the second ran

    def place(self) -> dict[str, Any]:
        """For a report: {"executor", "node_id", "host", "attempts", "retry"} (the same keys for every executor)."""
        return {"executor": self.executor, "node_id": self.node_id, "host": self.host, "attempts": self.attempts, "retry": self.retry}


class Executor(Protocol):
    name: str
    ran: list[Done[Any]]  # every unit this executor finished, in order: where it ran (see `placement`)

    def resources(self) -> Mapping[str, float]:
        """The custom resources the nodes offer, summed over the cluster."""

    def check(self, needs: Sequence[Needs]) -> None:
        """Raise BackendUnavailable (exit 4) naming a resource that no node offers, before anything runs."""

    def map(self, fn: Callable[[T], R], items: Sequence[T], *, needs: Sequence[Needs] | None = None, label: str = "work") -> Iterator[Done[R]]:
        """Run fn on every item; yield Done records in the order of `items`. Leaving the iteration early
        (an error, Ctrl-C) cancels what is still running."""


class LocalExecutor:
    """Today's behaviour: every unit in this process, one after another."""

    name = "local"

    def __init__(self) -> None:
        self.ran: list[Done[Any]] = []

    def resources(self) -> Mapping[str, float]:
        return {}

    def check(self, needs: Sequence[Needs]) -> None:
        return None

    def map(self, fn: Callable[[T], R], items: Sequence[T], *, needs: Sequence[Needs] | None = None, label: str = "work") -> Iterator[Done[R]]:
        host = socket.gethostname()
        for item in items:
            done = Done(fn(item), executor="local", node_id=None, host=host)
            self.ran.append(done)
            yield done


def placement(ran: Sequence[Done[Any]]) -> dict[str, Any]:
    """For a report: how many units ran on which node, and every retry."""
    nodes: dict[str, int] = {}
    for d in ran:
        nodes[d.node_id or d.host] = nodes.get(d.node_id or d.host, 0) + 1
    return {"executor": ran[0].executor if ran else None, "units": len(ran), "nodes": nodes,
            "retried": [d.retry for d in ran if d.retry]}


def parse_spec(spec: str) -> tuple[str, str | None]:
    """`local`, `ray` or `ray://HOST:PORT` -> (kind, address)."""
    s = spec.strip()
    if s == "local":
        return "local", None
    if s == "ray":
        return "ray", None
    if s.startswith("ray://") and len(s) > len("ray://"):
        return "ray", s[len("ray://"):]
    raise UsageError(f"--executor {spec!r} is not an executor",
                     hint="use local, ray (the cluster this machine is part of, else a new one here) or ray://HEAD:6379")
