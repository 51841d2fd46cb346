"""Runs inside NVIDIA ModelOpt's own virtual environment (never the project's: `nvidia-modelopt[onnx]`
replaces the CPU onnxruntime with onnxruntime-gpu and adds cupy). Driven by bench/modelopt_compare.py.

    VENV/bin/python bench/modelopt_worker.py int8 MODEL.onnx CALIB.npz OUT.onnx fp32|fp16
    VENV/bin/python bench/modelopt_worker.py fp16 MODEL.onnx - OUT.onnx      # edgekit's fp16_onnx (AutoCast)
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    mode, src, calib, out = sys.argv[1:5]
    start = time.perf_counter()
    if mode == "int8":
        from modelopt.onnx.quantization import quantize

        data = dict(np.load(calib))
        # ModelOpt's defaults (entropy calibration, its TensorRT-guided placement) with calibration on the CPU;
        # the float remainder in fp32 like edgekit's, or ModelOpt's default fp16
        quantize(src, quantize_mode="int8", calibration_data=data, calibration_eps=["cpu"], output_path=out,
                 high_precision_dtype=sys.argv[5], log_level="WARNING")
    elif mode == "fp16":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from edgekit.backends.tensorrt_build import fp16_onnx

        fp16_onnx(Path(src), Path(out))
    else:
        raise SystemExit(f"unknown mode {mode}")
    import modelopt

    print(json.dumps({"seconds": time.perf_counter() - start, "modelopt": modelopt.__version__}))


if __name__ == "__main__":
    main()
