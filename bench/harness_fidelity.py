"""Harness fidelity: edgekit bench vs OpenVINO's benchmark_app (sync API, same threads) on the same IR.

    python bench/harness_fidelity.py [--model PATH.onnx] [--rounds 12] [--seconds 3]

Runs the two harnesses back to back in each round (alternating which goes first) on each compiled
model (FP32 and, when a QDQ model is given, INT8). The difference compares the medians of the
rounds' figures; the median and range of the per-round differences show the machine's drift (on a
shared VM that flips between a quiet and a ~20% slower state for seconds at a time, they swing by
tens of percent). Then, in one process and drift-free (interleaved blocks), edgekit's measured loop
against the bare infer() call that benchmark_app times. Prints a table and writes
bench/results/harness_fidelity.json.
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


def loop_overhead(art: Path, target: object, seconds: float) -> dict[str, float]:
    """edgekit's measured loop (engine.run: inputs in, outputs copied out, one clock read) against the bare
    `infer()` call benchmark_app's sync loop times, on one compiled model in one process, in randomized
    interleaved blocks: what edgekit's harness itself adds, free of the machine's drift."""
    import dataclasses

    from edgekit.bench.timer import measure_interleaved
    from edgekit.compile import open_engine
    from edgekit.data.feeds import generated_feed

    with open_engine(art, target=target) as (engine, _):
        feed = generated_feed(engine.inputs, batch=1)
        bare = engine._compiled.create_infer_request()  # the same compiled model, no edgekit code around infer()
        settings = dataclasses.replace(target.bench, min_duration_s=seconds, warmup_ms=500)
        ours, theirs = measure_interleaved([lambda: engine.run(feed), lambda: bare.infer(feed, share_inputs=True)], settings, min_rounds=30)
    o, t = float(np.median(ours.latencies_ms)), float(np.median(theirs.latencies_ms))
    return {"loop_p50_ms": o, "bare_infer_p50_ms": t, "loop_overhead_ms": o - t, "loop_overhead_pct": 100 * (o / t - 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="FP32 ONNX (default: export the built-in EfficientNet-Lite0)")
    ap.add_argument("--int8", default=None, help="a QDQ ONNX of the same model, to also compare at int8")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=3.0)
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
    target_file = tmp / "openvino.toml"
    target_file.write_text(f'backend = "openvino"\n[options]\nthreads = {args.threads}\nstreams = 1\n')
    variants = [("fp32", model)] + ([("int8", args.int8)] if args.int8 else [])
    rows = []
    for precision, onnx_path in variants:
        art = tmp / f"ov-{precision}"
        compile_model(onnx_path, art, target=target, precision=precision)
        ek, ba = [], []

        def edgekit_p50() -> None:  # the CLI in its own process, as users run it (and as benchmark_app runs)
            exe = shutil.which("edgekit") or str(Path(sys.executable).parent / "edgekit")
            out = subprocess.run([exe, "bench", str(art), "--target", str(target_file), "--min-duration", str(args.seconds), "--warmup", "500",
                                  "--json", "-"], capture_output=True, text=True, check=True).stdout
            ek.append(json.loads(out)["results"][0]["latency_ms"]["p50"]["value"])

        def app_median() -> None:
            ba.append(benchmark_app_median(art / "model.xml", seconds=args.seconds, threads=args.threads, precision="f32"))

        for i in range(args.rounds):  # paired rounds, alternating which harness goes first: drift hits both alike
            for step in ((edgekit_p50, app_median) if i % 2 == 0 else (app_median, edgekit_p50)):
                step()
        diffs = [100 * (e / b - 1) for e, b in zip(ek, ba)]
        e, b = float(np.median(ek)), float(np.median(ba))
        rows.append({"model": Path(onnx_path).name, "precision": precision, "edgekit_p50_ms": e, "benchmark_app_median_ms": b,
                     "difference_pct": 100 * (e / b - 1), "paired_difference_pct": float(np.median(diffs)),
                     "paired_difference_pct_range": [min(diffs), max(diffs)], "edgekit_rounds": ek, "benchmark_app_rounds": ba,
                     **loop_overhead(art, target, args.seconds * args.rounds / 2)})
    print(f"{'model':18} {'precision':9} {'edgekit p50':>12} {'benchmark_app':>14} {'diff':>7} {'per-round diffs: median, range':>32}"
          f" {'edgekit loop vs bare infer()':>28}")
    for r in rows:
        lo, hi = r["paired_difference_pct_range"]
        print(f"{r['model']:18} {r['precision']:9} {r['edgekit_p50_ms']:10.3f}ms {r['benchmark_app_median_ms']:12.3f}ms "
              f"{r['difference_pct']:+6.1f}% {r['paired_difference_pct']:+14.1f}%, {lo:+.1f}% to {hi:+.1f}% "
              f"{r['loop_overhead_pct']:+21.2f}% ({1e3 * r['loop_overhead_ms']:+.0f} µs)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": args.threads, "seconds": args.seconds, "rounds": args.rounds, "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
