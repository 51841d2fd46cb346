"""Image preprocessing recipes: declared, applied the same way at calibration and on the device.

A recipe is data (recorded in manifests and bundles), never code: resize of the short
side, centre crop, channel order, layout, scale and mean/std. It applies to files, bytes,
PIL images and camera frames alike (`ImageRecipe.apply`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union

import numpy as np

from edgekit import deps
from edgekit.errors import UsageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


@dataclasses.dataclass(frozen=True)
class ImageRecipe:
    resize: int | None = None  # short side, bilinear
    crop: int | None = None  # centre crop, square
    channels: str = "RGB"  # RGB | BGR | GRAY
    layout: str = "NCHW"  # NCHW | NHWC
    scale: float = 1 / 255  # applied to 0-255 pixels before mean/std
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if self.channels not in ("RGB", "BGR", "GRAY"):
            raise UsageError(f"recipe channels={self.channels!r}: use RGB, BGR or GRAY")
        if self.layout not in ("NCHW", "NHWC"):
            raise UsageError(f"recipe layout={self.layout!r}: use NCHW or NHWC")
        if any(s == 0 for s in self.std):
            raise UsageError("recipe std has a zero: it would divide by zero")
        for name in ("resize", "crop"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise UsageError(f"recipe {name}={v}: must be a positive number of pixels")

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, label: str = "recipe") -> ImageRecipe:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            import difflib

            k = sorted(unknown)[0]
            close = difflib.get_close_matches(k, fields, n=1)
            raise UsageError(f"{label}: unknown key {k!r}", hint=f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(sorted(fields))}")
        kw = dict(data)
        for k in ("mean", "std"):
            if k in kw:
                v = kw[k]
                kw[k] = tuple(float(x) for x in (v if isinstance(v, (list, tuple)) else [v]))
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def apply(self, image: ImageInput, *, channels: str | None = None) -> np.ndarray:
        """One image -> a float32 array with a batch axis of 1.

        `image`: a file path, the file's bytes, a PIL image, or an HxWxC (or HxW) uint8 array such
        as a camera frame; a 3-channel array needs `channels` ("RGB", or "BGR" for OpenCV frames):
        the order cannot be told from the pixels. Every form goes through the same Pillow resize
        and crop, so a frame gives the same input as the file it was decoded from.
        """
        image_mod = deps.pil_image()
        try:
            with _as_pil(image, channels, image_mod) as im:
                im = im.convert("L" if self.channels == "GRAY" else "RGB")
                im = self._resize_crop(im, image_mod)
                arr = np.asarray(im, dtype=np.float32)
        except (OSError, ValueError, image_mod.DecompressionBombError) as exc:
            what = image if isinstance(image, (str, os.PathLike)) else f"the {type(image).__name__} image"
            raise UsageError(f"cannot read image {what}: {exc}", hint="remove or replace that file") from exc
        return self.apply_array(arr)

    def apply_array(self, arr: np.ndarray) -> np.ndarray:
        """HWC (or HW) 0-255 pixels, already resized -> normalised batch of 1."""
        arr = arr.astype(np.float32)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if self.channels == "BGR":
            arr = arr[:, :, ::-1]
        arr = arr * np.float32(self.scale)
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == "NCHW":
            arr = arr.transpose(2, 0, 1)
        return np.ascontiguousarray(arr[None], dtype=np.float32)

    def _resize_crop(self, im: Any, image_mod: Any) -> Any:
        if self.resize:
            w, h = im.size
            s = self.resize / min(w, h)
            im = im.resize((max(1, round(w * s)), max(1, round(h * s))), image_mod.BILINEAR)
        if self.crop:
            w, h = im.size
            if w < self.crop or h < self.crop:
                raise UsageError(f"image of {w}x{h} is smaller than the crop {self.crop}", hint="add resize to the recipe")
            left, top = (w - self.crop) // 2, (h - self.crop) // 2
            im = im.crop((left, top, left + self.crop, top + self.crop))
        return im


ImageInput = Union[str, "os.PathLike[str]", bytes, np.ndarray, Any]  # Any: a PIL.Image.Image


@contextlib.contextmanager
def _as_pil(image: ImageInput, channels: str | None, image_mod: Any) -> Iterator[Any]:
    """A PIL image (RGB or L) for any accepted input; files are closed afterwards."""
    if isinstance(image, (str, os.PathLike)):
        with image_mod.open(image) as im:
            yield im
        return
    if isinstance(image, (bytes, bytearray, memoryview)):
        with image_mod.open(io.BytesIO(image)) as im:
            yield im
        return
    if isinstance(image, np.ndarray):
        yield image_mod.fromarray(_frame_as_rgb(image, channels))
        return
    if isinstance(image, image_mod.Image):
        if channels is not None:
            raise UsageError(f"channels={channels!r} applies to arrays; a PIL image knows its own mode ({image.mode})")
        yield image
        return
    raise UsageError(f"an image must be a path, bytes, a PIL image or an HxWxC uint8 array, not {type(image).__name__}")


def _frame_as_rgb(frame: np.ndarray, channels: str | None) -> np.ndarray:
    """A camera frame (HxWx3 RGB/BGR, HxWx1 or HxW gray, uint8) as an RGB or gray array."""
    if frame.dtype != np.uint8:
        raise UsageError(f"a camera frame must be uint8 pixels 0-255, this array is {frame.dtype}",
                         hint="pass the frame as decoded (uint8); the bundle's recipe does the scaling")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 2:
        return frame
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise UsageError(f"a camera frame must be HxWx3 (or HxW gray), this array is {'x'.join(map(str, frame.shape))}",
                         hint="drop an alpha channel with frame[..., :3]; CHW arrays need frame.transpose(1, 2, 0)")
    if channels not in ("RGB", "BGR"):
        raise UsageError(f"a 3-channel frame needs its channel order: channels='BGR' (OpenCV) or 'RGB' (most other libraries), not {channels!r}",
                         hint="the order cannot be told from the pixels")
    return np.ascontiguousarray(frame[:, :, ::-1] if channels == "BGR" else frame)


def preprocessing_versions() -> dict[str, str]:
    """Versions of the libraries preprocessing depends on (Pillow does the resizing), recorded in bundles."""
    import importlib.metadata

    out = {"numpy": np.__version__}
    try:
        out["pillow"] = importlib.metadata.version("pillow")
    except importlib.metadata.PackageNotFoundError:
        pass
    return out


def resize_fingerprint(recipe: ImageRecipe) -> str | None:
    """SHA-256 of the recipe's resize/crop of a fixed pseudo-random image: a different value on another
    machine means its Pillow resamples differently, i.e. the device's inputs are not the ones the
    accuracy was measured on. None when the recipe does not resize (cropping is exact)."""
    if not recipe.resize:
        return None
    image_mod = deps.pil_image()
    pattern = np.random.default_rng(20).integers(0, 256, size=(173, 241, 3), dtype=np.uint8)  # PCG64: stable across numpy versions
    im = recipe._resize_crop(image_mod.fromarray(pattern).convert("L" if recipe.channels == "GRAY" else "RGB"), image_mod)
    arr = np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
    return hashlib.sha256(repr(arr.shape).encode() + arr.tobytes()).hexdigest()


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
