"""The region finder on small real graphs exported by PyTorch: a conv + attention hybrid (an SVTR-like text
recognizer in miniature: conv stem, attention blocks with LayerNorm and GELU MLPs, an LSTM head) and a
token model with an embedding table. Both ONNX forms of LayerNorm and GELU: the ops (opset 17/20) and their
decompositions (opset 13/17)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgekit.quantize.regions import find_regions, quantization_plan

torch = pytest.importorskip("torch")
nn = torch.nn


class Attention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.h, self.dk = heads, d // heads
        self.q, self.k, self.v, self.o = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        split = lambda y: y.reshape(b, t, self.h, self.dk).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        p = torch.softmax(q @ k.transpose(-1, -2) / self.dk ** 0.5, dim=-1)
        return self.o((p @ v).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.n1, self.att, self.n2 = nn.LayerNorm(d), Attention(d, 2), nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.att(self.n1(x))
        return x + self.mlp(self.n2(x))


class Hybrid(nn.Module):
    """Image of a text line -> per-column class scores: conv stem, two attention blocks, an LSTM."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, d, 3, 2, 1), nn.ReLU(), nn.Conv2d(d, d, 3, (2, 1), 1), nn.ReLU())
        self.blocks = nn.Sequential(Block(d), Block(d))
        self.rnn = nn.LSTM(d, d, batch_first=True)
        self.head = nn.Linear(d, 20)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        f = self.stem(img).mean(2).transpose(1, 2)  # (batch, columns, d)
        return self.head(self.rnn(self.blocks(f))[0])


class Tokens(nn.Module):
    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.emb, self.block = nn.Embedding(100, d), Block(d)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.block(self.emb(ids)).mean(1)


def _export(net: nn.Module, x: torch.Tensor, path: Path, opset: int) -> onnx.ModelProto:
    torch.manual_seed(0)
    torch.onnx.export(net.eval(), (x,), str(path), opset_version=opset, dynamo=False, input_names=["x"])
    return onnx.load(str(path))


@pytest.mark.parametrize("opset", [13, 17])
def test_hybrid_regions_are_found_wherever_they_are(opset: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _export(Hybrid(), torch.rand(1, 1, 16, 48), tmp_path / "hybrid.onnx", opset)
    regions = find_regions(model)
    kinds = [r.kind for r in regions]
    assert kinds.count("attention") == 2 and kinds.count("layernorm") == 4 and kinds.count("gelu") == 2
    assert kinds.count("conv-stem") == 1 and kinds.count("rnn") == 1
    nodes = {n.name: n for n in model.graph.node}
    for r in (r for r in regions if r.kind == "attention"):
        ops = [nodes[n].op_type for n in r.nodes]
        assert nodes[r.qk].op_type == nodes[r.pv].op_type == "MatMul" and "Softmax" in ops
        weighted = [n for n in r.nodes if nodes[n].op_type in ("MatMul", "Gemm") and nodes[n].input[1] in {t.name for t in model.graph.initializer}]
        assert len(weighted) == 4  # the q, k, v and output projections belong to the block
    stem = next(r for r in regions if r.kind == "conv-stem")
    assert [nodes[n].op_type for n in stem.nodes] == ["Conv"] and nodes[stem.nodes[0]].input[0] == "x"
    if opset == 13:  # LayerNorm decomposed (ReduceMean, Sub, Pow, Sqrt, Div, ...) and GELU as Erf
        ln = next(r for r in regions if r.kind == "layernorm")
        assert {"ReduceMean", "Sub", "Sqrt", "Div"} <= {nodes[n].op_type for n in ln.nodes}
        assert any(nodes[n].op_type == "Erf" for r in regions if r.kind == "gelu" for n in r.nodes)


def test_embedding_and_the_plan_for_each_policy(tmp_path: Path) -> None:
    model = _export(Tokens(), torch.randint(0, 100, (1, 12)), tmp_path / "tokens.onnx", 17)
    regions = find_regions(model)
    assert [r.kind for r in regions].count("embedding") == 1
    att = next(r for r in regions if r.kind == "attention")
    nodes = {n.name: n for n in model.graph.node}
    producer = {o: n for n in model.graph.node for o in n.output}
    base = {"MatMul", "Gemm"}
    float_all = {"attention": "float", "layernorm": "float", "gelu": "float", "embedding": "float"}
    planned, tensors = quantization_plan(model, regions, float_all, base)
    assert not set(planned) & set(att.nodes) and tensors == []
    assert planned and all(nodes[n].op_type in base for n in planned)  # the MLP's MatMuls, outside every region
    planned, tensors = quantization_plan(model, regions, {**float_all, "attention": "weights"}, base)
    assert att.qk not in planned and att.pv not in planned and len(set(planned) & set(att.nodes)) == 4
    planned, tensors = quantization_plan(model, regions, {**float_all, "attention": "attention"}, base)
    # Q x K^T: its two inputs quantized above their Reshape/Transpose, where the projections' bias Adds end; P x V float
    assert att.pv not in planned and att.qk not in planned and len(tensors) == 2
    assert all(producer[t].op_type == "Add" and producer[t].name in att.nodes for t in tensors)
    planned, tensors = quantization_plan(model, regions, {**float_all, "attention": "attention"}, base, exclude={att.qk})
    assert tensors == []  # the float fallback keeps Q x K^T in float: nothing placed for it


@pytest.mark.requires_openvino
def test_quantize_reports_regions_and_keeps_layernorm_softmax_in_float(tmp_path: Path) -> None:
    from edgekit.quantize import QuantizeOptions, quantize_model

    torch.manual_seed(0)
    src = tmp_path / "hybrid.onnx"
    _export(Hybrid(), torch.rand(1, 1, 16, 48), src, 17)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.random((4, 1, 16, 48), dtype=np.float32))
    out = tmp_path / "q.onnx"
    report = quantize_model(src, out, calib=str(tmp_path / "calib.npz"), options=QuantizeOptions(target="openvino", cache=False))
    kinds = {r["kind"]: r["policy"] for r in report.regions}
    assert kinds == {"conv-stem": "int8-s8", "attention": "attention", "layernorm": "float", "gelu": "float", "rnn": "float"}
    q = onnx.load(str(out))
    producer = {o: n for n in q.graph.node for o in n.output}
    for n in q.graph.node:
        if n.op_type in ("LayerNormalization", "Softmax", "LSTM"):
            assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in n.input), n.name
    assert sum(n.op_type == "Conv" and producer[n.input[1]].op_type == "DequantizeLinear" for n in q.graph.node) == 2


