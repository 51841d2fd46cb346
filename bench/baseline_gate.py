"""The baseline gate on this machine: how often it flaps (A/A) and how often it catches a 1.5x slowdown (A/B).

    python bench/baseline_gate.py [--runs 10] [--seconds 1.5] [--threads 1 2] [--max-regression 0.10]

A = two copies of EfficientNet-Lite0 in one ONNX, B = three copies (1.5x the work), ONNX Runtime.
One baseline report of A is recorded; then, per thread count, A and B are each benchmarked `--runs`
times against it, both ways: paired (the baseline's artifact re-measured interleaved in the same run,
edgekit's default) and recorded (`--unpaired`: against the samples of the baseline report). The runs of
the two modes alternate, so both meet the same machine. Prints a table, writes
bench/results/baseline_gate.json.
"""
from __future__ import annotations

import argparse
import json

import _common
import numpy as np
import zoo

from edgekit.bench.run import BenchOptions, bench_artifact
from edgekit.config import target_from_dict
from edgekit.export import ExportOptions, export_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=1.5, help="--min-duration of every run")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--max-regression", type=float, default=0.10)
    args = ap.parse_args()
    tmp = _common.tmpdir("edgekit-gate-")
    src = tmp / "efficientnet.onnx"
    export_model("edgekit.examples.efficientnet:model", src, options=ExportOptions())
    a, b = zoo.copies(src, 2, tmp / "a.onnx"), zoo.copies(src, 3, tmp / "b.onnx")
    rows, out = [], []
    for threads in args.threads:
        target = target_from_dict({"backend": "onnxruntime", "options": {"threads": threads}}, name=f"onnxruntime-{threads}t")
        opts = dict(min_duration_s=args.seconds, warmup_ms=200, max_regression=args.max_regression)
        base = tmp / f"base-{threads}.json"
        base.write_text(json.dumps(bench_artifact(a, target=target, options=BenchOptions(**opts))))
        got: dict[tuple[str, str], list[dict]] = {}
        for i in range(args.runs):
            for name, art in (("A/A", a), ("A/B", b)):
                for mode, paired in (("paired", True), ("recorded", False)):
                    r = bench_artifact(art, target=target, options=BenchOptions(baseline=str(base), paired=paired, model_change="compare", **opts))["baseline"]
                    got.setdefault((mode, name), []).append({k: r[k] for k in ("ratio", "p_value", "regressed", "mode")})
                    print(f"\r{threads} thread(s): run {i + 1}/{args.runs}", end="", flush=True)
        print("\r", end="")
        for mode in ("paired", "recorded"):
            aa, ab = got[(mode, "A/A")], got[(mode, "A/B")]
            ra, rb = np.array([r["ratio"] for r in aa]), np.array([r["ratio"] for r in ab])
            row = {"threads": threads, "mode": mode, "aa_failed": sum(r["regressed"] for r in aa), "ab_failed": sum(r["regressed"] for r in ab),
                   "runs": args.runs, "aa_ratio": [float(ra.min()), float(ra.max())], "ab_ratio": [float(rb.min()), float(rb.max())],
                   "aa_p_min": min(r["p_value"] for r in aa), "ab_p_max": max(r["p_value"] for r in ab)}
            rows.append(row)
            out.append({**row, "aa": aa, "ab": ab})
    print(f"gate: floor ratio > {1 + args.max_regression:g} and p < 0.01; {args.runs} runs each, {args.seconds:g} s per run")
    print(f"{'threads':>7} {'mode':>9} {'A/A failed':>10} {'A/B failed':>10} {'A/A ratio':>13} {'A/B ratio':>13} {'A/B max p':>9}")
    for r in rows:
        print(f"{r['threads']:>7} {r['mode']:>9} {r['aa_failed']:>7}/{r['runs']:<2} {r['ab_failed']:>7}/{r['runs']:<2} "
              f"{r['aa_ratio'][0]:6.3f}-{r['aa_ratio'][1]:.3f} {r['ab_ratio'][0]:6.3f}-{r['ab_ratio'][1]:.3f} {r['ab_p_max']:9.2g}")
    print("wrote", _common.write_results("baseline_gate", {"seconds": args.seconds, "max_regression": args.max_regression, "rows": out}))


if __name__ == "__main__":
    main()
