"""The baseline gate on this machine: how often it flaps (A/A) and how often it catches a 1.5x slowdown (A/B).

    python bench/baseline_gate.py [--runs 10] [--seconds 1.5] [--threads 1 2] [--max-regression 0.10] [--load]

A = two copies of EfficientNet-Lite0 in one ONNX, B = three copies (1.5x the work), ONNX Runtime.
One baseline report of A is recorded; then, per thread count, A and B are each benchmarked `--runs`
times against it, both ways: paired (the baseline's artifact re-measured interleaved in the same run,
edgekit's default) and recorded (`--unpaired`: against the samples of the baseline report). The runs of
the two modes alternate, so both meet the same machine. `--load` starts one bounded busy loop per core
beside the runs (a stress-like neighbour, ended by the script), so the table says what the gate does on a
busy runner. Each run's verdict is counted: regressed (fails), undecided (a note; exit 3 only with
--strict-undecided) or pass. Prints a table with the CPU's INT8 features, writes
bench/results/baseline_gate[-load].json.
"""
from __future__ import annotations

import argparse
import json

import _common
import cpuload
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
    ap.add_argument("--max-seconds", type=float, default=8.0, help="--max-duration of every run (measuring longer while undecided)")
    ap.add_argument("--load", action="store_true", help="keep every core busy with a bounded busy loop while measuring")
    args = ap.parse_args()
    from edgekit.backends.base import host_cpu_features
    from edgekit.machine import cpu_name

    print(f"CPU: {cpu_name()}; INT8 features: {', '.join(host_cpu_features()) or 'none'}")
    hogs = cpuload.start(seconds=3600) if args.load else []
    tmp = _common.tmpdir("edgekit-gate-")
    src = tmp / "efficientnet.onnx"
    export_model("edgekit.examples.efficientnet:model", src, options=ExportOptions())
    a, b = zoo.copies(src, 2, tmp / "a.onnx"), zoo.copies(src, 3, tmp / "b.onnx")
    rows, out = [], []
    for threads in args.threads:
        target = target_from_dict({"backend": "onnxruntime", "options": {"threads": threads}}, name=f"onnxruntime-{threads}t")
        opts = dict(min_duration_s=args.seconds, max_duration_s=args.max_seconds, warmup_ms=200, max_regression=args.max_regression)
        base = tmp / f"base-{threads}.json"
        base.write_text(json.dumps(bench_artifact(a, target=target, options=BenchOptions(**opts))))
        got: dict[tuple[str, str], list[dict]] = {}
        for i in range(args.runs):
            for name, art in (("A/A", a), ("A/B", b)):
                for mode, paired in (("paired", True), ("recorded", False)):
                    r = bench_artifact(art, target=target, options=BenchOptions(baseline=str(base), paired=paired, model_change="compare", **opts))["baseline"]
                    got.setdefault((mode, name), []).append({**{k: r.get(k) for k in ("ratio", "ci_low", "ci_high", "p_value", "verdict", "mode", "load_average", "cpu_share", "others_cores")},
                                                             "cpu_ratio": (r.get("cpu") or {}).get("ratio")})
                    print(f"\r{threads} thread(s): run {i + 1}/{args.runs}", end="", flush=True)
        print("\r", end="")
        for mode in ("paired", "recorded"):
            aa, ab = got[(mode, "A/A")], got[(mode, "A/B")]
            ra, rb = np.array([r["ratio"] for r in aa]), np.array([r["ratio"] for r in ab])
            count = lambda rs, v: sum(r["verdict"] == v for r in rs)  # noqa: E731
            row = {"threads": threads, "mode": mode, "load": args.load, "aa_failed": count(aa, "regressed"), "aa_undecided": count(aa, "undecided"),
                   "ab_failed": count(ab, "regressed"), "ab_undecided": count(ab, "undecided"), "ab_passed": count(ab, "pass"),
                   "load_average": [min(r["load_average"][0] for r in aa + ab), max(r["load_average"][1] for r in aa + ab)],
                   "runs": args.runs, "aa_ratio": [float(ra.min()), float(ra.max())], "ab_ratio": [float(rb.min()), float(rb.max())],
                   }
            rows.append(row)
            out.append({**row, "aa": aa, "ab": ab})
    cpuload.stop(hogs)
    print(f"gate: regressed when the ratio's 95% interval lies above x{1 + args.max_regression:g}, pass when under, else undecided; "
          f"{args.runs} runs each, {args.seconds:g}-{args.max_seconds:g} s per run" + (", every core busy" if args.load else ""))
    print(f"{'threads':>7} {'mode':>9} {'A/A regressed':>13} {'A/A undecided':>13} {'A/B regressed':>13} {'A/B undecided':>13} {'A/B passed':>10} "
          f"{'A/A ratio':>13} {'A/B ratio':>13} {'load':>9}")
    for r in rows:
        n = r["runs"]
        print(f"{r['threads']:>7} {r['mode']:>9} {r['aa_failed']:>10}/{n:<2} {r['aa_undecided']:>10}/{n:<2} {r['ab_failed']:>10}/{n:<2} "
              f"{r['ab_undecided']:>10}/{n:<2} {r['ab_passed']:>7}/{n:<2} {r['aa_ratio'][0]:6.3f}-{r['aa_ratio'][1]:.3f} "
              f"{r['ab_ratio'][0]:6.3f}-{r['ab_ratio'][1]:.3f} {r['load_average'][0]:4.1f}-{r['load_average'][1]:.1f}")
    print("wrote", _common.write_results("baseline_gate" + ("-load" if args.load else ""),
                                         {"cpu": cpu_name(), "cpu_int8": host_cpu_features(), "seconds": args.seconds,
                                          "max_seconds": args.max_seconds, "max_regression": args.max_regression, "load": args.load, "rows": out}))


if __name__ == "__main__":
    main()
