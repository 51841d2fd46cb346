"""`quantize`: INT8 post-training quantization to QDQ ONNX, with the target's recipe; `quantize_model` is
the front door.

The package owns every part of it: streamed calibration statistics (`calibstats`, bounded memory), regions
and their policies (`regions`, signal front-ends in `spectral`), the PTQ algorithms (`ptq`, `equalize`,
`smoothquant`, `settle`), the self-check on held-out data (`check`, `checkrun`), the per-node ranking
(`sensitivity`), the float fallback (`fallback`) and the accuracy report on user data (`accuracy`).
Ranges go to ONNX Runtime's QDQ quantizer (a well-kept library places the nodes); a calibration cache
keyed by model + data + recipe lets a re-run skip the data pass. Data sources come from `edgekit.data`.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgekit.backends import get_backend
from edgekit.backends.base import QuantRecipe, recipe_for_target
from edgekit.data.calibration import CalibrationSet, calibration_set
from edgekit.quantize.calibstats import METHODS, VERSION, RunningStats, tensor_range
from edgekit.compile import tool_versions
from edgekit.config import load_target
from edgekit.errors import UsageError
from edgekit.files import sha256_file, write_json
from edgekit.inspection import quantized_nodes
from edgekit.onnxmodel import input_specs, is_qdq, load_onnx, opset_of, save_onnx
from edgekit.data.preprocess import ImageRecipe
from edgekit.progress import status, track
from edgekit.quantize.regions import region_report

_FLOAT = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)


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
    base = os.environ.get("EDGEKIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")), "edgekit")
    return Path(base) / "calibration"


def _prepare(model_path: Path, notes: list[str]) -> onnx.ModelProto:
    """Load, upgrade to opset 13+ (per-channel QDQ needs it), run ONNX Runtime's pre-processing."""

    model = load_onnx(model_path)
    if is_qdq(model):
        raise UsageError(f"{model_path} is already quantized (QDQ)", hint="quantize the FP32 model")
    if opset_of(model) < 13:
        from onnx import version_converter

        notes.append(f"upgraded opset {opset_of(model)} -> 13: per-channel QDQ needs opset 13 or later")
        try:
            model = version_converter.convert_version(model, 13)
        except Exception as exc:
            raise UsageError(f"cannot upgrade the model from opset {opset_of(model)} to 13 ({exc})", hint="re-export with --opset 13 or later") from exc
    with tempfile.TemporaryDirectory(prefix="edgekit-q-") as tmp_name:
        tmp = Path(tmp_name)
        src = save_onnx(model, tmp / "in.onnx")
        dst = tmp / "pre.onnx"
        outcome = _pre_process_in_subprocess(src, dst, cwd=tmp)
        if outcome == "plain":
            notes.append("ONNX Runtime pre-processing skipped the symbolic shape pass (it failed on this graph)")
        elif outcome == "failed":
            notes.append("ONNX Runtime pre-processing failed; quantizing the model as given")
            return onnx.shape_inference.infer_shapes(model)
        return onnx.load(str(dst))


# ONNX Runtime's symbolic shape pass saves `sym_shape_infer_temp.onnx` (and a `<uuid>.data`) into the
# working directory when it gives up. The working directory belongs to the whole process, so changing it
# would break the relative paths of every other thread (a service quantizing two models at once): the pass
# runs in a child process whose working directory is a private temporary folder instead (~0.9 s of imports).
_PRE_PROCESS = """
import sys
from onnxruntime.quantization.shape_inference import quant_pre_process
src, dst = sys.argv[1], sys.argv[2]
try:
    quant_pre_process(src, dst, skip_symbolic_shape=False)
    print("symbolic")
except Exception:
    try:
        quant_pre_process(src, dst, skip_symbolic_shape=True)
        print("plain")
    except Exception:
        print("failed")
"""


def _pre_process_in_subprocess(src: Path, dst: Path, *, cwd: Path) -> str:
    """`symbolic`, `plain` (the symbolic shape pass failed, the rest ran) or `failed`, as ONNX Runtime's
    pre-processing went in a child process working in `cwd`."""
    import subprocess
    import sys

    env = {**os.environ, "ORT_DISABLE_TELEMETRY": os.environ.get("ORT_DISABLE_TELEMETRY", "1")}
    res = subprocess.run([sys.executable, "-c", _PRE_PROCESS, str(src), str(dst)], cwd=cwd, env=env, capture_output=True, text=True)
    lines = res.stdout.strip().splitlines()
    outcome = lines[-1] if res.returncode == 0 and lines else "failed"
    return outcome if outcome in ("symbolic", "plain") and dst.exists() else "failed"


