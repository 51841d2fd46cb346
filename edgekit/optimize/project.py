"""`optimize = true` in an edgekit.toml `[[bench]]` entry: CI benches the artifact optimize chooses for the
entry's model and target, and chooses again whenever the model changes.

The entry's `optimize` value is read with the rest of the file (`bench.project.EntryOptimize`). The chosen
artifact is kept in the edgekit cache, keyed by the model's SHA-256, the target and these settings.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from edgekit.bench.project import EntryOptimize
from edgekit.errors import GateFailed, UsageError


def optimized_artifact(entry: Any, *, executor: Any = None, device: str | None = None, config: str | None = None) -> tuple[str, None]:
    """(artifact, target) to bench for a `[[bench]]` entry: the artifact optimize chose, from the cache when the
    model and settings are unchanged, else chosen now (exit 3 naming the entry when no candidate meets its
    budgets), on `executor` (bench --executor: OptimizeOptions.executor). Without one, with `device` (the entry's,
    or bench --device) the latency race runs on that device, and the choice is kept per device; `config` is the
    edgekit.toml that names it. The target is None: the artifact's recorded one, which carries the winner's
    options (e.g. INT8 with bf16 for the rest) that the entry's profile would override."""
    from edgekit.files import sha256_file
    from edgekit.optimize import OptimizeOptions, optimize_model
    from edgekit.quantize import cache_dir

    opt: EntryOptimize = entry.optimize
    model = Path(entry.model)
    if not model.exists():
        raise UsageError(f"{entry.name}: model {model} does not exist", hint="fix the entry's model path")
    target_file = Path(entry.target)
    target_text = target_file.read_text() if target_file.suffix == ".toml" and target_file.exists() else entry.target
    if executor is not None and executor.name != "local":
        device = None  # the whole optimize runs on the executor's node, its race there
    where = [device] if device else []  # (a choice made here keeps its key from before devices)
    key = hashlib.sha256(json.dumps([sha256_file(model), target_text, dataclasses.asdict(opt), [str(b) for b in entry.budgets]] + where,
                                    sort_keys=True).encode()).hexdigest()[:24]
    folder = cache_dir().parent / "optimize" / key
    if (folder / "manifest.json").exists():
        return str(folder), None
    options = OptimizeOptions(target=entry.target, eval_source=opt.eval_source, max_accuracy_drop=opt.max_accuracy_drop, metric=opt.metric,
                              budgets=tuple(entry.budgets), candidates=opt.candidates, samples=opt.samples,
                              executor=executor if executor is not None and executor.name != "local" else None)
    if device:
        options = dataclasses.replace(options, device=device, device_config=config)
    try:
        optimize_model(model, folder, calib=opt.calib, options=options)
    except GateFailed as exc:
        raise GateFailed(f"{entry.name}: optimize: {exc.message}", hint=exc.hint, result=exc.result) from exc
    return str(folder), None
