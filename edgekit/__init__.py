"""edgekit: take a trained network to an edge device, and prove in CI that it fits its budgets."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
