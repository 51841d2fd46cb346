"""`edgekit.toml`: models x targets x budgets, run by one `edgekit bench --config` to one verdict."""
from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgekit.config import Budget, budgets_from_table, read_toml, unknown_key
from edgekit.errors import EdgekitError, UsageError

_ENTRY_KEYS = {"name", "model", "target", "budgets", "baseline", "max_regression", "data", "batch", "device", "resource", "optimize"}
_DEFAULT_ONLY_KEYS = {"baseline_dir"}  # where entries without a `baseline` keep theirs: NAME.json


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
    label: str = ""  # how messages name this entry: `edgekit.toml [[bench]] effnet`
    device: str | None = None  # a [devices.NAME] of the same file, or ssh://...: measured there (edgekit.devices)
    resource: str | None = None  # --executor ray: the custom resource its bench holds, e.g. edgekit-device:orin1 (edgekit.executors.bench)
    optimize: EntryOptimize | None = None  # bench the artifact `edgekit optimize` chooses (edgekit.optimize.project)


def parse_percent(value: Any, label: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            return float(value.strip()[:-1]) / 100
        except ValueError:
            pass
    raise UsageError(f"{label}: {value!r} is not a percentage", hint="write it like \"10%\" or 0.1")


@contextlib.contextmanager
def naming(label: str, entry: str | None = None) -> Iterator[None]:
    """Prefix an edgekit error raised inside with `label` (a project entry), keeping its exit code and
    hint, and remember which entry it was (`exc.entry`) for the reports."""
    try:
        yield
    except EdgekitError as exc:
        if not exc.message.startswith(label):
            exc.message = f"{label}: {exc.message}"
            exc.args = (exc.message if not exc.hint else f"{exc.message}; {exc.hint}",)
        if getattr(exc, "entry", None) is None:
            exc.entry = entry  # type: ignore[attr-defined]
        raise


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@+-]+", "_", name).strip("._") or "entry"


_OPTIMIZE_KEYS = {"calib", "eval", "max_accuracy_drop", "metric", "candidates", "samples"}


@dataclasses.dataclass(frozen=True)
class EntryOptimize:
    """An entry's `optimize = true` or `optimize = { calib = "calib/", eval = "held/", max_accuracy_drop = 0.01,
    metric = "cosine", candidates = ["fp32", "int8"], samples = 500 }`: bench the artifact optimize chooses
    (edgekit.optimize.project). `true` calibrates on the entry's `data`."""

    calib: str
    eval_source: str | None = None
    max_accuracy_drop: float | None = None
    metric: str = "cosine"
    candidates: tuple[str, ...] = ()
    samples: int | None = None


def _entry_optimize(item: dict[str, Any], base: Path, label: str) -> EntryOptimize | None:
    """The entry's `optimize` value, checked, paths resolved from the toml's folder (None: not asked for)."""
    value = item.get("optimize", False)
    if value is False:
        return None
    table = {} if value is True else value
    if not isinstance(table, dict):
        raise UsageError(f"{label}: optimize must be true or a table", hint='write optimize = true, or optimize = { calib = "calib/" }')
    for k in table:
        if k not in _OPTIMIZE_KEYS:
            raise unknown_key(k, _OPTIMIZE_KEYS, f"{label} optimize")
    calib = table.get("calib") or item.get("data")
    if not calib:
        raise UsageError(f"{label}: optimize needs calibration data", hint='add data = "calib/" to the entry, or optimize = { calib = "..." }')
    return EntryOptimize(calib=str(base / calib), eval_source=str(base / table["eval"]) if table.get("eval") else None,
                         max_accuracy_drop=table.get("max_accuracy_drop"), metric=table.get("metric", "cosine"),
                         candidates=tuple(table.get("candidates", ())), samples=table.get("samples"))


def load_project(path: str | Path) -> list[BenchEntry]:
    path = Path(path)
    data = read_toml(path)
    for k in data:
        if k not in ("bench", "defaults", "devices"):
            raise unknown_key(k, ("bench", "defaults", "devices"), str(path))
    defaults = dict(data.get("defaults", {}))
    for k in defaults:
        if k not in _ENTRY_KEYS | _DEFAULT_ONLY_KEYS:
            raise unknown_key(k, _ENTRY_KEYS | _DEFAULT_ONLY_KEYS, f"{path} [defaults]")
    base = path.parent
    baseline_dir = defaults.pop("baseline_dir", None)
    if baseline_dir is not None and not isinstance(baseline_dir, str):
        raise UsageError(f"{path} [defaults]: baseline_dir must be a folder path (a string)", hint='e.g. baseline_dir = "baselines"')
    entries: list[BenchEntry] = []
    for i, raw in enumerate(data.get("bench", [])):
        label = f"{path} [[bench]] {raw['name']}" if isinstance(raw.get("name"), str) else f"{path} [[bench]] #{i + 1}"
        item = {**defaults, **raw}
        for k in item:
            if k not in _ENTRY_KEYS:
                hint_keys = _ENTRY_KEYS if k not in _DEFAULT_ONLY_KEYS else ()
                if not hint_keys:
                    raise UsageError(f"{label}: {k} belongs in [defaults]", hint=f"move {k} = ... to the [defaults] table")
                raise unknown_key(k, hint_keys, label)
        if "model" not in item or "target" not in item:
            raise UsageError(f"{label}: needs model and target", hint='add model = "out/model" and target = "cpu-openvino"')
        for k in ("name", "model", "target", "baseline", "data", "device", "resource"):
            if k in item and not isinstance(item[k], str):
                raise UsageError(f"{label}: {k} must be a string, not {item[k]!r}")
        if "batch" in item and (isinstance(item["batch"], bool) or not isinstance(item["batch"], int) or item["batch"] < 1):
            raise UsageError(f"{label}: batch must be a positive integer, not {item['batch']!r}")
        if not isinstance(item.get("budgets", {}), dict):
            raise UsageError(f"{label}: budgets must be a table", hint='write budgets = { p99 = "33ms" }')
        name = item.get("name", f"{Path(item['model']).stem}@{item['target']}")
        if any(e.name == name for e in entries):
            raise UsageError(f"{label}: another entry is also named {name!r}", hint="give each [[bench]] entry its own name (reports and baselines use it)")
        baseline = item.get("baseline") or (str(Path(baseline_dir) / f"{_safe_name(name)}.json") if baseline_dir is not None else None)
        entries.append(BenchEntry(
            name=name,
            model=str(base / item["model"]),
            target=item["target"] if not str(item["target"]).endswith(".toml") else str(base / item["target"]),
            budgets=budgets_from_table(item.get("budgets", {}), label=label),
            baseline=str(base / baseline) if baseline else None,
            max_regression=parse_percent(item.get("max_regression", 0.10), label),
            data=str(base / item["data"]) if item.get("data") else None,
            batch=item.get("batch"),
            label=f"{path} [[bench]] {name}",
            device=item.get("device"),
            resource=item.get("resource"),
            optimize=_entry_optimize(item, base, label),
        ))
    if not entries:
        raise UsageError(f"{path} has no [[bench]] entries", hint="add one: [[bench]] model = \"...\" target = \"...\"")
    return entries
