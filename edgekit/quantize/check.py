"""The check every `edgekit quantize` run makes on data it did not calibrate on.

Without `--eval`, a deterministic slice of the calibration data is held out (15%, at least
a few samples, at most 32: `holdout_indices`), calibration runs on the rest, and INT8 is
compared with FP32 on the slice, per output.

The default bar (`CheckBar`, documented in the README) is judged per output:
- outputs whose rows look like class scores (logits or probabilities over the last axis,
  per sample or per step): FP32's top-1 is kept on at least 98% of the rows where FP32 is
  confident (top-1 probability >= 0.5; a flip between near-equal classes is noise, not
  damage), FP32's top-1 stays in INT8's top-5 on at least 98% of all rows, and the mean row
  cosine is at least 0.95 (a floor for outputs that only look like scores; rows that are never
  confident on the slice, such as an RNN's state, are judged as the other outputs below);
- an output of one probability per sample (values in [0, 1], as a detector's sigmoid): besides the
  cosine below, the decision (p >= 0.5) is kept on at least 98% of the samples where FP32 is
  confident (p <= 0.25 or p >= 0.75);
- per-step class scores (CTC logits, a tagger's per-token scores: [N, T, C] or [T, N, C]) and integer
  id sequences, when FP32 shows a background class (blank, "O") on at least a quarter of the steps:
  the sequence a greedy decoder reads (argmax per step, repeats collapsed, that class dropped) is
  the same as FP32's on at least 95% of the held-out sequences. Per-step rules alone miss this: a
  text recognizer that keeps 98% of its steps can still misread one line in five;
- decoded YOLO-style detector heads ([N, 4 + C, A], [N, A, 5 + C]) and undecoded GFL heads (PicoDet,
  NanoDet: per stride, class scores and box distributions): the confident boxes after NMS, matched
  between FP32 and INT8 (edgekit.quantize.detections);
- dense maps (segmentation and detection probability maps, class maps, depth, heatmaps): by the
  thresholded map's IoU or the error relative to the map's range, never a row cosine (edgekit.quantize.maps);
- every other output (embeddings, regressions, states): the worst row cosine is at least 0.99
  (rows = vectors along the last axis; an output of one value per sample is one row over
  the slice). A row whose FP32 norm is under 1% of the output's median row norm (a near-zero
  embedding, an anchor's deltas of about 0) has no direction to compare: its error is judged at the
  typical norm instead (the cosine two unit vectors that far apart would have), so noise on a ~0 row
  never decides the verdict and a row INT8 blows up still does.
Measured on EfficientNet-Lite0, whose all-INT8 model keeps ImageNet top-1 within a point: its
logit rows reach cosine 0.90-0.95 on low-confidence photos (mean 0.96-0.99) and flip top-1 on
31% of them (all below p = 0.16), never on a confident row, never out of the top-5. A cosine bar
on class scores would keep healthy classifiers in float, hence the top-1 rules for them.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import onnx

from edgekit.data.calibration import CalibrationSet
from edgekit.data.feeds import Feed
from edgekit.quantize.detections import MIN_BOX_F1, compare_detections, compare_gfl, detection_layout, gfl_groups
from edgekit.quantize.maps import MAP_KINDS, compare_map, map_drop, map_layout, map_summary

HOLDOUT_FRACTION = 0.15
HOLDOUT_MIN = 3
HOLDOUT_MAX = 32  # keeps the check's cost small: two sessions and 2 x 32 runs at most


@dataclasses.dataclass(frozen=True)
class CheckBar:
    """When an INT8 model is good enough for its task, judged against FP32 on held-out data."""

    min_cosine: float = 0.99  # worst row cosine of outputs that are not class scores
    min_top1: float = 0.98  # class scores: share of FP32-confident rows whose top-1 INT8 keeps
    confident: float = 0.5  # FP32 top-1 probability from which a row counts as confident
    min_top5: float = 0.98  # class scores: share of all rows whose FP32 top-1 stays in INT8's top-5
    min_class_cosine: float = 0.95  # class scores: mean row cosine (a floor if an output only looks like scores)
    min_sequence: float = 0.95  # per-step scores / id sequences: share of held-out sequences decoded the same

    def describe(self) -> str:
        return (f"worst row cosine >= {self.min_cosine:g} per output; class scores: top-1 kept on >= {100 * self.min_top1:g}% "
                f"of confident rows (FP32 p >= {self.confident:g}), in the top-5 on >= {100 * self.min_top5:g}% of rows, "
                f"mean row cosine >= {self.min_class_cosine:g}; sequences (per-step scores, ids): decoded the same on "
                f">= {100 * self.min_sequence:g}%")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "text": self.describe()}


DEFAULT_BAR = CheckBar()


def holdout_indices(n: int, *, samples: int | None = None) -> list[int]:
    """Which of `n` calibration samples to hold out: spread evenly (sets are often sorted by class),
    deterministic. With `--samples N`, the slice comes from the first N + slice samples."""
    base = n if samples is None else min(n, samples)
    if base < 2:
        return []
    k = min(HOLDOUT_MAX, max(math.ceil(HOLDOUT_FRACTION * base), min(HOLDOUT_MIN, base // 2)))
    span = n if samples is None else min(n, samples + k)
    return sorted({int((j + 0.5) * span / k) for j in range(k)})


@dataclasses.dataclass
class HeldOut:
    """A calibration set split in two: `calib` streams the samples to calibrate on and keeps the
    held-out ones aside (in memory: at most HOLDOUT_MAX feeds) as they pass."""

    source: CalibrationSet
    indices: list[int]
    in_sample: bool = False  # one sample only: the check runs on the calibration sample itself
    resplit: str = ""  # why these samples, when not the default slice
    _kept: dict[int, tuple[str, Feed]] = dataclasses.field(default_factory=dict)

    @classmethod
    def split(cls, cset: CalibrationSet, *, samples: int | None) -> HeldOut:
        idx = holdout_indices(cset.count, samples=samples)
        return cls(cset, idx) if idx else cls(cset, [0], in_sample=True)

    @property
    def calib(self) -> CalibrationSet:
        held = set(self.indices)

        def rest() -> Iterator[tuple[str, Feed]]:
            for i, (label, feed) in enumerate(self.source._factory()):
                if i in held:
                    self._kept[i] = (label, feed)
                    if not self.in_sample:
                        continue
                yield label, feed

        # the fingerprint names the split: the calibration cache must not mix ranges of different subsets
        fp = self.source.fingerprint + ("" if self.in_sample else f"|held-out {self.indices}")
        return CalibrationSet(self.source.description, self.source.count - (0 if self.in_sample else len(self.indices)), rest,
                              recipe=self.source.recipe, fingerprint=fp)

    def feeds(self, specs: Sequence[Any]) -> list[Feed]:
        """The held-out feeds, checked; read again from the source only if calibration stopped before them."""
        from edgekit.data.feeds import check_feed

        if len(self._kept) < len(self.indices):
            held = set(self.indices)
            for i, (label, feed) in enumerate(self.source._factory()):
                if i in held:
                    self._kept[i] = (label, feed)
                if len(self._kept) == len(self.indices):
                    break
        out = []
        for i in self.indices:
            if i in self._kept:
                label, feed = self._kept[i]
                check_feed(feed, specs, label=label)
                out.append(feed)
        return out

    @property
    def labels(self) -> list[int] | None:
        lb = self.source.labels
        return [lb[i] for i in self.indices if i < len(lb)] if lb is not None else None

    def describe(self) -> str:
        if self.resplit:
            return f"{len(self.indices)} of {self.source.count} calibration samples held out ({self.resplit}; never calibrated on)"
        if self.in_sample:
            return "the only calibration sample (in-sample: optimistic; give more samples)"
        return f"{len(self.indices)} of {self.source.count} calibration samples held out (never calibrated on)"


# --- per-output comparison -------------------------------------------------------------------

def _rows(x: np.ndarray) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    return a.reshape(-1, a.shape[-1]) if a.ndim >= 2 and a.shape[-1] > 1 else a.reshape(1, -1)


def _probabilities(rows: np.ndarray) -> np.ndarray:
    """Rows as probabilities: as given when they already are, else softmax (logits)."""
    if rows.min() >= 0 and np.allclose(rows.sum(-1), 1.0, atol=1e-3):
        return rows
    e = np.exp(rows - rows.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def looks_like_class_scores(ref: Sequence[np.ndarray]) -> bool:
    """Per-sample or per-step scores over classes: vectors along the last axis that are not unit-norm
    (an L2-normalised embedding is compared by cosine, never by argmax)."""
    a = ref[0]
    if a.dtype.kind != "f" or a.ndim < 2 or a.shape[-1] < 2:
        return False
    rows = np.concatenate([_rows(r) for r in ref])
    return not np.allclose(np.linalg.norm(rows, axis=-1), 1.0, atol=1e-3)


NEAR_ZERO = 0.01  # a row whose FP32 norm is under 1% of the output's median row norm is near zero (see the docstring)
SEQUENCE_MAX_STEPS = 1024  # longer "sequences" are a detector's anchors or a map's pixels, not steps a decoder reads
SEQUENCE_MIN_BACKGROUND = 0.25  # CTC's blank, a tagger's "O": the class FP32 gives most steps
SEQUENCE_MIN_STEPS = 8  # fewer are no decoded sequence (an RNN's [layers, batch, hidden] state is not one)


def _step_maps(arrays: Sequence[np.ndarray], scores: bool) -> list[np.ndarray] | None:
    """Per feed, the per-step class ids with size-1 axes dropped (argmax over the last axis of scores):
    1-D (one sequence) or 2-D (sequences along an axis that is batch or time: both are tried). None when
    some feed gives no such map."""
    out = []
    for a in arrays:
        ids = np.asarray(a).argmax(-1) if scores else np.asarray(a)
        ids = ids.reshape([d for d in ids.shape if d != 1])
        if ids.ndim not in (1, 2) or ids.size < 2:
            return None
        out.append(ids)
    return out


def _decoded(ids: np.ndarray, blank: Any) -> tuple[Any, ...]:
    """What a greedy CTC decoder reads: repeats collapsed, the background class dropped."""
    flat = ids.tolist()
    return tuple(v for i, v in enumerate(flat) if v != blank and (i == 0 or v != flat[i - 1]))


def sequence_agreement(ref: Sequence[np.ndarray], got: Sequence[np.ndarray], *, scores: bool) -> tuple[float, int] | None:
    """(share of held-out sequences INT8 decodes as FP32 does, how many), or None when the output is no
    sequence of steps with a background class (see the module's docstring)."""
    a, b = _step_maps(ref, scores), _step_maps(got, scores)
    if a is None:
        return None
    values, counts = np.unique(np.concatenate([m.ravel() for m in a]), return_counts=True)
    if counts.max() < SEQUENCE_MIN_BACKGROUND * counts.sum():
        return None
    blank = values[counts.argmax()].item()
    layouts = [(0,), (1,)] if any(m.ndim == 2 for m in a) else [(0,)]
    worst: tuple[float, int] | None = None
    for (axis,) in layouts:  # sequences along axis 1 (rows = batch) or axis 0 (rows = time), the worse of the two
        same = total = 0
        for r, g in zip(a, b if b is not None else [None] * len(a)):
            rows = [r] if r.ndim == 1 else list(r if axis == 0 else r.T)
            if any(not SEQUENCE_MIN_STEPS <= len(x) <= SEQUENCE_MAX_STEPS for x in rows):
                break  # not this layout
            if g is None or g.shape != r.shape:
                total += len(rows)
                continue
            grows = [g] if g.ndim == 1 else list(g if axis == 0 else g.T)
            same += sum(_decoded(x, blank) == _decoded(y, blank) for x, y in zip(rows, grows))
            total += len(rows)
        else:
            if total and (worst is None or same / total < worst[0]):
                worst = (same / total, total)
    return worst


def expected_sequence_agreement(ref: Sequence[np.ndarray], got: Sequence[np.ndarray], sequences: int) -> float:
    """The share of sequences INT8 is expected to decode as FP32 does under the margin noise it showed.

    A few held-out sequences that all decode the same say little (3 of 3 is as likely from a model that
    misreads one line in four), and a fallback that searches on them fits them. The steps say more:
    each step's FP32 margin (top-1 minus runner-up, in logits or log-probabilities) and, pooled over the
    held-out steps of comparable margin, how much INT8 moves a margin; a step flips when the move exceeds
    its margin. The expected agreement multiplies the steps' keep probabilities per sequence."""
    def logits(x: np.ndarray) -> np.ndarray:
        rows = np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1])
        if rows.min() >= 0 and np.allclose(rows.sum(-1), 1.0, atol=1e-3):
            return np.log(np.maximum(rows, 1e-30))
        return rows

    margins, moves, per_feed = [], [], []
    for r, g in zip(ref, got):
        a, b = logits(r), logits(g)
        order = np.argsort(a, axis=-1)
        top, second = order[:, -1], order[:, -2]
        idx = np.arange(len(a))
        m = a[idx, top] - a[idx, second]
        margins.append(m)
        moves.append((b[idx, top] - b[idx, second]) - m)
        per_feed.append(len(m))
    all_m, all_moves = np.concatenate(margins), np.concatenate(moves)
    if not len(all_m):
        return 1.0
    flips = _flip_probabilities(all_m, all_moves)
    feeds = len(per_feed)
    per_seq = max(1, round(sequences / feeds)) if feeds else 1
    expected, at = 0.0, 0
    for n in per_feed:  # P(keep) per step: the share of comparable steps' moves that would not push it past its margin
        keep = float(np.exp(np.log1p(-np.minimum(flips[at:at + n], 1 - 1e-12)).sum() / per_seq))
        expected += keep * per_seq
        at += n
    return expected / (feeds * per_seq)


