"""Feeds: one model input set, `dict[str, np.ndarray]` keyed by input name.

Generated feeds stand in only where the user gave no data (parity checks of an ONNX
file, latency benchmarks); accuracy is never measured on them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from edgekit.errors import UsageError
from edgekit.onnxmodel import TensorSpec

Feed = dict[str, np.ndarray]


def concrete_shape(spec: TensorSpec, *, batch: int = 1, overrides: Mapping[str, Sequence[int]] | None = None) -> tuple[int, ...]:
    """The shape to feed: an override if given, else dynamic axis 0 -> batch, others need an override."""
    if overrides and spec.name in overrides:
        return tuple(int(d) for d in overrides[spec.name])
    shape: list[int] = []
    for i, d in enumerate(spec.shape):
        if isinstance(d, int) and d > 0:
            shape.append(d)
        elif i == 0:
            shape.append(batch)
        else:
            raise UsageError(
                f"input {spec.name!r} has a dynamic axis {i} ({d!r}) and no size was given",
                hint=f"give its shape, e.g. --shape {spec.name}:" + "x".join(
                    str(x if isinstance(x, int) and x > 0 else (batch if j == 0 else 128)) for j, x in enumerate(spec.shape)
                ),
            )
    return tuple(shape)


def generated_feed(specs: Sequence[TensorSpec], *, batch: int = 1, shapes: Mapping[str, Sequence[int]] | None = None, seed: int = 0) -> Feed:
    """A feed of the right names, shapes and dtypes; integer inputs get small ids, masks get ones."""
    rng = np.random.default_rng(seed)
    feed: Feed = {}
    for spec in specs:
        shape = concrete_shape(spec, batch=batch, overrides=shapes)
        if spec.dtype == np.bool_:
            feed[spec.name] = np.ones(shape, dtype=np.bool_)
        elif np.issubdtype(spec.dtype, np.integer):
            if "mask" in spec.name.lower():
                feed[spec.name] = np.ones(shape, dtype=spec.dtype)
            elif "type" in spec.name.lower() or "segment" in spec.name.lower():
                feed[spec.name] = np.zeros(shape, dtype=spec.dtype)
            else:
                feed[spec.name] = rng.integers(1, 1000, size=shape).astype(spec.dtype)
        else:
            feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feed


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"bad shape {text!r}", hint="write it like 1x3x224x224") from None
    if not dims or any(d <= 0 for d in dims):
        raise UsageError(f"bad shape {text!r}: every dimension must be a positive integer", hint="write it like 1x3x224x224")
    return dims


def parse_shape_option(text: str) -> tuple[str, tuple[int, ...]]:
    """`name:1x3x224x224` -> ("name", (1, 3, 224, 224))."""
    name, sep, dims = text.rpartition(":")
    if not sep or not name:
        raise UsageError(f"bad --shape {text!r}", hint="write it as NAME:1x3x224x224")
    return name, parse_shape(dims)


def check_feed(feed: Mapping[str, np.ndarray], specs: Sequence[TensorSpec], *, label: str) -> None:
    """Names, ranks, static dims, dtypes and finiteness: an error names the sample and the input."""
    names = {s.name for s in specs}
    missing = names - set(feed)
    extra = set(feed) - names
    if missing or extra:
        raise UsageError(
            f"{label}: inputs do not match the model (missing {sorted(missing)}, unexpected {sorted(extra)})",
            hint=f"the model's inputs are {sorted(names)}",
        )
    for spec in specs:
        arr = feed[spec.name]
        if not isinstance(arr, np.ndarray):
            raise UsageError(f"{label}: input {spec.name!r} is a {type(arr).__name__}, not an array")
        if arr.dtype != spec.dtype:
            raise UsageError(
                f"{label}: input {spec.name!r} has dtype {arr.dtype}, the model takes {spec.dtype}",
                hint="convert the data when you save it (edgekit never casts silently)",
            )
        if spec.shape and arr.ndim != len(spec.shape):
            raise UsageError(f"{label}: input {spec.name!r} has shape {arr.shape}, the model takes rank {len(spec.shape)} {list(spec.shape)}")
        for got, want in zip(arr.shape, spec.shape):
            if isinstance(want, int) and want > 0 and got != want:
                raise UsageError(f"{label}: input {spec.name!r} has shape {arr.shape}, the model takes {list(spec.shape)}")
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            bad = "NaN" if np.isnan(arr).any() else "Inf"
            raise UsageError(f"{label}: input {spec.name!r} contains {bad}", hint="remove or fix that sample")
