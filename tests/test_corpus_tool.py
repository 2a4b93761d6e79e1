"""tools/corpus.py on small local models: rows for a rewrite, a refusal and a crashing child."""

from __future__ import annotations

import os
from pathlib import Path

import models
import numpy as np
import pytest
import tool_modules

corpus = tool_modules.load("corpus")


def _feeds(batch: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((batch, 16, models.D_IN)).astype(np.float32)}


def _abort(batch: int, seed: int) -> dict[str, np.ndarray]:
    os._exit(134)  # as a native abort ends the child (os.abort would also dump pytest's faulthandler)


def test_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mlp = models.save(models.mlp_model(), tmp_path / "mlp.onnx")
    attention = models.save(models.attention_only_model(), tmp_path / "attention.onnx")
    axes = {"x": 0, "y": 0, "scores": 0}
    rewritable = corpus.Model("local", "0", "mlp.onnx", _feeds, axes, "2 layers")
    refused = corpus.Model("local", "0", "attention.onnx", _feeds, {"a": None, "b": None, "y": None}, "error")
    crashing = corpus.Model("local", "0", "crash.onnx", _abort, axes, "crash")
    monkeypatch.setattr(corpus, "MODELS", [rewritable, refused, crashing])  # the child finds models by index

    row = corpus.run_isolated(rewritable, mlp, tmp_path)
    assert (row.error, row.rewritten, row.batch_independent) == ("", 2, "yes")
    assert "1 not a linear layer" in row.skipped
    sqnr_y = float(next(part for part in row.sqnr.split(", ") if part.startswith("y ")).split()[1])
    assert 10 < sqnr_y < 60, row.sqnr  # 4-bit tokens: noisy, but the same function

    row = corpus.run_isolated(refused, attention, tmp_path)
    assert row.rewritten == 0 and row.error.startswith("no linear layer to rewrite in attention.onnx")

    row = corpus.run_isolated(crashing, mlp, tmp_path)  # quantize succeeds, then the feeds abort the child
    assert row.error == "the child process died (a native abort or crash)"

    table = corpus.markdown([corpus.Row("m", "s", error="bad | pipe")])
    assert table.splitlines()[0].startswith("| model | source |") and len(table.splitlines()) == 3
