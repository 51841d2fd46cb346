"""This machine as reports describe it: the CPU's name and its INT8 / bf16 / fp16 instruction sets.
(What a quantization recipe may assume of a CPU is `backends.base.host_cpu_features`.) Imports nothing of edgekit."""
from __future__ import annotations

import platform


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform module says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_features() -> list[str]:
    """The CPU's INT8 / bf16 / fp16 instruction sets (speed figures mean little without them)."""
    keep = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16")
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return []
    return [k for k in keep if k in flags]
