"""Calibration data: sources of feeds, checked against the model, streamed one at a time.

Sources: a `.npz` of feeds (arrays keyed by input name, or `name__N` sample stacks), a
folder of `.npy`/`.npz` files, a folder of images with an `ImageRecipe`, a
calibration manifest (`NAME.toml`, or a built-in one by name), or a Python iterable (`pkg.module:callable`). NaN/Inf,
wrong shapes or dtypes, unreadable files and empty sets are errors naming the sample.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.config import packaged_manifest, packaged_manifest_names, read_toml
from edgekit.errors import UsageError
from edgekit.data.feeds import Feed, check_feed
from edgekit.onnxmodel import TensorSpec
from edgekit.data.preprocess import ImageRecipe, image_files


@dataclasses.dataclass
class CalibrationSet:
    """A re-iterable, checked stream of feeds with a description for manifests."""

    description: str
    count: int
    _factory: Callable[[], Iterator[tuple[str, Feed]]]
    recipe: ImageRecipe | None = None
    fingerprint: str = ""  # content hash of the files or arrays, for the calibration cache
    labels: list[int] | None = None  # class labels where the source gives them (file names `*_LABEL.ext`)

    def feeds(self, specs: Sequence[TensorSpec]) -> Iterator[Feed]:
        """Each sample, checked against the model's inputs (names, shapes, dtypes, finite values)."""
        n = 0
        for label, feed in self._factory():
            check_feed(feed, specs, label=label)
            n += 1
            yield feed
        if n == 0:
            raise UsageError(f"calibration set {self.description} is empty", hint="give at least one sample")

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.description, "samples": self.count, "fingerprint": self.fingerprint,
                "preprocessing": self.recipe.to_dict() if self.recipe else None}


def _hash_files(files: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UsageError(f"cannot read {path}: {exc}", hint="save feeds with numpy.savez (no pickled objects)") from exc


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise UsageError(f"cannot read {path}: {exc}", hint="save arrays with numpy.save (no pickled objects)") from exc


def _split_npz(arrays: dict[str, np.ndarray], specs: Sequence[TensorSpec], label: str) -> list[tuple[str, Feed]]:
    """One .npz holds one feed (an array per input name); when its arrays hold more rows than the model's
    batch, they are split along axis 0 into feeds of the model's batch (1 for a dynamic batch)."""
    names = [s.name for s in specs]
    if set(arrays) != set(names):
        raise UsageError(f"{label}: arrays {sorted(arrays)} do not match the model's inputs {names}",
                         hint="save one array per input, keyed by the input's name")
    n = {a.shape[0] if a.ndim else 1 for a in arrays.values()}
    batch_fixed = all(isinstance(s.shape[0], int) and s.shape[0] > 0 for s in specs if s.shape)
    if len(n) == 1 and batch_fixed:
        total = n.pop()
        per = {s.name: int(s.shape[0]) for s in specs}
        step = next(iter(per.values()))
        if total > step and total % step == 0 and all(v == step for v in per.values()):
            return [(f"{label}[{i}]", {k: v[i:i + step] for k, v in arrays.items()}) for i in range(0, total, step)]
    if len(n) == 1 and not batch_fixed:
        total = n.pop()
        return [(f"{label}[{i}]", {k: v[i:i + 1] for k, v in arrays.items()}) for i in range(total)]
    return [(label, arrays)]


def from_arrays(path: Path, specs: Sequence[TensorSpec]) -> CalibrationSet:
    """A `.npz` file, or a folder of `.npz` (one feed each) / `.npy` (single-input models) files."""
    if path.is_file():
        arrays = _read_npz(path)
        samples = _split_npz(arrays, specs, path.name)
        return CalibrationSet(str(path), len(samples), lambda: iter(samples), fingerprint=_hash_files([path]))
    files = sorted(p for p in path.iterdir() if p.suffix in (".npz", ".npy"))
    if not files:
        raise UsageError(f"calibration folder {path} has no .npy, .npz or image files", hint="add samples, or point --calib at the right folder")
    if any(f.suffix == ".npy" for f in files) and len(specs) != 1:
        raise UsageError(f"{path}: .npy files feed single-input models only; this model has {len(specs)} inputs",
                         hint="save each sample as .npz with one array per input name")

    def gen() -> Iterator[tuple[str, Feed]]:
        for f in files:
            if f.suffix == ".npy":
                yield f.name, {specs[0].name: _read_npy(f)}
            else:
                yield from _split_npz(_read_npz(f), specs, f.name)

    return CalibrationSet(str(path), len(files), gen, fingerprint=_hash_files(files))


def _label_of(path: Path) -> int | None:
    tail = path.stem.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def from_images(folder: Path, recipe: ImageRecipe, specs: Sequence[TensorSpec], *, files: Sequence[Path] | None = None) -> CalibrationSet:
    if len(specs) != 1:
        raise UsageError(f"image calibration feeds single-input models; this model has {len(specs)} inputs",
                         hint="save feeds as .npz files instead")
    files = list(files) if files is not None else image_files(folder)
    if not files:
        raise UsageError(f"no images in {folder}", hint="add .jpg/.png files, or point --calib at the right folder")
    name = specs[0].name
    if recipe.crop is None and recipe.resize is None:
        from edgekit import deps

        sizes = set()
        pil = deps.pil_image()
        for f in files:
            try:
                with pil.open(f) as im:
                    sizes.add(im.size)
            except OSError as exc:
                raise UsageError(f"cannot read image {f}: {exc}", hint="remove or replace that file") from exc
        if len(sizes) > 1:
            raise UsageError(f"images in {folder} have {len(sizes)} different sizes and the recipe neither resizes nor crops",
                             hint="add --resize and --crop (or resize/crop in the manifest)")

    def gen() -> Iterator[tuple[str, Feed]]:
        for f in files:
            yield f.name, {name: recipe.apply(f)}

    labels = [_label_of(f) for f in files]
    return CalibrationSet(str(folder), len(files), gen, recipe=recipe, fingerprint=_hash_files(files) + str(recipe.to_dict()),
                          labels=labels if all(lb is not None for lb in labels) else None)  # type: ignore[arg-type]


def from_callable(source: str, specs: Sequence[TensorSpec]) -> CalibrationSet:
    from edgekit.deps import import_callable

    obj = import_callable(source)
    items = obj() if callable(obj) else obj
    samples: list[Feed] = []
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray) and len(specs) == 1:
            item = {specs[0].name: item}
        if not isinstance(item, dict):
            raise UsageError(f"{source}: sample {i} is a {type(item).__name__}, not a dict of arrays", hint="yield {input name: np.ndarray}")
        samples.append(item)
    h = hashlib.sha256()
    for s in samples:
        for k in sorted(s):
            h.update(k.encode())
            h.update(np.ascontiguousarray(s[k]).tobytes() if isinstance(s[k], np.ndarray) else repr(s[k]).encode())
    return CalibrationSet(source, len(samples), lambda: ((f"{source}[{i}]", s) for i, s in enumerate(samples)), fingerprint=h.hexdigest())


