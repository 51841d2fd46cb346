"""`compare`: two models or compiled artifacts (any backends) on the same real inputs.

Per output: max abs and rel error, cosine (overall and worst row), SQNR, top-1 agreement;
beyond the tolerances it is a failed gate (exit 3). `per_node` (two ONNX files) exposes
every float tensor both graphs share and reports where they first part ways.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgekit.data.calibration import calibration_set
from edgekit.compile import open_engine
from edgekit.errors import GateFailed, UsageError
from edgekit.data.metrics import OutputAgreement
from edgekit.onnxmodel import load_onnx


def compare_models(a: str | Path, b: str | Path, *, data: str, target_a: str | None = None, target_b: str | None = None,
                   min_cosine: float = 0.99, atol: float | None = None, samples: int | None = None,
                   per_node: bool = False, node_sqnr_db: float = 20.0) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        ea, ma = stack.enter_context(open_engine(a, target=target_a))
        eb, mb = stack.enter_context(open_engine(b, target=target_b))
        cs = calibration_set(data, ea.inputs)
        names_a = [o.name for o in ea.outputs]
        names_b = [o.name for o in eb.outputs]
        if len(names_a) != len(names_b):
            raise UsageError(f"{a} has {len(names_a)} outputs, {b} has {len(names_b)}", hint="compare two versions of the same model")
        acc = [OutputAgreement(n) for n in names_a]
        feeds = []
        for i, feed in enumerate(cs.feeds(ea.inputs)):
            if samples and i >= samples:
                break
            ra, rb = ea.run(feed), eb.run(feed)
            for x, na, nb in zip(acc, names_a, names_b):
                x.add(ra[na], rb[nb])
            if per_node and len(feeds) < 8:
                feeds.append(feed)
        info = {"a": {"path": str(a), "backend": ma["backend"], "precision": ma["precision"]},
                "b": {"path": str(b), "backend": mb["backend"], "precision": mb["precision"]}}
    outputs = [x.to_dict() for x in acc]
    failures = []
    for o in outputs:
        worst = o["cosine_min_row"]
        if worst < min_cosine:
            failures.append(f"output {o['output']!r}: worst cosine {worst:.4f} < {min_cosine:g}")
        if atol is not None and o["max_abs"] > atol:
            failures.append(f"output {o['output']!r}: max abs {o['max_abs']:.4g} > {atol:g}")
    report: dict[str, Any] = {**info, "data": cs.description, "outputs": outputs, "min_cosine": min_cosine, "atol": atol,
                              "failures": failures, "passed": not failures}
    if per_node:
        report["per_node"] = first_divergence(Path(a), Path(b), feeds, node_sqnr_db)
    if failures:
        raise GateFailed("the models disagree: " + "; ".join(failures), hint="see `--per-node` for where they part ways", result=report)
    return report


def _float_tensors(model: onnx.ModelProto) -> list[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    return [o for n in model.graph.node for o in n.output if types.get(o) == onnx.TensorProto.FLOAT]


def _expose(model: onnx.ModelProto, names: list[str]) -> bytes:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend([onnx.helper.make_empty_tensor_value_info(n) for n in names if n not in have])
    return m.SerializeToString()


def first_divergence(a: Path, b: Path, feeds: list[dict[str, np.ndarray]], threshold_db: float) -> dict[str, Any]:
    """Worst per-channel SQNR of every float tensor the two ONNX graphs share, in A's order; the first under the threshold."""
    from edgekit.backends.onnxruntime import session_from_bytes

    if a.suffix != ".onnx" or b.suffix != ".onnx":
        raise UsageError("--per-node compares two ONNX files", hint="compare the .onnx files the artifacts were compiled from")
    ma, mb = load_onnx(a), load_onnx(b)
    # a tensor counts as shared only when the same kind of node makes it in both graphs: a quantizer
    # that folds a Relu/Clip into its QuantizeLinear hands the activation's name to another tensor
    op_a = {o: n.op_type for n in ma.graph.node for o in n.output}
    op_b = {o: n.op_type for n in mb.graph.node for o in n.output}
    in_b = set(_float_tensors(mb))
    shared = [n for n in _float_tensors(ma) if n in in_b and op_a.get(n) == op_b.get(n)]
    producer = {o: (n.name or n.op_type) for n in ma.graph.node for o in n.output}
    sa, sb = session_from_bytes(_expose(ma, shared)), session_from_bytes(_expose(mb, shared))
    # per channel (axis 1): an outlier channel sets a tensor's scale and wipes out the others, which a
    # whole-tensor SQNR (dominated by the outlier) would not show
    signal: dict[str, np.ndarray] = {}
    noise: dict[str, np.ndarray] = {}
    for feed in feeds:
        ra = dict(zip([o.name for o in sa.get_outputs()], sa.run(None, feed)))
        rb = dict(zip([o.name for o in sb.get_outputs()], sb.run(None, feed)))
        for n in shared:
            x, y = np.asarray(ra[n], np.float64), np.asarray(rb[n], np.float64)
            if x.shape != y.shape:
                continue
            axes = tuple(i for i in range(x.ndim) if i != 1) if x.ndim >= 2 else None
            sig, err = (x * x).sum(axis=axes), ((x - y) ** 2).sum(axis=axes)
            signal[n] = signal.get(n, 0) + np.atleast_1d(sig)
            noise[n] = noise.get(n, 0) + np.atleast_1d(err)
    rows = []
    for n in shared:
        if n not in signal:
            continue
        live = signal[n] > 0
        per = 10 * np.log10(np.maximum(signal[n][live], 1e-30) / np.maximum(noise[n][live], 1e-30)) if live.any() else np.array([np.inf])
        total = 10 * np.log10(max(float(signal[n].sum()), 1e-30) / max(float(noise[n].sum()), 1e-30))
        rows.append({"tensor": n, "node": producer.get(n, ""), "sqnr_db": float(per.min()), "sqnr_db_whole": total, "worst_channel": int(np.argmin(per)) if live.any() else None})
    first = next((r for r in rows if r["sqnr_db"] < threshold_db), None)
    return {"threshold_db": threshold_db, "tensors": len(rows), "first": first, "worst": sorted(rows, key=lambda r: r["sqnr_db"])[:10]}
