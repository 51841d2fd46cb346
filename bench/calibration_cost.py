"""Calibration cost: wall time and peak memory against the number of samples, edgekit vs ONNX Runtime.

    python bench/calibration_cost.py [--samples 32,128,512] [--peer-max 128]

A ResNet-18-sized CNN at 224x224 (random weights; the cost does not depend on them), real photos
cycled up to N samples. Each run is a fresh process, so peak RSS (ru_maxrss) is that run's alone.
ONNX Runtime's entropy and percentile calibrators keep every activation of every sample: they are run
up to --peer-max samples (DESIGN.md measured 15.7 GB at 512 here). Writes bench/results/calibration_cost.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from _common import HERE, prepare, save_feeds, tmpdir, write_results

CHILD = r'''
import json, resource, sys, time
sys.path[:0] = [{here!r}]
tool, method, model, feeds_dir, n, out = sys.argv[1:7]
n = int(n)
import numpy as np
from pathlib import Path
files = sorted(Path(feeds_dir).glob("*.npz"))
def feeds():
    for i in range(n):
        with np.load(files[i % len(files)]) as d:
            yield {{k: d[k] for k in d.files}}
t0 = time.perf_counter()
if tool == "edgekit":
    from edgekit.quantize import QuantizeOptions, quantize_model

    quantize_model(model, out, calib=feeds_dir, options=QuantizeOptions(method=method, samples=n, cache=False, check=False))
else:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    class R:
        def __init__(self): self.it = feeds()
        def get_next(self): return next(self.it, None)
    quantize_static(model, out, R(), quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method={{"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                    "percentile": CalibrationMethod.Percentile}}[method])
print(json.dumps({{"seconds": time.perf_counter() - t0, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", default="32,128,512")
    ap.add_argument("--peer-max", type=int, default=128)
    args = ap.parse_args()
    work = tmpdir("edgekit-calcost-")
    m = prepare("resnet18", work)
    # the calibration folder holds N distinct files for edgekit (it reads a folder): photos cycled
    counts = [int(x) for x in args.samples.split(",")]
    feeds_dir = save_feeds([m["calib"][i % len(m["calib"])] for i in range(max(counts))], work / "feeds")
    child = CHILD.format(here=str(HERE.parent))
    rows = []
    for tool in ("edgekit", "onnxruntime"):
        for method in ("minmax", "percentile", "entropy"):
            for n in counts:
                if tool == "onnxruntime" and method != "minmax" and n > args.peer_max:
                    rows.append({"tool": tool, "method": method, "samples": n, "seconds": None, "peak_mb": None, "note": f"skipped: > --peer-max {args.peer_max}"})
                    continue
                res = subprocess.run([sys.executable, "-c", child, tool, method, str(m["onnx"]), str(feeds_dir), str(n), str(work / "q.onnx")],
                                     capture_output=True, text=True)
                if res.returncode != 0:
                    rows.append({"tool": tool, "method": method, "samples": n, "seconds": None, "peak_mb": None, "note": res.stderr.strip().splitlines()[-1][:200]})
                else:
                    rows.append({"tool": tool, "method": method, "samples": n, **json.loads(res.stdout.strip().splitlines()[-1])})
                r = rows[-1]
                print(f"{tool:12} {method:11} {n:5d} samples: "
                      + (f"{r['seconds']:7.1f} s  {r['peak_mb']:8.0f} MB" if r["seconds"] is not None else r["note"]), flush=True)
    for tool in ("edgekit", "onnxruntime"):
        for method in ("percentile", "entropy"):
            sel = {r["samples"]: r["peak_mb"] for r in rows if r["tool"] == tool and r["method"] == method and r["peak_mb"]}
            if 128 in sel and 512 in sel:
                print(f"{tool} {method}: peak grows {100 * (sel[512] / sel[128] - 1):+.1f}% from 128 to 512 samples")
    print(f"wrote {write_results('calibration_cost', {'model': 'resnet18 (224x224)', 'rows': rows})}")


if __name__ == "__main__":
    main()
