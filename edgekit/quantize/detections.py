"""Detector outputs in the check: boxes with scores, judged by the boxes they decode to.

A detector's raw head output is one row per anchor (thousands) of a box and class scores. Most rows
score ~0 (background), so a row or channel cosine measures noise; what the task sees are the boxes
over a score threshold after NMS. The two layouts exported YOLO models use are recognised:
- channels first, [N, 4 + C, A] (YOLOv8/v11: cx, cy, w, h, then C class scores in [0, 1]);
- channels last, [N, A, 5 + C] (YOLOv5/v7/YOLOX with decoding in the graph: cx, cy, w, h, objectness,
  then C class scores; a box's score is objectness x class score);
with A >= `MIN_ANCHORS` anchors, widths and heights >= 0 on every FP32 row (decoded boxes: a head that
leaves the grid decoding to the host, log-space sizes, is compared as rows), and no axis summing to 1
(a softmax over one: a CTC recognizer's [N, T, C] per-step scores are in [0, 1] too, and are sequences). Other box outputs (after
an NMS in the graph, SSD's separate boxes and scores) are compared as rows.

Anchor-free GFL heads left undecoded (PicoDet, NanoDet, GFL: the graph ends before the post-processing) are
recognised as a group of outputs (`gfl_groups`): per stride s, class scores [N, H/s x W/s, C] in [0, 1] and box
distributions [N, H/s x W/s, 4 x (R + 1)] (R + 1 >= 4 bins per side, logits), the cell counts matching the image
input's grid at strides 4-128 (rounded up). They are decoded as those detectors are (softmax over each side's
bins, expected bin x s = the side's distance from the cell centre) and judged by the same box rule; every output
of the group carries the group's verdict. A box distribution judged as class scores (argmax over 32 logits of
four sides) says nothing about the boxes.

The rule, with hysteresis so a box scored near the threshold that INT8 nudges across it is noise, not
damage: every FP32 box scoring >= 0.5 after NMS must be found by INT8 (same class, IoU >= 0.5, INT8
score >= 0.25), and every INT8 box scoring >= 0.5 must be one FP32 has at >= 0.25. Pooled over the
held-out images, F1 = 2 x matched / (FP32's confident boxes + INT8's), and the per-image F1's lower
confidence bound (`maps.lower_bound`: a few images that agree say little about the next), the lower of
the two >= 0.90. An image with no confident box on either side is agreement, but fewer than MIN_EVIDENCE
held-out images with a confident box give no verdict (`unjudged`: the run holds out images that show
boxes instead, or exits 3 saying what data it needs).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgekit.quantize.maps import MIN_EVIDENCE, lower_bound, sums_to_one

MIN_ANCHORS = 100
SURE, SEEN = 0.5, 0.25  # a confident box; the score at which the other side counts as having it
MATCH_IOU, NMS_IOU = 0.5, 0.45
MIN_BOX_F1 = 0.90


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a [N, 4] and b [M, 4] (x1, y1, x2, y2): [N, M]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> np.ndarray:
    """Indices of the boxes greedy non-maximum suppression keeps, best first."""
    order, keep = np.argsort(-scores), []
    while order.size:
        i = order[0]
        keep.append(i)
        order = order[1:][box_iou(boxes[i:i + 1], boxes[order[1:]])[0] <= iou]
    return np.asarray(keep, dtype=int)


def detection_layout(ref: Sequence[np.ndarray]) -> str | None:
    """'first' ([N, 4 + C, A]) or 'last' ([N, A, 5 + C]) for a decoded YOLO-style head, else None."""
    a = np.asarray(ref[0])
    if a.dtype.kind != "f" or a.ndim != 3:
        return None
    small, large = (1, 2) if a.shape[1] < a.shape[2] else (2, 1)
    channels, anchors = a.shape[small], a.shape[large]
    if anchors < MIN_ANCHORS or channels < (5 if small == 1 else 6) or channels > 1024:
        return None
    for r in ref:
        if sums_to_one(r):
            return None  # a distribution along an axis (a CTC recognizer's per-step softmax [N, T, C]), not boxes
        rows = np.moveaxis(np.asarray(r, np.float64), small, -1).reshape(-1, channels)
        scores = rows[:, 4:]
        if rows[:, 2:4].min() < 0 or scores.min() < 0 or scores.max() > 1:
            return None
    return "first" if small == 1 else "last"


def _boxes(out: np.ndarray, layout: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per image: (boxes x1y1x2y2, scores, classes) over SEEN after class-wise NMS."""
    a = np.asarray(out, np.float64)
    rows = a.transpose(0, 2, 1) if layout == "first" else a
    per_image = []
    for p in rows:
        cls_scores = p[:, 4:] if layout == "first" else p[:, 4:5] * p[:, 5:]
        cls, score = cls_scores.argmax(1), cls_scores.max(1)
        keep = score >= SEEN
        xy, wh = p[keep, :2], p[keep, 2:4]
        boxes, score, cls = np.concatenate([xy - wh / 2, xy + wh / 2], 1), score[keep], cls[keep]
        kept = nms(boxes + (cls[:, None] * (boxes.max() + 1) if len(boxes) else 0), score)  # offset per class: NMS per class
        per_image.append((boxes[kept], score[kept], cls[kept]))
    return per_image


