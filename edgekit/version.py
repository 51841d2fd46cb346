"""edgekit's version, in one module below every other (`edgekit.__version__` is this `VERSION`), and how two
versions compare (`older`, for a device whose edgekit predates this one)."""
from __future__ import annotations

VERSION = "0.1.0"  # keep equal to pyproject.toml's [project] version


def older(a: str, b: str) -> bool:
    """Whether version `a` is older than `b`, comparing the release numbers (`0.1.0+local` is 0.1.0)."""

    def key(v: str) -> tuple[int, ...]:
        parts = []
        for p in v.split("+")[0].split("."):
            digits = "".join(c for c in p if c.isdigit())
            parts.append(int(digits) if digits else 0)
        return tuple(parts)

    return key(a) < key(b)
