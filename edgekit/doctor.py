"""What this machine can do: backends, devices, CPU, optional libraries."""
from __future__ import annotations

import os
import platform
from typing import Any

from edgekit import __version__, deps
from edgekit.backends import backend_names, get_backend


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def diagnose() -> dict[str, Any]:
    backends = [get_backend(n).status().to_dict() for n in backend_names()]
    return {
        "edgekit": __version__,
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(), "os": platform.platform()},
        "backends": backends,
        "extras": {name: deps.available(name) for name in ("torch", "onnxscript", "nncf", "PIL", "matplotlib")},
    }
