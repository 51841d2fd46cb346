"""The check judges each output by what it is (edgekit/quantize/maps.py, check.py): maps by their
thresholded IoU or their error over the map's range, embeddings by cosine with near-zero rows judged
at the output's typical norm. Fixed arrays, no timing."""
from __future__ import annotations

import numpy as np

from edgekit.quantize.check import DEFAULT_BAR, compare_outputs, summary_line
from edgekit.quantize.maps import map_layout

RNG = np.random.default_rng(0)


def _one(ref: list[np.ndarray], got: list[np.ndarray]) -> dict:
    (o,) = compare_outputs(["y"], [[r] for r in ref], [[g] for g in got], DEFAULT_BAR)
    return o


def _text_map(blobs: list[tuple[int, int, int, int]], size: int = 64) -> np.ndarray:
    """A DBNet-like probability map [1, 1, H, W]: ~0 background, ~0.95 inside each text box."""
    m = RNG.uniform(0, 0.02, (1, 1, size, size)).astype(np.float32)
    for y0, y1, x0, x1 in blobs:
        m[..., y0:y1, x0:x1] = RNG.uniform(0.9, 1.0, (y1 - y0, x1 - x0))
    return m


def test_an_all_background_map_agrees_with_int8_noise_on_it() -> None:
    """Images with no text: FP32's map is ~0, INT8's a little noise on ~0. A row cosine calls that 0.0;
    the thresholded maps are both empty, which is full agreement for those images. With one image that
    has text beside them, the map is judged and passes; with none, nothing on the slice could have been
    lost: the map is not judged (no verdict, not a pass), and the one line says why."""
    ref = [_text_map([]) for _ in range(4)]
    got = [np.clip(r + RNG.normal(0, 0.01, r.shape), 0, 1).astype(np.float32) for r in ref]
    cos = [(a.ravel() @ b.ravel()) for a, b in zip(ref, got)]  # (not what is judged)
    o = _one(ref, got)
    assert o["kind"] == "probability map" and o["map_iou"] == 1.0 and o["samples_with_foreground"] == 0, o
    assert o["unjudged"] and not o["passed"], o
    assert "not judged: none of the 4 held-out samples shows foreground" in summary_line({"outputs": [o], "samples": 4})
    o = _one([*ref[:2], _text_map([(10, 20, 5, 60)]), _text_map([(30, 40, 5, 60)])], [*got[:2], _text_map([(10, 20, 5, 60)]), _text_map([(30, 40, 5, 60)])])
    assert o["samples_with_foreground"] == 2 and "only 2 of the 4 held-out samples show foreground" in o["unjudged"]
    assert all(c > 0 for c in cos)
    texts = [_text_map([(10 + 8 * i, 20 + 8 * i, 5, 60)]) for i in range(3)]
    o = _one([*ref, *texts], [*got, *(np.clip(t + RNG.normal(0, 0.01, t.shape), 0, 1).astype(np.float32) for t in texts)])
    assert o["passed"] and not o.get("unjudged") and o["samples_with_foreground"] == 3 and o["map_iou"] >= 0.9, o


def test_a_probability_map_fails_when_int8_loses_text() -> None:
    ref = [_text_map([(10, 20, 5, 60)]), _text_map([]), _text_map([(30, 40, 10, 30), (50, 58, 2, 62)]), _text_map([(40, 52, 8, 56)])]
    close = [np.clip(r + RNG.normal(0, 0.02, r.shape), 0, 1).astype(np.float32) for r in ref]
    assert _one(ref, close)["passed"]
    lost = [r.copy() for r in ref]
    lost[2][..., 50:58, :] = 0.1  # the second line of the third image vanishes
    o = _one(ref, lost)
    assert o["kind"] == "probability map" and not o["passed"] and o["map_iou"] < 0.9, o
    assert "thresholded map IoU" in summary_line({"outputs": [o], "samples": 4})


