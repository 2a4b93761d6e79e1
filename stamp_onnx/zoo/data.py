"""Real English text for evaluation, cut into fixed token windows.

Two corpora can be had offline (docs/design.md, "Data offline"); the first one present wins:

1. ``python3.11-doc``: Debian's reStructuredText sources of the Python tutorial
   (``/usr/share/doc/python3.11/html/_sources/tutorial/*.rst.txt``), files in name order.
2. ``pydoc_data.topics``: the help-topic texts shipped with every CPython, topics in key order.

Reports must say which one was used: :func:`load_corpus` returns a :class:`Corpus` whose
``name`` says so, and :func:`text_windows` takes or loads one.

Windows (see :func:`window_starts`): the corpus is tokenized once (no special tokens) into one
token stream of length N, cut into ``N // window`` non-overlapping slots, and ``n`` of them are
taken evenly spaced (slot ``floor(i * slots / n)``). Tokens the tokenizer adds around every
input (BERT's ``[CLS] ... [SEP]``) are added to each window and count towards ``window``.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

TUTORIAL_GLOB = "/usr/share/doc/python3.11/html/_sources/tutorial/*.rst.txt"


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A named body of text; ``name`` is what a report prints."""

    name: str
    source: str
    documents: tuple[str, ...]

    @property
    def n_chars(self) -> int:
        return sum(len(d) for d in self.documents)


def load_corpus(tutorial_glob: str = TUTORIAL_GLOB) -> Corpus:
    """The Python tutorial sources if installed, else the stdlib pydoc topics."""
    return _load_corpus(tutorial_glob)


@functools.lru_cache(maxsize=4)
def _load_corpus(tutorial_glob: str) -> Corpus:
    files = sorted(glob.glob(tutorial_glob))
    if files:
        documents = tuple(Path(f).read_text(encoding="utf-8", errors="replace") for f in files)
        logger.info("text corpus: %d tutorial files under %s", len(files), os.path.dirname(files[0]))
        return Corpus("python3.11-doc tutorial", os.path.dirname(tutorial_glob), documents)
    from pydoc_data import topics

    documents = tuple(topics.topics[key] for key in sorted(topics.topics))
    logger.info("text corpus: pydoc_data.topics (%d topics; python3.11-doc is not installed)", len(documents))
    return Corpus("pydoc_data.topics", topics.__file__ or "pydoc_data.topics", documents)


def token_stream(tokenizer: Any, corpus: Corpus) -> np.ndarray:
    """All documents tokenized without special tokens and concatenated, as int64 (N,)."""
    key = (id(tokenizer), corpus.name, corpus.source, corpus.n_chars)
    cached = _STREAMS.get(key)
    if cached is not None and cached[0] is tokenizer:
        return cached[1]
    encoded = tokenizer(list(corpus.documents), add_special_tokens=False, verbose=False)["input_ids"]
    sep = _document_separator(tokenizer)
    parts: list[int] = []
    for ids in encoded:
        parts.extend(ids)
        parts.extend(sep)
    stream = np.asarray(parts, dtype=np.int64)
    _STREAMS.clear()  # one tokenizer at a time is all a run needs
    _STREAMS[key] = (tokenizer, stream)
    return stream


_STREAMS: dict[tuple[Any, ...], tuple[Any, np.ndarray]] = {}


def window_starts(n_tokens: int, n_windows: int, window: int, seed: int | None = None, avoid: int = 0) -> list[int]:
    """Start offsets of ``n_windows`` non-overlapping windows in a stream of ``n_tokens``.

    ``seed=None``: evenly spaced slots (the documented evaluation set). An integer seed picks
    ``n_windows`` distinct slots at random (sorted), for varied sample inputs. ``avoid``: leave
    out the slots an evenly spaced set of that many windows takes (calibration data held out
    from an evaluation of ``avoid`` windows of the same length).
    """
    if n_windows < 1 or window < 1:
        raise ValueError(f"n_windows and window must be >= 1, got {n_windows} and {window}")
    slots = n_tokens // window
    taken = {i * slots // avoid for i in range(avoid)} if avoid else set()
    free = [slot for slot in range(slots) if slot not in taken]
    if len(free) < n_windows:
        held = f" besides the {len(taken)} held out for evaluation" if taken else ""
        raise ValueError(
            f"the corpus has {n_tokens} tokens: room for {len(free)} windows of {window}{held}, "
            f"{n_windows} asked; use fewer or shorter windows"
        )
    if seed is None:
        chosen = [free[i * len(free) // n_windows] for i in range(n_windows)]
    else:
        chosen = sorted(np.random.default_rng(seed).choice(free, size=n_windows, replace=False).tolist())
    return [slot * window for slot in chosen]


def text_windows(
    tokenizer: Any,
    n_windows: int,
    window: int,
    *,
    corpus: Corpus | None = None,
    seed: int | None = None,
    avoid: int = 0,
) -> np.ndarray:
    """Token windows of real text, int64 (n_windows, window); deterministic for a given seed.

    ``avoid``: none of the windows is one of the ``avoid`` evenly spaced evaluation windows.

    Example: ``text_windows(tok, 8, 512)`` -> (8, 512), the same 8 windows on every call.
    """
    corpus = corpus or load_corpus()
    prefix, suffix = special_tokens(tokenizer)
    body = window - len(prefix) - len(suffix)
    if body < 1:
        raise ValueError(f"window={window} leaves no room for text besides {len(prefix) + len(suffix)} special tokens")
    stream = token_stream(tokenizer, corpus)
    starts = window_starts(len(stream), n_windows, body, seed, avoid)
    rows = [np.concatenate([prefix, stream[s : s + body], suffix]) for s in starts]
    return np.stack(rows).astype(np.int64)


def special_tokens(tokenizer: Any) -> tuple[np.ndarray, np.ndarray]:
    """The token ids the tokenizer puts before and after every input (maybe none)."""
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return _ids(full[:i]), _ids(full[i + len(plain) :])
    return _ids([]), _ids([])


def _document_separator(tokenizer: Any) -> Sequence[int]:
    """Ids of a blank line, put between documents so they do not run together."""
    return list(tokenizer("\n\n", add_special_tokens=False)["input_ids"])


def _ids(values: Sequence[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)
