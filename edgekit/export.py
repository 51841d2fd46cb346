"""`export`: a PyTorch model (or an ONNX file) to a checked ONNX file.

Sources: `pkg.module:callable` (returns an nn.Module, or a module and example inputs),
a TorchScript `.pt` (code: only with `trust_torchscript`), a `torch.export` `.pt2`, or
an `.onnx` to validate and re-save. After export: the ONNX checker, shape inference,
and a parity check of ONNX Runtime against the source on the same inputs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import inspect as pyinspect
import logging
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgekit import deps
from edgekit.data.feeds import generated_feed
from edgekit.data.metrics import agreement
from edgekit.errors import GateFailed, UsageError
from edgekit.onnxmodel import check_model, input_specs, load_onnx, opset_of, output_specs, save_onnx
from edgekit.progress import status

_DTYPES = ("float32", "float16", "int64", "int32", "bool", "uint8")


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """`--input name:1x3x224x224[:dtype]`."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @classmethod
    def parse(cls, text: str) -> InputSpec:
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[0]:
            raise UsageError(f"bad --input {text!r}", hint="write it as NAME:1x3x224x224 or NAME:1x128:int64")
        from edgekit.data.feeds import parse_shape

        dtype = parts[2] if len(parts) == 3 else "float32"
        if dtype not in _DTYPES:
            raise UsageError(f"bad dtype {dtype!r} in --input {text!r}", hint=f"use one of {', '.join(_DTYPES)}")
        return cls(parts[0], parse_shape(parts[1]), dtype)


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    inputs: tuple[InputSpec, ...] = ()
    dynamic_batch: bool = False
    dynamic_axes: tuple[str, ...] = ()  # "name:axis" beyond the batch
    opset: int | None = None
    exporter: str = "auto"  # auto | dynamo | torchscript
    atol: float = 1e-4
    trust_torchscript: bool = False
    parity_batches: tuple[int, ...] = (1, 4)


@dataclasses.dataclass
class ExportReport:
    output: str
    source: str
    source_kind: str
    exporter: str
    opset: int
    inputs: list[dict[str, object]]
    outputs: list[dict[str, object]]
    parity: list[dict[str, object]]
    notes: list[str]
    passed: bool

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def _as_example_tuple(example: Any, torch: Any) -> tuple[Any, ...] | dict[str, Any]:
    if isinstance(example, torch.Tensor):
        return (example,)
    if isinstance(example, dict):
        return dict(example)
    if isinstance(example, (list, tuple)):
        return tuple(example)
    raise UsageError(f"example inputs must be a tensor, a tuple of tensors or a dict, not {type(example).__name__}")


def _module_from_source(source: str, options: ExportOptions) -> tuple[Any, Any, str]:
    """(module, example inputs or None, kind)."""
    torch = deps.torch()
    path = Path(source)
    if source.endswith(".pt2"):
        if not path.exists():
            raise UsageError(f"{path}: no such file", hint="check the path")
        try:
            ep = torch.export.load(str(path))
        except Exception as exc:
            raise UsageError(f"{path} is not a torch.export archive ({type(exc).__name__}: {exc})", hint="save it with torch.export.save") from exc
        example = ep.example_inputs[0] if getattr(ep, "example_inputs", None) else None
        return ep.module(), example, "torch.export"
    if source.endswith((".pt", ".pth", ".jit", ".ts")):
        if not path.exists():
            raise UsageError(f"{path}: no such file", hint="check the path")
        if not zipfile.is_zipfile(path):
            raise UsageError(f"{path} is not a TorchScript archive", hint="save the model with torch.jit.save, or export from pkg.module:callable")
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        if not any("/code/" in n or n.endswith("constants.pkl") for n in names):
            raise UsageError(
                f"{path} is a pickled checkpoint, not a TorchScript model; edgekit never unpickles objects from files",
                hint="export from a pkg.module:callable that builds the module and loads the state_dict with weights_only=True",
            )
        if not options.trust_torchscript:
            raise UsageError(
                f"{path} is TorchScript, which runs code from the file",
                hint="pass --trust-torchscript if you trust where it came from",
            )
        try:
            return torch.jit.load(str(path), map_location="cpu").eval(), None, "torchscript"
        except Exception as exc:
            raise UsageError(f"{path} cannot be loaded as TorchScript ({exc})") from exc
    obj = deps.import_callable(source)
    result = obj() if callable(obj) and not isinstance(obj, torch.nn.Module) else obj
    example = None
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.nn.Module):
        result, example = result
    if not isinstance(result, torch.nn.Module):
        raise UsageError(f"{source} returned a {type(result).__name__}, not an nn.Module", hint="return a module, or (module, example_inputs)")
    return result.eval(), example, "callable"