def test_a_few_held_out_maps_are_judged_by_a_lower_bound_of_their_mean() -> None:
    """Three images whose IoUs are 0.99, 0.97 and 0.85 average 0.937, over the bar; that spread over three
    says the next images may be well under it: the bound (mean - t * sd / sqrt(3)) decides, and fails.
    Three that agree closely say no more about the next image than a spread of MIN_SPREAD (0.05) would:
    three at 0.95 fail (0.866), six at 0.95 pass (0.909); two perfect images can never pass (0.777)."""
    from edgekit.quantize.maps import lower_bound

    assert abs(lower_bound([0.95, 0.95, 0.95], spread=0.0) - 0.95) < 1e-9 and lower_bound([0.9]) == 0.9
    assert abs(lower_bound([0.95] * 3) - (0.95 - 2.920 * 0.05 / 3 ** 0.5)) < 2e-3
    assert abs(lower_bound([0.95] * 6) - (0.95 - 2.015 * 0.05 / 6 ** 0.5)) < 2e-3 and lower_bound([1.0, 1.0]) < 0.78
    assert abs(lower_bound([0.99, 0.97, 0.85]) - (0.9367 - 2.920 * 0.0757 / 3 ** 0.5)) < 2e-3

    def shrunk(m: np.ndarray, rows: int) -> np.ndarray:  # INT8 loses the last `rows` rows of the text box
        g = m.copy()
        g[..., 40 - rows:40, :] = 0.0
        return g
    ref = [_text_map([(20, 40, 4, 60)]) for _ in range(3)]
    got = [shrunk(ref[0], 0), shrunk(ref[1], 1), shrunk(ref[2], 3)]  # IoU 1.0, 0.95, 0.85
    o = _one(ref, got)
    per = o["map_iou_per_image"]["0.5"]
    assert per > 0.9 and not o["passed"] and o["map_iou_per_image_lower_bound"]["0.5"] < 0.9 and o["map_iou"] < 0.9, o
    even = [shrunk(r, 1) for r in ref]  # IoU 0.95 on each: three images say too little
    assert not _one(ref, even)["passed"]
    six = ref + [_text_map([(20, 40, 4, 60)]) for _ in range(3)]
    assert _one(six, [shrunk(r, 1) for r in six])["passed"]  # six do


def test_a_class_map_is_judged_by_per_pixel_classes() -> None:
    labels = np.zeros((2, 32, 32), int)
    labels[:, 8:24, 8:24] = 1
    labels[1, :6, :] = 2
    logits = (np.eye(3)[labels].transpose(0, 3, 1, 2) * 6.0).astype(np.float32)  # [N, 3, H, W], confident
    ref = [logits[i:i + 1] for i in range(2)]
    noisy = [r + RNG.normal(0, 0.3, r.shape).astype(np.float32) for r in ref]
    o = _one(ref, noisy)
    assert o["kind"] == "class map" and o["passed"] and o["pixel_agreement"] > 0.99, o
    swapped = [r.copy() for r in ref]
    swapped[1][:, [1, 2]] = swapped[1][:, [2, 1]]  # INT8 confuses classes 1 and 2 on the second image
    assert not _one(ref, swapped)["passed"]


def test_a_value_map_is_judged_by_error_over_its_range_with_an_empty_sample() -> None:
    """Depth-like maps, one of them all zero (sky): the error is over the output's range on the slice."""
    ref = [RNG.uniform(0, 10, (1, 1, 32, 32)).astype(np.float32) * 1.0 for _ in range(3)] + [np.zeros((1, 1, 32, 32), np.float32)]
    ok = [r + RNG.normal(0, 0.1, r.shape).astype(np.float32) for r in ref]  # ~1% of the range
    o = _one(ref, ok)
    assert o["kind"] == "value map" and o["passed"] and o["map_error_worst"] < 0.02, o
    bad = [r + RNG.normal(0, 1.0, r.shape).astype(np.float32) for r in ref]  # ~10%
    o = _one(ref, bad)
    assert not o["passed"] and "of the map's range" in summary_line({"outputs": [o], "samples": 4})


def test_a_near_zero_embedding_row_does_not_decide_but_a_blown_up_one_does() -> None:
    rows = RNG.normal(0, 1, (8, 64))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    rows[3] *= 1e-4  # an embedding of ~0 (padding, silence)
    ref = [rows.astype(np.float32)]
    got = rows + RNG.normal(0, 1e-3, rows.shape)  # INT8 noise: on row 3 it is larger than the row itself
    raw_cos = got[3] @ rows[3] / (np.linalg.norm(got[3]) * np.linalg.norm(rows[3]))
    o = _one(ref, [got.astype(np.float32)])
    assert raw_cos < 0.5 and o["near_zero_rows"] == 1 and o["passed"] and o["cosine_worst"] > 0.99, (raw_cos, o)
    blown = got.copy()
    blown[3] = RNG.normal(0, 0.1, 64)  # INT8 gives the ~0 row a norm of 0.8: wrong at any scale
    assert not _one(ref, [blown.astype(np.float32)])["passed"]


def test_what_is_not_a_map() -> None:
    hidden = RNG.normal(0, 1, (1, 128, 384)).astype(np.float32)  # a transformer's states: rows, not pixels
    features = RNG.normal(0, 1, (1, 512, 7, 7)).astype(np.float32)  # a CNN's last feature grid
    logits = RNG.normal(0, 1, (1, 1000)).astype(np.float32)
    assert map_layout([hidden]) is None and map_layout([features]) is None and map_layout([logits]) is None
    assert map_layout([np.zeros((1, 1, 64, 64), np.float32)]) == "nchw" and map_layout([np.zeros((1, 64, 64, 3), np.float32)]) == "nhwc"


