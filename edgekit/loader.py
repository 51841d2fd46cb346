"""`edgekit.load`: a verified bundle as a ready engine that takes camera frames.

`load` verifies the bundle, chooses its artifact by the stated rule (edgekit.bundle.RULE)
and says which and why (`engine.info["chosen"]`, and the `edgekit.loader` logger), loads it
with the runtime's model cache in a per-user folder (the second start skips compiling),
and removes its temporary extraction as soon as the runtime holds the model, so nothing
is left behind, also after SIGTERM during loading. The engine checks every feed's names,
dtypes and shapes against the model and applies the bundle's recorded preprocessing to
paths, bytes, PIL images and camera frames.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.backends import get_backend
from edgekit.backends.base import EngineBase
from edgekit.bundle import LM_KIND, check_verified, choose_artifact, opened_bundle, signature_before_opening, trusted_key_list, verify_root
from edgekit.compile import MANIFEST, target_for
from edgekit.errors import UsageError
from edgekit.onnxmodel import TensorSpec
from edgekit.data.preprocess import ImageInput, ImageRecipe

if TYPE_CHECKING:
    from edgekit.llm.engine import LMEngine


log = logging.getLogger("edgekit.loader")


def default_cache_dir() -> Path:
    """Where runtimes keep compiled models between starts: $EDGEKIT_CACHE_DIR, else $XDG_CACHE_HOME/edgekit, else ~/.cache/edgekit."""
    env = os.environ.get("EDGEKIT_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgekit"


def load(bundle: str | os.PathLike[str], *, backend: str | None = None, artifact: str | None = None, target: str | None = None,
         trusted_keys: Sequence[str | os.PathLike[str]] | None = None, cache_dir: str | os.PathLike[str] | bool = True,
         min_release: int | None = None) -> BundleEngine | LMEngine:
    """Verify a bundle (.tar or folder) and load the artifact that suits this machine; use as a context manager.

    backend: only consider that backend's artifacts. artifact: load this one (its folder name, as
    `edgekit verify` lists it). Otherwise the rule is edgekit.bundle.RULE: what runs here, lowest
    precision first, then the device-specific runtime. target: a profile whose options override the
    recorded ones. trusted_keys: public key files or folders of `*.pub` (also EDGEKIT_TRUSTED_KEYS); when
    any is given, edgekit.signing checks the signature and every file before anything is extracted, and
    only a bundle signed by one of them, unchanged since, is loaded (GateFailed otherwise). cache_dir: True = the per-user default (`default_cache_dir()`), a path,
    or False for none; used where the runtime has a model cache (OpenVINO's CACHE_DIR). min_release: refuse
    a bundle whose release number is older (rollback protection, as `edgekit verify --min-release`).

    A bundle of a language model (packed from `edgekit lm quantize` folders) gives an `edgekit.llm.engine.LMEngine`:
    `generate(text)` and `stream(text)` instead of `run(feed)`.
    """
    t0 = time.perf_counter()
    path = Path(bundle)
    if not path.exists():
        raise UsageError(f"{path}: no such bundle", hint="check the path")
    keys = trusted_key_list(trusted_keys)
    signature = signature_before_opening(path, keys)  # before anything is extracted
    # With keys, the copy loaded is verified again (signature and hashes): what was checked is what runs
    with opened_bundle(path, private=bool(keys)) as (root, digests):
        report = verify_root(root, label=path, target=target, digests=digests, check_all=False, signature=signature, keys=keys,
                             min_release=min_release)
        check_verified(report, need_preprocessing=False)  # a missing Pillow only stops run_image, with the fix
        idx, why = choose_artifact(report, backend=backend, artifact=artifact)
        m = report["manifest"]
        a = m["artifacts"][idx]
        folder = root / a["dir"]
        if a.get("kind") == LM_KIND:  # a language model: text in, text out
            from edgekit.llm.engine import LMEngine

            lm = LMEngine.open(folder, manifest=m, info={"artifact": a["dir"], "chosen": why})
            lm.info["load_s"] = round(time.perf_counter() - t0, 4)
            log.info("loaded %s in %.2f s: %s", path, lm.info["load_s"], why)
            return lm  # the runtime and the tokenizer hold the model in memory: the extraction goes as the block ends
        art_manifest = json.loads((folder / MANIFEST).read_text())
        tgt = target_for(art_manifest, target)
        options, cache = _with_cache(tgt.options, cache_dir, a["backend"])
        engine = get_backend(a["backend"]).load(folder, art_manifest, options=options)
        labels = (root / m["labels"]).read_text(encoding="utf-8").splitlines() if m.get("labels") else None
    # The runtime holds the model now (read, mapped or deserialized): the extraction is gone already.
    recipe = ImageRecipe.from_dict(m["preprocessing"]) if m.get("preprocessing") else None
    load_s = time.perf_counter() - t0
    log.info("loaded %s in %.2f s: %s", path, load_s, why)
    return BundleEngine(engine, recipe=recipe, labels=labels, manifest=m,
                        info={"artifact": a["dir"], "chosen": why, "cache_dir": cache, "load_s": round(load_s, 4)})


def _with_cache(options: Any, cache_dir: str | os.PathLike[str] | bool, backend: str) -> tuple[Any, str | None]:
    """The backend's options with its model cache in a writable per-user folder, when it has one.

    A cache the target profile sets explicitly wins; a folder that cannot be created means no
    cache (a slower start, never a failure)."""
    if cache_dir is False or not dataclasses.is_dataclass(options) or "cache_dir" not in {f.name for f in dataclasses.fields(options)}:
        return options, None
    if options.cache_dir:
        return options, options.cache_dir
    folder = (default_cache_dir() if cache_dir is True else Path(cache_dir)) / backend
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not os.access(folder, os.W_OK):
            raise PermissionError(f"{folder} is not writable")
    except OSError as exc:
        log.warning("no model cache (%s): every start compiles the model", exc)
        return options, None
    return dataclasses.replace(options, cache_dir=str(folder)), str(folder)


def _describe(spec: TensorSpec) -> str:
    return f"{spec.name!r} {spec.dtype}[{'x'.join(str(d) for d in spec.shape)}]"


class BundleEngine(EngineBase):
    """An engine loaded from a verified bundle.

    `run(feed)` checks names, dtypes and shapes first (a `UsageError` naming what the model
    expects, never a raw runtime error); `run_image`, `run_images` and `top_k` apply the
    bundle's preprocessing. `info` adds which artifact was chosen and why.
    """

    def __init__(self, engine: Any, *, recipe: ImageRecipe | None, labels: list[str] | None, manifest: dict[str, Any], info: dict[str, Any]) -> None:
        self._engine, self.recipe, self.labels, self.manifest = engine, recipe, labels, manifest
        self.inputs, self.outputs = engine.inputs, engine.outputs
        self.info = {**engine.info, **info}

    # --- feeds -----------------------------------------------------------------------------

    def _expects(self) -> str:
        return ", ".join(_describe(s) for s in self.inputs)

    def check_feed(self, feed: dict[str, np.ndarray]) -> None:
        """Raise a UsageError naming what the model expects when `feed` does not fit it."""
        if not isinstance(feed, dict):
            raise UsageError(f"run() takes a feed {{input name: array}}, not {type(feed).__name__}; the model expects {self._expects()}",
                             hint="for an image or camera frame use run_image()")
        names = {s.name for s in self.inputs}
        unknown = sorted(set(feed) - names)
        if unknown:
            import difflib

            close = difflib.get_close_matches(str(unknown[0]), names, n=1)
            raise UsageError(f"the model has no input {unknown[0]!r}; it expects {self._expects()}", hint=f"did you mean {close[0]!r}?" if close else None)
        missing = sorted(names - set(feed))
        if missing:
            raise UsageError(f"input {missing[0]!r} is missing; the model expects {self._expects()}")
        for s in self.inputs:
            x = feed[s.name]
            if not isinstance(x, np.ndarray):
                raise UsageError(f"input {s.name!r} is a {type(x).__name__}; the model expects a numpy array {_describe(s)}")
            if x.dtype != s.dtype:
                raise UsageError(f"input {s.name!r} is {x.dtype}; the model expects {_describe(s)}", hint=f"x.astype(np.{s.dtype})")
            bad = len(x.shape) != len(s.shape) or any(isinstance(d, int) and d >= 0 and d != n for d, n in zip(s.shape, x.shape))
            if bad:
                fix = "run_images() batches as the model allows" if len(x.shape) == len(s.shape) and s.shape and s.shape[0] != x.shape[0] else None
                raise UsageError(f"input {s.name!r} has shape {'x'.join(map(str, x.shape)) or 'scalar'}; the model expects {_describe(s)}", hint=fix)

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_feed(feed)
        return self._engine.run(feed)

    # --- images ----------------------------------------------------------------------------

    def preprocess(self, image: ImageInput, *, channels: str | None = None) -> dict[str, np.ndarray]:
        """The feed for one image (path, bytes, PIL image, or HxWxC uint8 frame with `channels` 'RGB'/'BGR')."""
        if self.recipe is None:
            raise UsageError("this bundle records no image preprocessing", hint="build feeds yourself and call run()")
        if len(self.inputs) != 1:
            raise UsageError(f"run_image feeds one input; this model has {len(self.inputs)}: {self._expects()}", hint="build feeds yourself and call run()")
        return {self.inputs[0].name: self.recipe.apply(image, channels=channels)}

    def run_image(self, image: ImageInput, *, channels: str | None = None) -> dict[str, np.ndarray]:
        """Outputs for one image, with a batch axis of 1."""
        return self.run(self.preprocess(image, channels=channels))

    def batch_capacity(self) -> int | None:
        """How many images one run takes: None = any number (a dynamic batch axis), else the fixed batch size."""
        d = self.inputs[0].shape[0] if self.inputs and self.inputs[0].shape else 1
        return d if isinstance(d, int) and d > 0 else None

    def run_images(self, images: Iterable[ImageInput], *, channels: str | None = None, batch_size: int | None = None) -> dict[str, np.ndarray]:
        """Outputs for several images, concatenated along the batch axis.

        A dynamic batch axis runs `batch_size` images at a time (default: all); a fixed batch of N
        runs N at a time (the last run padded with copies, their outputs dropped); batch 1 runs one
        at a time.
        """
        if isinstance(images, (str, bytes, os.PathLike, np.ndarray)):
            raise UsageError("run_images takes a list of images, not one", hint="for one image use run_image()")
        images = list(images)
        if not images:
            raise UsageError("run_images got no images")
        cap = self.batch_capacity()
        if batch_size is not None and (batch_size < 1 or (cap is not None and batch_size != cap)):
            raise UsageError(f"batch_size={batch_size}: this artifact runs {cap if cap is not None else 'any number of'} images at a time")
        step = cap or batch_size or len(images)
        name = self.inputs[0].name
        xs = [self.preprocess(im, channels=channels)[name] for im in images]
        parts: list[dict[str, np.ndarray]] = []
        for i in range(0, len(xs), step):
            chunk = xs[i:i + step]
            n = len(chunk)
            if cap is not None and n < cap:
                chunk = chunk + [chunk[-1]] * (cap - n)
            out = self.run({name: np.concatenate(chunk, axis=0)})
            parts.append({k: v[:n] for k, v in out.items()})
        return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}

    def top_k(self, x: ImageInput | dict[str, np.ndarray], k: int = 5, *, channels: str | None = None, output: str | None = None) -> list[tuple[int, str | None, float]]:
        """The k best classes of one input (an image, or a feed): (index, label or None, score), best first.

        The score is a probability: the output itself when it already is a distribution
        (non-negative, summing to 1), else its softmax (logits)."""
        if k < 1:
            raise UsageError(f"top_k needs k >= 1, not {k}")
        outs = self.run(x) if isinstance(x, dict) else self.run_image(x, channels=channels)
        name = output or self.outputs[0].name
        if name not in outs:
            raise UsageError(f"the model has no output {name!r}", hint=f"it has: {', '.join(outs)}")
        y = np.asarray(outs[name], dtype=np.float64)
        if y.ndim >= 2 and y.shape[0] == 1:
            y = y[0]
        y = y.reshape(-1) if y.ndim > 1 and y.size == max(y.shape) else y
        if y.ndim != 1:
            raise UsageError(f"top_k needs one vector of class scores; output {name!r} has shape {'x'.join(map(str, outs[name].shape))}")
        if self.labels is not None and len(self.labels) != y.size:
            raise UsageError(f"the bundle has {len(self.labels)} labels but output {name!r} has {y.size} classes", hint="pack it again with matching --labels")
        if y.min() >= 0 and abs(y.sum() - 1) < 1e-3:
            p = y
        else:
            e = np.exp(y - y.max())
            p = e / e.sum()
        best = np.argsort(-p, kind="stable")[:k]
        return [(int(i), self.labels[i] if self.labels is not None else None, float(p[i])) for i in best]

    def close(self) -> None:
        self._engine.close()