def _flip_probabilities(margins: np.ndarray, moves: np.ndarray, *, octaves: int = 2, min_pool: int = 32) -> np.ndarray:
    """Per step, the share of moves seen on steps of comparable margin (within 2**octaves of it) that exceed
    its margin. INT8 moves a large logit more than a small one (and a softmax output's log of a near-zero
    runner-up a lot), so a confident blank's moves say little about a contested character's."""
    level = np.floor(np.log2(np.maximum(margins, 1e-6))).astype(np.int64)
    out = np.empty(len(margins))
    for k in np.unique(level):
        width = octaves
        while True:
            pool = moves[np.abs(level - k) <= width]
            if len(pool) >= min_pool or len(pool) == len(moves):
                break
            width += 1
        pool = np.sort(pool)
        here = level == k
        out[here] = np.searchsorted(pool, -margins[here], side="left") / len(pool)
    return out


def compare_ids(name: str, ref: Sequence[np.ndarray], got: Sequence[np.ndarray], bar: CheckBar) -> dict[str, Any] | None:
    """An integer output that is a sequence of ids (a recognizer that returns its argmax): decoded agreement.
    None for other integer outputs (token ids passed through, masks, counts): they are not compared."""
    if any(len([d for d in np.shape(r) if d != 1]) != 1 for r in ref):  # one sequence per feed only (not NMS's [K, 3] rows)
        return None
    seq = sequence_agreement(ref, got, scores=False)
    if seq is None:
        return None
    short = bar.min_sequence - seq[0]
    return {"output": name, "rows": seq[1], "kind": "id sequences", "cosine_mean": None, "cosine_worst": None, "sqnr_db": None, "max_abs": None,
            "top1_agreement": None, "top1_agreement_confident": None, "confident_rows": None, "sequence_agreement": seq[0],
            "sequences": seq[1], "shortfall": float(short), "passed": bool(short <= 0)}


