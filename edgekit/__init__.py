"""edgekit: take a trained network to an edge device, and prove in CI that it fits its budgets.

`edgekit.load` is the device's front door. The commands (`export`, `inspection`, `quantize`, `compile`,
`compare`, `optimize`, `bench`, `pack`, `doctor`) sit above what several share (`data`, `backends`, `config`,
`onnxmodel`, `files`, ...), which sits above the ground floor (`errors`, `version`, `machine`, `progress`,
`deps`). No import circles (tests/test_layout.py)."""
from __future__ import annotations

import os

# edgekit.version imports nothing: `import edgekit` stays light
from edgekit.version import VERSION as __version__

# ONNX Runtime 1.32's POSIX telemetry writes a session file ($TMPDIR/.ses) on import, and would send events:
# edgekit leaves nothing in the system temporary folder (#23). Set ORT_DISABLE_TELEMETRY=0 to keep it on.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

TYPE_CHECKING = False  # not `from typing import ...`: `import edgekit` stays under a millisecond
if TYPE_CHECKING:  # the loader imports numpy and the backends: only when load() is called
    import os
    from collections.abc import Sequence

    from edgekit.llm.engine import LMEngine
    from edgekit.loader import BundleEngine

__all__ = ["__version__", "load"]


def load(bundle: str | os.PathLike[str], *, backend: str | None = None, artifact: str | None = None, target: str | None = None,
         trusted_keys: Sequence[str | os.PathLike[str]] | None = None, cache_dir: str | os.PathLike[str] | bool = True,
         min_release: int | None = None) -> BundleEngine | LMEngine:
    """Verify a bundle (hashes, schema, compatibility) and load the artifact that suits this machine:
    `with edgekit.load("model.tar") as e: e.top_k(frame, 5, channels="BGR")`; a language model's bundle
    gives `e.generate(text)`. See `edgekit.loader.load`.

    `trusted_keys`: public key files or folders of `*.pub` (also EDGEKIT_TRUSTED_KEYS); when any is
    given, only a bundle signed by one of them, unchanged since, is loaded (GateFailed otherwise).
    """
    from edgekit.loader import load as _load

    return _load(bundle, backend=backend, artifact=artifact, target=target, trusted_keys=trusted_keys, cache_dir=cache_dir,
                 min_release=min_release)
