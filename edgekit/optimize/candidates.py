"""The candidates: every precision variant the target's device runs, each compiled once.

Float variants compile the FP32 model; INT8 variants compile the QDQ model `quantize_model` makes
for the target (its own checks and fallbacks included). When no INT8 variant meets the accuracy
budget, the `-fallback` variants compile a second QDQ model, quantized with the budget: quantize's
float fallback keeps the most sensitive nodes in float until it holds.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any

from edgekit.backends.base import Engine, PrecisionVariant
from edgekit.config import Target
from edgekit.errors import EdgekitError, GateFailed

FALLBACK = "-fallback"


@dataclasses.dataclass
class Candidate:
    name: str
    variant: PrecisionVariant
    target: Target  # the target with this variant's precision and options
    source: Path | None = None  # the ONNX it compiles (FP32 or QDQ)
    folder: Path | None = None  # the compiled artifact
    error: str | None = None  # why it was not built
    build_s: float = 0.0
    quantize: dict[str, Any] | None = None
    engine: Engine | None = None
    accuracy: dict[str, Any] | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    skipped: str | None = None  # built and accurate-measured, but not timed: why it cannot win

    @property
    def built(self) -> bool:
        return self.engine is not None


def fallback_name(name: str) -> str:
    """int8 -> int8-fallback, int8+bf16 -> int8-fallback+bf16."""
    head, sep, tail = name.partition("+")
    return head + FALLBACK + sep + tail


def all_names(variants: list[PrecisionVariant]) -> list[str]:
    return [v.name for v in variants] + [fallback_name(v.name) for v in variants if v.precision == "int8"]


def candidate_for(variant: PrecisionVariant, target: Target, *, name: str | None = None) -> Candidate:
    tgt = dataclasses.replace(target, precision=variant.precision, options=variant.options)
    return Candidate(name or variant.name, variant, tgt)


def compile_candidate(c: Candidate, source: Path, workdir: Path, stack: contextlib.ExitStack) -> None:
    """Compile `source` for the candidate and load it; a failure is recorded on the candidate (it may be
    the runtime saying this CPU lacks the instructions), except for fp32, whose failure is the run's."""
    from edgekit.compile import compile_model, open_engine

    c.source = source
    t0 = time.perf_counter()
    shapes = {k: tuple(v) for k, v in c.target.bench.shapes.items()}
    try:
        c.folder = workdir / "artifacts" / c.name
        compile_model(source, c.folder, target=c.target, precision=c.variant.precision, shapes=shapes)
        c.engine, _ = stack.enter_context(open_engine(c.folder, target=c.target))
    except EdgekitError as exc:
        if c.variant.name == "fp32":
            raise
        c.error = f"not built: {exc}"
    c.build_s = time.perf_counter() - t0


def quantized_model(model: Path, out: Path, *, calib: str, quantize_options: Any) -> tuple[Path | None, dict[str, Any] | None, str | None]:
    """(QDQ model, quantize's report, error): `edgekit quantize` for the target. A fallback that misses
    the budget still writes its best model (exit 3 in quantize): it competes, and its accuracy says it."""
    from edgekit.quantize import quantize_model

    note = None
    try:
        report = quantize_model(model, out, calib=calib, options=quantize_options)
    except GateFailed as exc:
        report, note = exc.result, f"quantize: {exc.message}"
    except EdgekitError as exc:
        return None, None, f"not built: quantize failed: {exc}"
    except Exception as exc:  # a bug in quantize costs this candidate, not the whole choice; -v logs the traceback
        import logging

        logging.getLogger("edgekit.optimize").info("quantize raised", exc_info=True)
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return None, None, f"not built: quantize raised {type(exc).__name__}: {first} (a bug in edgekit; please report it)"
    summary = _quantize_summary(report.to_dict() if hasattr(report, "to_dict") else dict(report or {}))
    if note:
        summary["note"] = note
    return out, summary, None


def _quantize_summary(r: dict[str, Any]) -> dict[str, Any]:
    fb = r.get("fallback") or {}
    return {"recipe": (r.get("recipe") or {}).get("name"), "method": r.get("method"), "nodes_quantized": r.get("nodes_quantized"),
            "nodes_float": len(r.get("nodes_float") or []), "samples_used": (r.get("calibration") or {}).get("samples_used"),
            "kept_in_float": [k["node"] for k in fb.get("kept_in_float", [])], "fallback_met": fb.get("met"),
            "ranked_on": fb.get("ranked_on"),  # with an executor: where its sensitivity units ran
            "seconds": r.get("seconds")}