def compare_output(name: str, ref: Sequence[np.ndarray], got: Sequence[np.ndarray], bar: CheckBar) -> dict[str, Any]:
    """INT8 against FP32 for one output over the held-out samples, and whether it meets `bar`."""
    per_row = ref[0].ndim >= 2 and ref[0].shape[-1] > 1
    if per_row:
        a = np.concatenate([_rows(r) for r in ref])
        b = np.concatenate([_rows(g) for g in got])
    else:  # one value (or a flat vector) per sample: the slice is one row
        a = np.concatenate([np.asarray(r, np.float64).ravel() for r in ref])[None]
        b = np.concatenate([np.asarray(g, np.float64).ravel() for g in got])[None]
    if a.size == 0:  # an empty output agrees with anything
        return {"output": name, "rows": 0, "cosine_mean": 1.0, "cosine_worst": 1.0, "sqnr_db": float("inf"), "max_abs": 0.0, "kind": "values",
                "top1_agreement": None, "top1_agreement_confident": None, "confident_rows": None, "shortfall": -1.0, "passed": True}
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)
    cos = np.where((np.abs(a).max(-1) == 0) & (np.abs(b).max(-1) == 0), 1.0, cos)  # all-zero rows agree
    near_zero = np.zeros(len(a), bool)
    if per_row and len(a) > 1:  # a row far below the output's typical norm: its cosine is noise, judge its error at that norm
        norms = np.linalg.norm(a, axis=-1)
        typical = float(np.median(norms))
        near_zero = norms < NEAR_ZERO * typical
        if near_zero.any():
            err = np.linalg.norm(a - b, axis=-1)[near_zero] / typical
            cos[near_zero] = np.clip(1 - err ** 2 / 2, -1, 1)  # the cosine of unit vectors this far apart
    noise = float(((a - b) ** 2).sum())
    res: dict[str, Any] = {
        "output": name, "rows": int(a.shape[0]), "cosine_mean": float(cos.mean()), "cosine_worst": float(cos.min()),
        "sqnr_db": float("inf") if noise == 0 else 10 * math.log10(max(float((a * a).sum()), 1e-30) / noise),
        "max_abs": float(np.abs(a - b).max()) if a.size else 0.0, "kind": "values",
        "top1_agreement": None, "top1_agreement_confident": None, "confident_rows": None, "near_zero_rows": int(near_zero.sum()),
    }
    if per_row:
        res["kind"] = "rows"
        res["top1_agreement"] = float((a.argmax(-1) == b.argmax(-1)).mean())
    p = _probabilities(a) if per_row and looks_like_class_scores(ref) else None
    sure = p.max(-1) >= bar.confident if p is not None else None
    if sure is not None and sure.any():  # scores that are never confident (an RNN state in [-1, 1]) are judged as rows
        k = min(5, a.shape[-1])
        in_top5 = (np.argpartition(b, -k, axis=-1)[:, -k:] == a.argmax(-1)[:, None]).any(-1)
        res.update(kind="class scores", confident_rows=int(sure.sum()), top5_containment=float(in_top5.mean()),
                   top1_agreement_confident=float((a.argmax(-1) == b.argmax(-1))[sure].mean()) if sure.any() else None)
        short = max(bar.min_class_cosine - res["cosine_mean"], bar.min_top5 - res["top5_containment"])
        if res["top1_agreement_confident"] is not None:
            short = max(short, bar.min_top1 - res["top1_agreement_confident"])
        seq = sequence_agreement(ref, got, scores=True) if ref[0].ndim >= 3 else None
        if seq is not None:
            expected = expected_sequence_agreement(ref, got, seq[1])
            res.update(kind="sequence scores", sequence_agreement=min(seq[0], expected), sequences=seq[1],
                       sequence_agreement_observed=seq[0], sequence_agreement_expected=expected)
            short = max(short, bar.min_sequence - res["sequence_agreement"])
    else:
        short = bar.min_cosine - res["cosine_worst"]
        if not per_row and all(r.size == r.shape[0] for r in ref) and a.size and a.min() >= 0 and a.max() <= 1:
            sure = np.abs(a[0] - 0.5) >= bar.confident / 2
            kept = ((a[0] >= 0.5) == (b[0] >= 0.5))[sure]
            res.update(kind="probability", confident_rows=int(sure.sum()), top1_agreement=float(((a[0] >= 0.5) == (b[0] >= 0.5)).mean()),
                       top1_agreement_confident=float(kept.mean()) if kept.size else None)
            if kept.size:
                short = max(short, bar.min_top1 - float(kept.mean()))
    res["shortfall"] = float(short)  # > 0: below the bar by this much
    res["passed"] = bool(short <= 0)
    return res


