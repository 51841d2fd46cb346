"""What this machine can do: backends, devices, CPU, optional libraries."""
from __future__ import annotations

import os
import platform
from typing import Any

from edgekit import deps
from edgekit.backends import backend_names, get_backend
from edgekit.machine import cpu_name
from edgekit.version import VERSION, older


def diagnose() -> dict[str, Any]:
    backends = [get_backend(n).status().to_dict() for n in backend_names()]
    return {
        "edgekit": VERSION,
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(), "os": platform.platform()},
        "backends": backends,
        "extras": {name: deps.available(name) for name in ("torch", "onnxscript", "nncf", "PIL", "matplotlib")},
    }


def diagnose_device(name: str, *, config: str | None = None) -> dict[str, Any]:
    """What a device reached over SSH can do, and what is missing there (with the line that installs it).

    A device that cannot be reached raises (exit 4, naming the fix); one without edgekit comes back
    with `edgekit: None` and the install line, for the caller to show before failing."""
    from edgekit.devices import resolve_device
    from edgekit.devices.session import agent_error, run_agent

    device = resolve_device(name, config=config)
    final, events = run_agent(device, {"mode": "doctor", "workdir": device.workdir, "edgekit": VERSION})
    hello = next((e for e in events if e["event"] == "hello"), {})
    py = hello.get("python_executable") or device.python
    report: dict[str, Any] = {"device": device.to_dict(), "python": hello.get("python"), "python_executable": py,
                              "edgekit": hello.get("edgekit"), "missing": []}
    if final["event"] == "error":
        if final.get("kind") != "no-edgekit":
            raise agent_error(device, final, hello, "")
        report["missing"].append({"what": "edgekit", "why": final.get("message"), "fix": f"{py} -m pip install edgekit (ONNX Runtime included; 'edgekit[openvino]' or 'edgekit[tensorrt]' for those backends; no torch needed)"})
        return report
    found = final["doctor"]
    report.update(machine=found.get("machine"), backends=found.get("backends", []), record=final["device"],
                  workdir=final["workdir"], free_bytes=final["free_bytes"], stale_runs=final["stale_runs"])
    for b in report["backends"]:
        if b["name"] == "tensorrt" and not final["device"].get("nvidia_gpu"):
            continue  # not missing: TensorRT needs an NVIDIA GPU, and the device shows none
        if not b.get("available"):
            extra = "" if b["name"] == "onnxruntime" else f"[{b['name']}]"
            report["missing"].append({"what": b["name"], "why": b.get("reason"), "fix": f"{py} -m pip install 'edgekit{extra}'"})
    if older(report["edgekit"] or "0", VERSION):
        report["missing"].append({"what": f"edgekit {VERSION}", "why": f"the device has edgekit {report['edgekit']}, older than this one: bundles from here may not verify there",
                                  "fix": f"{py} -m pip install -U 'edgekit>={VERSION}'"})
    return report
