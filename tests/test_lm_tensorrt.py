"""TensorRT for decoders, the parts that run without a GPU: the weight-only graph TensorRT builds (run here on ONNX
Runtime against the FP32 graph), the rules it must keep, and the optimisation profiles. The real SmolLM2 path is in
test_lm.py; building and running an engine is `requires_tensorrt`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.errors import UsageError
from edgekit.llm.runtime import LMMeta, past_names
from edgekit.llm.tensorrt import LMEngineOptions, graph_problems, lm_profiles, load_at_opset, ragged_blocks, weight_only

K, N = 256, 96


def _matmul_model(opset: int = 17) -> tuple[onnx.ModelProto, np.ndarray]:
    """x [1, s, K] @ W [K, N] -> ReduceMean (whose form changes at opset 18) -> y, with W drawn like trained weights."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((K, N)) * rng.uniform(0.2, 2.0, size=(1, N))).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    if opset >= 18:  # the axes became an input
        inits.append(numpy_helper.from_array(np.array([-1], np.int64), "axes"))
        mean = helper.make_node("ReduceMean", ["h", "axes"], ["m"], keepdims=1)
    else:
        mean = helper.make_node("ReduceMean", ["h"], ["m"], axes=[-1], keepdims=1)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="proj/MatMul"), mean, helper.make_node("Sub", ["h", "m"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "s", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "s", N])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8), w


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the DequantizeLinear as written, no fusion
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("bits,group,bound", [(8, 128, 0.02), (4, 128, 0.25), (4, 64, 0.2)])
def test_the_weight_only_graph_is_tensorrts_form_and_computes_the_float_one(bits: int, group: int, bound: float, tmp_path: Path) -> None:
    model, w = _matmul_model()
    x = np.random.default_rng(1).standard_normal((1, 7, K)).astype(np.float32)
    ref = _run(model, x)
    # as an export is: the weights in an external data file, the graph at opset 17 (converted without its weights)
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    q, count = weight_only(load_at_opset(tmp_path / "m.onnx"), bits=bits, group_size=group, exclude=set())
    assert count == 1 and graph_problems(q) == []
    onnx.checker.check_model(q)
    assert next(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) == 21
    dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear")
    attrs = {a.name: a.i for a in dq.attribute}
    inits = {i.name: i for i in q.graph.initializer}
    assert inits[dq.input[0]].data_type == (TensorProto.INT8 if bits == 8 else TensorProto.INT4)
    assert (attrs == {"axis": 1}) if bits == 8 else (attrs == {"axis": 0, "block_size": group})
    assert "w" not in inits  # the float weight is gone: the model holds the integers only
    mm = next(n for n in q.graph.node if n.op_type == "MatMul")
    assert mm.input[1] == dq.output[0]
    got = _run(q, x)
    rel = float(np.abs(got - ref).max() / np.abs(ref).max())
    assert 0 < rel < bound  # quantized (not the float weight under another name) and close to it


def test_a_matmul_kept_in_float_stays_float() -> None:
    model, _ = _matmul_model(opset=21)
    q, count = weight_only(model, bits=8, group_size=128, exclude={"proj/MatMul"})
    assert count == 0 and not any(n.op_type == "DequantizeLinear" for n in q.graph.node)