def _activation_tensors(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inferred = onnx.shape_inference.infer_shapes(model)
    vi = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    inits = {t.name for t in model.graph.initializer}
    names: list[str] = [i.name for i in model.graph.input if i.name not in inits]
    for node in model.graph.node:
        names.extend(o for o in node.output if o)
    out, seen = [], set()
    for n in names:
        v = vi.get(n)
        if n in seen or v is None or v.type.tensor_type.elem_type not in _FLOAT:
            continue
        seen.add(n)
        out.append(v)
    return out


def collect_stats(model: onnx.ModelProto, calib: CalibrationSet, *, limit: int | None, histograms: bool = True) -> tuple[dict[str, RunningStats], int]:
    """Run the model with every float activation exposed; merge statistics per sample, keep none."""
    from edgekit.backends.onnxruntime import session_from_bytes

    tensors = _activation_tensors(model)
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    existing = {o.name for o in aug.graph.output}
    aug.graph.output.extend([t for t in tensors if t.name not in existing])
    sess = session_from_bytes(aug.SerializeToString())
    names = [o.name for o in sess.get_outputs()]
    keep = {t.name for t in tensors}
    stats = {n: RunningStats(histogram=histograms) for n in names if n in keep}
    specs = input_specs(model)
    used = 0
    total = min(calib.count, limit) if limit else calib.count
    for feed in track(calib.feeds(specs), label="calibrating", total=total):
        if limit and used >= limit:
            break
        for name, value in zip(names, sess.run(names, feed)):
            st = stats.get(name)
            if st is not None and isinstance(value, np.ndarray) and value.dtype.kind == "f":
                st.add(value)
        used += 1
    return stats, used


def _cache_key(model: onnx.ModelProto, calib: CalibrationSet, recipe: QuantRecipe, method: str, samples: int | None, pct: float) -> str:
    h = hashlib.sha256(model.SerializeToString(deterministic=True))
    h.update(json.dumps([VERSION, calib.fingerprint, recipe.to_dict(), method, samples, pct], sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


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


def quantize_with_ranges(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]], recipe: QuantRecipe, *, exclude: Sequence[str]) -> onnx.ModelProto:
    """Place QDQ nodes with ONNX Runtime's QDQ quantizer from precomputed ranges, region by region
    (edgekit.quantize.regions: which nodes its op quantizers handle, which tensors are marked directly)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import QuantType
    from onnxruntime.quantization.registry import QDQRegistry

    from edgekit.quantize.graph import name_nodes
    from edgekit.quantize.names import canonical_names, check_quantized, restore_names, skeleton
    from edgekit.quantize.regions import find_regions, hoist_qdq_over_shape_ops, quantization_plan, unfold_reshaped_gemms

    # names the quantizer's generated ones cannot land on (edgekit.quantize.names); the originals come back right after it
    fp32 = skeleton(model)  # the quantizer edits `model`; the check of its result may need the original's shapes
    mapping, prefix = canonical_names(model)
    ranges = {mapping[k]: v for k, v in ranges.items() if k in mapping}
    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    data = TensorsData(CalibrationMethod.MinMax, {k: (np.float32(lo), np.float32(hi)) for k, (lo, hi) in ranges.items()})
    extra: dict[str, Any] = {"ActivationSymmetric": recipe.activation_symmetric, "WeightSymmetric": True, **dict(recipe.extra)}
    op_types = list(recipe.op_types) if recipe.op_types else list(QDQRegistry.keys())
    nodes, tensors = [], []
    if recipe.region_policies:
        if recipe.hoist_shape_ops:
            unfold_reshaped_gemms(model)
        name_nodes(model)
        regions = find_regions(model)
        nodes, tensors = quantization_plan(model, regions, dict(recipe.region_policies), set(op_types), exclude=set(exclude))
        by_name = {n.name: n for n in model.graph.node}
        s8_inputs = [by_name[r.nodes[-1]].input[0] for r in regions if dict(recipe.region_policies).get(r.kind) == "int8-s8"
                     and r.nodes[-1] in set(nodes) and ranges.get(by_name[r.nodes[-1]].input[0], (0.0, 0.0))[0] < 0]
        op_types = sorted(set(op_types) | {n.op_type for n in model.graph.node if n.name in set(nodes)})
        nodes = nodes or ["<none>"]  # ONNX Runtime reads an empty list as "every node"
        # Q x K^T multiplies two activations: symmetric S8 on both (NNCF's mixed preset), as OpenVINO's fused attention takes
        extra["TensorQuantOverrides"] = {**extra.get("TensorQuantOverrides", {}), **{t: [{"quant_type": QuantType.QInt8, "symmetric": True}] for t in [*tensors, *s8_inputs]}}
    quantizer = QDQQuantizer(
        model, recipe.per_channel, recipe.reduce_range, qtype[recipe.weight_type], qtype[recipe.activation_type], data,
        nodes, list(exclude), op_types, extra,
    )
    for t in tensors:  # activations the plan quantizes above shape-only ops (see edgekit.quantize.regions)
        quantizer.quantize_activation_tensor(t)
    quantizer.quantize_model()
    restore_names(quantizer.model.model, mapping, prefix)
    if recipe.hoist_shape_ops:
        hoist_qdq_over_shape_ops(quantizer.model.model)
    quantizer.model.topological_sort()  # the QDQ pass appends nodes; ONNX requires topological order
    out = quantizer.model.model
    if recipe.qdq_pass:  # the backend's own placement rule (e.g. TensorRT's residual-Add fusion)
        import importlib

        module, _, func = recipe.qdq_pass.partition(":")
        out = getattr(importlib.import_module(module), func)(out)
    check_quantized(out, fp32, "ONNX Runtime's QDQ quantizer")
    return out


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
        model = _prepare(model_path, notes)
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
        if options.cache:
            cache_state = "miss"
            try:
                write_json(cache_file, {"ranges": ranges, "samples": used, "settled": settled})
            except UsageError:
                notes.append("could not write the calibration cache")
    fallback = check = None
    if options.check:
        from edgekit.quantize.checkrun import checked_model

        qmodel, check, fallback = checked_model(model, ranges, recipe, exclude, options, held=held, settled=settled, calib=cset, method=method)
        if fallback is not None:
            exclude = sorted(set(exclude) | {n for k in fallback["kept_in_float"] for n in k.get("nodes", [k["node"]])})
    else:
        with status("inserting QDQ nodes"):
            qmodel = quantize_with_ranges(_copy(model), ranges, recipe, exclude=exclude)
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


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime's quantizer edits the model it is given: each attempt gets its own copy."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def read_exclude_file(path: str | Path) -> tuple[str, ...]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read --exclude-file {path}: {exc.strerror}") from exc
    return tuple(ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#"))


def _fallback_speed(full: onnx.ModelProto, final: onnx.ModelProto, kept: list[dict[str, Any]], q: Any, feed: dict[str, np.ndarray]) -> dict[str, Any]:
    """What keeping each node in float costs in latency (ONNX Runtime, this CPU): that node alone in float vs all
    INT8. Variants are timed in interleaved blocks and compared on their floor (fastest 5%), which interference cannot lower."""
    from edgekit.backends.onnxruntime import session_from_bytes
    from edgekit.bench.stats import floor_ms
    from edgekit.bench.timer import measure_interleaved
    from edgekit.config import BenchSettings

    models = {"all_int8": full, "final": final, **{k["node"]: q([k["node"]]) for k in kept}}
    sessions = {name: session_from_bytes(m.SerializeToString()) for name, m in models.items()}
    settings = BenchSettings(warmup_ms=100, min_iterations=10, min_duration_s=0.9)
    timed = measure_interleaved([lambda s=sess: s.run(None, feed) for sess in sessions.values()], settings)
    best = {name: floor_ms(t.latencies_ms) for name, t in zip(sessions, timed)}
    return {"all_int8": best["all_int8"], "final": best["final"], "per_node_ms": {k["node"]: best[k["node"]] - best["all_int8"] for k in kept}}
