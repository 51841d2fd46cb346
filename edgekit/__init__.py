"""edgekit: take a trained network to an edge device, and prove in CI that it fits its budgets."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(bundle, *, backend=None, artifact=None, target=None, trusted_keys=None, cache_dir=True):  # noqa: ANN001, ANN201 - see edgekit.loader.load
    """Verify a bundle (hashes, schema, compatibility) and load the artifact that suits this machine:
    `with edgekit.load("model.tar") as e: e.top_k(frame, 5, channels="BGR")`. See `edgekit.loader.load`."""
    from edgekit.loader import load as _load

    return _load(bundle, backend=backend, artifact=artifact, target=target, trusted_keys=trusted_keys, cache_dir=cache_dir)
