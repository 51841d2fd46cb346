"""What each TensorRT version has, decided from its version number, without TensorRT.

The TensorRT backend asks these questions before it touches an enum or a flag that an older or a
newer release lacks, so a missing feature is an exit-4 error that names the version it needs instead
of an AttributeError. Sources (github.com/NVIDIA/TensorRT at each release branch):

- `HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY`: absent from python/src/infer/pyCore.cpp on
  release/10.0 (line 1355) to release/10.8 (line 1559, AMPERE_PLUS only); bound from release/10.9 (line 1634).
- `NetworkDefinitionCreationFlag.kSTRONGLY_TYPED`: a flag on 10.x (include/NvInfer.h release/10.0 line 9407);
  on 11.x "deprecated and ignored", the network always strongly typed (release/11.0 lines 11415, 11511-11512).
- DLA: the "Working with DLA" guide of TensorRT 11.4.1 says 10.7 was the last 10.x release with DLA,
  11.0 to 11.3 have none, and 11.4.1 has it again on Jetson AGX Orin (JetPack 7.2.2 or later), strongly
  typed; the builder flags kFP16/kINT8/kPREFER_PRECISION_CONSTRAINTS used by trtexec's DLA path on 10.x
  (samples/common/sampleEngines.cpp release/10.16 lines 1241-1270) were removed in 11.0.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

SAME_COMPUTE_CAPABILITY_SINCE = (10, 9)
DLA_LAST_10X = (10, 7)
DLA_AGAIN_SINCE = (11, 4, 1)


def parse_version(text: str) -> tuple[int, ...]:
    """'10.3.0.30' -> (10, 3, 0, 30); a suffix such as 'b1' or '+cuda12' ends the number."""
    parts = []
    for p in str(text).split("."):
        m = re.match(r"\d+", p)
        if not m:
            break
        parts.append(int(m.group()))
    return tuple(parts) or (0,)


def _v(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def strongly_typed_flag_needed(version: tuple[int, ...]) -> bool:
    """10.x networks are weakly typed unless created with kSTRONGLY_TYPED; 11.x ignores the flag."""
    return version[0] < 11


def hardware_compatibility_problem(level: str, version: tuple[int, ...]) -> str | None:
    """Why this TensorRT cannot build `level` (None: it can)."""
    if level == "same_compute_capability" and version < SAME_COMPUTE_CAPABILITY_SINCE:
        return (f"hardware_compatibility = \"same_compute_capability\" needs TensorRT {_v(SAME_COMPUTE_CAPABILITY_SINCE)} or later "
                f"(this is {_v(version)}); use \"ampere_plus\" or upgrade TensorRT")
    return None


def dla_problem(version: tuple[int, ...]) -> str | None:
    """Why this TensorRT cannot build for a DLA core (None: it can)."""
    if version[:2] <= DLA_LAST_10X or version >= DLA_AGAIN_SINCE:
        return None
    return (f"TensorRT {_v(version)} has no DLA support: 10.7 was the last 10.x release with DLA and 11.x has it again "
            f"from {_v(DLA_AGAIN_SINCE)} (Jetson AGX Orin, JetPack 7.2.2 or later); use a TensorRT with DLA, or set dla_core = -1")


def dla_weakly_typed(version: tuple[int, ...]) -> bool:
    """10.x DLA builds follow trtexec: weakly typed, with the INT8/FP16 precision flags (strongly typed DLA
    is documented only from 11.4.1 on)."""
    return version[0] < 11


def cuda_major_of_tensorrt() -> int | None:
    """The CUDA major version the installed TensorRT wheel was built for, from its distribution name
    (`tensorrt_cu12_bindings`, `tensorrt-cu13`: python/packaging/bindings_wheel/CMakeLists.txt release/10.16
    line 104); None for a TensorRT from a tarball wheel or JetPack's Debian packages, whose names do not say."""
    from importlib.metadata import packages_distributions

    for dist in packages_distributions().get("tensorrt", []):
        m = re.search(r"[-_]cu(\d+)", dist.lower())
        if m:
            return int(m.group(1))
    return None


def cache_folder() -> Path:
    """edgekit's cache folder for TensorRT (timing caches)."""
    base = os.environ.get("EDGEKIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")), "edgekit")
    return Path(base) / "tensorrt"


def timing_cache_path(option: str) -> Path | None:
    """Where the profile's `timing_cache` lives: an absolute path (or ~) as written; a relative one in edgekit's
    cache folder, never in whatever directory the command happens to run from (profiles ship inside the package)."""
    if not option:
        return None
    p = Path(option).expanduser()
    return p if p.is_absolute() else cache_folder() / p
