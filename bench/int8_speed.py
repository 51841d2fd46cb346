"""INT8 speed and accuracy per model x backend: edgekit's recipe vs ONNX Runtime's quantize_static
(QDQ, MinMax, U8S8 and S8S8) vs NNCF, against FP32 (and OpenVINO's bf16 where the CPU has it) in the same runtime.

    python bench/int8_speed.py [--models resnet18,mobilenetv2,minilm-l6,efficientnet-lite0] [--seconds 4]

Every variant of a model x backend is loaded, then timed with measure_interleaved (short blocks in a
random order every round, so a shared machine's slow phases hit all alike); speed-ups are ratios of
medians. Accuracy beside each: the worst cosine to FP32 over held-out real data. The verdict per
model x backend: edgekit's speed-up >= 0.95x that of the fastest peer whose worst cosine >= 0.90, with
a cosine at least as good. The CPU's INT8 features are printed with every table (the figures hold for
this CPU only; tests/test_int8_structure.py checks what carries to others). Writes bench/results/int8_speed.json.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import prepare, save_feeds, tmpdir, write_results

from edgekit.backends import get_backend
from edgekit.backends.openvino import OpenVinoEngine, OpenVinoOptions
from edgekit.compile import open_engine
from edgekit.config import BenchSettings
from edgekit.quantize import QuantizeOptions, quantize_model


class _Reader:
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def ort_static(src: Path, out: Path, feeds: list, act: str) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), _Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8 if act == "u8" else QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return out


def nncf_onnx(src: Path, out: Path, feeds: list, transformer: bool) -> Path:
    import nncf
    import onnx

    q = nncf.quantize(onnx.load(str(src)), nncf.Dataset(feeds), subset_size=len(feeds),
                      model_type=nncf.ModelType.TRANSFORMER if transformer else None)
    onnx.save(q, str(out))
    return out


def nncf_openvino(src: Path, out_dir: Path, feeds: list, transformer: bool) -> Path:
    import nncf
    import openvino as ov

    model = ov.convert_model(str(src))  # convert_model, not read_model: see DESIGN.md (depthwise convs stay bf16 otherwise)
    q = nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds), model_type=nncf.ModelType.TRANSFORMER if transformer else None)
    out_dir.mkdir(parents=True, exist_ok=True)
    ov.save_model(q, str(out_dir / "model.xml"))
    return out_dir / "model.xml"


def variants(m: dict[str, Any], work: Path, backend: str) -> dict[str, tuple[str, Any]]:
    """name -> (kind, path) for one backend; kind 'onnx' runs through edgekit's engine, 'ir' is an OpenVINO IR."""
    from edgekit.backends.base import is_transformer
    import onnx

    transformer = is_transformer(onnx.load(str(m["onnx"])))
    calib_dir = save_feeds(m["calib"], work / f"{m['name']}-calib")
    v: dict[str, tuple[str, Any]] = {"fp32": ("onnx", m["onnx"])}
    edge = work / f"{m['name']}-edgekit-{backend}.onnx"
    t0 = time.perf_counter()
    quantize_model(m["onnx"], edge, calib=str(calib_dir), options=QuantizeOptions(target=backend, cache=False))
    print(f"  edgekit {backend} recipe: {time.perf_counter() - t0:.1f} s", flush=True)
    v["edgekit"] = ("onnx", edge)
    v["ort-u8s8-minmax"] = ("onnx", ort_static(m["onnx"], work / f"{m['name']}-ort-u8s8.onnx", m["calib"], "u8"))
    if backend == "onnxruntime":
        v["ort-s8s8-minmax"] = ("onnx", ort_static(m["onnx"], work / f"{m['name']}-ort-s8s8.onnx", m["calib"], "s8"))
        v["nncf-onnx"] = ("onnx", nncf_onnx(m["onnx"], work / f"{m['name']}-nncf.onnx", m["calib"], transformer))
    else:
        v["nncf-openvino"] = ("ir", nncf_openvino(m["onnx"], work / f"{m['name']}-nncf-ov", m["calib"], transformer))
    return v


