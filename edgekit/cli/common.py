"""Helpers every command shares: the --json option, tables, number formatting, number lists."""
from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from edgekit.errors import GateFailed, UsageError
from edgekit.files import json_default, write_json

json_option = click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True), default=None,
    help="Also write the results as JSON to this file ('-' for stdout).",
)


def emit_json(json_path: str | None, data: Any) -> None:
    if not json_path:
        return
    if hasattr(data, "to_dict"):
        data = data.to_dict()
    if json_path == "-":
        click.echo(json.dumps(data, indent=2, default=json_default))
    else:
        write_json(json_path, data)


def run_and_emit(json_path: str | None, work: Callable[[], Any], render: Callable[[Any], None]) -> Any:
    """Run `work`; render and write JSON for the result, also when a gate fails (exit 3)."""
    try:
        result = work()
    except GateFailed as exc:
        if exc.result is not None:
            if json_path != "-":
                render(exc.result)
            emit_json(json_path, exc.result)
        raise
    if json_path != "-":
        render(result)
    emit_json(json_path, result)
    return result


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1000 or abs(v) < 1e-3:
            return f"{v:.3g}"
        return f"{v:.4g}"
    if v is None:
        return "-"
    return str(v)


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def human_count(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return str(n)


def out(text: str = "") -> None:
    click.echo(text, file=sys.stdout)


def float_list(text: str | None) -> tuple[float, ...] | None:
    """A comma-separated list of numbers from the command line (`0.485,0.456,0.406`); None stays None."""
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"bad list of numbers {text!r}", hint="write it like 0.485,0.456,0.406") from None
