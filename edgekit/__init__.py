"""edgekit: take a trained network to an edge device, and prove in CI that it fits its budgets."""
from __future__ import annotations

import os

# ONNX Runtime 1.32's POSIX telemetry writes a session file ($TMPDIR/.ses) on import, and would send events:
# edgekit leaves nothing in the system temporary folder (#23). Set ORT_DISABLE_TELEMETRY=0 to keep it on.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(bundle: str, *, target: str | None = None):  # noqa: ANN201 - returns edgekit.pack.BundleEngine
    """Verify a bundle (hashes, schema, compatibility) and load it as an engine: `with edgekit.load(path) as e: e.run(feed)`."""
    from edgekit.pack import load as _load

    return _load(bundle, target=target)