def _forward_names(module: Any, count: int) -> list[str]:
    try:
        params = [p for p in pyinspect.signature(module.forward).parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        names = [p.name for p in params][:count]
        if len(names) == count:
            return names
    except (TypeError, ValueError):
        pass
    return [f"input_{i}" for i in range(count)]


def _examples(module: Any, example: Any, options: ExportOptions) -> tuple[list[str], list[Any]]:
    torch = deps.torch()
    if options.inputs:
        tensors = []
        gen = torch.Generator().manual_seed(0)
        for spec in options.inputs:
            dtype = getattr(torch, spec.dtype)
            if dtype.is_floating_point:
                tensors.append(torch.randn(spec.shape, generator=gen).to(dtype))
            else:
                tensors.append(torch.randint(0, 100, spec.shape, generator=gen).to(dtype))
        return [s.name for s in options.inputs], tensors
    if example is None:
        raise UsageError("no example inputs: the source gives none", hint="pass --input NAME:1x3x224x224 for each input")
    ex = _as_example_tuple(example, torch)
    if isinstance(ex, dict):
        return list(ex), list(ex.values())
    return _forward_names(module, len(ex)), list(ex)


def _repeat_batch(t: Any, n: int, torch: Any) -> Any:
    reps = [n] + [1] * (t.dim() - 1)
    return t[:1].repeat(*reps)


@contextlib.contextmanager
def _quiet() -> Any:
    """The exporters print progress and warnings; keep them off the user's terminal unless -v."""
    if logging.getLogger("edgekit").isEnabledFor(logging.DEBUG):
        yield
        return
    out, err = io.StringIO(), io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _torch_outputs(module: Any, tensors: Sequence[Any]) -> list[np.ndarray]:
    torch = deps.torch()
    with torch.no_grad():
        out = module(*tensors)
    flat: list[Any] = []

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            flat.append(o)
        elif isinstance(o, (list, tuple)):
            for x in o:
                walk(x)
        elif isinstance(o, dict):
            for x in o.values():
                walk(x)
        elif hasattr(o, "to_tuple"):
            walk(o.to_tuple())

    walk(out)
    return [t.detach().cpu().numpy() for t in flat]


def _export_torch(module: Any, names: list[str], tensors: list[Any], out: Path, options: ExportOptions, notes: list[str]) -> str:
    torch = deps.torch()
    n_out = len(_torch_outputs(module, tensors))
    out_names = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    dyn: dict[str, dict[int, str]] = {}
    if options.dynamic_batch:
        for n in names + out_names:
            dyn.setdefault(n, {})[0] = "batch"
    for item in options.dynamic_axes:
        name, _, axis = item.partition(":")
        if name not in names or not axis.isdigit():
            raise UsageError(f"bad --dynamic-axis {item!r}", hint=f"write it as INPUT:AXIS with INPUT one of {names}")
        dyn.setdefault(name, {})[int(axis)] = f"{name}_dim{axis}"
    # A batch-1 example makes the dynamo exporter specialise the batch to 1 (0/1
    # specialisation) even when it is declared dynamic: trace with a batch of 2.
    args = tuple(_repeat_batch(t, 2, torch) for t in tensors) if options.dynamic_batch else tuple(tensors)
    order = {"auto": ["dynamo", "torchscript"], "dynamo": ["dynamo"], "torchscript": ["torchscript"]}[options.exporter]
    if order[0] == "dynamo" and not deps.available("onnxscript"):
        notes.append("onnxscript is not installed: used the TorchScript exporter")
        order = ["torchscript"]
    last: Exception | None = None
    for exporter in order:
        try:
            with _quiet():
                kwargs: dict[str, Any] = dict(input_names=names, output_names=out_names, dynamic_axes=dyn or None, dynamo=exporter == "dynamo")
                if options.opset:
                    kwargs["opset_version"] = options.opset
                if exporter == "dynamo":
                    kwargs["verbose"] = False
                    kwargs["external_data"] = True
                torch.onnx.export(module, args, str(out), **kwargs)
            return exporter
        except Exception as exc:  # the exporters raise many types; we report and fall back
            last = exc
            if exporter == "dynamo" and len(order) > 1:
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                notes.append(f"the dynamo exporter failed ({type(exc).__name__}: {first}); fell back to the TorchScript exporter")
    raise UsageError(f"PyTorch could not export the model: {type(last).__name__}: {str(last).strip().splitlines()[0][:300] if str(last).strip() else ''}",
                     hint="try --exporter torchscript or --opset 17, or simplify the model's forward") from last


def _parity(onnx_path: Path, module: Any, names: list[str], tensors: list[Any], options: ExportOptions, out_names: list[str]) -> list[dict[str, object]]:
    from edgekit.backends.onnxruntime import session_from_path

    torch = deps.torch()
    sess = session_from_path(onnx_path)
    batches = options.parity_batches if options.dynamic_batch else (None,)
    results = []
    for b in batches:
        ts = [_repeat_batch(t, b, torch) if b is not None else t for t in tensors]
        if b is not None and b > 1:
            # distinct rows, so a batch mix-up shows: scale each row a little
            ts = [t * torch.linspace(0.9, 1.1, b).reshape([b] + [1] * (t.dim() - 1)).to(t.dtype) if t.is_floating_point() else t for t in ts]
        ref = _torch_outputs(module, ts)
        feed = {n: t.detach().cpu().numpy() for n, t in zip(names, ts)}
        got = sess.run(None, feed)
        for acc in agreement(out_names, [(ref, got)]):
            d = acc.to_dict()
            d["batch"] = b if b is not None else int(tensors[0].shape[0]) if tensors and tensors[0].dim() else 1
            results.append(d)
    return results


def export_model(source: str, output: str | Path, *, options: ExportOptions = ExportOptions()) -> ExportReport:
    """Export `source` to ONNX at `output`, check it, and compare it with the source."""
    output = Path(output)
    if options.exporter not in ("auto", "dynamo", "torchscript"):
        raise UsageError(f"unknown exporter {options.exporter!r}", hint="use auto, dynamo or torchscript")
    notes: list[str] = []
    if source.endswith(".onnx"):
        with status(f"validating {source}"):
            model = load_onnx(source)
            model = onnx.shape_inference.infer_shapes(model)
            _run_once(model, notes)
            save_onnx(model, output)
        return _report(output, source, "onnx", "none", model, [], notes)
    with status(f"loading {source}"):
        module, example, kind = _module_from_source(source, options)
        names, tensors = _examples(module, example, options)
    with tempfile.TemporaryDirectory(prefix="edgekit-export-") as tmp:
        raw = Path(tmp) / "model.onnx"
        with status("exporting to ONNX"):
            exporter = _export_torch(module, names, tensors, raw, options, notes)
        model = load_onnx(raw)
        try:
            model = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception as exc:  # shape inference is best-effort on exotic graphs
            notes.append(f"shape inference failed: {exc}")
        check_model(model, label="the exported model")
        inferred = Path(tmp) / "inferred.onnx"
        save_onnx(model, inferred)
        with status("checking parity with PyTorch"):
            parity = _parity(inferred, module, names, tensors, options, [o.name for o in model.graph.output])
        save_onnx(model, output)
    report = _report(output, source, kind, exporter, model, parity, notes)
    bad = [p for p in parity if p["max_abs"] > options.atol]
    if bad:
        worst = max(bad, key=lambda p: p["max_abs"])
        report.passed = False
        raise GateFailed(
            f"ONNX output {worst['output']!r} differs from PyTorch by {worst['max_abs']:.3g} (max abs, batch {worst['batch']}) > {options.atol:g}; model written to {output}",
            hint="try --exporter torchscript, or raise --atol if the difference is expected",
            result=report,
        )
    return report


def _run_once(model: onnx.ModelProto, notes: list[str]) -> None:
    from edgekit.backends.onnxruntime import session_from_bytes

    try:
        sess = session_from_bytes(model.SerializeToString())
    except Exception as exc:
        raise UsageError(f"ONNX Runtime cannot load the model: {str(exc).strip().splitlines()[0][:300]}", hint="re-export with a supported opset") from exc
    specs = input_specs(model)
    if all(not s.is_dynamic or all(isinstance(d, int) for d in s.shape[1:]) for s in specs):
        sess.run(None, generated_feed(specs))
    else:
        notes.append("inputs have dynamic axes beyond the batch: not run")


def _report(output: Path, source: str, kind: str, exporter: str, model: onnx.ModelProto, parity: list[dict[str, object]], notes: list[str]) -> ExportReport:
    return ExportReport(
        output=str(output), source=source, source_kind=kind, exporter=exporter, opset=opset_of(model),
        inputs=[s.to_dict() for s in input_specs(model)], outputs=[s.to_dict() for s in output_specs(model)],
        parity=parity, notes=notes, passed=True,
    )