def _found(sure: tuple[np.ndarray, np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[int, int]:
    """(confident boxes of `sure`, how many of them `other` has: same class, IoU >= MATCH_IOU, one each)."""
    boxes, score, cls = sure
    pick = score >= SURE
    if not pick.any():
        return 0, 0
    if not len(other[0]):
        return int(pick.sum()), 0
    ious = box_iou(boxes[pick], other[0]) * (cls[pick][:, None] == other[2][None, :])
    used: set[int] = set()
    found = 0
    for i in np.argsort(-ious.max(1)):
        for j in np.argsort(-ious[i]):
            if ious[i, j] < MATCH_IOU:
                break
            if int(j) not in used:
                used.add(int(j))
                found += 1
                break
    return int(pick.sum()), found


def _score_images(pairs: Sequence[tuple[Any, Any]], label: str) -> dict[str, Any]:
    """The box rule over per-image (FP32, INT8) detections: pooled F1, per-image F1's lower bound, verdict."""
    total = found = boxes_fp32 = boxes_int8 = 0
    per_image = []
    for a, b in pairs:
        n, k = _found(a, b)
        m, j = _found(b, a)
        total, found = total + n + m, found + k + j
        boxes_fp32, boxes_int8 = boxes_fp32 + n, boxes_int8 + m
        if n + m:
            per_image.append((k + j) / (n + m))
    pooled = 1.0 if total == 0 else found / total
    bound = lower_bound(per_image)
    f1 = min(pooled, bound)
    res: dict[str, Any] = {"box_f1": f1, "box_f1_pooled": pooled, "box_f1_per_image_lower_bound": bound,
                           "images_with_boxes": len(per_image), "evidence": len(per_image), "boxes_fp32": boxes_fp32, "boxes_int8": boxes_int8}
    short = MIN_BOX_F1 - f1
    if len(per_image) < MIN_EVIDENCE:
        res["unjudged"] = (f"{'none' if not per_image else f'only {len(per_image)}'} of the {len(pairs)} held-out images "
                           f"{'shows' if len(per_image) < 2 else 'show'} a confident box in {label} (a verdict needs {MIN_EVIDENCE})")
        short = MIN_BOX_F1
    return {**res, "shortfall": float(short), "passed": bool(short <= 0)}


def compare_detections(name: str, ref: Sequence[np.ndarray], got: Sequence[np.ndarray], layout: str) -> dict[str, Any]:
    """INT8 against FP32 for one decoded detector head over the held-out images, and whether it meets the bar."""
    pairs = [p for r, g in zip(ref, got) for p in zip(_boxes(r, layout), _boxes(g, layout))]
    return {"output": name, "rows": sum(int(np.shape(r)[0]) for r in ref), "kind": "detections", "layout": layout,
            "cosine_mean": None, "cosine_worst": None, "sqnr_db": None,
            "max_abs": float(max(np.abs(np.asarray(r, np.float64) - np.asarray(g, np.float64)).max() for r, g in zip(ref, got))),
            "top1_agreement": None, "top1_agreement_confident": None, "confident_rows": None, **_score_images(pairs, name)}


GFL_STRIDES = (4, 8, 16, 32, 64, 128)


def _cells(hw: tuple[int, int], stride: int) -> int:
    return -(-hw[0] // stride) * -(-hw[1] // stride)


def gfl_groups(names: Sequence[str], ref: Sequence[Sequence[np.ndarray]], image_hw: tuple[int, int] | None
               ) -> list[list[tuple[int, int, int]]]:
    """Undecoded GFL heads among the outputs: groups of (stride, score output index, box output index)."""
    if image_hw is None:
        return []
    shapes = [np.shape(ref[0][j]) for j in range(len(names))]
    by_cells: dict[int, tuple[list[int], list[int]]] = {}
    for j, shape in enumerate(shapes):
        a = np.asarray(ref[0][j])
        if a.dtype.kind != "f" or len(shape) != 3 or shape[1] < 1:
            continue
        vals = [np.asarray(r[j], np.float64) for r in ref]
        in_unit = all(v.min() >= 0 and v.max() <= 1 for v in vals)
        scores, boxes = by_cells.setdefault(shape[1], ([], []))
        if in_unit and 1 <= shape[2] <= 1024:
            scores.append(j)
        elif shape[2] % 4 == 0 and shape[2] // 4 >= 4 and not in_unit:
            boxes.append(j)
    group = []
    for cells, (scores, boxes) in by_cells.items():
        if len(scores) != 1 or len(boxes) != 1:
            continue
        stride = [s for s in GFL_STRIDES if _cells(image_hw, s) == cells]
        if len(stride) == 1:
            group.append((stride[0], scores[0], boxes[0]))
    if len(group) < 2 or len({g[0] for g in group}) != len(group):  # one level is no pyramid: too weak a sign
        return []
    return [sorted(group)]


def _gfl_boxes(outs: Sequence[np.ndarray], group: Sequence[tuple[int, int, int]], image_hw: tuple[int, int]
               ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per image: (boxes x1y1x2y2, scores, classes) over SEEN after class-wise NMS, decoded as PicoDet does."""
    per_image = []
    for b in range(np.shape(outs[group[0][1]])[0]):
        boxes, scores, classes = [], [], []
        for stride, si, bi in group:
            sc, dist = np.asarray(outs[si][b], np.float64), np.asarray(outs[bi][b], np.float64)
            h, w = -(-image_hw[0] // stride), -(-image_hw[1] // stride)
            cy, cx = np.meshgrid((np.arange(h) + 0.5) * stride, (np.arange(w) + 0.5) * stride, indexing="ij")
            bins = dist.shape[-1] // 4
            logits = dist.reshape(-1, bins)
            p = np.exp(logits - logits.max(1, keepdims=True))
            side = ((p / p.sum(1, keepdims=True)) @ np.arange(bins)).reshape(-1, 4) * stride
            centre = np.stack([cx.ravel(), cy.ravel(), cx.ravel(), cy.ravel()], 1)
            cls, score = sc.argmax(1), sc.max(1)
            keep = score >= SEEN
            boxes.append((centre + side * np.array([-1.0, -1.0, 1.0, 1.0]))[keep])
            scores.append(score[keep])
            classes.append(cls[keep])
        bx, s, c = np.concatenate(boxes), np.concatenate(scores), np.concatenate(classes)
        kept = nms(bx + (c[:, None] * (bx.max() + 1) if len(bx) else 0), s)
        per_image.append((bx[kept], s[kept], c[kept]))
    return per_image


def compare_gfl(names: Sequence[str], ref: Sequence[Sequence[np.ndarray]], got: Sequence[Sequence[np.ndarray]],
                group: Sequence[tuple[int, int, int]], image_hw: tuple[int, int]) -> list[dict[str, Any]]:
    """INT8 against FP32 for a group of GFL head outputs: one verdict from the decoded boxes, for each output."""
    pairs = [p for r, g in zip(ref, got) for p in zip(_gfl_boxes(r, group, image_hw), _gfl_boxes(g, group, image_hw))]
    members = [names[i] for _, si, bi in group for i in (si, bi)]
    scored = _score_images(pairs, f"the GFL head {members[0]} ..")
    out = []
    for _, si, bi in group:
        for i in (si, bi):
            out.append({"output": names[i], "rows": sum(int(np.shape(r[i])[0]) for r in ref), "kind": "detections", "layout": "gfl",
                        "group": members, "strides": [s for s, _, _ in group],
                        "cosine_mean": None, "cosine_worst": None, "sqnr_db": None,
                        "max_abs": float(max(np.abs(np.asarray(r[i], np.float64) - np.asarray(g[i], np.float64)).max() for r, g in zip(ref, got))),
                        "top1_agreement": None, "top1_agreement_confident": None, "confident_rows": None, **scored})
    return out
