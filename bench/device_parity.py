"""Device parity: `edgekit bench --device` (over a real SSH server on loopback) against a local bench.

    python bench/device_parity.py [--rounds 6] [--seconds 2]

The "device" is this machine reached through Debian's sshd on 127.0.0.1 (throwaway keys) with a
second virtual environment standing in for the device's Python (no torch). Each round runs the
local `edgekit bench` and the device run of the same EfficientNet-Lite0 OpenVINO INT8 artifact,
both as the CLI in its own process, alternating which goes first; the table gives each round's
p50 and the device/local ratio of the medians. A device run also pays for packing, the transfer,
`edgekit verify` and a fresh process there: its wall time is printed beside the local one.
Writes bench/results/device_parity.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import write_results  # also puts tests/ on sys.path

import test_remote as lab  # the test suite's sshd and device-venv helpers
from edgekit.machine import cpu_name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="device-parity-") as tmp:
        root = Path(tmp)
        from click.testing import CliRunner

        from edgekit.cli import cli
        from edgekit.compile import compile_model
        from edgekit.export import ExportOptions, export_model

        export_model("edgekit.examples.efficientnet:model", root / "m.onnx", options=ExportOptions(dynamic_batch=True))
        res = CliRunner().invoke(cli, ["quantize", str(root / "m.onnx"), "-o", str(root / "q.onnx"), "--calib",
                                       str(lab.ROOT / "calibration" / "imagenet-photos.toml"), "--samples", "16", "--target", "openvino"])
        assert res.exit_code == 0, res.output
        art = root / "ov"
        compile_model(root / "q.onnx", art, target="openvino", shapes={"inputs": (1, 3, 224, 224)})
        key = lab._keygen(root / "id")
        server = lab.Sshd(root / "sshd", key)
        try:
            known = root / "known_hosts"
            known.write_text(server.known_hosts_line())
            py = lab.device_python(root / "device")
            work = root / "work"
            project = root / "proj"
            project.mkdir()
            lab._project(project, lab._device_table("lab", server, {"key": key, "known_hosts": known}, py, work))
            rows = []
            for i in range(args.rounds):
                row = {"round": i}
                for where in (("local", "device") if i % 2 == 0 else ("device", "local")):
                    out = project / f"{where}-{i}.json"
                    t0 = time.perf_counter()
                    r = lab._run(["bench", str(art), "--min-duration", str(args.seconds), "--json", str(out)] + (["--device", "lab"] if where == "device" else []), project)
                    if r.returncode != 0:
                        sys.exit(f"{where} run failed: {r.stderr}")
                    row[f"{where}_wall_s"] = time.perf_counter() - t0
                    row[f"{where}_p50_ms"] = lab._p50(out)
                row["ratio"] = row["device_p50_ms"] / row["local_p50_ms"]
                rows.append(row)
                print(f"round {i}: local p50 {row['local_p50_ms']:.3f} ms ({row['local_wall_s']:.1f} s), "
                      f"device p50 {row['device_p50_ms']:.3f} ms ({row['device_wall_s']:.1f} s), device/local {row['ratio']:.3f}", flush=True)
        finally:
            server.stop()
    dev = statistics.median(r["device_p50_ms"] for r in rows)
    loc = statistics.median(r["local_p50_ms"] for r in rows)
    ratios = sorted(r["ratio"] for r in rows)
    summary = {"cpu": cpu_name(), "python": platform.python_version(), "rounds": args.rounds, "seconds": args.seconds,
               "median_device_p50_ms": dev, "median_local_p50_ms": loc, "ratio_of_medians": dev / loc,
               "per_round_ratio_min": ratios[0], "per_round_ratio_max": ratios[-1],
               "median_wall_device_s": statistics.median(r["device_wall_s"] for r in rows),
               "median_wall_local_s": statistics.median(r["local_wall_s"] for r in rows), "rows": rows,
               "note": "same machine both ways (the device is sshd on loopback); the machine is shared with other jobs, so per-round figures drift"}
    print(f"\n{cpu_name()}: median p50 device {dev:.3f} ms vs local {loc:.3f} ms = {dev / loc:.3f} "
          f"(per-round {ratios[0]:.2f}-{ratios[-1]:.2f}); wall per run: device {summary['median_wall_device_s']:.1f} s, local {summary['median_wall_local_s']:.1f} s")
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))
    write_results("device_parity", summary)


if __name__ == "__main__":
    main()
