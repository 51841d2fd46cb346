"""Real text for calibration and the check: a built-in English corpus or the user's own text file.

`python-docs` is the Python standard library's own help texts (`pydoc_data.topics`, shipped with every
CPython): about 465 kB (113k SmolLM2 tokens) of real English prose and code written by people, on every machine, offline. The
check holds out windows the calibration never sees.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import UsageError

BUILTIN = ("python-docs",)


def corpus(name: str) -> str:
    if name == "python-docs":
        topics = importlib.import_module("pydoc_data.topics").topics
        return "\n\n".join(topics[k] for k in sorted(topics))
    path = Path(name)
    if not path.is_file():
        raise UsageError(f"text {name!r} is neither a built-in corpus nor a file", hint=f"give a UTF-8 text file or one of {', '.join(BUILTIN)}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{name} is not UTF-8 text", hint="give a plain text file in UTF-8") from None
    if len(text.split()) < 200:
        raise UsageError(f"{name} holds {len(text.split())} words; the check needs at least 200", hint="give a longer real text (a few pages)")
    return text


@dataclasses.dataclass(frozen=True)
class TextSplit:
    """Token windows: `calibration` for data-aware weight quantization, `held_out` for the check."""

    calibration: list[np.ndarray]
    held_out: list[np.ndarray]

    def to_dict(self) -> dict[str, int]:
        return {"calibration_windows": len(self.calibration), "held_out_windows": len(self.held_out),
                "window_tokens": int(self.held_out[0].size) if self.held_out else 0}


class Tokenizer:
    """The tokenizer saved in an LM folder, held in memory. `tokenizer.json` is read by the `tokenizers`
    library alone (a device needs no transformers); other tokenizers by transformers."""

    def __init__(self, folder: str | Path) -> None:
        path = Path(folder) / "tokenizer.json"
        if path.is_file() and importlib.util.find_spec("tokenizers") is not None:
            self._fast, self._tok = True, importlib.import_module("tokenizers").Tokenizer.from_file(str(path))
        else:
            from edgekit import deps

            self._fast, self._tok = False, deps.transformers().AutoTokenizer.from_pretrained(str(folder))

    def encode(self, text: str) -> np.ndarray:
        ids = self._tok.encode(text).ids if self._fast else self._tok(text)["input_ids"]
        return np.asarray(ids, np.int64)

    def decode(self, ids: list[int] | np.ndarray) -> str:
        return str(self._tok.decode([int(i) for i in ids], skip_special_tokens=True))


def encode(folder: str | Path, text: str) -> np.ndarray:
    """The token ids of `text` by the tokenizer saved in an LM folder (`Tokenizer`)."""
    return Tokenizer(folder).encode(text)


def token_windows(tokenizer: Any, text: str, *, window: int, held_out: int, calibration: int) -> TextSplit:
    """`tokenizer`: a transformers tokenizer or an LM folder. Cut the text's tokens into windows of `window` tokens; the held-out ones come from the end, the
    calibration ones from the start, so no token is in both."""
    ids = encode(tokenizer, text) if isinstance(tokenizer, (str, Path)) else \
        np.asarray(tokenizer(text, return_tensors="np")["input_ids"][0], dtype=np.int64)
    n = len(ids) // window
    if n < held_out + 1:
        raise UsageError(f"the text has {len(ids)} tokens: too few for {held_out} held-out windows of {window}",
                         hint="give a longer text, or fewer/shorter held-out windows")
    windows = [ids[i * window:(i + 1) * window] for i in range(n)]
    held = windows[n - held_out:]
    calib = windows[:min(calibration, n - held_out)]
    return TextSplit(calibration=calib, held_out=held)
