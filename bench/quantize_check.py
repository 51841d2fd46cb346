"""The default check of `edgekit quantize`: what it costs and what it decides, on the suite's real models.

    python bench/quantize_check.py [--rounds 4] [--models efficientnet-lite0,mnist-cnn,minilm-l6,silero-vad]

- Cost: EfficientNet-Lite0 (16 real photos) quantized by `python -m edgekit quantize ... --no-cache` with
  and without `--no-check`, each in a fresh process as a user runs it, alternating which goes first in
  each round (drift and a loaded machine hit both alike); the ratio of medians is the check's overhead.
- Outcome: a plain run (`--calib` only) per model: all-INT8 against the default bar on the held-out
  slice, what the fallback kept in float, its model evaluations against its worst case; for MiniLM
  also the worst cosine on sentences neither calibrated nor checked on.
Writes bench/results/quantize_check.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import HERE, PHOTOS, save_feeds, write_results

ROOT = HERE.parent


def _run(args: list[str], cwd: Path) -> tuple[float, int, dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "EDGEKIT_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "edgekit", *args, "--json", "r.json"], cwd=cwd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    report = json.loads((cwd / "r.json").read_text()) if (cwd / "r.json").exists() else {}
    if res.returncode not in (0, 3):
        raise SystemExit(f"edgekit {' '.join(args)} failed ({res.returncode}):\n{res.stderr}")
    (cwd / "r.json").unlink(missing_ok=True)
    return took, res.returncode, report


def _models(work: Path, names: list[str]) -> dict[str, tuple[Path, str, Path | None]]:
    """name -> (fp32 onnx, --calib, held-out folder never calibrated on or None)."""
    import zoo

    from edgekit.export import ExportOptions, export_model

    out: dict[str, tuple[Path, str, Path | None]] = {}
    if "efficientnet-lite0" in names:
        m = work / "eff.onnx"
        export_model("edgekit.examples.efficientnet:model", m, options=ExportOptions(dynamic_batch=True))
        out["efficientnet-lite0"] = (m, str(PHOTOS), None)
    if "mnist-cnn" in names:
        m = work / "mnist.onnx"
        export_model("zoo:mnist_cnn", m, options=ExportOptions(dynamic_batch=True))
        import onnx

        np.savez(work / "mnist.npz", **{onnx.load(str(m)).graph.input[0].name: zoo.mnist_calibration(256)})
        out["mnist-cnn"] = (m, str(work / "mnist.npz"), None)
    if "minilm-l6" in names:
        m = work / "minilm.onnx"
        export_model("zoo:minilm", m, options=ExportOptions(dynamic_batch=True))
        s = zoo.MINILM_SENTENCES
        out["minilm-l6"] = (m, str(save_feeds(zoo.minilm_feeds(s[:8]), work / "minilm-calib")),
                            save_feeds(zoo.minilm_feeds(s[8:]), work / "minilm-held"))
    if "silero-vad" in names and zoo.SPEECH_DIR.exists():
        import onnxruntime as ort

        m = work / "vad.onnx"
        export_model("zoo:silero_vad", m, options=ExportOptions(dynamic_batch=True))
        sess = ort.InferenceSession(str(m))
        feeds = []
        for clip in zoo.speech_16k()[:3]:  # streamed, with the states the model really sees
            state = np.zeros((1, 2, 128), np.float32)
            for c in zoo.vad_chunks(clip):
                feeds.append({"audio": c[None], "state": state})
                state = sess.run(None, feeds[-1])[1]
        out["silero-vad"] = (m, str(save_feeds(feeds, work / "vad-calib")), None)
    return out


def _unseen_worst_cosine(fp32: Path, q: Path, held: Path) -> float:
    import onnxruntime as ort

    a, b = ort.InferenceSession(str(fp32)), ort.InferenceSession(str(q))
    worst = 1.0
    for f in sorted(held.glob("*.npz")):
        feed = dict(np.load(f))
        x, y = a.run(None, feed)[0].ravel(), b.run(None, feed)[0].ravel()
        worst = min(worst, float(x @ y / np.linalg.norm(x) / np.linalg.norm(y)))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--models", default="efficientnet-lite0,mnist-cnn,minilm-l6,silero-vad")
    args = ap.parse_args()
    from edgekit.backends.base import cpu_has_vnni

    results: dict = {"cpu_vnni": cpu_has_vnni(), "load_average": os.getloadavg(), "models": {}}
    with tempfile.TemporaryDirectory(prefix="edgekit-qcheck-") as tmp:
        work = Path(tmp)
        models = _models(work, args.models.split(","))
        for name, (model, calib, held) in models.items():
            took, code, rep = _run(["quantize", str(model), "-o", "q.onnx", "--calib", calib, "--no-cache"], work)
            c, fb = rep.get("check") or {}, rep.get("fallback")
            row = {"exit": code, "seconds": took, "check_samples": c.get("samples"), "outcome": c.get("outcome"), "summary": c.get("summary"),
                   "all_int8": [{k: o[k] for k in ("output", "kind", "cosine_mean", "cosine_worst", "top1_agreement_confident", "passed")}
                                for o in c.get("all_int8", {}).get("outputs", [])],
                   "check_seconds": c.get("seconds"), "settled": rep.get("settled")}
            if fb:
                row["fallback"] = {k: fb.get(k) for k in ("units", "evaluations", "worst_case_evaluations", "met", "latency_ms", "int8_nodes")}
                row["fallback"]["kept_in_float"] = [k["node"] for k in fb["kept_in_float"]]
            if held is not None and code == 0:
                row["unseen_worst_cosine"] = _unseen_worst_cosine(model, work / "q.onnx", held)
            results["models"][name] = row
            print(f"{name}: exit {code}, {took:.1f} s, {row['outcome']}"
                  + (f"; fallback {fb['evaluations']} evaluations (worst case {fb['worst_case_evaluations']}), kept {len(fb['kept_in_float'])}" if fb else "")
                  + (f"; unseen worst cosine {row['unseen_worst_cosine']:.4f}" if "unseen_worst_cosine" in row else ""), flush=True)
        if "efficientnet-lite0" in models:
            model, calib, _ = models["efficientnet-lite0"]
            base = ["quantize", str(model), "-o", "q.onnx", "--calib", calib, "--no-cache"]
            times: dict[str, list[float]] = {"check": [], "no-check": []}
            for r in range(args.rounds):
                order = ["check", "no-check"] if r % 2 == 0 else ["no-check", "check"]
                for variant in order:
                    times[variant].append(_run(base + (["--no-check"] if variant == "no-check" else []), work)[0])
            med = {k: statistics.median(v) for k, v in times.items()}
            results["efficientnet_overhead"] = {"seconds": times, "median": med, "ratio": med["check"] / med["no-check"]}
            print(f"EfficientNet-Lite0 quantize: check {med['check']:.1f} s vs --no-check {med['no-check']:.1f} s (medians of {args.rounds}): "
                  f"{100 * (med['check'] / med['no-check'] - 1):+.0f}%  (load average {os.getloadavg()[0]:.1f})")
    print(f"wrote {write_results('quantize_check', results)}")


if __name__ == "__main__":
    main()
