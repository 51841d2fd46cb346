"""Image preprocessing recipes: declared, applied the same way at calibration and on the device.

A recipe is data (recorded in manifests and bundles), never code: resize of the short
side, centre crop, channel order, layout, scale and mean/std.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

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

    def apply(self, path: str | os.PathLike[str]) -> np.ndarray:
        """One image file -> a float32 array with a batch axis of 1."""
        image_mod = deps.pil_image()
        try:
            with image_mod.open(path) as im:
                im = im.convert("L" if self.channels == "GRAY" else "RGB")
                im = self._resize_crop(im, image_mod)
                arr = np.asarray(im, dtype=np.float32)
        except (OSError, ValueError, image_mod.DecompressionBombError) as exc:
            raise UsageError(f"cannot read image {path}: {exc}", hint="remove or replace that file") from exc
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


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
