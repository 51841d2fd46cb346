"""The Ray executor: every work unit a Ray task; Ray places it, edgekit only says what each unit needs.

Faults: units run with Ray's own retries off (max_retries=0) so that edgekit sees a dead worker
(WorkerCrashedError, NodeDiedError, the memory monitor's OutOfMemoryError) and resubmits the unit once
itself, on another node that offers what the unit needs when there is one (Ray's own retry may land on
the same node, and says nothing). Each attempt registers its node with a small ledger actor as it
starts, so edgekit knows where the lost attempt ran; the Done record says what happened.
"""
from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from edgekit import deps
from edgekit.errors import BackendUnavailable, EdgekitError, UsageError
from edgekit.executors.base import Done, Needs

T = TypeVar("T")
R = TypeVar("R")


class _Ledger:
    """Where each attempt of each unit began: (node id, worker pid) by unit key."""

    def __init__(self) -> None:
        self.began: dict[str, tuple[str, int]] = {}

    def start(self, key: str, node_id: str, pid: int) -> None:
        self.began[key] = (node_id, pid)

    def where(self, key: str) -> tuple[str, int] | None:
        return self.began.get(key)


def _run_unit(fn: Callable[[Any], Any], item: Any, ledger: Any, key: str) -> tuple[str, Any]:
    """One attempt of one unit, in a Ray worker: register where it runs, then run it."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    ray.get(ledger.start.remote(key, node, os.getpid()))
    return node, fn(item)


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        ray = self._ray = deps.ray()
        self._owned = not ray.is_initialized()
        if self._owned:
            self._connect(address)
        self._unit = ray.remote(_run_unit)
        self._ledger = ray.remote(num_cpus=0)(_Ledger).remote()
        self._token = uuid.uuid4().hex[:8]
        self.ran: list[Done[Any]] = []

    def _connect(self, address: str | None) -> None:
        ray = self._ray
        quiet: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": False, "namespace": "edgekit"}
        try:
            if address:
                ray.init(address=address, **quiet)
            elif os.environ.get("RAY_ADDRESS"):
                ray.init(**quiet)
            else:
                try:  # a cluster that `ray start` made this machine part of
                    ray.init(address="auto", **quiet)
                except ConnectionError:  # none: a one-machine cluster for this run
                    ray.init(include_dashboard=False, **quiet)
        except ValueError as exc:  # Ray's word for an address it cannot parse
            raise UsageError(f"--executor ray://{address}: {exc}", hint="write ray://HOST:PORT, the head's GCS address (ray start --head --port 6379)") from exc
        except ConnectionError as exc:
            raise BackendUnavailable(f"cannot join the Ray cluster at {address or os.environ.get('RAY_ADDRESS')}: {exc}",
                                     hint="start it (`ray start --head --port 6379`), and join this machine to it "
                                          "(`ray start --address HEAD:6379 --num-cpus 0`) or check the address") from exc

    def close(self) -> None:
        if self._owned:
            self._ray.shutdown()

    # -- the cluster --------------------------------------------------------------------------

    def _nodes(self) -> list[dict[str, Any]]:
        return [n for n in self._ray.nodes() if n.get("Alive")]

    def resources(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._ray.cluster_resources().items()}

    def check(self, needs: Sequence[Needs]) -> None:
        offered = self._ray.cluster_resources()
        for need in needs:
            for res, amount in need.items():
                if offered.get(res, 0) < amount:
                    raise BackendUnavailable(
                        f"no node of the Ray cluster offers the resource {res} (needs {amount:g})",
                        hint=f"start the node that has it with `ray start --address HEAD:6379 --num-cpus 1 --resources '{{\"{res}\": 1}}'`, "
                             f"or run with --executor local")

    def _hosts(self) -> dict[str, str]:
        return {n["NodeID"]: str(n.get("NodeManagerHostname") or n.get("NodeManagerAddress", "?")) for n in self._nodes()}

    def _other_node(self, need: Needs, avoid: str | None) -> str | None:
        for n in self._nodes():
            res = n.get("Resources", {})
            if n["NodeID"] != avoid and res.get("CPU", 0) >= 1 and all(res.get(k, 0) >= v for k, v in need.items()):
                return str(n["NodeID"])
        return None

    # -- running units ------------------------------------------------------------------------

    def map(self, fn: Callable[[T], R], items: Sequence[T], *, needs: Sequence[Needs] | None = None, label: str = "work") -> Iterator[Done[R]]:
        ray = self._ray
        from ray.exceptions import LocalRayletDiedError, NodeDiedError, OutOfMemoryError, RayTaskError, WorkerCrashedError
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        lost = (WorkerCrashedError, NodeDiedError, LocalRayletDiedError, OutOfMemoryError)
        need_of = [dict(n) for n in (needs or [{}] * len(items))]
        self.check(need_of)
        fn_ref = ray.put(fn)  # once: a unit's function may carry a model
        pending: dict[Any, tuple[int, int]] = {}
        notes: dict[int, str] = {}

        def key(i: int, attempt: int) -> str:
            return f"{self._token}:{label}:{i}:{attempt}"

        def submit(i: int, attempt: int, node: str | None = None) -> None:
            opts: dict[str, Any] = {"num_cpus": 1, "max_retries": 0, "name": f"edgekit:{label}"}
            if need_of[i]:
                opts["resources"] = need_of[i]
            if node:
                opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=True)
            pending[self._unit.options(**opts).remote(fn_ref, items[i], self._ledger, key(i, attempt))] = (i, attempt)

        for i in range(len(items)):
            submit(i, 1)
        done: dict[int, Done[R]] = {}
        hosts = self._hosts()
        show = _progress(label, len(items))
        nxt = 0
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)  # short: Ctrl-C is seen between waits
                for ref in ready:
                    i, attempt = pending.pop(ref)
                    try:
                        node, value = ray.get(ref)
                    except lost as exc:
                        if attempt > 1:
                            raise BackendUnavailable(f"{label} unit {i + 1}: its worker died twice ({type(exc).__name__})",
                                                     hint="see `ray status` and the node's logs (/tmp/ray/session_latest/logs)") from None
                        try:
                            began = ray.get(self._ledger.where.remote(key(i, attempt)))
                        except ray.exceptions.RayActorError:  # the ledger was on the node that died
                            began = None
                        first = began[0] if began else None
                        other = self._other_node(need_of[i], first)
                        where = f"on node {first[:12]}" if first else "before it started"
                        notes[i] = (f"the first attempt's worker died {where} ({type(exc).__name__}); retried on "
                                    + (f"another node, {other[:12]}" if other else "the only node that offers what it needs"))
                        submit(i, 2, other)
                        continue
                    except RayTaskError as exc:
                        cause = getattr(exc, "cause", None)
                        if isinstance(cause, EdgekitError):
                            raise cause from None
                        raise
                    if node not in hosts:  # a node that joined during the run
                        hosts = self._hosts()
                    done[i] = Done(value, executor="ray", node_id=node, host=hosts.get(node, "?"), attempts=attempt, retry=notes.get(i))
                    show(len(done))
                while nxt in done:
                    self.ran.append(done[nxt])
                    yield done.pop(nxt)
                    nxt += 1
        finally:  # an error, Ctrl-C, or a caller that stopped iterating: nothing keeps running
            for ref in pending:
                ray.cancel(ref, force=True)
            show(None)


def _progress(label: str, total: int) -> Callable[[int | None], None]:
    from edgekit.progress import interactive

    if not interactive():
        return lambda n: None

    def show(n: int | None) -> None:
        sys.stderr.write("\r\x1b[2K" if n is None else f"\r{label} on Ray: {n}/{total} done")
        sys.stderr.flush()

    return show
