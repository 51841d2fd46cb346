"""Harness fidelity: edgekit bench vs OpenVINO's benchmark_app (sync API, same threads) on the same IR.

    python bench/harness_fidelity.py [--model PATH.onnx] [--rounds 3] [--seconds 5]

Interleaves the two harnesses round by round on each compiled model (FP32 and, when a
QDQ model is given, INT8), prints a table of medians and writes bench/results/harness_fidelity.json.
Without --model it exports the built-in EfficientNet-Lite0.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgekit.bench.run import BenchOptions, bench_artifact
from edgekit.compile import compile_model
from edgekit.config import target_from_dict


def benchmark_app_median(xml: Path, *, seconds: float, threads: int, precision: str) -> float:
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    cmd = [exe, "-m", str(xml), "-d", "CPU", "-api", "sync", "-t", str(max(1, round(seconds))), "-hint", "none", "-nstreams", "1",
           "-nthreads", str(threads), "-infer_precision", precision]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    m = re.search(r"Median:\s+([0-9.]+)\s*ms", out)
    if not m:
        raise RuntimeError("benchmark_app printed no median:\n" + out[-2000:])
    return float(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="FP32 ONNX (default: export the built-in EfficientNet-Lite0)")
    ap.add_argument("--int8", default=None, help="a QDQ ONNX of the same model, to also compare at int8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "harness_fidelity.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edgekit-fidelity-"))
    model = args.model
    if model is None:
        from edgekit.export import ExportOptions, export_model

        model = str(tmp / "efficientnet.onnx")
        export_model("edgekit.examples.efficientnet:model", model, options=ExportOptions())
    target = target_from_dict({"backend": "openvino", "options": {"threads": args.threads, "streams": 1}}, name="openvino")
    variants = [("fp32", model)] + ([("int8", args.int8)] if args.int8 else [])
    rows = []
    for precision, onnx_path in variants:
        art = tmp / f"ov-{precision}"
        compile_model(onnx_path, art, target=target, precision=precision)
        ek, ba = [], []
        for _ in range(args.rounds):  # interleaved: drift hits both harnesses alike
            r = bench_artifact(art, target=target, options=BenchOptions(min_duration_s=args.seconds, warmup_ms=500))
            ek.append(r["latency_ms"]["p50"]["value"])
            ba.append(benchmark_app_median(art / "model.xml", seconds=args.seconds, threads=args.threads, precision="f32"))
        e, b = float(np.median(ek)), float(np.median(ba))
        rows.append({"model": Path(onnx_path).name, "precision": precision, "edgekit_p50_ms": e, "benchmark_app_median_ms": b,
                     "difference_pct": 100 * (e - b) / b, "edgekit_rounds": ek, "benchmark_app_rounds": ba})
    print(f"{'model':24} {'precision':9} {'edgekit p50':>12} {'benchmark_app':>14} {'diff':>7}")
    for r in rows:
        print(f"{r['model']:24} {r['precision']:9} {r['edgekit_p50_ms']:10.3f}ms {r['benchmark_app_median_ms']:12.3f}ms {r['difference_pct']:+6.1f}%")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": args.threads, "seconds": args.seconds, "rounds": args.rounds, "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
