"""SmoothQuant before all-INT8 quantization of MiniLM-L6: cosine to FP32 on held-out sentences, with and without.

    python bench/smoothquant.py [--alphas 0.3,0.5,0.7] [--targets onnxruntime,openvino] [--splits suite,licenses] [--no-nncf]
    python bench/smoothquant.py --fallback --alphas 0.5    # quantize with its default check: MatMuls the fallback keeps in float

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


def int8_speed(work: Path, split: str, feed: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """What the inserted Muls cost at run time: the first split's ONNX Runtime INT8 models (no smoothing, alpha 0.5,
    Mul by 1), one sentence, timed interleaved (edgekit.bench.timer); each one's floor (fastest 5%) over no smoothing's."""
    from edgekit.backends.onnxruntime import session_from_bytes
    from edgekit.bench.stats import floor_ms
    from edgekit.bench.timer import measure_interleaved
    from edgekit.config import BenchSettings

    paths = {name: work / f"q-{split}-onnxruntime-{tag}.onnx" for name, tag in (("none", "none"), ("alpha 0.5", "alpha0.5"), ("Mul by 1", "Mulby1"))}
    if not all(p.exists() for p in paths.values()):
        return None
    sessions = {name: session_from_bytes(p.read_bytes(), threads=1) for name, p in paths.items()}
    timed = measure_interleaved([lambda s=s: s.run(None, feed) for s in sessions.values()],
                                BenchSettings(warmup_ms=200, min_iterations=50, min_duration_s=6), min_rounds=30)
    floor = {name: floor_ms(x.latencies_ms) for name, x in zip(sessions, timed)}
    median = {name: float(np.median(x.latencies_ms)) for name, x in zip(sessions, timed)}
    out = {"models": {n: str(p.name) for n, p in paths.items()}, "threads": 1, "floor_ms": floor, "median_ms": median,
           "floor_ratio_to_none": {n: floor[n] / floor["none"] for n in floor},
           "median_ratio_to_none": {n: median[n] / median["none"] for n in median}, "note": "2 shared cores, loaded machine: ratios, not ms"}
    print("INT8 on ONNX Runtime (1 thread), floor ms (ratio to no smoothing; median's ratio): "
          + ", ".join(f"{n} {floor[n]:.1f} ({out['floor_ratio_to_none'][n]:.2f}x; {out['median_ratio_to_none'][n]:.2f}x)" for n in floor), flush=True)
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def fallback_rows(fp32: Path, prepared: Any, work: Path, targets: list[str], alpha: float) -> list[dict[str, Any]]:
    """A plain `quantize` (the default check on: 3 of the suite's 8 calibration sentences held out, the fallback keeps
    MatMuls in float until the bar is met) of the float model with and without smoothing (on the 5 sentences
    quantize calibrates on), judged on the suite's 5 sentences that neither saw."""
    import onnx
    import onnxruntime as ort
    import zoo

    from edgekit.errors import GateFailed
    from edgekit.quantize import QuantizeOptions, quantize_model
    from edgekit.quantize.check import holdout_indices
    from edgekit.quantize.smoothquant import smooth_quant

    calib, held = zoo.minilm_feeds(zoo.MINILM_SENTENCES[:8]), zoo.minilm_feeds(zoo.MINILM_SENTENCES[8:])
    folder = save_feeds(calib, work / "fallback-calib")
    checked = set(holdout_indices(len(calib), samples=None))
    model, info = smooth_quant(prepared, lambda: [f for i, f in enumerate(calib) if i not in checked], alpha=alpha)
    onnx.save(model, str(work / "fallback-smoothed.onnx"))
    fp_sess = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    rows = []
    for target in targets:
        for name, path in (("none", fp32), (f"alpha {alpha}", work / "fallback-smoothed.onnx")):
            out = work / f"fallback-{target}-{name.replace(' ', '')}.onnx"
            try:
                rep = quantize_model(path, out, calib=str(folder), options=QuantizeOptions(target=target, cache=False)).to_dict()
                exit_code = 0
            except GateFailed as exc:
                res = exc.result
                rep, exit_code = (res.to_dict() if hasattr(res, "to_dict") else {}), 3
            fb, check = rep.get("fallback"), rep.get("check") or {}
            cs = cosines(fp_sess, out, held) if out.exists() else [float("nan")]
            row = {"target": target, "smoothing": name, "exit": exit_code, "all_int8_passed": check.get("all_int8", {}).get("passed"),
                   "kept_in_float": [k["node"] for k in fb["kept_in_float"]] if fb else [], "evaluations": fb["evaluations"] if fb else 0,
                   "cosine_worst": min(cs), "cosine_mean": float(np.mean(cs)), "sites": info["sites"] if name != "none" else None}
            rows.append(row)
            print(f"quantize (check on) {target:12s} {name:10s} exit {exit_code}  MatMuls kept in float {len(row['kept_in_float'])}"
                  f"  unseen sentences: worst {row['cosine_worst']:.4f} mean {row['cosine_mean']:.4f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--alphas", default="0.3,0.5,0.7")
    ap.add_argument("--targets", default="onnxruntime,openvino")
    ap.add_argument("--splits", default="suite,licenses")
    ap.add_argument("--no-nncf", dest="nncf", action="store_false", help="skip the NNCF SmoothQuant rows")
    ap.add_argument("--fallback", action="store_true", help="only: plain quantize (check and fallback on) with and without "
                    "smoothing at the first alpha; writes bench/results/smoothquant_fallback.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("EDGEKIT_PROGRESS", "0")
    import onnx
    import onnxruntime as ort
    import zoo

    from edgekit.backends.base import host_cpu_features
    from edgekit.export import ExportOptions, export_model
    from edgekit.quantize import QuantizeOptions, prepare_model, quantize_model
    from edgekit.quantize.smoothquant import smooth_quant

    work = Path(tempfile.mkdtemp(prefix="edgekit-sq-"))
    os.environ["EDGEKIT_CACHE"] = str(work / "cache")
    fp32 = work / "minilm.onnx"
    export_model("zoo:minilm", fp32, options=ExportOptions(dynamic_batch=True))
    prepared = prepare_model(fp32, [])
    fp_sess = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    alphas = [float(a) for a in args.alphas.split(",")]
    cpu = {"name": cpu_name(), "int8_features": list(host_cpu_features()), "cores": os.cpu_count()}
    if args.fallback:
        rows = fallback_rows(fp32, prepared, work, args.targets.split(","), alphas[0])
        print(f"\nCPU: {cpu['name']} ({cpu['cores']} cores; INT8 features {cpu['int8_features']})")
        print(f"wrote {write_results('smoothquant_fallback', {'model': 'MiniLM-L6', 'cpu': cpu, 'rows': rows})}")
        return
    lic = license_sentences()
    splits = {"suite": (zoo.MINILM_SENTENCES[:8], zoo.MINILM_SENTENCES[8:]), "licenses": (lic[:64], lic[64:128])}
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
    speed = int8_speed(work, args.splits.split(",")[0], zoo.minilm_feeds(zoo.MINILM_SENTENCES[:1])[0])
    print(f"\nCPU: {cpu['name']} ({cpu['cores']} cores; INT8 features {cpu['int8_features']}); INT8 models evaluated with ONNX Runtime {ort.__version__}")
    path = write_results("smoothquant", {"model": "MiniLM-L6 (all-MiniLM-L6-v2, edgekit export zoo:minilm --dynamic-batch)", "cpu": cpu,
                                         "evaluated_with": f"onnxruntime {ort.__version__}", "rows": rows, "int8_speed": speed})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