_MANIFEST_KEYS = {"description", "path", "package", "glob", "recipe", "labels"}


def from_manifest(path: Path, specs: Sequence[TensorSpec]) -> CalibrationSet:
    """A `calibration/*.toml`: where the samples are (a path, or a folder inside an installed package) and the recipe."""
    data = read_toml(path)
    for k in data:
        if k not in _MANIFEST_KEYS:
            from edgekit.config import unknown_key

            raise unknown_key(k, _MANIFEST_KEYS, str(path))
    if "path" not in data:
        raise UsageError(f"{path}: no path", hint='add path = "images/" (relative to the manifest, or to package = "...")')
    if "package" in data:
        spec = importlib.util.find_spec(data["package"])
        if spec is None or spec.origin is None:
            raise UsageError(f"{path}: package {data['package']!r} is not installed", hint=f"pip install {data['package']}")
        base = Path(spec.origin).parent
    else:
        base = path.parent
    folder = (base / data["path"]).resolve()
    if not folder.is_dir():
        raise UsageError(f"{path}: {folder} is not a folder")
    pattern = data.get("glob")
    patterns = pattern if isinstance(pattern, list) else [pattern] if pattern else None
    if "recipe" in data:
        recipe = ImageRecipe.from_dict(data["recipe"], label=f"{path} [recipe]")
        files = sorted({p for g in patterns for p in folder.glob(g)}) if patterns else None
        cs = from_images(folder, recipe, specs, files=files)
    else:
        cs = from_arrays(folder, specs)
    cs.description = f"{path} ({folder})"
    return cs


def calibration_set(source: str, specs: Sequence[TensorSpec], *, recipe: ImageRecipe | None = None) -> CalibrationSet:
    """Resolve `--calib SOURCE`."""
    path = Path(source)
    if not path.exists() and (packaged := packaged_manifest(source)) is not None:  # `imagenet-photos`, `edgekit:imagenet-photos`
        return from_manifest(packaged, specs)
    if ":" in source and not path.exists() and not source.startswith(("/", ".")):
        return from_callable(source, specs)
    if not path.exists():
        raise UsageError(f"calibration source {source}: no such file or folder",
                         hint=f"give a folder, a .npz, a calibration .toml, pkg.module:callable or a built-in manifest ({', '.join(packaged_manifest_names())})")
    if path.suffix == ".toml":
        return from_manifest(path, specs)
    if path.is_dir():
        if image_files(path):
            if recipe is None:
                raise UsageError(f"{path} holds images but no preprocessing was given",
                                 hint="pass --resize/--crop/--mean/--std (and --layout), or use a calibration/*.toml manifest")
            return from_images(path, recipe, specs)
        return from_arrays(path, specs)
    if path.suffix == ".npz":
        return from_arrays(path, specs)
    raise UsageError(f"calibration source {source} is not a folder, .npz, .toml or pkg.module:callable")
