"""Agreement between two sets of outputs: max abs/rel error, cosine, SQNR, top-1."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass
class OutputAgreement:
    """Running agreement of one output over many samples (merged as samples stream)."""

    name: str
    max_abs: float = 0.0
    max_rel: float = 0.0
    _dot: float = 0.0
    _na: float = 0.0
    _nb: float = 0.0
    _noise: float = 0.0
    _top1_same: int = 0
    _top1_rows: int = 0
    _cos_min: float = 1.0

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        a = np.asarray(ref, dtype=np.float64)
        b = np.asarray(got, dtype=np.float64)
        if a.shape != b.shape:
            raise ValueError(f"output {self.name!r}: shapes differ {a.shape} vs {b.shape}")
        diff = np.abs(a - b)
        if diff.size:
            self.max_abs = max(self.max_abs, float(diff.max()))
            self.max_rel = max(self.max_rel, float((diff / np.maximum(np.abs(a), 1e-6)).max()))
        self._dot += float((a * b).sum())
        self._na += float((a * a).sum())
        self._nb += float((b * b).sum())
        self._noise += float(((a - b) ** 2).sum())
        if a.ndim >= 2 and a.shape[-1] > 1:
            rows_a = a.reshape(-1, a.shape[-1])
            rows_b = b.reshape(-1, b.shape[-1])
            self._top1_same += int((rows_a.argmax(-1) == rows_b.argmax(-1)).sum())
            self._top1_rows += rows_a.shape[0]
            na = np.linalg.norm(rows_a, axis=-1)
            nb = np.linalg.norm(rows_b, axis=-1)
            cos = (rows_a * rows_b).sum(-1) / np.maximum(na * nb, 1e-30)
            self._cos_min = min(self._cos_min, float(cos.min()))

    @property
    def cosine(self) -> float:
        return self._dot / max(np.sqrt(self._na * self._nb), 1e-30)

    @property
    def sqnr_db(self) -> float:
        if self._noise == 0:
            return float("inf")
        return 10 * float(np.log10(max(self._na, 1e-30) / self._noise))

    @property
    def top1_agreement(self) -> float | None:
        return self._top1_same / self._top1_rows if self._top1_rows else None

    def to_dict(self) -> dict[str, object]:
        return {
            "output": self.name,
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "cosine": self.cosine,
            "cosine_min_row": self._cos_min,
            "sqnr_db": self.sqnr_db,
            "top1_agreement": self.top1_agreement,
        }


def agreement(names: Sequence[str], pairs: Sequence[tuple[Sequence[np.ndarray], Sequence[np.ndarray]]]) -> list[OutputAgreement]:
    """Agreement per output over (reference outputs, candidate outputs) pairs."""
    out = [OutputAgreement(n) for n in names]
    for ref, got in pairs:
        for acc, a, b in zip(out, ref, got):
            acc.add(a, b)
    return out
