"""Devices reached over SSH: `edgekit bench --device NAME`, `edgekit doctor --device NAME`.

A device is a `[devices.NAME]` table in edgekit.toml or an `ssh://user@host:port` URL (config.py).
The system OpenSSH client carries one session per device (ssh.py, session.py); the device runs a
small agent with its own Python (agent.py) that drives the device's own `edgekit verify` and
`edgekit bench` (remote.py). Nothing here imports a backend.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgekit.devices.config import Device, device_from_url, devices_in, resolve_device
from edgekit.devices.remote import DeviceJob, bench_on_device, bench_on_devices

__all__ = ["Device", "DeviceJob", "bench_jobs", "bench_on_device", "bench_on_devices", "device_from_url", "devices_in", "resolve_device"]


def bench_jobs(jobs: list[tuple[Any, ...]], *, config: str | None = None,
               bench_here: Callable[[Any, Any, Any], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Run `(artifact, target, BenchOptions[, device name])` jobs: the devices' in parallel (one SSH
    connection each), then the local ones here with `bench_here` (default: `bench_artifact`); results
    in the jobs' order."""
    if bench_here is None:
        from edgekit.bench.run import bench_artifact

        def bench_here(a: Any, t: Any, o: Any) -> dict[str, Any]:
            return bench_artifact(a, target=t, options=o)

    groups: dict[Device, list[DeviceJob]] = {}
    where: list[tuple[Device | None, int]] = []
    by_name: dict[str, Device] = {}
    for job in jobs:
        artifact, target, options = job[:3]
        name = job[3] if len(job) > 3 else None
        if name is None:
            where.append((None, -1))
            continue
        if name not in by_name:
            by_name[name] = resolve_device(name, config=config)
        dev = by_name[name]
        groups.setdefault(dev, []).append(DeviceJob(str(artifact), target, options))
        where.append((dev, len(groups[dev]) - 1))
    remote = bench_on_devices(groups)
    results = []
    for job, (dev, i) in zip(jobs, where):
        results.append(remote[dev][i] if dev is not None else bench_here(job[0], job[1], job[2]))
    return results
