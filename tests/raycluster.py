"""A real Ray cluster on 127.0.0.1 for tests and bench scripts: `ray start --block` per node, each in its own
process group (stopped by that group's id, never `ray stop`, which would end every Ray on the machine)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _start(args: list[str], log: Path, cpus: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_ENABLE_RECORD_ACTOR_TASK_LOGGING": "0"}
    return subprocess.Popen([_ray_bin(), "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus),
                             "--object-store-memory", str(100 * 1024 * 1024), *args],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """The `ray start --block` process and everything it started: its own process group, by id."""
    for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # workers the raylet left behind
    except ProcessLookupError:
        pass


def _wait_nodes(address: str, n: int, procs: list[subprocess.Popen], logs: list[Path]) -> None:
    code = f"import ray; ray.init(address={address!r}, logging_level='ERROR'); print(sum(x['Alive'] for x in ray.nodes()))"
    deadline = time.monotonic() + 180  # a busy machine starts Ray slowly
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        if out.returncode == 0 and out.stdout.strip().isdigit() and int(out.stdout.strip()) >= n:
            return
        time.sleep(0.5)
    raise RuntimeError("the Ray cluster did not come up:\n" + "\n".join(log.read_text()[-2000:] for log in logs if log.exists()))


def _wait_port(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 180  # a busy machine starts Ray slowly
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the Ray head did not open port {port}:\n{log.read_text()[-2000:]}")


@contextmanager
def ray_cluster(logs: Path, nodes: list[Mapping[str, float]], *, cpus: int = 1) -> Iterator[str]:
    """ray://127.0.0.1:PORT of a head and one more node per entry of `nodes` (the custom resources it declares),
    `cpus` CPUs and a 100 MB object store each."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head_res = ["--resources", json.dumps(dict(nodes[0]))] if nodes and nodes[0] else []
    procs = [_start(["--head", "--port", str(port), "--include-dashboard=false", "--node-manager-port", str(_free_port()),
                     "--object-manager-port", str(_free_port()), *head_res], logs / "head.log", cpus)]
    try:
        _wait_port(port, procs[0], logs / "head.log")
        for i, res in enumerate(nodes[1:], 1):
            procs.append(_start(["--address", address, "--node-manager-port", str(_free_port()), "--object-manager-port", str(_free_port()),
                                 *(["--resources", json.dumps(dict(res))] if res else [])], logs / f"node{i}.log", cpus))
        _wait_nodes(address, len(nodes), procs, [logs / "head.log", *(logs / f"node{i}.log" for i in range(1, len(nodes)))])
        yield f"ray://{address}"
    finally:
        import ray

        ray.shutdown()
        for p in reversed(procs):
            _stop(p)
