"""Wall time, --executor local vs ray (2 nodes of 1 CPU on this machine), of a 6-entry `bench --config`
and of the sensitivity search of `quantize --max-accuracy-drop` on MiniLM-L6.

    python bench/ray_scaling.py [--skip-minilm]

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

from edgekit.doctor import cpu_name

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--min-duration", default="2")
    opts = ap.parse_args()
    from raycluster import ray_cluster

    rows = []
    with tempfile.TemporaryDirectory(prefix="ray-scaling-") as tmp:
        tmp_p = Path(tmp)
        config = config_of_six(tmp_p / "six")
        cases = [("bench --config, 6 entries", ["bench", "--config", str(config), "--min-duration", opts.min_duration, "--max-duration", opts.min_duration], 2)]
        if not opts.skip_minilm:
            (tmp_p / "minilm").mkdir()
            q = minilm_case(tmp_p / "minilm")
            cases.append(("quantize --max-accuracy-drop 0.01, MiniLM-L6", q, 1))
        (tmp_p / "logs").mkdir()
        with ray_cluster(tmp_p / "logs", [{}, {DEVICE: 1}]) as address:
            for label, args, repeats in cases:
                out: dict[str, float | None] = {"local": None, "ray": None}
                placed = None
                for executor in ("local", address) * repeats:  # alternated: drift on a shared machine hits both
                    extra = ["-o", str(tmp_p / "q.onnx")] if args[0] == "quantize" else []
                    wall, code, text = edgekit(*args, *extra, "--executor", executor, "--json", str(tmp_p / "r.json"))
                    if code != 0:
                        raise SystemExit(f"{label} --executor {executor}: exit {code}\n{text[-3000:]}")
                    kind = "local" if executor == "local" else "ray"
                    report = json.loads((tmp_p / "r.json").read_text())
                    where = ({r["name"]: r["ran_on"]["node_id"] for r in report["results"]} if "results" in report
                             else report["fallback"].get("ranked_on"))
                    out[kind] = min(wall, out[kind] or wall)
                    placed = where if kind == "ray" else placed
                    print(f"{label:48s} {kind:5s} {wall:7.1f} s  load {os.getloadavg()[0]:.1f}", flush=True)
                rows.append({"case": label, "local_s": out["local"], "ray_s": out["ray"], "ratio_ray_over_local": out["ray"] / out["local"], "placed": placed})
    print()
    print(f"{'case':48s} {'local s':>8s} {'ray s':>8s} {'ray/local':>9s}")
    for r in rows:
        print(f"{r['case']:48s} {r['local_s']:8.1f} {r['ray_s']:8.1f} {r['ratio_ray_over_local']:9.2f}")
    path = write_results("ray_scaling", {"cpu": cpu_name(), "cores": os.cpu_count(), "load_average_end": list(os.getloadavg()),
                                         "nodes": "head + 1 node, 1 CPU each, same machine; node 2 declares " + DEVICE,
                                         "note": "bench config: best of 2 runs each, local and ray alternated; MiniLM: one run each", "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