def _yolo_head(boxes: list[tuple[float, float, float, float, int, float]], anchors: int = 400, classes: int = 3) -> np.ndarray:
    """A decoded YOLOv8 head [1, 4 + C, A]: background anchors score ~0, each object on a few anchors."""
    p = np.zeros((anchors, 4 + classes))
    p[:, :2] = RNG.uniform(0, 320, (anchors, 2))
    p[:, 2:4] = RNG.uniform(5, 40, (anchors, 2))
    p[:, 4:] = RNG.uniform(0, 0.02, (anchors, classes))
    for k, (cx, cy, w, h, c, s) in enumerate(boxes):
        for d in range(3):  # three anchors see it, NMS keeps one
            i = 10 * k + d
            p[i, :4] = (cx + d, cy, w, h)
            p[i, 4 + c] = s - 0.05 * d
    return p.T[None].astype(np.float32)


def test_a_detector_head_is_judged_by_matched_confident_boxes() -> None:
    from edgekit.quantize.detections import detection_layout

    scenes = [[(50, 60, 40, 80, 0, 0.9), (200, 100, 60, 30, 2, 0.8)], [], [(150, 150, 100, 100, 1, 0.95), (30, 30, 20, 20, 0, 0.3)],
              [(100, 200, 50, 50, 2, 0.9)]]
    ref = [_yolo_head(s) for s in scenes]
    assert detection_layout(ref) == "first"
    # a CTC recognizer's per-step softmax [1, T, C] is in [0, 1] with more "anchors" (classes) than rows: not boxes
    logits = RNG.normal(0, 3, (1, 40, 300))
    ctc = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert detection_layout([ctc]) is None and detection_layout([ctc.transpose(0, 2, 1).copy()]) is None
    assert map_layout([ctc]) is None  # nor a probability map
    # with a blank class on most steps, it is judged by the text a greedy CTC decoder reads
    logits[0, ::2, 0] += 12
    ctc = [np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)]
    assert _one(ctc, ctc)["kind"] == "sequence scores"
    noisy = []
    for r in ref:
        g = r.copy()
        g[:, :4] += RNG.normal(0, 1.0, g[:, :4].shape)  # a pixel of box jitter
        g[:, 4:] = np.clip(g[:, 4:] + RNG.normal(0, 0.03, g[:, 4:].shape), 0, 1)
        noisy.append(g)
    noisy[2][0, 4 + 0, 50] = 0.2  # the 0.3-scored box (not confident) drops below the threshold in INT8: noise, not damage
    o = _one(ref, noisy)
    assert o["kind"] == "detections" and o["passed"] and o["box_f1_pooled"] == 1.0 and o["boxes_fp32"] == 4 and o["images_with_boxes"] == 3, o
    few = _one(ref[:3], noisy[:3])  # two images with a confident box: no verdict
    assert not few["passed"] and "only 2 of the 3 held-out images show a confident box" in few["unjudged"], few
    lost = [r.copy() for r in ref]
    lost[0][0, 4 + 2, 10:13] = 0.01  # INT8 loses the second confident object of the first image
    lost[2][0, 0, 0:3] += 60  # and moves the big box far off
    o = _one(ref, lost)
    assert not o["passed"] and o["box_f1"] < 0.9 and "boxes matched" in summary_line({"outputs": [o], "samples": 4}), o


