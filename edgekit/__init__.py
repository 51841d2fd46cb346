"""edgekit: take a trained network to an edge device, and prove in CI that it fits its budgets."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(bundle: str, *, target: str | None = None, trusted_keys=None, min_release: int | None = None):  # noqa: ANN001,ANN201 - returns edgekit.pack.BundleEngine
    """Verify a bundle (hashes, schema, compatibility) and load it as an engine: `with edgekit.load(path) as e: e.run(feed)`.

    `trusted_keys`: public key files or folders of `*.pub` (also EDGEKIT_TRUSTED_KEYS); when any is
    given, only a bundle signed by one of them, unchanged since, is loaded (GateFailed otherwise).
    `min_release`: refuse a bundle with an older release number (rollback protection).
    """
    from edgekit.pack import load as _load

    return _load(bundle, target=target, trusted_keys=trusted_keys, min_release=min_release)
