"""Reading, checking and writing ONNX files that other tools wrote.

`load_onnx` refuses what would hurt later: a missing, empty or truncated file, a Git
LFS pointer, external data that escapes the model's folder, absurd dimensions.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from edgekit.errors import UsageError
from edgekit.files import atomic_path

_TWO_GB = 2**31 - 1
_MAX_DIM = 2**31 - 1
LFS_MAGIC = b"version https://git-lfs"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A model input or output: a name, a shape (ints, or strings for dynamic axes) and a numpy dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: np.dtype

    @property
    def is_dynamic(self) -> bool:
        return any(not isinstance(d, int) or d < 0 for d in self.shape)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "shape": list(self.shape), "dtype": str(self.dtype)}


def _dims(type_proto: onnx.TypeProto) -> tuple[int | str, ...]:
    if not type_proto.tensor_type.HasField("shape"):
        return ()
    out: list[int | str] = []
    for i, d in enumerate(type_proto.tensor_type.shape.dim):
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        else:
            out.append(d.dim_param or f"dim{i}")
    return tuple(out)


def _spec(vi: onnx.ValueInfoProto) -> TensorSpec:
    elem = vi.type.tensor_type.elem_type
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem))
    except (KeyError, TypeError, ValueError):
        dtype = np.dtype(np.float32)
    return TensorSpec(vi.name, _dims(vi.type), dtype)


def input_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    """The graph inputs a caller must feed (initializers listed as inputs are left out)."""
    inits = {i.name for i in model.graph.initializer}
    return [_spec(i) for i in model.graph.input if i.name not in inits]


def output_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    return [_spec(o) for o in model.graph.output]


def _check_file(path: Path) -> None:
    if not path.exists():
        raise UsageError(f"{path}: no such file", hint="check the path")
    if path.is_dir():
        raise UsageError(f"{path} is a folder, not an ONNX file", hint="give the path of a .onnx file")
    size = path.stat().st_size
    if size == 0:
        raise UsageError(f"{path} is empty (0 bytes)", hint="export or copy the model again")
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(LFS_MAGIC):
        raise UsageError(
            f"{path} is a Git LFS pointer, not the model",
            hint="run `git lfs pull` to fetch the real file",
        )


def _check_external_data(model: onnx.ModelProto, base: Path) -> None:
    base_real = base.resolve()
    for tensor in _all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        loc = entries.get("location", "")
        p = Path(loc)
        if not loc or p.is_absolute() or ".." in p.parts:
            raise UsageError(
                f"external data of tensor {tensor.name!r} points outside the model's folder ({loc!r})",
                hint="keep external data files beside the .onnx and refer to them by a plain file name",
            )
        target = base / p
        if target.is_symlink() or not target.resolve().is_relative_to(base_real):
            raise UsageError(
                f"external data of tensor {tensor.name!r} is a link that leaves the model's folder ({loc!r})",
                hint="replace the link with the real file",
            )
        if not target.exists():
            raise UsageError(f"external data file {loc!r} of tensor {tensor.name!r} is missing", hint="copy it beside the model")


def _all_tensors(model: onnx.ModelProto):  # noqa: ANN202 - generator of TensorProto
    def walk(graph: onnx.GraphProto):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                if attr.HasField("g"):
                    yield from walk(attr.g)
                for g in attr.graphs:
                    yield from walk(g)

    yield from walk(model.graph)


def _check_dims(model: onnx.ModelProto, path: Path) -> None:
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        for i, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value == -1:
                # Paddle2ONNX and older TensorFlow converters write -1 for "any size" (ONNX Runtime reads
                # it so); the ONNX way to say it is a named dimension, which every tool here understands
                d.dim_param = f"{vi.name}_dim{i}"
                continue
            if d.HasField("dim_value") and (d.dim_value < 0 or d.dim_value > _MAX_DIM):
                raise UsageError(
                    f"{path}: {vi.name!r} has an impossible dimension {d.dim_value}",
                    hint="fix the model's declared shape",
                )
    for t in model.graph.initializer:
        n = 1
        for d in t.dims:
            n *= max(int(d), 0)
        if any(d < 0 for d in t.dims) or n > _TWO_GB * 8:
            raise UsageError(f"{path}: initializer {t.name!r} has an impossible shape {list(t.dims)}")


def load_onnx(path: str | os.PathLike[str], *, check: bool = True) -> onnx.ModelProto:
    """Load and validate an ONNX model, external data included."""
    path = Path(path)
    _check_file(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, ValueError...
        raise UsageError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'truncated or corrupt'})",
            hint="the file may be truncated or not ONNX; export it again",
        ) from exc
    if not model.graph.node and not model.graph.output:
        raise UsageError(f"{path} is not an ONNX model (no graph)", hint="give a .onnx file exported by a framework")
    if not model.graph.output:  # ONNX Runtime refuses to run it ("at least one output should be requested")
        raise UsageError(f"{path} has no graph outputs: nothing to compute", hint="export the model again with its outputs")
    _check_dims(model, path)
    _check_external_data(model, path.parent)
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:
        raise UsageError(f"{path}: cannot read its external data ({exc})", hint="copy the data files beside the model") from exc
    if check:
        check_model(model, label=str(path))
    return model


def check_model(model: onnx.ModelProto, *, label: str = "model") -> None:
    try:
        if model.ByteSize() > _TWO_GB:
            return  # the checker cannot take protos over 2 GB in memory; ORT will validate on load
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid graph"
        raise UsageError(f"{label} fails the ONNX checker: {first}", hint="fix or re-export the model") from exc
    except ValueError as exc:  # e.g. protobuf too large
        raise UsageError(f"{label} cannot be checked: {exc}") from exc


def _tensor_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def save_onnx(model: onnx.ModelProto, dest: str | os.PathLike[str]) -> Path:
    """Write atomically; models over 2 GB get an external data file `<name>.data` beside them."""
    dest = Path(dest)
    external = _tensor_bytes(model) > _TWO_GB // 2
    with atomic_path(dest) as tmp:
        if external:
            data_name = dest.name + ".data"
            with atomic_path(dest.parent / data_name) as tmp_data:
                onnx.save_model(
                    model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=tmp_data.name, size_threshold=1024,
                )
                # the .onnx names the temporary data file; point it at the final name
                saved = onnx.load(str(tmp), load_external_data=False)
                for t in _all_tensors(saved):
                    for e in t.external_data:
                        if e.key == "location":
                            e.value = data_name
                onnx.save_model(saved, str(tmp))
        else:
            onnx.save_model(model, str(tmp))
    return dest


def opset_of(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def is_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type == "QuantizeLinear" for n in model.graph.node)
