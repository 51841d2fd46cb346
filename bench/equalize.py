"""Cross-layer equalization and bias correction (edgekit.quantize.equalize, #13): all-INT8 vs FP32 with and
without each transform, per recipe, on held-out real data.

Each transform runs as the quantize check would run it: on the prepared float model, then ranges collected
again on the calibration data and QDQ placed with the target's recipe (`quantize_with_ranges`); the INT8
model runs in ONNX Runtime on this CPU and is compared with the original FP32 model.

  python bench/equalize.py [--models efficientnet-lite0,mnist-cnn,dwsep-digits] [--targets onnxruntime,openvino]
  python bench/equalize.py --zoo [NAMES]   # generality: bench/zoo_models.py (install line there), ONNX Runtime recipe

Models: EfficientNet-Lite0 (ImageNet weights; calibration: 16 scikit-image photos; held out: foolbox's 20
ImageNet val images), the MNIST CNN of tests/zoo.py (256 training digits / 1,000 held-out digits) and the
depthwise-separable digits CNN of tests/zoo.py (ReLU everywhere; 256 training digits / 297 held out).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from _common import IMAGENET_VAL, PHOTOS, RESULTS


def _cpu() -> str:
    from edgekit.backends.base import resolve_cpu_features

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    features, _ = resolve_cpu_features(("host",))
    return f"{name} ({', '.join(features) or 'no INT8 dot-product features'})"


def _model(name: str, work: Path) -> tuple[Path, str, list[dict[str, np.ndarray]], np.ndarray | None]:
    """(fp32 onnx, calibration source, held-out feeds, held-out labels)."""
    import zoo

    from edgekit.export import ExportOptions, export_model
    from edgekit.onnxmodel import TensorSpec

    out = work / f"{name}.onnx"
    if name == "efficientnet-lite0":
        export_model("edgekit.examples.efficientnet:model", out, options=ExportOptions(dynamic_batch=True))
        from edgekit.data.calibration import calibration_set

        spec = TensorSpec("x", ("batch", 3, 224, 224), np.dtype(np.float32))
        import onnx

        spec = TensorSpec(onnx.load(str(out)).graph.input[0].name, spec.shape, spec.dtype)
        held = calibration_set(str(IMAGENET_VAL), [spec])
        return out, str(PHOTOS), list(held.feeds([spec])), np.array(held.labels)
    if name == "mnist-cnn":
        export_model("zoo:mnist_cnn", out, options=ExportOptions(dynamic_batch=True))
        calib, (x, y) = zoo.mnist_calibration(256), zoo.mnist_heldout()
    else:
        export_model("zoo:dwsep_digits", out, options=ExportOptions(dynamic_batch=True, exporter="torchscript"))
        d, labels = zoo.digits()
        calib, (x, y) = d[:256, None], (d[1500:, None], labels[1500:])
    import onnx

    inp = onnx.load(str(out)).graph.input[0].name
    np.savez(work / f"{name}.calib.npz", **{inp: calib})
    return out, str(work / f"{name}.calib.npz"), [{inp: x[i:i + 1]} for i in range(len(x))], y


def _compare(ref: list[np.ndarray], got: list[np.ndarray], labels: np.ndarray | None) -> dict[str, float]:
    r, g = np.concatenate(ref), np.concatenate(got)
    cos = (r * g).sum(1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1) + 1e-30)
    out = {"top1_agreement": float((r.argmax(1) == g.argmax(1)).mean()), "cosine_mean": float(cos.mean()), "cosine_worst": float(cos.min()),
           "sqnr_db": _sqnr([[x] for x in ref], [[x] for x in got])}
    if labels is not None:
        out["top1_accuracy"] = float((g.argmax(1) == labels).mean())
    return out


def run(name: str, targets: list[str], work: Path) -> dict[str, Any]:
    from edgekit.backends import get_backend
    from edgekit.backends.base import recipe_for_target
    from edgekit.backends.onnxruntime import session_from_bytes
    from edgekit.data.calibration import calibration_set
    from edgekit.quantize.calibstats import tensor_range
    from edgekit.config import load_target
    from edgekit.onnxmodel import input_specs
    from edgekit.quantize import collect_stats, copy_model, prepare_model, quantize_with_ranges
    from edgekit.quantize.equalize import bias_correct, equalize

    path, calib, held, labels = _model(name, work)
    model = prepare_model(path, [])
    specs = input_specs(model)
    cset = calibration_set(calib, specs)

    def outputs(m: Any) -> list[np.ndarray]:
        sess = session_from_bytes(m.SerializeToString())
        return [sess.run(None, f)[0].reshape(1, -1) for f in held]

    ref = outputs(model)
    fp32 = _compare(ref, ref, labels)
    result: dict[str, Any] = {"fp32_top1_accuracy": fp32.get("top1_accuracy"), "held_out": len(held), "calibration": cset.count, "targets": {}}
    for tname in targets:
        target = load_target(tname)
        recipe = recipe_for_target(get_backend(target.backend), model, target)

        def quantized(m: Any, recipe: Any = recipe) -> Any:
            stats, _ = collect_stats(m, cset, limit=None, histograms=recipe.method != "minmax")
            ranges = {k: tensor_range(st, recipe.method, symmetric=recipe.activation_symmetric) for k, st in stats.items()}
            return quantize_with_ranges(copy_model(m), ranges, recipe, exclude=[])

        rows: dict[str, Any] = {}
        t = time.perf_counter()
        q0 = quantized(model)
        rows["all-int8"] = {**_compare(ref, outputs(q0), labels), "seconds": time.perf_counter() - t}
        t = time.perf_counter()
        eq, eq_info = equalize(model)
        eq_s = time.perf_counter() - t
        q_eq = quantized(eq)
        rows["equalize"] = {**_compare(ref, outputs(q_eq), labels), "seconds": eq_s,
                            "info": {k: v for k, v in eq_info.items() if k != "pairs"}}
        t = time.perf_counter()
        bc, bc_info = bias_correct(model, q0, lambda: cset.feeds(specs))
        bc_s = time.perf_counter() - t
        rows["bias-correct"] = {**_compare(ref, outputs(quantized(bc)), labels), "seconds": bc_s,
                                "info": {k: v for k, v in bc_info.items() if k != "per_site"}}
        if eq_info["sites"]:
            both, both_info = bias_correct(eq, q_eq, lambda: cset.feeds(specs))
            rows["equalize+bias-correct"] = {**_compare(ref, outputs(quantized(both)), labels),
                                             "info": {k: v for k, v in both_info.items() if k != "per_site"}}
        result["targets"][tname] = {"recipe": recipe.name if hasattr(recipe, "name") else recipe.to_dict().get("name"), "rows": rows}
    return result


def _sqnr(ref: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> float:
    """Signal-to-quantization-noise ratio (dB) over every float output of every held-out run."""
    sig = noise = 0.0
    for rs, gs in zip(ref, got):
        for r, g in zip(rs, gs):
            if np.asarray(r).dtype.kind == "f":
                r64, g64 = np.asarray(r, np.float64), np.asarray(g, np.float64)
                sig, noise = sig + float((r64 ** 2).sum()), noise + float(((g64 - r64) ** 2).sum())
    return 10 * np.log10(sig / noise) if noise > 0 else float("inf")


class _Feeds:
    """A list of feeds as collect_stats reads a CalibrationSet."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.list, self.count = feeds, len(feeds)

    def feeds(self, _specs: Any = None) -> Any:
        return iter(self.list)


