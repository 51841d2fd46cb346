"""What `edgekit.load` gives for a bundle that holds a language model: `generate()` and `stream()` on text.

The model and its tokenizer are read into memory while the bundle is open (the extraction is gone once
`load` returns, as for every bundle). Generation is greedy, the decoding every check and benchmark of
edgekit measured; one sequence runs at a time (a lock keeps two threads from sharing the KV cache).
"""
from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import UsageError
from edgekit.llm.runtime import LM, load_lm
from edgekit.llm.text import Tokenizer


class LMEngine:
    """A decoder from a verified bundle. `generate(prompt)` returns the continuation's text, `stream(prompt)`
    yields it piece by piece as tokens arrive; `generate_ids` works on token ids. `info` says which artifact
    was chosen and why, `manifest` is the bundle's."""

    kind = "lm"

    def __init__(self, lm: LM, tokenizer: Tokenizer, *, manifest: dict[str, Any], info: dict[str, Any]) -> None:
        self.lm, self.tokenizer, self.manifest = lm, tokenizer, manifest
        self.info = {"weights": lm.meta.weights, "runtime": type(lm).__name__, **info}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, folder: str | Path, *, manifest: dict[str, Any], info: dict[str, Any], threads: int | None = None) -> LMEngine:
        """Read an LM folder (as `edgekit lm quantize` wrote it) into memory."""
        folder = Path(folder)
        return cls(load_lm(folder, threads=threads, last_only=True), Tokenizer(folder), manifest=manifest, info=info)

    def _prompt_ids(self, prompt: str | Sequence[int] | np.ndarray) -> np.ndarray:
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else np.asarray(prompt, np.int64).reshape(-1)
        if ids.size == 0:
            raise UsageError("the prompt is empty (no tokens)", hint="give some text to continue")
        return ids

    @staticmethod
    def _check_count(max_new_tokens: int) -> None:
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise UsageError(f"max_new_tokens={max_new_tokens!r}: give a whole number >= 1")

    def generate_ids(self, prompt: str | Sequence[int] | np.ndarray, max_new_tokens: int = 64, *, stop_at_eos: bool = True) -> list[int]:
        """The new token ids of the greedy continuation of `prompt` (text or token ids)."""
        self._check_count(max_new_tokens)
        ids = self._prompt_ids(prompt)
        with self._lock:
            return self.lm.generate_ids(ids, max_new_tokens, stop_at_eos=stop_at_eos)

    def generate(self, prompt: str | Sequence[int] | np.ndarray, max_new_tokens: int = 64, *, stop_at_eos: bool = True) -> str:
        """The text of the greedy continuation of `prompt` (up to `max_new_tokens` tokens, ending at EOS)."""
        return self.tokenizer.decode(self.generate_ids(prompt, max_new_tokens, stop_at_eos=stop_at_eos))

    def stream(self, prompt: str | Sequence[int] | np.ndarray, max_new_tokens: int = 64, *, stop_at_eos: bool = True) -> Iterator[str]:
        """The continuation's text as it is generated: each piece is what the new token adds to the decoded text
        (a character split over several byte tokens arrives whole). The pieces join to `generate()`'s text."""
        self._check_count(max_new_tokens)
        ids = self._prompt_ids(prompt)
        with self._lock:
            new: list[int] = []
            sent = ""
            for t in self.lm.greedy(ids, max_new_tokens, stop_at_eos=stop_at_eos):
                new.append(t)
                text = self.tokenizer.decode(new)
                if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next byte
                    continue
                if len(text) > len(sent) and text.startswith(sent):
                    yield text[len(sent):]
                    sent = text
            text = self.tokenizer.decode(new)
            if text != sent and text.startswith(sent):
                yield text[len(sent):]

    def close(self) -> None:
        close = getattr(self.lm, "close", None)
        if close is not None:  # TensorRT's instance frees its GPU memory now
            close()
        self.lm = None  # type: ignore[assignment]

    def __enter__(self) -> LMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
