"""`edgekit.toml`: models x targets x budgets, run by one `edgekit bench --config` to one verdict."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from edgekit.config import Budget, _unknown, budgets_from_table, read_toml
from edgekit.errors import UsageError

_ENTRY_KEYS = {"name", "model", "target", "budgets", "baseline", "max_regression", "data", "batch", "optimize"}


@dataclasses.dataclass(frozen=True)
class BenchEntry:
    name: str
    model: str
    target: str
    budgets: tuple[Budget, ...] = ()
    baseline: str | None = None
    max_regression: float = 0.10
    data: str | None = None
    batch: int | None = None
    optimize: Any = None  # edgekit.optimize.project.EntryOptimize: bench the artifact `edgekit optimize` chooses


def parse_percent(value: Any, label: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            return float(value.strip()[:-1]) / 100
        except ValueError:
            pass
    raise UsageError(f"{label}: {value!r} is not a percentage", hint="write it like \"10%\" or 0.1")


def _entry_optimize(item: dict[str, Any], base: Path, label: str) -> Any:
    from edgekit.optimize.project import entry_optimize

    return entry_optimize(item, base, label)


def load_project(path: str | Path) -> list[BenchEntry]:
    path = Path(path)
    data = read_toml(path)
    for k in data:
        if k not in ("bench", "defaults"):
            raise _unknown(k, ("bench", "defaults"), str(path))
    defaults = data.get("defaults", {})
    for k in defaults:
        if k not in _ENTRY_KEYS:
            raise _unknown(k, _ENTRY_KEYS, f"{path} [defaults]")
    entries = []
    base = path.parent
    for i, raw in enumerate(data.get("bench", [])):
        label = f"{path} [[bench]] #{i + 1}"
        item = {**defaults, **raw}
        for k in item:
            if k not in _ENTRY_KEYS:
                raise _unknown(k, _ENTRY_KEYS, label)
        if "model" not in item or "target" not in item:
            raise UsageError(f"{label}: needs model and target")
        entries.append(BenchEntry(
            name=item.get("name", f"{Path(item['model']).stem}@{item['target']}"),
            model=str(base / item["model"]),
            target=item["target"] if not str(item["target"]).endswith(".toml") else str(base / item["target"]),
            budgets=budgets_from_table(item.get("budgets", {}), label=label),
            baseline=str(base / item["baseline"]) if item.get("baseline") else None,
            max_regression=parse_percent(item.get("max_regression", 0.10), label),
            data=str(base / item["data"]) if item.get("data") else None,
            batch=item.get("batch"),
            optimize=_entry_optimize(item, base, label),
        ))
    if not entries:
        raise UsageError(f"{path} has no [[bench]] entries", hint="add one: [[bench]] model = \"...\" target = \"...\"")
    return entries