def _gfl_head(boxes: list[tuple[int, int, int, int, int]], hw: tuple[int, int] = (128, 96), strides: tuple[int, ...] = (8, 16, 32),
              classes: int = 3, bins: int = 8) -> tuple[list[str], list[np.ndarray]]:
    """An undecoded PicoDet/NanoDet head for one image: per stride, sigmoid scores [1, cells, C] (~0.01 but
    where a box sits: 0.9) and box-distribution logits [1, cells, 4 x bins] peaked at each side's distance / stride."""
    scores, dists = [], []
    for s in strides:
        h, w = -(-hw[0] // s), -(-hw[1] // s)
        sc = RNG.uniform(0.0, 0.02, (h * w, classes))
        d = RNG.normal(0, 0.3, (h * w, 4, bins))
        for stride, cls, cy, cx, side in boxes:
            if stride == s:
                cell = cy * w + cx
                sc[cell, cls] = 0.9
                d[cell, :, side] += 8.0  # every side `side` bins (side x stride pixels) from the cell centre
        scores.append(sc[None].astype(np.float32))
        dists.append(d.reshape(1, h * w, 4 * bins).astype(np.float32))
    names = [f"score_{s}" for s in strides] + [f"dist_{s}" for s in strides]
    return names, scores + dists


def test_an_undecoded_gfl_head_is_judged_by_the_boxes_it_decodes_to() -> None:
    """PicoDet/NanoDet-style outputs (per stride: class scores beside 4 x 8-bin box distributions) are one
    detector: decoded with the image input's size, their confident boxes matched. Small logit noise keeps the
    boxes; every side moved by two bins (16-64 px) loses them. Judged one by one, the distributions would be
    'class scores' (argmax over four sides' logits) and the score maps YOLO boxes."""
    from edgekit.quantize.detections import gfl_groups

    scenes = [[(8, 0, 5, 4, 2), (16, 1, 3, 3, 3), (32, 2, 1, 1, 2)], [(8, 1, 10, 6, 3)], [(16, 0, 5, 2, 2), (32, 1, 2, 2, 1)]]
    heads = [_gfl_head(s) for s in scenes]
    names, refs = heads[0][0], [h[1] for h in heads]
    assert gfl_groups(names, refs, (128, 96)) == [[(8, 0, 3), (16, 1, 4), (32, 2, 5)]]
    noisy = [[x + RNG.normal(0, 0.05, x.shape).astype(np.float32) * (1 if i >= 3 else 0.1) for i, x in enumerate(r)] for r in refs]
    res = compare_outputs(names, refs, noisy, DEFAULT_BAR, (128, 96))
    assert [o["output"] for o in res] == names and {o["kind"] for o in res} == {"detections"} and {o["layout"] for o in res} == {"gfl"}
    assert res[0]["boxes_fp32"] == 6 and res[0]["box_f1_pooled"] == 1.0 and all(o["passed"] for o in res), res[0]
    moved = [[np.roll(x.reshape(*x.shape[:2], 4, 8), 2, axis=-1).reshape(x.shape) if i >= 3 else x for i, x in enumerate(r)] for r in refs]
    bad = compare_outputs(names, refs, moved, DEFAULT_BAR, (128, 96))
    assert bad[0]["box_f1"] < 0.9 and not any(o["passed"] for o in bad)
    assert summary_line({"outputs": bad, "samples": 3}).count("GFL head outputs") == 1  # one verdict, said once
    ref = refs[0]
    assert gfl_groups(names, [ref], None) == [] and gfl_groups(names, [ref], (100, 100)) == []  # no image size, or not its grid
    assert gfl_groups(names[:1] + names[3:4], [[ref[0], ref[3]]], (128, 96)) == []  # one level is no pyramid


def test_a_slice_without_foreground_is_replaced_by_samples_whose_map_shows_some() -> None:
    """`quantize` holds out an even spread of the calibration set; when none of it shows foreground in a
    probability map, it runs the source in FP32 and holds out samples whose map does (a graph that passes
    its image's first channel through as the map: which samples have foreground is known)."""
    from onnx import TensorProto, helper

    from edgekit.data.calibration import CalibrationSet
    from edgekit.quantize.check import HeldOut, resplit_for_foreground

    graph = helper.make_graph([helper.make_node("Slice", ["x", "s", "e", "ax"], ["map"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("map", TensorProto.FLOAT, [1, 1, 32, 32])],
                              [helper.make_tensor("s", TensorProto.INT64, [1], [0]), helper.make_tensor("e", TensorProto.INT64, [1], [1]),
                               helper.make_tensor("ax", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    fg = {1, 4, 11, 14}  # the samples whose map shows foreground; the default slice of 16 is 2, 8, 13
    feeds = []
    for i in range(16):
        x = RNG.uniform(0, 0.1, (1, 3, 32, 32)).astype(np.float32)
        if i in fg:
            x[0, 0, 8:20, 8:24] = 0.9
        feeds.append(x)
    source = CalibrationSet("synthetic", 16, lambda: iter((str(i), {"x": f}) for i, f in enumerate(feeds)))
    held = HeldOut.split(source, samples=None)
    assert held.indices == [2, 8, 13] and not fg & set(held.indices)
    alt, why = resplit_for_foreground(model, held, ["map"])
    assert alt is not None and len(alt.indices) == 3 and fg & set(alt.indices) == {1, 11, 14}, (alt, why)  # three: the least a verdict needs
    assert "3 of the 4 samples whose FP32 output shows some (of 16 scanned) held out" in why and why in alt.describe()
    assert alt.calib.count == 13 and alt.calib.fingerprint != held.calib.fingerprint
    blank = CalibrationSet("blank", 16, lambda: iter((str(i), {"x": RNG.uniform(0, 0.1, (1, 3, 32, 32)).astype(np.float32)}) for i in range(16)))
    none, why = resplit_for_foreground(model, HeldOut.split(blank, samples=None), ["map"])
    assert none is None and "none of the 16 samples of the source scanned shows foreground or a confident box in map" in why
