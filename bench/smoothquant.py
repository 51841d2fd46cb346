"""SmoothQuant before all-INT8 quantization of MiniLM-L6: cosine to FP32 on held-out sentences, with and without.

    python bench/smoothquant.py [--alphas 0.3,0.5,0.7] [--targets onnxruntime,openvino] [--splits suite,licenses] [--no-nncf]

MiniLM-L6 (all-MiniLM-L6-v2 sentence embeddings, exported by `edgekit export zoo:minilm --dynamic-batch`) is
prepared as `quantize` prepares it, smoothed by `edgekit.quantize.smoothquant.smooth_quant` on the calibration
sentences, saved, and both the plain and the smoothed float models go through
`quantize_model(..., QuantizeOptions(target=T, check=False, cache=False))`: each calibrated on the same
sentences (its own ranges), all INT8, the target's recipe. Every INT8 model runs on ONNX Runtime against the
original FP32 model on sentences neither saw: per-sentence cosine of the embeddings, worst and mean.
Splits: "suite" = tests/zoo.py's 13 sentences (8 calibrate, 5 held out, as the test suite), "licenses" =
sentences of Debian's Apache-2.0 and GPL-3 texts (64 calibrate, the next 64 held out).
Control row "Mul by 1": the alpha-0.5 model with every inserted Mul by 1 and the original weights (same graph,
no smoothing): what the inserted Mul alone changes in the QDQ placement. Peer rows "nncf A": NNCF 3.4's SmoothQuant (alpha A for every weighted MatMul; 0.95 is NNCF's default) driven
standalone on the same prepared float model, then the same edgekit quantization.
Writes bench/results/smoothquant.json.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import save_feeds, write_results


def license_sentences() -> list[str]:
    """Real English sentences from the licence texts Debian ships (/usr/share/common-licenses)."""
    text = " ".join(Path(f"/usr/share/common-licenses/{n}").read_text() for n in ("Apache-2.0", "GPL-3"))
    text = re.sub(r"\s+", " ", text)
    return [s.strip() for s in re.split(r"(?<=[.;:])\s+", text) if 40 <= len(s.strip()) <= 400]


def cosines(fp_sess: Any, q_path: Path, held: list[dict[str, np.ndarray]]) -> list[float]:
    import onnxruntime as ort

    q = ort.InferenceSession(str(q_path), providers=["CPUExecutionProvider"])
    out = []
    for f in held:
        a, b = fp_sess.run(None, f)[0].ravel().astype(np.float64), q.run(None, f)[0].ravel().astype(np.float64)
        out.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return out


def nncf_smooth_quant(model: Any, feeds: list[dict[str, np.ndarray]], alpha: float) -> Any:
    """NNCF 3.4's SmoothQuant driven standalone on the float ONNX model (its private graph, statistics aggregator and
    algorithm classes, as nncf.quantize drives them): every weighted MatMul smoothed, a Multiply inserted per source."""
    import nncf
    from nncf.common.factory import StatisticsAggregatorFactory
    from nncf.onnx.graph.nncf_graph_builder import GraphConverter
    from nncf.quantization.algorithms.smooth_quant.algorithm import SmoothQuant

    graph = GraphConverter.create_nncf_graph(model)
    sq = SmoothQuant(subset_size=len(feeds), alpha_map={"matmul": alpha, "convolution": -1})
    agg = StatisticsAggregatorFactory.create(model, nncf.Dataset(feeds))
    agg.register_statistic_points(sq.get_statistic_points(model, graph))
    agg.collect_statistics(model, graph)
    return sq.apply(model, graph, agg.statistic_points)


def identity_control(smoothed: Any, prepared: Any) -> Any:
    """The smoothed model with every inserted Mul by 1 and the original weights back: the same graph, no smoothing.
    It separates what smoothing gains from what the inserted Mul alone changes in the QDQ placement (the other
    readers of X, e.g. BERT's residual Add, then read the float X instead of X's Q/DQ output)."""
    from onnx import numpy_helper

    out = type(smoothed)()
    out.CopyFrom(smoothed)
    orig = {t.name: t for t in prepared.graph.initializer}
    for t in out.graph.initializer:
        if t.name.startswith("edgekit_smooth_inv_scale"):
            t.CopyFrom(numpy_helper.from_array(np.ones_like(numpy_helper.to_array(t)), t.name))
        elif t.name in orig:
            t.CopyFrom(orig[t.name])
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--alphas", default="0.3,0.5,0.7")
    ap.add_argument("--targets", default="onnxruntime,openvino")
    ap.add_argument("--splits", default="suite,licenses")
    ap.add_argument("--no-nncf", dest="nncf", action="store_false", help="skip the NNCF SmoothQuant rows")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("EDGEKIT_PROGRESS", "0")
    import onnx
    import onnxruntime as ort
    import zoo

    from edgekit.backends.base import host_cpu_features
    from edgekit.export import ExportOptions, export_model
    from edgekit.quantize import QuantizeOptions, _prepare, quantize_model
    from edgekit.quantize.smoothquant import smooth_quant

    work = Path(tempfile.mkdtemp(prefix="edgekit-sq-"))
    os.environ["EDGEKIT_CACHE"] = str(work / "cache")
    fp32 = work / "minilm.onnx"
    export_model("zoo:minilm", fp32, options=ExportOptions(dynamic_batch=True))
    prepared = _prepare(fp32, [])
    fp_sess = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    lic = license_sentences()
    splits = {"suite": (zoo.MINILM_SENTENCES[:8], zoo.MINILM_SENTENCES[8:]), "licenses": (lic[:64], lic[64:128])}
    alphas = [float(a) for a in args.alphas.split(",")]
    rows: list[dict[str, Any]] = []
    for split in args.splits.split(","):
        calib_s, held_s = splits[split]
        calib, held = zoo.minilm_feeds(list(calib_s)), zoo.minilm_feeds(list(held_s))
        folder = save_feeds(calib, work / f"calib-{split}")
        variants: dict[str, tuple[Path, dict[str, Any] | None]] = {"none": (fp32, None)}
        for alpha in alphas:
            start = time.perf_counter()
            model, info = smooth_quant(prepared, lambda c=calib: c, alpha=alpha)
            info["seconds"] = round(time.perf_counter() - start, 2)
            path = work / f"smooth-{split}-{alpha}.onnx"
            onnx.save(model, str(path))
            drift = max(float(np.abs(fp_sess.run(None, f)[0] - ort.InferenceSession(str(path)).run(None, f)[0]).max()) for f in held[:8])
            info["float_max_abs_diff"] = drift
            variants[f"alpha {alpha}"] = (path, info)
            if alpha == 0.5:
                onnx.save(identity_control(model, prepared), str(work / f"control-{split}.onnx"))
                variants["Mul by 1"] = (work / f"control-{split}.onnx", None)
        for alpha in sorted({0.5, 0.95} if args.nncf else set()):  # NNCF's own default for MatMuls is 0.95
            path = work / f"nncf-{split}-{alpha}.onnx"
            onnx.save(nncf_smooth_quant(prepared, calib, alpha), str(path))
            variants[f"nncf {alpha}"] = (path, None)
        for target in args.targets.split(","):
            for name, (path, info) in variants.items():
                out = work / f"q-{split}-{target}-{name.replace(' ', '')}.onnx"
                quantize_model(path, out, calib=str(folder), options=QuantizeOptions(target=target, check=False, cache=False))
                cs = cosines(fp_sess, out, held)
                row = {"split": split, "calib": len(calib), "held": len(held), "target": target, "smoothing": name,
                       "cosine_worst": min(cs), "cosine_mean": float(np.mean(cs))}
                if info is not None:
                    row.update(sites=info["sites"], matmuls=info["matmuls"], folded=info["folded"], inserted=info["inserted"],
                               skipped_no_gain=info["skipped_no_gain"], float_max_abs_diff=info["float_max_abs_diff"], smooth_seconds=info["seconds"])
                rows.append(row)
                print(f"{split:9s} {target:12s} {name:10s} worst {row['cosine_worst']:.4f} mean {row['cosine_mean']:.4f}"
                      + (f"  sites {row['sites']} ({row['matmuls']} MatMuls; folded {row['folded']}, Mul inserted {row['inserted']})" if info else ""),
                      flush=True)
    cpu = {"name": cpu_name(), "int8_features": list(host_cpu_features()), "cores": os.cpu_count()}
    print(f"\nCPU: {cpu['name']} ({cpu['cores']} cores; INT8 features {cpu['int8_features']}); INT8 models evaluated with ONNX Runtime {ort.__version__}")
    path = write_results("smoothquant", {"model": "MiniLM-L6 (all-MiniLM-L6-v2, edgekit export zoo:minilm --dynamic-batch)", "cpu": cpu,
                                         "evaluated_with": f"onnxruntime {ort.__version__}", "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
