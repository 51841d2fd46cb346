"""edgekit's version, in one module below every other (`edgekit.__version__` is this `VERSION`)."""
from __future__ import annotations

VERSION = "0.1.0"  # keep equal to pyproject.toml's [project] version