def _dq_model(*, dtype: int, attrs: dict[str, int], zero_point: int | None = None, consumer: str = "MatMul", opset: int = 21) -> onnx.ModelProto:
    q = helper.make_tensor("wq", dtype, [K, N], np.zeros(K * N, np.int8).tolist())
    scale_shape = [K // attrs["block_size"], N] if "block_size" in attrs else [N]
    inits = [q, numpy_helper.from_array(np.ones(scale_shape, np.float32), "s")]
    inputs = ["wq", "s"]
    if zero_point is not None:
        inits.append(helper.make_tensor("zp", dtype, scale_shape, [zero_point] * int(np.prod(scale_shape))))
        inputs.append("zp")
    nodes = [helper.make_node("DequantizeLinear", inputs, ["wd"], name="dq", **attrs),
             helper.make_node(consumer, ["x", "wd"] if consumer == "MatMul" else ["wd", "wd"], ["y"], name="use")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("kwargs,expect", [
    ({"dtype": TensorProto.INT4, "attrs": {"axis": 0, "block_size": 128}}, None),
    ({"dtype": TensorProto.INT8, "attrs": {"axis": 1}}, None),
    ({"dtype": TensorProto.INT4, "attrs": {"axis": 0, "block_size": 32}}, "blocks of 64 or 128"),
    ({"dtype": TensorProto.INT4, "attrs": {"axis": 1, "block_size": 32}}, "axis 1"),
    ({"dtype": TensorProto.INT4, "attrs": {"axis": 0, "block_size": 128}, "opset": 17}, "opset 21"),
    ({"dtype": TensorProto.INT4, "attrs": {"axis": 0, "block_size": 128}, "zero_point": 3}, "non-zero zero point"),
    ({"dtype": TensorProto.INT8, "attrs": {"axis": 1}, "consumer": "Add"}, "must feed MatMul weights"),
    ({"dtype": TensorProto.UINT8, "attrs": {"axis": 1}}, "UINT8"),
])
def test_graph_problems_names_what_tensorrt_refuses(kwargs: dict, expect: str | None) -> None:
    problems = graph_problems(_dq_model(**kwargs))
    if expect is None:
        assert problems == []
    else:
        assert any(expect in p for p in problems), problems


def test_a_graph_with_onnx_runtimes_fused_operators_is_refused() -> None:
    model, _ = _matmul_model()
    model.graph.node.append(helper.make_node("GroupQueryAttention", ["y"], ["z"], domain="com.microsoft"))
    assert graph_problems(model) == ["com.microsoft.GroupQueryAttention is not a standard ONNX operator"]


def test_the_prefill_and_decode_profiles_cover_every_step_up_to_the_context() -> None:
    meta = LMMeta(format="onnx", model="model.onnx", layers=2, kv_heads=3, head_dim=64, eos_token_id=None, weights="int8-channel-sym")
    inputs = ["input_ids", "attention_mask", "position_ids", *past_names(2)]
    prefill, decode = lm_profiles(meta, inputs, LMEngineOptions(max_context=512, max_prompt=256))
    assert prefill["input_ids"] == [[1, 1], [1, 128], [1, 256]] and decode["input_ids"] == [[1, 1]] * 3
    for profile in (prefill, decode):
        assert set(profile) == set(inputs)
        for lo, opt, hi in profile.values():
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi))
        assert profile["past_key_values.1.value"][0] == [1, 3, 0, 64] and profile["past_key_values.1.value"][2] == [1, 3, 511, 64]
        assert profile["attention_mask"][2] == [1, 512]  # past + new never beyond the context
    # every (past, new) a generation reaches is inside one of them: a prompt, then one token at a time
    for past, new in [(0, 1), (0, 256), (255, 1), (511, 1)]:
        p = prefill if new > 1 else decode
        assert p["past_key_values.0.key"][0][2] <= past <= p["past_key_values.0.key"][2][2]
        assert p["input_ids"][0][1] <= new <= p["input_ids"][2][1] and past + new <= p["attention_mask"][2][1]
    with pytest.raises(UsageError, match="input 'token_type_ids'"):
        lm_profiles(meta, [*inputs, "token_type_ids"], LMEngineOptions())
    with pytest.raises(UsageError, match="--max-prompt 600"):
        LMEngineOptions(max_context=512, max_prompt=600)


def test_a_weight_shared_by_two_matmuls_is_quantized_once_and_blocks_must_divide_k() -> None:
    model, _ = _matmul_model(opset=21)
    g = model.graph
    g.node.append(helper.make_node("MatMul", ["x", "w"], ["h2"], name="again/MatMul"))
    g.output.append(helper.make_tensor_value_info("h2", TensorProto.FLOAT, [1, "s", N]))
    q, count = weight_only(model, bits=8, group_size=128, exclude=set())
    assert count == 1 and graph_problems(q) == []
    onnx.checker.check_model(q)
    assert {n.input[1] for n in q.graph.node if n.op_type == "MatMul"} == {"w_DQ_Q8_output"}
    assert ragged_blocks(_matmul_model(opset=21)[0], 128, set()) == [] and ragged_blocks(_matmul_model(opset=21)[0], 96, set()) == ["proj/MatMul (K=256)"]
    ragged = _dq_model(dtype=TensorProto.INT4, attrs={"axis": 0, "block_size": 128})
    ragged.graph.initializer[0].dims[:] = [192, N]
    assert any("K=192 is not a multiple of its block of 128" in p for p in graph_problems(ragged))
