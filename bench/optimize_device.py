"""`edgekit optimize --device` (the race over a real SSH server on loopback) against a local `edgekit optimize`.

    python bench/optimize_device.py [--rounds 2] [--seconds 2] [--target openvino] [--candidates fp32,bf16,int8]

EfficientNet-Lite0, calibrated on scikit-image photos, judged on labelled ImageNet val images (foolbox).
The "device" is this machine reached through Debian's sshd on 127.0.0.1 (throwaway keys) with a second
virtual environment standing in for the device's Python (no torch), as bench/device_parity.py. Each round
runs optimize here and with --device, alternating which goes first; the table gives every candidate's floor
and its ratio to the winner (with the interval) both ways, the winner, and the wall time with where it went
(the device's session: the preflight, packing, the transfer, verify and the race there).
Writes bench/results/optimize_device.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import IMAGENET_VAL, PHOTOS, write_results  # also puts tests/ on sys.path

import test_remote as lab  # the test suite's sshd and device-venv helpers


def _summary(report: dict[str, Any], wall: float) -> dict[str, Any]:
    rows = {}
    for c in report["candidates"]:
        lat, vs = c.get("latency_ms"), c.get("vs_winner")
        rows[c["name"]] = {"floor_ms": lat["floor"] if lat else None, "p50_ms": lat["p50"]["value"] if lat else None,
                           "vs_winner": vs, "drop": (c.get("accuracy") or {}).get("drop"), "verdict": c["verdict"], "stopped": c.get("stopped"),
                           "measured_s": c.get("measured_s"), "device_agreement": (c.get("accuracy") or {}).get("device_agreement")}
    return {"winner": report["winner"], "why": report["why"], "wall_s": wall, "phases_s": report["timing"].get("phases_s"),
            "device_session_s": report["timing"].get("device_session_s"), "measured_on": report.get("measured_on"), "candidates": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--target", default="openvino")
    ap.add_argument("--candidates", default="fp32,bf16,int8")
    args = ap.parse_args()
    from edgekit.export import ExportOptions, export_model
    from edgekit.machine import cpu_features, cpu_name
    from edgekit.optimize import OptimizeOptions, optimize_model

    with tempfile.TemporaryDirectory(prefix="optimize-device-") as tmp:
        root = Path(tmp)
        export_model("edgekit.examples.efficientnet:model", root / "m.onnx", options=ExportOptions(dynamic_batch=False))
        key = lab._keygen(root / "id")
        server = lab.Sshd(root / "sshd", key)
        runs: list[dict[str, Any]] = []
        try:
            known = root / "known_hosts"
            known.write_text(server.known_hosts_line())
            py = lab.device_python(root / "device")
            toml = lab._project(root, lab._device_table("lab", server, {"key": key, "known_hosts": known}, py, root / "work"))
            base = OptimizeOptions(target=args.target, eval_source=str(IMAGENET_VAL), candidates=tuple(args.candidates.split(",")), min_duration_s=args.seconds)
            for i in range(args.rounds):
                for where in (("local", "device") if i % 2 == 0 else ("device", "local")):
                    opts = base if where == "local" else OptimizeOptions(**{**base.__dict__, "device": "lab", "device_config": str(toml)})
                    t0 = time.perf_counter()
                    report = optimize_model(root / "m.onnx", root / f"out-{where}-{i}", calib=str(PHOTOS), options=opts)
                    s = _summary(report, time.perf_counter() - t0)
                    runs.append({"round": i, "where": where, **s})
                    cells = ", ".join(f"{n} floor {r['floor_ms']:.3f}" + (f" x{r['vs_winner']['ratio']:.2f} [{r['vs_winner']['ci_low']:.2f}, {r['vs_winner']['ci_high']:.2f}]" if r["vs_winner"] else "")
                                      for n, r in s["candidates"].items() if r["floor_ms"] is not None)
                    print(f"round {i} {where:6s}: winner {s['winner']}; {cells}; wall {s['wall_s']:.1f} s"
                          + (f" (device session {s['device_session_s']:.1f} s)" if s["device_session_s"] else ""), flush=True)
        finally:
            server.stop()
    names = sorted({n for r in runs for n, c in r["candidates"].items() if c["vs_winner"]})
    ratios = {where: {n: statistics.median(r["candidates"][n]["vs_winner"]["ratio"] for r in runs if r["where"] == where and r["candidates"].get(n, {}).get("vs_winner"))
                      for n in names if any(r["where"] == where and r["candidates"].get(n, {}).get("vs_winner") for r in runs)} for where in ("local", "device")}
    summary = {"cpu": cpu_name(), "cpu_features": cpu_features(), "target": args.target, "candidates": args.candidates, "rounds": args.rounds,
               "seconds": args.seconds, "winners": {w: [r["winner"] for r in runs if r["where"] == w] for w in ("local", "device")},
               "median_ratio_to_winner": ratios,
               "median_wall_s": {w: statistics.median(r["wall_s"] for r in runs if r["where"] == w) for w in ("local", "device")},
               "median_device_session_s": statistics.median(r["device_session_s"] for r in runs if r["where"] == "device"), "runs": runs,
               "note": "same machine both ways (the device is sshd on loopback); the machine is shared with other jobs"}
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    write_results("optimize_device", summary)


if __name__ == "__main__":
    main()
