"""Dense maps in the check: segmentation and detection probability maps, class maps, depth and heatmaps.

A map is an output with two spatial axes: [N, C, H, W] (C channels, H and W at least `MAP_MIN_SIDE`),
[N, H, W, C] with C <= 4, or [N, H, W] of probabilities. A row cosine is the wrong measure for one: a
map's row (one line of pixels) of an image with no text, no object, no foreground is almost all zeros,
and its cosine is noise that decides nothing about the task. Each map is judged by what it is:
- probability map (FP32 in [0, 1], channels not a softmax): the thresholded map of INT8 against FP32's
  at p >= 0.3, 0.5 and 0.7 (where the user thresholds is theirs: DB text detectors use 0.3), as IoU
  pooled over the held-out samples (intersections over unions, summed; an image where both are empty is
  full agreement) and as the mean IoU of the images with foreground of their own (>= 0.5% of their
  pixels: small objects count as much as large ones, specks of noise on an empty image do not), taken
  at its one-sided 95% lower confidence bound (mean - t * sd / sqrt(n)): a few held-out images say
  little about the next ones (measured: 3 held-out text scenes at 0.95, 24 others at 0.90). The worst
  of these >= 0.90; samples whose foreground INT8 loses entirely (or invents) are reported. Empty
  against empty is agreement for an image, but no verdict for the model: when fewer than MIN_EVIDENCE
  held-out samples show foreground in FP32's map (p >= 0.5 on >= 0.5% of its pixels) the map is
  `unjudged` (a matting model checked on three photos without a person kept IoU 1.0 and lost a third of
  every person); the run then holds out samples that show foreground instead, or says what data it
  needs and exits 3;
- class map (C >= 2, a softmax over the channels or logits whose per-pixel softmax is confident, top-1
  p >= 0.5, on most pixels): the
  per-pixel argmax, as mean IoU over the classes either map shows, pooled the same way. Bar: >= 0.90;
- any other map (depth, heatmaps, logits, features): the error relative to the map's dynamic range,
  per sample: RMS(INT8 - FP32) over the output's range on the held-out slice (FP32's 99.9th - 0.1th
  percentile, pooled: a flat or empty sample has no range of its own). Bar: worst sample <= 0.05 (5% of
  the range; an INT8 output step is 0.4% of its range, so this leaves room for the accumulated error
  of a deep network, not for a broken one).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

MAP_KINDS = ("probability map", "class map", "value map")
MAP_MIN_SIDE = 8  # fewer pixels on a side are a feature grid (a CNN's 7x7), compared as rows
MIN_MAP_IOU = 0.90
THRESHOLDS = (0.3, 0.5, 0.7)  # probability maps are judged thresholded at each
MIN_FOREGROUND = 0.005  # an image whose map is over a threshold on >= 0.5% of its pixels has foreground of its own
MAX_MAP_ERROR = 0.05


def map_layout(ref: Sequence[np.ndarray]) -> str | None:
    """'nchw', 'nhwc' or 'nhw' when the output is a dense map (see the module's docstring), else None."""
    a = np.asarray(ref[0])
    if a.dtype.kind != "f":
        return None
    if a.ndim == 4 and min(a.shape[2:]) >= MAP_MIN_SIDE:
        return "nchw"
    if a.ndim == 4 and a.shape[3] <= 4 and min(a.shape[1:3]) >= MAP_MIN_SIDE:
        return "nhwc"
    if (a.ndim == 3 and min(a.shape[1:]) >= MAP_MIN_SIDE and all(float(np.min(r)) >= 0 and float(np.max(r)) <= 1 for r in ref)
            and not any(sums_to_one(r) for r in ref)):
        return "nhw"
    return None


def sums_to_one(x: np.ndarray) -> bool:
    """A [N, A, B] output that is a distribution along axis 1 or 2 (a softmax: a CTC recognizer's per-step
    scores [N, T, C]): in [0, 1] like a probability map or a detector head, but sequences, judged as such."""
    x = np.asarray(x, np.float64)
    return x.ndim == 3 and any(np.allclose(x.sum(axis), 1.0, atol=1e-3) for axis in (1, 2))


def _nchw(x: np.ndarray, layout: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x.transpose(0, 3, 1, 2) if layout == "nhwc" else x[:, None] if layout == "nhw" else x


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


MIN_SPREAD = 0.05  # the least spread of a per-image score from one image to the next that a bound assumes
MIN_EVIDENCE = 3  # fewer held-out images that show foreground (or boxes) give no verdict: see `lower_bound`


def lower_bound(values: Sequence[float], confidence: float = 0.95, spread: float = MIN_SPREAD) -> float:
    """The one-sided lower confidence bound of the mean of per-image scores (Student's t), with the
    standard deviation taken as at least `spread`: two or three images that agree closely say nothing
    about how much the next one differs (the zoo's matting model: 0.98 and 0.98 on two held-out photos
    of people, 0.77 on 24 others; its layout detector 0.97 on 3 pages, 0.87 on 24). With that floor no
    fewer than MIN_EVIDENCE images can reach the 0.90 bar (two perfect ones: 0.78); one value: itself."""
    if len(values) < 2:
        return float(values[0]) if values else 1.0
    from scipy.stats import t

    sd = max(float(np.std(values, ddof=1)), spread)
    return float(np.mean(values) - t.ppf(confidence, len(values) - 1) * sd / math.sqrt(len(values)))


def _pooled_iou(inter: float, union: float) -> float:
    return 1.0 if union == 0 else inter / union


def compare_map(name: str, ref: Sequence[np.ndarray], got: Sequence[np.ndarray], layout: str) -> dict[str, Any]:
    """INT8 against FP32 for one dense map output over the held-out samples, and whether it meets the bar."""
    a = [_nchw(r, layout) for r in ref]
    b = [_nchw(g, layout) for g in got]
    channels = a[0].shape[1]
    lo, hi = min(float(x.min()) for x in a), max(float(x.max()) for x in a)
    pooled = np.concatenate([x.ravel() for x in a])
    span = float(np.percentile(pooled, 99.9) - np.percentile(pooled, 0.1)) or float(np.abs(pooled).max()) or 1.0
    rel = []  # per sample: RMS error over the output's range on the held-out slice (an empty sample has none of its own)
    for x, y in zip(a, b):
        for xs, ys in zip(x, y):
            rel.append(float(np.sqrt(np.mean((xs - ys) ** 2))) / span if xs.shape == ys.shape else math.inf)
    res: dict[str, Any] = {"output": name, "rows": len(rel), "cosine_mean": None, "cosine_worst": None, "sqnr_db": None,
                           "max_abs": float(max(np.abs(x - y).max() for x, y in zip(a, b))), "top1_agreement": None,
                           "top1_agreement_confident": None, "confident_rows": None, "layout": layout,
                           "map_error_worst": float(max(rel)), "map_error_mean": float(np.mean(rel))}
    softmaxed = channels >= 2 and lo >= 0 and all(np.allclose(x.sum(1), 1.0, atol=1e-3) for x in a)
    if lo >= 0 and hi <= 1 and not softmaxed:
        pooled_iou, image_iou, lost = {}, {}, 0
        for t in THRESHOLDS:  # where a user thresholds the map is theirs to choose (DB: 0.3): judged at each, the worst counts
            inter = union = 0
            per_image = []
            for x, y in zip(a, b):
                for xs, ys in zip(x >= t, y >= t):
                    i, u = int(np.count_nonzero(xs & ys)), int(np.count_nonzero(xs | ys))
                    inter, union = inter + i, union + u
                    if np.mean(xs) >= MIN_FOREGROUND:  # an image with real foreground: its own IoU counts too
                        per_image.append(i / u)
                    if t == 0.5:
                        lost += int(bool(xs.any()) != bool(ys.any()))
            pooled_iou[t] = _pooled_iou(inter, union)
            image_iou[t] = (float(np.mean(per_image)) if per_image else 1.0, lower_bound(per_image))
        iou = min(min(pooled_iou.values()), min(b for _, b in image_iou.values()))
        with_foreground = sum(int(np.mean(xs >= 0.5) >= MIN_FOREGROUND) for x in a for xs in x)
        res.update(kind="probability map", map_iou=iou, map_iou_pooled={str(t): v for t, v in pooled_iou.items()},
                   map_iou_per_image={str(t): v for t, (v, _) in image_iou.items()},
                   map_iou_per_image_lower_bound={str(t): b for t, (_, b) in image_iou.items()}, samples_foreground_lost_or_invented=lost,
                   foreground_share=float(np.mean([np.mean(x >= 0.5) for x in a])), samples_with_foreground=with_foreground,
                   evidence=with_foreground)
        short = MIN_MAP_IOU - iou
        if with_foreground < MIN_EVIDENCE:  # (almost) nothing to lose on these samples: the slice cannot judge the map
            res["unjudged"] = (f"{'none' if not with_foreground else f'only {with_foreground}'} of the {len(rel)} held-out samples "
                               f"{'shows' if with_foreground < 2 else 'show'} foreground in FP32's map {name} (p >= 0.5 on >= "
                               f"{100 * MIN_FOREGROUND:g}% of its pixels; a verdict needs {MIN_EVIDENCE})")
            short = MIN_MAP_IOU
    elif softmaxed or (channels >= 2 and np.mean([np.mean(_softmax(x, 1).max(1) >= 0.5) for x in a]) >= 0.5):
        inter_c = np.zeros(channels)
        union_c = np.zeros(channels)
        agree = total = 0
        for x, y in zip(a, b):
            ka, kb = x.argmax(1), y.argmax(1)
            agree += int(np.count_nonzero(ka == kb))
            total += ka.size
            for c in range(channels):
                pa, pb = ka == c, kb == c
                inter_c[c] += np.count_nonzero(pa & pb)
                union_c[c] += np.count_nonzero(pa | pb)
        shown = union_c > 0
        miou = float((inter_c[shown] / union_c[shown]).mean()) if shown.any() else 1.0
        res.update(kind="class map", map_iou=miou, pixel_agreement=agree / max(total, 1), classes=int(shown.sum()))
        short = MIN_MAP_IOU - miou
    else:
        res.update(kind="value map", map_iou=None)
        short = res["map_error_worst"] - MAX_MAP_ERROR
    res["shortfall"] = float(short)
    res["passed"] = bool(short <= 0)
    return res


def map_drop(o: dict[str, Any]) -> float:
    """The ranking score of a map (larger: worse), on the scale of 1 - cosine's."""
    if o["kind"] in ("probability map", "class map"):
        return 1 - o["map_iou"]
    return o["map_error_worst"]


def map_summary(o: dict[str, Any]) -> str:
    """The part of the check's one line for a map below its bar."""
    if o["kind"] == "probability map":
        return f"{o['output']} (thresholded map IoU {o['map_iou']:.3f} < {MIN_MAP_IOU:g})"
    if o["kind"] == "class map":
        return f"{o['output']} (class map mean IoU {o['map_iou']:.3f} < {MIN_MAP_IOU:g} over {o['classes']} classes)"
    return f"{o['output']} (error {100 * o['map_error_worst']:.1f}% of the map's range > {100 * MAX_MAP_ERROR:g}%)"
