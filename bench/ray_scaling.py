"""Wall time, --executor local vs ray (2 nodes of 1 CPU on this machine), of a 6-entry `bench --config`,
of the sensitivity search of `quantize --max-accuracy-drop` on MiniLM-L6, and of `optimize` on the MNIST CNN
with an outlier channel (quantize's check falls back, ranking every node; the race runs on one node).

    python bench/ray_scaling.py [--skip-minilm] [--only bench|minilm|optimize ...]

`--only` re-runs those cases and keeps the other rows of the results file.

On one 2-core machine the ratio says what the executor costs (task start, shipping, worker imports), not
what a cluster gains: both nodes share the same two cores, and other work on the machine moves every
figure (the load average is recorded). Writes bench/results/ray_scaling.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import write_results

from edgekit.machine import cpu_name

DEVICE = "edgekit-device:dev1"


def edgekit(*args: str) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True, text=True)
    return time.perf_counter() - t0, res.returncode, res.stdout + res.stderr


def config_of_six(folder: Path) -> Path:
    from test_ray import _tiny_models

    (folder / "models").mkdir(parents=True)
    models = _tiny_models(folder / "models", 6)
    entries = "".join(f'\n[[bench]]\nname = "m{i}"\nmodel = "models/{m.name}"\n' + (f'resource = "{DEVICE}"\n' if i == 0 else "")
                      for i, m in enumerate(models))
    path = folder / "edgekit.toml"
    path.write_text('[defaults]\ntarget = "onnxruntime"\nbudgets = { p99 = "500ms" }\n' + entries)
    return path


def minilm_case(folder: Path) -> list[str]:
    import numpy as np
    import zoo

    from edgekit.export import ExportOptions, export_model

    model = folder / "minilm.onnx"
    export_model("zoo:minilm", model, options=ExportOptions(dynamic_batch=True))
    s = zoo.MINILM_SENTENCES
    for name, part in (("calib", s[:8]), ("held", s[8:])):
        (folder / name).mkdir()
        for i, feed in enumerate(zoo.minilm_feeds(part)):
            np.savez(folder / name / f"{i}.npz", **feed)
    return ["quantize", str(model), "--calib", str(folder / "calib"), "--eval", str(folder / "held"), "--max-accuracy-drop", "0.01", "--no-cache"]


def optimize_case(folder: Path) -> list[str]:
    import shutil

    import zoo

    model, calib, held, _ = zoo.outlier_mnist(folder)
    few = folder / "held40"
    few.mkdir()
    for f in sorted(held.iterdir())[:40]:
        shutil.copy(f, few / f.name)
    return ["optimize", str(model), "--calib", str(calib), "--eval", str(few), "--target", "onnxruntime", "--candidates", "fp32,int8",
            "--max-accuracy-drop", "1e-7", "--min-duration", "1"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--only", action="append", choices=["bench", "minilm", "optimize"], help="run only these cases (repeatable)")
    ap.add_argument("--min-duration", default="2")
    opts = ap.parse_args()
    only = set(opts.only or ["bench", "optimize"] + ([] if opts.skip_minilm else ["minilm"]))
    from raycluster import ray_cluster

    rows = []
    with tempfile.TemporaryDirectory(prefix="ray-scaling-") as tmp:
        tmp_p = Path(tmp)
        cases = []
        if "bench" in only:
            config = config_of_six(tmp_p / "six")
            cases.append(("bench --config, 6 entries", ["bench", "--config", str(config), "--min-duration", opts.min_duration, "--max-duration", opts.min_duration], 2))
        if "minilm" in only:
            (tmp_p / "minilm").mkdir()
            q = minilm_case(tmp_p / "minilm")
            cases.append(("quantize --max-accuracy-drop 0.01, MiniLM-L6", q, 1))
        if "optimize" in only:
            cases.append(("optimize fp32,int8, outlier MNIST CNN", optimize_case(tmp_p / "optimize"), 2))
        (tmp_p / "logs").mkdir()
        with ray_cluster(tmp_p / "logs", [{}, {DEVICE: 1}]) as address:
            for label, args, repeats in cases:
                out: dict[str, float | None] = {"local": None, "ray": None}
                placed = None
                for executor in ("local", address) * repeats:  # alternated: drift on a shared machine hits both
                    extra = {"quantize": ["-o", str(tmp_p / "q.onnx")], "optimize": ["-o", str(tmp_p / "best")]}.get(args[0], [])
                    wall, code, text = edgekit(*args, *extra, "--executor", executor, "--json", str(tmp_p / "r.json"))
                    if code != 0:
                        raise SystemExit(f"{label} --executor {executor}: exit {code}\n{text[-3000:]}")
                    kind = "local" if executor == "local" else "ray"
                    report = json.loads((tmp_p / "r.json").read_text())
                    if "results" in report:
                        where = {r["name"]: r["ran_on"]["node_id"] for r in report["results"]}
                    elif "candidates" in report:  # optimize: the race's node, and where the INT8 candidate's quantize ranked
                        where = {"race": report["ran_on"]["node_id"], "ranked_on": next(c["quantize"]["ranked_on"] for c in report["candidates"] if c["quantize"])}
                    else:
                        where = report["fallback"].get("ranked_on")
                    out[kind] = min(wall, out[kind] or wall)
                    placed = where if kind == "ray" else placed
                    print(f"{label:48s} {kind:5s} {wall:7.1f} s  load {os.getloadavg()[0]:.1f}", flush=True)
                rows.append({"case": label, "local_s": out["local"], "ray_s": out["ray"], "ratio_ray_over_local": out["ray"] / out["local"], "placed": placed,
                             "load_average_1min": os.getloadavg()[0]})
    print()
    print(f"{'case':48s} {'local s':>8s} {'ray s':>8s} {'ray/local':>9s}")
    for r in rows:
        print(f"{r['case']:48s} {r['local_s']:8.1f} {r['ray_s']:8.1f} {r['ratio_ray_over_local']:9.2f}")
    if opts.only:  # the other cases' rows of an earlier run stay
        from _common import RESULTS

        old = RESULTS / "ray_scaling.json"
        kept = [r for r in (json.loads(old.read_text())["rows"] if old.exists() else []) if r["case"] not in {x["case"] for x in rows}]
        rows = kept + rows
    path = write_results("ray_scaling", {"cpu": cpu_name(), "cores": os.cpu_count(), "load_average_end": list(os.getloadavg()),
                                         "nodes": "head + 1 node, 1 CPU each, same machine; node 2 declares " + DEVICE,
                                         "note": "bench config and optimize: best of 2 runs each, local and ray alternated; MiniLM: one run each", "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
