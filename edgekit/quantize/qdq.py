"""The two steps every quantization attempt repeats (the plain run, each PTQ algorithm, the float fallback):
`collect_stats` streams calibration data through the model, `quantize_with_ranges` places QDQ nodes from
ranges with ONNX Runtime's QDQ quantizer, region by region; `copy_model` gives each attempt its own model."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from edgekit.backends.base import QuantRecipe
from edgekit.data.calibration import CalibrationSet
from edgekit.onnxmodel import input_specs
from edgekit.progress import track
from edgekit.quantize.calibstats import RunningStats

_FLOAT = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime's quantizer edits the model it is given: each attempt gets its own copy."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


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