def run_backend(m: dict[str, Any], work: Path, backend: str, seconds: float) -> list[dict[str, Any]]:
    import contextlib

    from edgekit.backends.base import host_cpu_features
    from edgekit.bench.timer import measure_interleaved

    vs = variants(m, work, backend)
    if backend == "openvino" and {"avx512_bf16", "amx"} & set(host_cpu_features()):
        vs["bf16"] = ("onnx", m["onnx"])  # OpenVINO's bf16: no calibration at all, the bar INT8 must clear
    settings = BenchSettings(warmup_ms=300, min_iterations=20, min_duration_s=seconds)
    rows = []
    with contextlib.ExitStack() as stack:
        engines = {}
        for name, (kind, path) in vs.items():
            if kind == "ir":
                engines[name] = stack.enter_context(OpenVinoEngine(path, options=OpenVinoOptions(), precision="int8", device="CPU"))
            else:
                prec = name if name in ("fp32", "bf16") else "int8"
                engines[name], _ = stack.enter_context(open_engine(path, target=backend, precision=prec))
        feed = m["held"][0]
        ref = {i: engines["fp32"].run(f) for i, f in enumerate(m["held"])}
        timed = dict(zip(engines, measure_interleaved([lambda e=eng: e.run(feed) for eng in engines.values()], settings)))
        fp = float(np.median(timed["fp32"].latencies_ms))
        for name, eng in engines.items():
            worst = 1.0
            for i, f in enumerate(m["held"]):
                got = eng.run(f)
                for key, a in ref[i].items():
                    b = got[key] if key in got else list(got.values())[0]
                    a2, b2 = a.reshape(a.shape[0], -1).astype(np.float64), b.reshape(b.shape[0], -1).astype(np.float64)
                    cos = (a2 * b2).sum(1) / np.maximum(np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1), 1e-30)
                    worst = min(worst, float(cos.min()))
            lat = timed[name].latencies_ms
            med = float(np.median(lat))
            rows.append({"model": m["name"], "weights": m["weights"], "backend": backend, "variant": name, "median_ms": med,
                         "p10_p90_ms": [float(np.percentile(lat, 10)), float(np.percentile(lat, 90))], "speedup": fp / med,
                         "worst_cosine_vs_fp32": worst})
    return rows


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """edgekit against the fastest peer whose worst cosine is >= 0.90 (one model x backend)."""
    edge = next(r for r in rows if r["variant"] == "edgekit")
    peers = [r for r in rows if r["variant"] not in ("fp32", "bf16", "edgekit") and r["worst_cosine_vs_fp32"] >= 0.90]
    if not peers:
        return {"model": edge["model"], "backend": edge["backend"], "peer": None, "ratio": None, "ok": True}
    best = max(peers, key=lambda r: r["speedup"])
    ratio = edge["speedup"] / best["speedup"]
    ok = ratio >= 0.95 and edge["worst_cosine_vs_fp32"] >= best["worst_cosine_vs_fp32"] - 1e-4
    return {"model": edge["model"], "backend": edge["backend"], "peer": best["variant"], "ratio": ratio,
            "edgekit_cosine": edge["worst_cosine_vs_fp32"], "peer_cosine": best["worst_cosine_vs_fp32"], "ok": ok}


def cpu_line() -> str:
    from edgekit.backends.base import host_cpu_features
    from edgekit.machine import cpu_name

    f = set(host_cpu_features())
    yes = lambda k: "yes" if k & f else "no"  # noqa: E731
    return (f"CPU: {cpu_name()} | INT8 dot product: VNNI {yes({'avx512_vnni', 'avx_vnni'})}, AMX {yes({'amx'})}, "
            f"arm dotprod {yes({'arm64-dotprod'})} | bf16: {yes({'avx512_bf16', 'amx'})}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,mobilenetv2,minilm-l6,efficientnet-lite0")
    ap.add_argument("--backends", default="openvino,onnxruntime")
    ap.add_argument("--seconds", type=float, default=4.0, help="interleaved measuring time per variant, at least")
    ap.add_argument("--results", default="int8_speed", help="results file name in bench/results/ (a re-run of some models: another name)")
    args = ap.parse_args()
    from edgekit.backends.base import host_cpu_features

    work = tmpdir("edgekit-int8speed-")
    rows: list[dict[str, Any]] = []
    verdicts = []
    print(cpu_line(), flush=True)
    for name in args.models.split(","):
        print(f"{name}: exporting and quantizing", flush=True)
        m = prepare(name, work)
        for backend in args.backends.split(","):
            if not get_backend(backend).status().available:
                print(f"  {backend}: not available here, skipped")
                continue
            part = run_backend(m, work, backend, args.seconds)
            rows += part
            verdicts.append(verdict(part))
    print("\n" + cpu_line())
    print(f"{'model':18} {'backend':12} {'variant':16} {'median ms':>10} {'p10-p90':>15} {'speed-up':>9} {'worst cos':>10}")
    for r in rows:
        print(f"{r['model']:18} {r['backend']:12} {r['variant']:16} {r['median_ms']:10.3f} "
              f"{r['p10_p90_ms'][0]:7.2f}-{r['p10_p90_ms'][1]:<7.2f} {r['speedup']:8.2f}x {r['worst_cosine_vs_fp32']:10.4f}")
    print("\n" + cpu_line())
    print(f"{'model':18} {'backend':12} {'best peer (cos>=0.90)':22} {'edgekit/peer':>12} {'cos edgekit':>11} {'cos peer':>9}  verdict")
    for v in verdicts:
        if v["peer"] is None:
            print(f"{v['model']:18} {v['backend']:12} {'(none valid)':22} {'':>12} {'':>11} {'':>9}  ok")
            continue
        print(f"{v['model']:18} {v['backend']:12} {v['peer']:22} {v['ratio']:11.3f}x {v['edgekit_cosine']:11.4f} {v['peer_cosine']:9.4f}  "
              f"{'ok' if v['ok'] else 'BEHIND'}")
    from edgekit.machine import cpu_name

    path = write_results(args.results, {"cpu": cpu_name(), "cpu_features": list(host_cpu_features()), "seconds": args.seconds,
                                        "note": "interleaved on a shared 2-core machine: compare ratios, not absolute ms",
                                        "rows": rows, "verdicts": verdicts})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
