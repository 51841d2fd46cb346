"""Distance to the machine's limit: achieved MAC/s per model against this CPU's measured peak.

    python bench/machine_limit.py            (after bench/int8_speed.py, whose latencies it reads)

Peak FP32: a large SGEMM through NumPy's BLAS (FMA). Peak INT8: a large u8 x s8 MatMulInteger in
ONNX Runtime (its MLAS integer GEMM: VNNI where the CPU has it, else AVX2 pmaddubsw). Both with all
cores. Achieved = the model's MACs (edgekit inspect) / median latency. Writes bench/results/machine_limit.json.
"""
from __future__ import annotations

import json
import time

import numpy as np
from _common import RESULTS, prepare, tmpdir, write_results


def _best_rate(fn, macs: float, seconds: float = 2.0) -> float:  # noqa: ANN001
    fn()
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        best = max(best, macs / (time.perf_counter() - t0))
    return best


def peak_fp32(n: int = 2048) -> float:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    return _best_rate(lambda: a @ b, float(n) ** 3)


def peak_int8(n: int = 2048) -> float:
    import onnx
    from onnx import TensorProto, helper

    from edgekit.backends.onnxruntime import session_from_bytes

    g = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "mmi",
                          [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]), helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    sess = session_from_bytes(model.SerializeToString())
    rng = np.random.default_rng(0)
    feed = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8), "b": rng.integers(-127, 127, (n, n), dtype=np.int8)}
    _ = onnx
    return _best_rate(lambda: sess.run(None, feed), float(n) ** 3)


def main() -> None:
    from edgekit.inspection import inspect_model

    fp32, int8 = peak_fp32(), peak_int8()
    print(f"peak FP32 (SGEMM): {fp32 / 1e9:.1f} GMAC/s   peak INT8 (MatMulInteger): {int8 / 1e9:.1f} GMAC/s")
    speed = json.loads((RESULTS / "int8_speed.json").read_text())
    work = tmpdir("edgekit-limit-")
    macs = {}
    for name in sorted({r["model"] for r in speed["rows"]}):
        macs[name] = inspect_model(prepare(name, work)["onnx"]).macs
    rows = []
    print(f"{'model':18} {'backend':12} {'variant':9} {'GMACs':>6} {'ms':>8} {'GMAC/s':>7} {'of peak':>8}")
    for r in speed["rows"]:
        if r["variant"] not in ("fp32", "edgekit"):
            continue
        achieved = macs[r["model"]] / (r["median_ms"] / 1e3)
        peak = fp32 if r["variant"] == "fp32" else int8
        rows.append({**r, "macs": macs[r["model"]], "achieved_mac_per_s": achieved, "peak_mac_per_s": peak, "fraction_of_peak": achieved / peak})
        print(f"{r['model']:18} {r['backend']:12} {r['variant']:9} {macs[r['model']] / 1e9:6.2f} {r['median_ms']:8.2f} {achieved / 1e9:7.1f} {100 * achieved / peak:7.1f}%")
    print(f"wrote {write_results('machine_limit', {'peak_fp32_mac_per_s': fp32, 'peak_int8_mac_per_s': int8, 'rows': rows})}")


if __name__ == "__main__":
    main()