def run_zoo(name: str, work: Path) -> dict[str, Any]:
    """A real model the tests never see: equalize (sites, skipped, float function kept on held-out data) and
    bias correction (sites, the zoo's task score of all-INT8 vs FP32 with and without), ONNX Runtime's recipe."""
    import zoo_models as zm

    from edgekit.backends import get_backend
    from edgekit.backends.base import recipe_for_target
    from edgekit.backends.onnxruntime import session_from_bytes
    from edgekit.quantize.calibstats import tensor_range
    from edgekit.config import load_target
    from edgekit.quantize import collect_stats, copy_model, prepare_model, quantize_with_ranges
    from edgekit.quantize.equalize import bias_correct, equalize

    zmod = zm.MODELS[name]
    calib, held = zmod.data()
    model = prepare_model(zmod.path(), [])
    target = load_target("onnxruntime")
    recipe = recipe_for_target(get_backend(target.backend), model, target)
    cset = _Feeds(calib)

    def outputs(m: Any) -> list[list[np.ndarray]]:
        sess = session_from_bytes(m.SerializeToString())
        names = [o.name for o in sess.get_outputs()]
        return [sess.run(names, f) for f in held]

    def quantized(m: Any) -> Any:
        stats, _ = collect_stats(m, cset, limit=None, histograms=recipe.method != "minmax")
        ranges = {k: tensor_range(st, recipe.method, symmetric=recipe.activation_symmetric) for k, st in stats.items()}
        return quantize_with_ranges(copy_model(m), ranges, recipe, exclude=[])

    ref = outputs(model)
    t = time.perf_counter()
    eq, eq_info = equalize(model)
    row: dict[str, Any] = {"kind": zmod.kind, "metric": zmod.metric, "equalize_seconds": time.perf_counter() - t,
                           "equalize": {k: v for k, v in eq_info.items() if k != "pairs"}}
    if eq_info["sites"]:
        got = outputs(eq)
        row["equalize_float_max_rel_diff"] = max(float(np.abs(g.astype(np.float64) - r).max() / (np.abs(r).max() + 1e-30))
                                                 for gs, rs in zip(got, ref) for g, r in zip(gs, rs) if np.asarray(r).dtype.kind == "f")
    q0 = quantized(model)
    got = outputs(q0)
    row["score_all_int8"], row["sqnr_all_int8"] = zmod.score(ref, got), _sqnr(ref, got)
    if eq_info["sites"]:
        got = outputs(quantized(eq))
        row["score_equalize"], row["sqnr_equalize"] = zmod.score(ref, got), _sqnr(ref, got)
    t = time.perf_counter()
    bc, bc_info = bias_correct(model, q0, cset.feeds)
    row["bias_correct_seconds"] = time.perf_counter() - t
    row["bias_correct"] = {k: v for k, v in bc_info.items() if k != "per_site"}
    if bc_info["sites"]:
        got = outputs(quantized(bc))
        row["score_bias_correct"], row["sqnr_bias_correct"] = zmod.score(ref, got), _sqnr(ref, got)
    return row


