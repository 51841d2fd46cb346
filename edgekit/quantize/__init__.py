"""`quantize`: INT8 post-training quantization to QDQ ONNX, with the target's recipe; `quantize_model` is
the front door.

The package owns every part of it: preparing the float model (`prepare`), streamed calibration statistics
(`calibstats`, bounded memory), the steps every attempt repeats (`qdq`: statistics over the data, QDQ placement
from ranges), regions and their policies (`regions`, signal front-ends in `spectral`, both reading `graph`),
node names the quantizer cannot clash with (`names`), the PTQ algorithms (`ptq`, `equalize`, `smoothquant`,
`settle`), the self-check on held-out data (`check`, `checkrun`), the per-node ranking (`sensitivity`), the
float fallback (`fallback`) and the accuracy report on user data (`accuracy`).
Ranges go to ONNX Runtime's QDQ quantizer (a well-kept library places the nodes); a calibration cache
keyed by model + data + recipe lets a re-run skip the data pass. Data sources come from `edgekit.data`.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx

from edgekit.backends import get_backend
from edgekit.backends.base import QuantRecipe, recipe_for_target
from edgekit.compile import tool_versions
from edgekit.config import load_target
from edgekit.data.calibration import CalibrationSet, calibration_set
from edgekit.data.preprocess import ImageRecipe
from edgekit.errors import UsageError
from edgekit.files import sha256_file, write_json
from edgekit.inspection import quantized_nodes
from edgekit.onnxmodel import input_specs, save_onnx
from edgekit.progress import status
from edgekit.quantize.calibstats import METHODS, VERSION, RunningStats, tensor_range
from edgekit.quantize.prepare import prepare_model
from edgekit.quantize.qdq import collect_stats, copy_model, quantize_with_ranges
from edgekit.quantize.regions import region_report

__all__ = ["QuantizeOptions", "QuantizeReport", "cache_dir", "collect_stats", "copy_model", "prepare_model", "quantize_model",
           "quantize_with_ranges", "read_exclude_file"]


@dataclasses.dataclass(frozen=True)
class QuantizeOptions:
    target: str = "onnxruntime"
    method: str | None = None  # None: the recipe's
    samples: int | None = None
    exclude: tuple[str, ...] = ()  # node names, fnmatch patterns of names, or op types
    percentile: float = 99.999
    recipe: ImageRecipe | None = None  # preprocessing for an image-folder source
    eval_source: str | None = None
    cache: bool = True
    max_accuracy_drop: float | None = None  # keep the most sensitive nodes in float until met (instead of the default bar)
    metric: str = "cosine"  # cosine (1 - worst cosine) | top1 (points) | maxabs (first output)
    check: bool = True  # check INT8 against FP32 on held-out data (a slice of the calibration data without --eval)
    ptq: bool = True  # below the bar, try the PTQ algorithms (edgekit.quantize.ptq) before the float fallback
    executor: Any = None  # an edgekit.executors.Executor for the sensitivity ranking (None: in this process)


@dataclasses.dataclass
class QuantizeReport:
    output: str
    target: str
    recipe: dict[str, Any]
    method: str
    calibration: dict[str, Any]
    settled: dict[str, Any]
    nodes_quantized: int
    nodes_float: list[str]
    excluded: list[str]
    size_before: int
    size_after: int
    seconds: float
    cache: str
    notes: list[str]
    accuracy: dict[str, Any] | None = None
    fallback: dict[str, Any] | None = None
    check: dict[str, Any] | None = None
    regions: list[dict[str, Any]] | None = None  # edgekit.quantize.regions: each region found and its recipe's policy for it

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def cache_dir() -> Path:
    """Where calibration ranges are cached ($EDGEKIT_CACHE, else $XDG_CACHE_HOME/edgekit or ~/.cache/edgekit)."""
    base = os.environ.get("EDGEKIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")), "edgekit")
    return Path(base) / "calibration"


def _cache_key(model: onnx.ModelProto, calib: CalibrationSet, recipe: QuantRecipe, method: str, samples: int | None, pct: float) -> str:
    h = hashlib.sha256(model.SerializeToString(deterministic=True))
    h.update(json.dumps([VERSION, calib.fingerprint, recipe.to_dict(), method, samples, pct], sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


EXTEND_FACTOR = 4  # with --samples N and ranges still moving, calibration goes on up to 4 N samples of the source


def _settled(stats: dict[str, RunningStats]) -> dict[str, Any]:
    """How much the ranges still moved over the last 10% of the samples (0 = settled), and about how
    many samples would settle them (`settle.py`)."""
    from edgekit.quantize.settle import settle_report

    return settle_report(stats)


def _exclusions(model: onnx.ModelProto, patterns: Sequence[str]) -> list[str]:
    names = [n.name for n in model.graph.node if n.name]
    ops = {n.op_type for n in model.graph.node}
    out: list[str] = []
    for p in patterns:
        hits = [n.name for n in model.graph.node if n.op_type == p] if p in ops else fnmatch.filter(names, p)
        if not hits:
            raise UsageError(f"--exclude {p!r} matches no node name or op type", hint="see node names with `edgekit inspect MODEL --nodes`")
        out.extend(hits)
    return sorted(set(out))


def _calibrate(model: onnx.ModelProto, cset: Any, recipe: Any, method: str, options: QuantizeOptions, notes: list[str]
               ) -> tuple[dict[str, Any], int, dict[str, Any], str]:
    """Ranges from `cset` (or the calibration cache): (ranges, samples used, how settled, cache state)."""
    key = _cache_key(model, cset, recipe, method, options.samples, options.percentile)
    cache_file = cache_dir() / f"{key}.json"
    cache_state = "off"
    if options.cache and cache_file.exists():
        cached = json.loads(cache_file.read_text())
        ranges = {k: tuple(v) for k, v in cached["ranges"].items()}
        used, settled, cache_state = cached["samples"], cached["settled"], "hit"
    else:
        stats, used = collect_stats(model, cset, limit=options.samples, histograms=method != "minmax")
        if used == 0:
            raise UsageError(f"calibration set {cset.description} is empty", hint="give at least one sample")
        with status(f"computing {method} ranges"):
            ranges = {k: tensor_range(st, method, percentile=options.percentile, symmetric=recipe.activation_symmetric) for k, st in stats.items()}
        settled = _settled(stats)
        need = settled.get("samples_needed") or 0
        more = min(cset.count, need, EXTEND_FACTOR * used)
        if options.samples is not None and settled.get("settled") is False and more > used:
            # --samples stopped calibration while the ranges were still moving and the source has more:
            # use them (up to EXTEND_FACTOR times as many), and say so
            with status(f"ranges still moving after {used} samples: calibrating on {more}"):
                stats, more_used = collect_stats(model, cset, limit=more, histograms=method != "minmax")
                ranges = {k: tensor_range(st, method, percentile=options.percentile, symmetric=recipe.activation_symmetric) for k, st in stats.items()}
            settled = {**_settled(stats), "extended": {"asked": options.samples, "used": more_used,
                                                       "why": f"the ranges still moved after {used} samples; about {need:,} would settle them"}}
            notes.append(f"--samples {options.samples}: the ranges were still moving, so {more_used} samples were used "
                         f"(at most {EXTEND_FACTOR}x --samples, and the source's {cset.count})")
            used = more_used
        if options.cache:
            cache_state = "miss"
            try:
                write_json(cache_file, {"ranges": ranges, "samples": used, "settled": settled})
            except UsageError:
                notes.append("could not write the calibration cache")
    return ranges, used, settled, cache_state


def quantize_model(model_path: str | Path, output: str | Path, *, calib: str, options: QuantizeOptions = QuantizeOptions()) -> QuantizeReport:
    """Quantize `model_path` to a QDQ ONNX at `output`, with a sidecar manifest `output.json`."""
    start = time.perf_counter()
    model_path, output = Path(model_path), Path(output)
    if options.method is not None and options.method not in METHODS:
        raise UsageError(f"unknown calibration method {options.method!r}", hint=f"use one of {', '.join(METHODS)}")
    if options.samples is not None and options.samples < 1:
        raise UsageError("--samples must be at least 1")
    target = load_target(options.target)
    backend = get_backend(target.backend)
    notes: list[str] = []
    with status("preparing the model"):
        model = prepare_model(model_path, notes)
    recipe = recipe_for_target(backend, model, target)
    method = options.method or recipe.method
    specs = input_specs(model)
    cset = calibration_set(calib, specs, recipe=options.recipe)
    held = None
    if options.check and not options.eval_source:  # hold out a slice to check on; calibrate on the rest
        from edgekit.quantize.check import HeldOut

        held = HeldOut.split(cset, samples=options.samples)
        cset = held.calib
    exclude = _exclusions(model, options.exclude)

    ranges, used, settled, cache_state = _calibrate(model, cset, recipe, method, options, notes)
    fallback = check = None
    if options.check:
        from edgekit.quantize.checkrun import checked_model

        qmodel, check, fallback = checked_model(model, ranges, recipe, exclude, options, held=held, settled=settled, calib=cset, method=method,
                                                target=target, source=str(model_path))
        if check.get("unjudged_outputs") and held is not None and not held.in_sample:
            from edgekit.quantize.check import resplit_for_foreground

            # the slice showed too little for a map (foreground) or a detector (confident boxes) to lose: hold out
            # samples of the source whose FP32 output shows some instead (one FP32 pass over the source, one more
            # calibration), and say so
            with status("the held-out samples show too little to judge: looking for samples that show more"):
                alt, why = resplit_for_foreground(model, held, check["unjudged_outputs"])
            if alt is not None:
                held, cset = alt, alt.calib
                ranges, used, settled, cache_state = _calibrate(model, cset, recipe, method, options, notes)
                qmodel, check, fallback = checked_model(model, ranges, recipe, exclude, options, held=held, settled=settled, calib=cset,
                                                        method=method, target=target, source=str(model_path))
                notes.append(why)
            check["held_out_resplit"] = why
        if fallback is not None:
            exclude = sorted(set(exclude) | {n for k in fallback["kept_in_float"] for n in k.get("nodes", [k["node"]])})
    else:
        with status("inserting QDQ nodes"):
            qmodel = quantize_with_ranges(copy_model(model), ranges, recipe, exclude=exclude)
    qmodel.producer_name = "edgekit"
    q, f = quantized_nodes(qmodel)
    calib_info = {**cset.to_dict(), "samples_used": used}
    manifest = {
        "kind": "edgekit.quantized", "schema": 1, "source": {"path": str(model_path), "sha256": sha256_file(model_path)},
        "target": target.name, "backend": target.backend, "recipe": recipe.to_dict(), "method": method,
        "percentile": options.percentile if method == "percentile" else None, "calibration": calib_info,
        "excluded": exclude, "fallback": fallback, "check": check, "versions": tool_versions(),
    }
    save_onnx(qmodel, output)
    # the sidecar names the model it describes: a kill between the two writes leaves a sidecar that
    # readers (compile, pack) see is stale, never one that describes another model
    manifest["output"] = {"path": str(output), "sha256": sha256_file(output)}
    if fallback is not None:
        from edgekit.files import write_text

        write_text(output.with_name(output.name + ".exclude.txt"), "".join(f"{n}\n" for n in exclude))
    write_json(output.with_name(output.name + ".json"), manifest)
    report = QuantizeReport(
        output=str(output), target=target.name, recipe=recipe.to_dict(), method=method, calibration=calib_info,
        settled=settled, nodes_quantized=len(q), nodes_float=f, excluded=exclude, size_before=model_path.stat().st_size,
        size_after=output.stat().st_size, seconds=time.perf_counter() - start, cache=cache_state, notes=notes, fallback=fallback,
        check=check, regions=region_report(model, dict(recipe.region_policies)),
    )
    if options.eval_source:
        from edgekit.quantize.accuracy import evaluate

        report.accuracy = evaluate(model_path, output, options.eval_source, recipe=options.recipe, target=target)
        if report.accuracy.get("speed", {}).get("note"):
            report.notes.append(report.accuracy["speed"]["note"])
        manifest["accuracy"] = report.accuracy
        write_json(output.with_name(output.name + ".json"), manifest)
    if check is not None and not check["passed"]:
        from edgekit.quantize.checkrun import refusal

        raise refusal(check, fallback, output, report)
    return report


def read_exclude_file(path: str | Path) -> tuple[str, ...]:
    """The node names and patterns in an --exclude-file: one a line; blank lines and `#` comments skipped."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read --exclude-file {path}: {exc.strerror}") from exc
    return tuple(ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#"))
