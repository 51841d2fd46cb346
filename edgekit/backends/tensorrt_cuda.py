"""Device memory, a stream and device facts for TensorRT engines, through cuda-python's `cuda.bindings.runtime`.

TensorRT's own Python samples own memory this way since 10.14 ("Replace all pycuda usages with
cuda-python APIs", CHANGELOG.md; samples/python/common_runtime.py release/11.1 line 25:
`from cuda.bindings import driver as cuda, runtime as cudart`). `cuda.bindings` exists from
cuda-python 12.6.1 on; the old `from cuda import cudart` is gone in cuda-bindings 13.
Imported only when an engine runs; the `tensorrt` extra installs it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from edgekit import deps
from edgekit.backends.tensorrt_compat import cuda_major_of_tensorrt
from edgekit.errors import BackendUnavailable


def _runtime() -> Any:
    return deps.cuda_runtime()


def _check(result: Any, what: str) -> Any:
    """cuda.bindings calls return (error, values...): raise on an error, return the values."""
    err, rest = result[0], result[1:]
    if int(err) != 0:
        cudart = _runtime()
        name = cudart.cudaGetErrorName(err)[1]
        name = name.decode() if isinstance(name, bytes) else str(name)
        raise BackendUnavailable(f"CUDA {what} failed: {name}", hint="check the NVIDIA driver (nvidia-smi) and that cuda-python matches its CUDA major")
    return rest[0] if len(rest) == 1 else (rest or None)


def check_cuda_matches_tensorrt() -> None:
    """cuda-python's runtime must have the CUDA major TensorRT was built for (a CUDA 13 cuda-bindings
    on a JetPack 6 / CUDA 12 TensorRT cannot share its device pointers and streams)."""
    trt_major = cuda_major_of_tensorrt()
    if trt_major is None:
        return
    version = _check(_runtime().cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")
    if version // 1000 != trt_major:
        raise BackendUnavailable(
            f"cuda-python has CUDA {version // 1000} but TensorRT was built for CUDA {trt_major}",
            hint=f"pip install 'cuda-python=={trt_major}.*'",
        )


def device_info() -> dict[str, str]:
    """GPU name, compute capability, CUDA runtime and driver versions ({} when unknown: no cuda-python or no GPU)."""
    info: dict[str, str] = {}
    try:
        cudart = _runtime()
        props = _check(cudart.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
        name = props.name
        info["gpu"] = (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).rstrip("\x00")
        info["compute_capability"] = f"{props.major}.{props.minor}"
        rt = _check(cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")
        info["cuda"] = f"{rt // 1000}.{(rt % 1000) // 10}"
        drv = _check(cudart.cudaDriverGetVersion(), "cudaDriverGetVersion")
        info["cuda_driver"] = f"{drv // 1000}.{(drv % 1000) // 10}"
    except Exception:  # noqa: BLE001 - recorded as unknown, never fatal for a report
        pass
    major = cuda_major_of_tensorrt()
    if major is not None:
        info["tensorrt_cuda_major"] = str(major)
    return info


class DeviceBuffers:
    """Device allocations by tensor name that grow on demand, one stream, and host <-> device copies."""

    def __init__(self) -> None:
        self._cudart = _runtime()
        self.stream = _check(self._cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, bytes)

    def pointer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < max(nbytes, 1):
            if ptr:
                _check(self._cudart.cudaFree(ptr), "cudaFree")
            ptr = int(_check(self._cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))
            self._buffers[name] = (ptr, max(nbytes, 1))
        return ptr

    def upload(self, name: str, array: np.ndarray) -> int:
        array = np.ascontiguousarray(array)
        ptr = self.pointer(name, array.nbytes)
        if array.nbytes:
            kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            _check(self._cudart.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, kind, self.stream), "cudaMemcpyAsync")
        return ptr

    def download(self, name: str, out: np.ndarray, *, offset: int = 0) -> None:
        """Copy `out.nbytes` from the buffer `name`, starting `offset` bytes in, into `out`."""
        if out.nbytes:
            kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
            _check(self._cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[name][0] + offset, out.nbytes, kind, self.stream), "cudaMemcpyAsync")

    def synchronize(self) -> None:
        _check(self._cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    @property
    def stream_handle(self) -> int:
        """The stream as the integer execute_async_v3 takes (pyCore.cpp release/10.0 line 111: `size_t streamHandle`)."""
        try:  # cuda-bindings >= 12.9.1 deprecates int(obj) for this
            from cuda.bindings.utils import get_cuda_native_handle  # type: ignore[import-not-found]

            return int(get_cuda_native_handle(self.stream))
        except ImportError:
            return int(self.stream)

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self._cudart.cudaFree(ptr)
        self._buffers.clear()
        if self.stream is not None:
            self._cudart.cudaStreamDestroy(self.stream)
            self.stream = None
