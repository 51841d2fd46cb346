"""The Python API in a service: two threads quantizing two models at once, beside other work that uses
relative paths. Nothing edgekit does may change the process's working folder (ONNX Runtime's
pre-processing runs in a child process with a private one)."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest

import zoo
from edgekit.quantize import QuantizeOptions, quantize_model


def test_two_threads_quantize_at_once_and_the_working_folder_never_moves(mnist_onnx: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    name = onnx.load(str(mnist_onnx)).graph.input[0].name
    digits = zoo.mnist_calibration(64)
    models = []
    for i in range(2):  # two models: the trained CNN, and the same graph with its first conv's weights scaled
        m = onnx.load(str(mnist_onnx))
        if i:
            w = next(t for t in m.graph.initializer if len(t.dims) == 4)
            w.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(w) * 0.5, w.name))
        onnx.save(m, f"m{i}.onnx")
        np.savez(f"calib{i}.npz", **{name: digits[i::2]})
        models.append((f"m{i}.onnx", f"q{i}.onnx", f"calib{i}.npz"))
    # what each gives when quantized alone, one after the other
    alone = []
    for src, out, calib in models:
        quantize_model(src, f"alone-{out}", calib=calib, options=QuantizeOptions(target="onnxruntime"))
        alone.append(onnx.load(f"alone-{out}"))
    start = os.getcwd()
    moved: list[str] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def watch() -> None:  # other work of the service, reading the working folder all the time
        while not done.is_set():
            if os.getcwd() != start:
                moved.append(os.getcwd())
            done.wait(0.001)

    def work(src: str, out: str, calib: str) -> None:
        try:
            quantize_model(src, out, calib=calib, options=QuantizeOptions(target="onnxruntime"))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=work, args=m) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    watcher.join()
    assert not errors, errors
    assert not moved and os.getcwd() == start
    for (_, out, _), ref in zip(models, alone):
        got = onnx.load(out)  # written where the relative path said, and the same model as quantized alone
        assert [n.op_type for n in got.graph.node] == [n.op_type for n in ref.graph.node]
        assert {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in got.graph.initializer} == \
               {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in ref.graph.initializer}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f for m in models for f in m] + [f"alone-q{i}.onnx" for i in range(2)] + [f"{p}q{i}.onnx.json" for i in range(2) for p in ("", "alone-")])
