"""The device install, measured: edgekit's wheel with the `runtime` extra (and `runtime,openvino`) in fresh
virtual environments: install time, size on disk, what got installed (no torch, no nncf), and the cost of a
start: `import edgekit`, then `edgekit.load` of an OpenVINO INT8 EfficientNet-Lite0 bundle with an empty
and with a warm model cache, one fresh process each, alternating.

    python bench/device_install.py          # ~3 min; writes bench/results/device_install.json

pip's cache is warm from the development install, as on a CI runner; a device downloading every wheel
takes longer. The machine is shared: wall times are noisy, CPU times (all threads) less so.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

START = """
import json, sys, time
t0 = time.perf_counter(); import edgekit; t_import = time.perf_counter() - t0
c0, t1 = time.process_time(), time.perf_counter()
e = edgekit.load(sys.argv[1])
wall, cpu = time.perf_counter() - t1, time.process_time() - c0
top = e.top_k(sys.argv[2], 1)[0][0]
print(json.dumps({"import_s": t_import, "load_s": wall, "load_cpu_s": cpu, "cached": e.info.get("loaded_from_cache"),
                  "backend": e.info["backend"], "top1": top, "torch": "torch" in sys.modules,
                  "modules": sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in ("numpy", "onnx", "onnxruntime", "openvino", "PIL", "scipy", "click")})}))
"""


def sh(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if res.returncode:
        raise SystemExit(f"{cmd} failed: {res.stderr[-2000:]}")
    return res


def size_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


def main() -> None:
    from edgekit.compile import compile_model
    from edgekit.examples.efficientnet import photo
    from edgekit.export import ExportOptions, export_model
    from edgekit.pack import pack_bundle

    work = Path(tempfile.mkdtemp(prefix="edgekit-device-bench-"))
    try:
        src = work / "src"
        shutil.copytree(ROOT / "edgekit", src / "edgekit", ignore=shutil.ignore_patterns("__pycache__"))
        for f in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / f, src / f)
        sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src), "-w", str(work / "wheel")])
        wheel = next((work / "wheel").glob("*.whl"))
        installs = {}
        for extras in ("runtime", "runtime,openvino"):
            venv = work / extras.replace(",", "-")
            t0 = time.perf_counter()
            sh([sys.executable, "-m", "venv", str(venv)])
            sh([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{wheel}[{extras}]"])
            seconds = time.perf_counter() - t0
            site = next((venv / "lib").glob("python*/site-packages"))
            pkgs = {p["name"].lower(): p["version"] for p in json.loads(sh([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"]).stdout)}
            biggest = sorted(((size_mib(p), p.name) for p in site.iterdir() if p.is_dir()), reverse=True)[:6]
            installs[extras] = {"seconds": round(seconds, 1), "venv_mib": round(size_mib(venv), 1), "site_packages_mib": round(size_mib(site), 1),
                                "packages": pkgs, "biggest_mib": [(n, round(s, 1)) for s, n in biggest],
                                "torch": "torch" in pkgs, "nncf": "nncf" in pkgs}
            print(f"pip install 'edgekit[{extras}]': {seconds:.1f} s, venv {installs[extras]['venv_mib']:.0f} MiB "
                  f"(site-packages {installs[extras]['site_packages_mib']:.0f} MiB), {len(pkgs)} packages, torch: {'torch' in pkgs}, nncf: {'nncf' in pkgs}")
            print("   biggest: " + ", ".join(f"{n} {s:.0f} MiB" for s, n in biggest))

        # a bundle, built here
        onnx = work / "model.onnx"
        export_model("edgekit.examples.efficientnet:model", onnx, options=ExportOptions(dynamic_batch=True))
        q = work / "model.int8.onnx"
        sh([sys.executable, "-m", "edgekit", "quantize", str(onnx), "-o", str(q), "--calib", str(ROOT / "calibration" / "imagenet-photos.toml"), "--samples", "8"],
           env={**os.environ, "PYTHONPATH": str(ROOT)})
        compile_model(q, work / "ov", target="openvino", shapes={"inputs": (1, 3, 224, 224)})
        compile_model(q, work / "ort", target="onnxruntime")
        device = work / "device"
        device.mkdir()
        pack_bundle([work / "ov", work / "ort"], device / "model.tar", include_source=False)
        shutil.copy(photo(), device / "cat.png")
        (device / "start.py").write_text(START)
        py = work / "runtime-openvino" / "bin" / "python"
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        starts: dict[str, list[dict]] = {"cold": [], "warm": []}
        for i in range(5):
            cache = work / f"cache{i}"
            for kind in ("cold", "warm"):
                res = sh([str(py), "start.py", "model.tar", "cat.png"], cwd=device, env={**env, "EDGEKIT_CACHE_DIR": str(cache)})
                starts[kind].append(json.loads(res.stdout))
        summary = {k: {f: round(statistics.median(r[f] for r in v) * 1e3, 1) for f in ("import_s", "load_s", "load_cpu_s")} for k, v in starts.items()}
        print("\nstart on the device (fresh process each, medians of 5, ms):")
        print("| model cache | import edgekit | edgekit.load wall | edgekit.load CPU |")
        print("| --- | --- | --- | --- |")
        for k in ("cold", "warm"):
            print(f"| {'empty (first start)' if k == 'cold' else 'warm (later starts)'} | {summary[k]['import_s']} | {summary[k]['load_s']} | {summary[k]['load_cpu_s']} |")
        first = starts["cold"][0]
        print(f"\nloaded {first['backend']}, top-1 {first['top1']}, torch imported: {first['torch']}, runtime modules: {', '.join(first['modules'])}")
        out = {"machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(), "note": "shared 2-core machine, loaded"},
               "installs": installs, "starts": starts, "summary_ms": summary,
               "bundle_mib": round((device / "model.tar").stat().st_size / 2**20, 1)}
        dest = ROOT / "bench" / "results" / "device_install.json"
        dest.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {dest.relative_to(ROOT)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