def main_zoo(names: list[str]) -> None:
    import zoo_models as zm

    report: dict[str, Any] = {"cpu": _cpu(), "recipe": "onnxruntime", "int8_ran_on": "onnxruntime (CPU execution provider)", "models": {}}
    print(f"CPU: {report['cpu']}")
    print("task score (and SQNR of all float outputs, dB) of all-INT8 vs FP32 on held-out data")
    print(f"{'model':20} {'eq sites':>8} {'skipped':>7} {'float rel diff':>14} {'bc sites':>8} "
          f"{'all-INT8':>16} {'equalize':>16} {'bias-correct':>16}")
    with tempfile.TemporaryDirectory(prefix="edgekit-eqzoo-") as tmp:
        for name in names or [n for n, m in zm.MODELS.items() if m.build is None]:
            try:
                r = run_zoo(name, Path(tmp))
            except Exception as exc:  # noqa: BLE001 - a bench row says what failed and goes on
                r = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"{name:20} ERROR {r['error'][:150]}")
                report["models"][name] = r
                continue
            report["models"][name] = r
            skipped = sum(r["equalize"]["skipped"].values())
            diff = r.get("equalize_float_max_rel_diff")
            cells = [f"{r[f'score_{k}']:.4f} ({r[f'sqnr_{k}']:4.1f})" if f"score_{k}" in r else "-" for k in ("all_int8", "equalize", "bias_correct")]
            print(f"{name:20} {r['equalize']['sites']:8d} {skipped:7d} {'' if diff is None else f'{diff:.1e}':>14} {r['bias_correct']['sites']:8d} "
                  + " ".join(f"{c:>16}" for c in cells))
    out = RESULTS / "equalize_zoo.json"
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"\nwrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="efficientnet-lite0,mnist-cnn,dwsep-digits")
    ap.add_argument("--targets", default="onnxruntime,openvino")
    ap.add_argument("--json", default=str(RESULTS / "equalize.json"))
    ap.add_argument("--zoo", nargs="?", const="", default=None, help="bench/zoo_models.py models (comma-separated; default all that ship ONNX)")
    args = ap.parse_args()
    if args.zoo is not None:
        main_zoo([n for n in args.zoo.split(",") if n])
        return
    report: dict[str, Any] = {"cpu": _cpu(), "int8_ran_on": "onnxruntime (CPU execution provider)", "models": {}}
    print(f"CPU: {report['cpu']}")
    with tempfile.TemporaryDirectory(prefix="edgekit-eq-") as tmp:
        for name in args.models.split(","):
            report["models"][name] = r = run(name, args.targets.split(","), Path(tmp))
            print(f"\n{name}: FP32 top-1 accuracy {r['fp32_top1_accuracy']:.3f} on {r['held_out']} held-out samples, {r['calibration']} calibration samples")
            print(f"  {'target':12} {'variant':24} {'sites':>5} {'top1 agree':>10} {'cos mean':>9} {'cos worst':>9} {'SQNR dB':>7} {'top1 acc':>8}")
            for tname, t in r["targets"].items():
                for variant, row in t["rows"].items():
                    sites = row.get("info", {}).get("sites", "")
                    print(f"  {tname:12} {variant:24} {sites!s:>5} {row['top1_agreement']:10.3f} {row['cosine_mean']:9.5f} {row['cosine_worst']:9.4f} {row['sqnr_db']:7.2f} {row.get('top1_accuracy', float('nan')):8.3f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