def test_silero_vad_stft_front_end_is_one_spectral_region_kept_float_by_both_cpu_recipes(silero_vad_onnx: Path) -> None:
    """silero-vad's STFT: a Conv with constant DFT kernels on the padded audio, real^2 + imag^2, Sqrt. INT8 there
    loses the near-silent frames; both CPU recipes keep it float while the learned convs after it quantize."""
    from edgekit.backends import get_backend
    from edgekit.backends.base import CNN_OPS

    model = onnx.load(str(silero_vad_onnx))
    regions = find_regions(model)
    nodes = {n.name: n for n in model.graph.node}
    spectral = [r for r in regions if r.kind == "spectral"]
    assert len(spectral) == 1 and "conv-stem" not in [r.kind for r in regions]  # its Conv is a filterbank, no stem
    front = spectral[0]
    assert [nodes[n].op_type for n in front.nodes] == ["Pad", "Unsqueeze", "Conv", "Slice", "Pow", "Slice", "Pow", "Add", "Sqrt"]
    assert nodes[front.nodes[0]].input[0] == "audio"
    after = [n for n in model.graph.node if n.op_type == "Conv" and nodes[front.nodes[-1]].output[0] in n.input]
    assert len(after) == 1 and after[0].name not in front.nodes  # the learned conv reading the magnitude is the network's
    for backend in ("onnxruntime", "openvino"):
        recipe = get_backend(backend).quant_recipe(model)
        assert dict(recipe.region_policies)["spectral"] == "float" and dict(recipe.regions)["spectral"] == 1, backend
        planned, _ = quantization_plan(model, regions, dict(recipe.region_policies), set(CNN_OPS))
        assert not set(planned) & set(front.nodes) and after[0].name in planned, backend


@pytest.mark.parametrize("cnn", ["mnist_onnx", "efficientnet_onnx"])
def test_a_cnn_first_conv_is_a_stem_not_a_spectral_front_end(cnn: str, request: pytest.FixtureRequest) -> None:
    """A conv stem is followed by BatchNorm/ReLU, never by a magnitude or a log."""
    model = onnx.load(str(request.getfixturevalue(cnn)))
    kinds = [r.kind for r in find_regions(model)]
    assert "spectral" not in kinds and kinds.count("conv-stem") == 1


class LogMelAndNormalizedProjection(nn.Module):
    """Audio framed by a Reshape, a DFT as one MatMul (real | imag), power, a mel MatMul, clamp, log, then a learned
    head; beside it a projection of a second input L2-normalized (x / max(||x||, eps)): a norm, no front-end."""

    def __init__(self, frame: int = 64, bins: int = 33, mels: int = 8) -> None:
        super().__init__()
        t = torch.arange(frame)[:, None] * torch.arange(bins)[None] * 2 * torch.pi / frame
        self.register_buffer("dft", torch.cat([torch.cos(t), -torch.sin(t)], 1))
        self.register_buffer("mel", torch.rand(bins, mels))
        self.frame, self.bins = frame, bins
        self.head, self.proj = nn.Linear(mels, 4), nn.Linear(16, 16)

    def forward(self, audio: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spec = audio.reshape(audio.shape[0], -1, self.frame) @ self.dft
        power = spec[..., :self.bins] ** 2 + spec[..., self.bins:] ** 2
        logmel = torch.log(torch.clamp(power @ self.mel, min=1e-6))
        return torch.relu(self.head(logmel)), nn.functional.normalize(self.proj(feats), dim=-1)


def test_matmul_log_mel_front_end_ends_at_its_log_and_a_normalized_projection_is_none(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "logmel.onnx"
    torch.onnx.export(LogMelAndNormalizedProjection().eval(), (torch.rand(1, 640), torch.rand(1, 16)), str(path), opset_version=17,
                      dynamo=False, input_names=["audio", "feats"])
    model = onnx.load(str(path))
    nodes = {n.name: n for n in model.graph.node}
    spectral = [r for r in find_regions(model) if r.kind == "spectral"]
    assert len(spectral) == 1
    ops = [nodes[n].op_type for n in spectral[0].nodes]
    assert ops.count("MatMul") == 2 and ops[-1] == "Log" and {"Pow", "Add", "Clip"} <= set(ops)  # DFT, mel filterbank
    head = [n for n in model.graph.node if n.op_type in ("Gemm", "MatMul") and nodes[spectral[0].nodes[-1]].output[0] in n.input]
    assert head and head[0].name not in spectral[0].nodes  # the learned head after the log is the network's
    assert all(nodes[n].op_type not in ("ReduceL2", "Div") for n in spectral[0].nodes)
    assert "feats" not in {i for n in spectral[0].nodes for i in nodes[n].input}