def image_size(feeds: Sequence[Feed]) -> tuple[int, int] | None:
    """(height, width) of the feeds' image input: the one float input of rank 4 with 1 or 3 channels, NCHW or NHWC."""
    if not feeds:
        return None
    found = []
    for v in feeds[0].values():
        shape = np.shape(v)
        if np.asarray(v).dtype.kind == "f" and len(shape) == 4:
            if shape[1] in (1, 3) and shape[3] not in (1, 3):
                found.append((int(shape[2]), int(shape[3])))
            elif shape[3] in (1, 3) and shape[1] not in (1, 3):
                found.append((int(shape[1]), int(shape[2])))
    return found[0] if len(found) == 1 else None


def compare_outputs(names: Sequence[str], reference: Sequence[Sequence[np.ndarray]], got: Sequence[Sequence[np.ndarray]],
                    bar: CheckBar, image_hw: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """Per float output; integer and boolean outputs (token ids, masks) are left out. With the image input's
    size, undecoded GFL heads (`detections.gfl_groups`) are judged together by the boxes they decode to."""
    out = []
    grouped: dict[str, dict[str, Any]] = {}
    for group in gfl_groups(names, reference, image_hw):
        assert image_hw is not None
        grouped.update((o["output"], o) for o in compare_gfl(names, reference, got, group, image_hw))
    for j, name in enumerate(names):
        if name in grouped:
            out.append(grouped[name])
            continue
        ref_j = [np.asarray(r[j]) for r in reference]
        got_j = [np.asarray(g[j]) for g in got]
        if ref_j[0].dtype.kind in "iub":
            ids = compare_ids(name, ref_j, got_j, bar) if ref_j[0].dtype.kind in "iu" else None
            if ids is not None:
                out.append(ids)
            continue
        if ref_j[0].dtype.kind != "f":
            continue
        heads, layout = detection_layout(ref_j), map_layout(ref_j)
        out.append(compare_detections(name, ref_j, got_j, heads) if heads else compare_map(name, ref_j, got_j, layout) if layout
                   else compare_output(name, ref_j, got_j, bar))
    return out


def ranking_drop(outputs: Sequence[dict[str, Any]]) -> float:
    """A continuous score for ranking nodes (the bar itself is a step): 1 - worst row cosine, or 1 - mean
    row cosine for class scores, the worst over outputs."""
    def drop(o: dict[str, Any]) -> float:
        if o["kind"] == "id sequences":
            return 1 - o["sequence_agreement"]
        if o["kind"] == "sequence scores":  # the decoded sequences first, the scores' cosine to break ties
            return max(1 - o["sequence_agreement"], 1 - o["cosine_mean"])
        if o["kind"] in MAP_KINDS:
            return map_drop(o)
        if o["kind"] == "detections":
            return 1 - o["box_f1"]
        return 1 - (o["cosine_mean"] if o["kind"] == "class scores" else o["cosine_worst"])

    return max((drop(o) for o in outputs), default=0.0)


RESPLIT_SCAN_MAX = 512  # samples of the source run in FP32 to find ones that show foreground or a confident box


def resplit_for_foreground(model: onnx.ModelProto, held: HeldOut, outputs: Sequence[str]) -> tuple[HeldOut | None, str]:
    """A held-out slice that shows something for `outputs` (maps with foreground, detectors with a confident
    box), when the default slice showed too little to judge them: samples of the source are run in FP32 (at
    most RESPLIT_SCAN_MAX) and each is judged against itself to see whether it gives evidence; as many as the
    slice had (at least MIN_EVIDENCE) are held out, spread over those that do, the slice's own samples filling
    it up. (None, why) when too few samples show anything, or when nothing would be left to calibrate on."""
    from edgekit.backends.onnxruntime import session_from_bytes
    from edgekit.quantize.maps import MIN_EVIDENCE

    sess = session_from_bytes(model.SerializeToString())
    names = [o.name for o in model.graph.output]
    wanted = set(outputs)
    shows, scanned = [], 0
    for i, (_, feed) in enumerate(held.source._factory()):
        if i >= RESPLIT_SCAN_MAX:
            break
        scanned += 1
        outs = sess.run(names, feed)
        judged = compare_outputs(names, [outs], [outs], DEFAULT_BAR, image_size([feed]))
        if any(o.get("evidence", 0) >= 1 for o in judged if o["output"] in wanted):
            shows.append(i)
    label = ", ".join(outputs)
    if len(shows) < MIN_EVIDENCE:
        return None, (f"{'none' if not shows else f'only {len(shows)}'} of the {scanned} samples of the source scanned "
                      f"{'shows' if len(shows) < 2 else 'show'} foreground or a confident box in {label} (a verdict needs {MIN_EVIDENCE} held out)")
    k = len(held.indices)
    take = max(MIN_EVIDENCE, min(k, len(shows) // 2))  # keep some that show it to calibrate on, where there are enough
    pick = sorted({shows[int((j + 0.5) * len(shows) / take)] for j in range(take)})
    fill = [i for i in held.indices if i not in pick][: max(0, k - len(pick))]
    indices = sorted(set(pick) | set(fill))
    if held.source.count - len(indices) < 1:
        return None, "the source is too small to hold out samples that show foreground or boxes"
    why = (f"the default slice showed too little in {label} to judge it: {len(pick)} of the {len(shows)} samples whose "
           f"FP32 output shows some (of {scanned} scanned) held out instead")
    return HeldOut(held.source, indices, resplit=why), why


@dataclasses.dataclass
class SliceEvaluator:
    """FP32 outputs of the held-out feeds, computed once; candidates are run in ONNX Runtime on this CPU.

    `drop` is what the search compares with its budget: with the default bar, how far the worst output
    falls short of it (<= 0 meets it); with a user's metric, that metric's drop. `rank_drop` orders nodes."""

    feeds: list[Feed]
    reference: list[list[np.ndarray]]
    names: list[str]
    bar: CheckBar | None = None  # None: a user metric (sensitivity.Evaluator semantics)
    metric: str = "cosine"
    labels: list[int] | None = None
    evaluations: int = 0
    _last: dict[int, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)

    def outputs_of(self, model: onnx.ModelProto) -> list[list[np.ndarray]]:
        from edgekit.backends.onnxruntime import session_from_bytes

        self.evaluations += 1
        sess = session_from_bytes(model.SerializeToString())
        return [sess.run(self.names, f) for f in self.feeds]

    def compare(self, got: list[list[np.ndarray]]) -> list[dict[str, Any]]:
        return compare_outputs(self.names, self.reference, got, self.bar or DEFAULT_BAR, image_size(self.feeds))

    def drop_of(self, got: list[list[np.ndarray]]) -> float:
        if self.bar is None:
            from edgekit.quantize.sensitivity import Evaluator

            return Evaluator(self.feeds, self.reference, self.metric, self.labels).drop_of(got)
        return max((o["shortfall"] for o in self.compare(got)), default=0.0)

    def drop(self, model: onnx.ModelProto) -> float:
        return self.drop_of(self.outputs_of(model))

    def rank_drop(self, model: onnx.ModelProto) -> float:
        got = self.outputs_of(model)
        return self.drop_of(got) if self.bar is None else ranking_drop(self.compare(got))


def reference_outputs(model: onnx.ModelProto, feeds: Sequence[Feed], ranges: dict[str, tuple[float, float]]
                      ) -> tuple[list[str], list[list[np.ndarray]], dict[str, Any]]:
    """FP32 outputs on the held-out feeds, and how far the held-out activations go beyond the calibrated
    ranges (one run of the model with those activations exposed: a range that has not settled shows here)."""
    from edgekit.backends.onnxruntime import session_from_bytes

    names = [o.name for o in model.graph.output]
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    exposed = [n for n in ranges if n not in set(names)]
    aug.graph.output.extend([onnx.ValueInfoProto(name=n) for n in exposed])
    sess = session_from_bytes(aug.SerializeToString())
    outs = [o.name for o in sess.get_outputs()]
    ref: list[list[np.ndarray]] = []
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    for f in feeds:
        vals = dict(zip(outs, sess.run(outs, f)))
        ref.append([vals[n] for n in names])
        for n in ranges:
            v = vals.get(n)
            if isinstance(v, np.ndarray) and v.dtype.kind == "f" and v.size:
                lo[n], hi[n] = min(lo.get(n, np.inf), float(v.min())), max(hi.get(n, -np.inf), float(v.max()))
    beyond = {}
    for n, (rlo, rhi) in ranges.items():
        if n in lo and rhi > rlo:
            over = max(hi[n] - rhi, rlo - lo[n], 0.0) / (rhi - rlo)
            if over > 0:
                beyond[n] = over
    worst = max(beyond, key=lambda k: beyond[k]) if beyond else None
    return names, ref, {"tensors_beyond_range": len(beyond), "tensors": len(ranges),
                        "worst_tensor": worst, "worst_beyond_pct": 100 * beyond[worst] if worst else 0.0}


def task_figure(o: dict[str, Any]) -> str:
    """The figure an output's kind is judged on, for a table."""
    kind = o["kind"]
    if kind in ("id sequences", "sequence scores"):
        return f"decoded same {100 * o['sequence_agreement']:.0f}%"
    if kind in ("class scores", "probability") and o["top1_agreement_confident"] is not None:
        return f"top-1 kept {100 * o['top1_agreement_confident']:.0f}%"
    if o.get("unjudged"):
        return "not judged: too little shown"
    if kind in ("probability map", "class map"):
        return f"IoU {o['map_iou']:.3f}"
    if kind == "detections":
        return f"box F1 {o['box_f1']:.3f}"
    if kind == "value map":
        return f"err {100 * o['map_error_worst']:.1f}% of range"
    return f"worst cosine {o['cosine_worst']:.4f}" + (f" ({o['near_zero_rows']} near-zero rows)" if o.get("near_zero_rows") else "")


def summary_line(check: dict[str, Any]) -> str:
    """One line for the report and for the exit-3 message."""
    failed = [o for o in check["outputs"] if not o["passed"]]
    if not failed:
        return f"meets the bar on {check['samples']} held-out samples"
    parts = []
    for o in failed:
        if o.get("unjudged"):
            if not o.get("group") or o["output"] == o["group"][0]:  # a GFL head's outputs share one verdict, said once
                parts.append(f"{o['output']} (not judged: {o['unjudged']})")
            continue
        if o["kind"] in ("id sequences", "sequence scores") and o["sequence_agreement"] < DEFAULT_BAR.min_sequence:
            parts.append(f"{o['output']} (decoded the same on {100 * o['sequence_agreement']:.0f}% of {o['sequences']} sequences)")
        elif o["kind"] in ("class scores", "sequence scores"):
            conf = o["top1_agreement_confident"]
            parts.append(f"{o['output']} (top-1 kept on {'-' if conf is None else f'{100 * conf:.0f}%'} of {o['confident_rows']} confident rows, "
                         f"in the top-5 on {100 * o['top5_containment']:.0f}%, mean cosine {o['cosine_mean']:.4f})")
        elif o["kind"] == "probability" and o["top1_agreement_confident"] is not None:
            parts.append(f"{o['output']} (decision kept on {100 * o['top1_agreement_confident']:.0f}% of {o['confident_rows']} confident samples, "
                         f"cosine {o['cosine_worst']:.4f})")
        elif o["kind"] in MAP_KINDS:
            parts.append(map_summary(o))
        elif o["kind"] == "detections":
            if o.get("group") and o["output"] != o["group"][0]:
                continue  # a GFL head: its outputs share one verdict, said once
            label = f"{o['output']} and {len(o['group']) - 1} more GFL head outputs" if o.get("group") else o["output"]
            parts.append(f"{label} (confident boxes matched F1 {o['box_f1']:.3f} < {MIN_BOX_F1:g}: "
                         f"{o['boxes_fp32']} FP32, {o['boxes_int8']} INT8)")
        else:
            parts.append(f"{o['output']} (worst cosine {o['cosine_worst']:.4f})")
    return "below the bar: " + ", ".join(parts)

