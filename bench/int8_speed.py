"""INT8 speed and accuracy per model x backend: edgekit's recipe vs ONNX Runtime's quantize_static
(QDQ, MinMax, U8S8 and S8S8) vs NNCF, against FP32 in the same runtime.

    python bench/int8_speed.py [--models resnet18,mobilenetv2,minilm-l6,efficientnet-lite0] [--rounds 3] [--seconds 1]

Every variant of a model is loaded, then timed round-robin (interleaved, so drift hits all alike);
speed-ups are ratios of medians of the round medians, the spread is min-max over rounds. Accuracy
beside each: the worst cosine to FP32 over held-out real data. Writes bench/results/int8_speed.json.
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
from edgekit.bench.timer import measure
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


def run_backend(m: dict[str, Any], work: Path, backend: str, rounds: int, seconds: float) -> list[dict[str, Any]]:
    import contextlib

    vs = variants(m, work, backend)
    settings = BenchSettings(warmup_ms=300, min_iterations=10, min_duration_s=seconds)
    rows = []
    with contextlib.ExitStack() as stack:
        engines = {}
        for name, (kind, path) in vs.items():
            if kind == "ir":
                engines[name] = stack.enter_context(OpenVinoEngine(path, options=OpenVinoOptions(), precision="int8", device="CPU"))
            else:
                prec = "fp32" if name == "fp32" else "int8"
                engines[name], _ = stack.enter_context(open_engine(path, target=backend, precision=prec))
        feed = m["held"][0]
        ref = {i: engines["fp32"].run(f) for i, f in enumerate(m["held"])}
        medians: dict[str, list[float]] = {n: [] for n in engines}
        for _ in range(rounds):
            for name, eng in engines.items():
                medians[name].append(float(np.median(measure(lambda e=eng: e.run(feed), settings).latencies_ms)))
        fp = float(np.median(medians["fp32"]))
        for name, eng in engines.items():
            worst = 1.0
            for i, f in enumerate(m["held"]):
                for key, a in ref[i].items():
                    b = eng.run(f)[key] if key in eng.run(f) else list(eng.run(f).values())[0]
                    a2, b2 = a.reshape(a.shape[0], -1).astype(np.float64), b.reshape(b.shape[0], -1).astype(np.float64)
                    cos = (a2 * b2).sum(1) / np.maximum(np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1), 1e-30)
                    worst = min(worst, float(cos.min()))
            med = float(np.median(medians[name]))
            rows.append({"model": m["name"], "weights": m["weights"], "backend": backend, "variant": name, "median_ms": med,
                         "spread_ms": [min(medians[name]), max(medians[name])], "speedup": fp / med, "worst_cosine_vs_fp32": worst})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,mobilenetv2,minilm-l6,efficientnet-lite0")
    ap.add_argument("--backends", default="openvino,onnxruntime")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    work = tmpdir("edgekit-int8speed-")
    rows: list[dict[str, Any]] = []
    for name in args.models.split(","):
        print(f"{name}: exporting and quantizing", flush=True)
        m = prepare(name, work)
        for backend in args.backends.split(","):
            if not get_backend(backend).status().available:
                print(f"  {backend}: not available here, skipped")
                continue
            rows += run_backend(m, work, backend, args.rounds, args.seconds)
    print(f"\n{'model':18} {'backend':12} {'variant':16} {'median ms':>10} {'spread':>15} {'speed-up':>9} {'worst cos':>10}")
    for r in rows:
        print(f"{r['model']:18} {r['backend']:12} {r['variant']:16} {r['median_ms']:10.3f} "
              f"{r['spread_ms'][0]:7.2f}-{r['spread_ms'][1]:<7.2f} {r['speedup']:8.2f}x {r['worst_cosine_vs_fp32']:10.4f}")
    from edgekit.backends.base import cpu_has_vnni
    from edgekit.doctor import cpu_name

    path = write_results("int8_speed", {"cpu": cpu_name(), "vnni": cpu_has_vnni(), "rounds": args.rounds, "seconds": args.seconds, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
