"""Validation end to end on the tiny Llama, plus the leak-free mask and the SQNR accumulation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from torch_models import tiny_llama, tiny_llama_onnx

from stamp_onnx.config import StampConfig
from stamp_onnx.core import quant
from stamp_onnx.errors import ValidationError
from stamp_onnx.evaluation.metrics import RunningDiff, leak_free_mask
from stamp_onnx.evaluation.validate import read_stamp_metadata, validate
from stamp_onnx.pipeline import quantize_file


@pytest.mark.parametrize("transform", ["haar", "none"])
def test_validate_tiny_llama(transform: str, tmp_path: Path) -> None:
    config = StampConfig(transform=transform, hp_tokens=16)
    out = tmp_path / "q.onnx"
    quantize_file(tiny_llama_onnx(), out, config)
    recorded, layers = read_stamp_metadata(out)
    assert recorded == config and "lm_head" in layers and len(layers) == 15
    report = validate(tiny_llama(), out, float_onnx_path=tiny_llama_onnx(), batch=2, seq_len=64, n_windows=3)
    assert report.ok, report.to_table()
    report.check()
    assert report.layers_rewritten == report.layers_hooked == 15
    float_row, t_row, qdq_row, w_row, layer_row, float_layer_row, end_row, torch_row, onnx_row = report.rows
    assert float_row.rel < 1e-5 and end_row.sqnr_db > 60
    assert qdq_row.max_abs == 0 and qdq_row.passed and t_row.rel < 1e-5 and w_row.rel < 1e-5
    assert layer_row.sqnr_db > 100 and 10 < float_layer_row.sqnr_db < 80
    assert 10 < torch_row.sqnr_db < 80 and abs(torch_row.sqnr_db - onnx_row.sqnr_db) < 1
    assert len(report.layer_diffs) == 15
    assert report.targets_all == 3 * 63
    # Haar keeps token 0 out (default prefix) and transforms 8-token blocks from token 1 on:
    # leak-free targets are position 0 and the block ends 8, 16, ..., 56.
    assert report.targets_leak_free == (3 * 8 if transform == "haar" else 3 * 63)
    text = report.to_table()
    assert "per layer: TokenQDQ codes differing" in text and "leak-free" in text
    json.dumps(report.to_dict())


def test_unrecorded_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not written by stamp-onnx quantize"):
        validate(tiny_llama(), tiny_llama_onnx(), seq_len=16, n_windows=1)


def test_float_model_with_in_memory_config(tmp_path: Path) -> None:
    """Without a rewrite the 'STaMP ONNX' output is the float one: the SQNR match must fail."""
    report = validate(tiny_llama(), tiny_llama_onnx(), float_onnx_path=tiny_llama_onnx(),
                      seq_len=32, n_windows=1, config=StampConfig(hp_tokens=4, lp_bits=2))
    assert not report.ok
    assert not report.layer_diffs  # no TokenQDQ node: nothing to compare per layer
    with pytest.raises(ValidationError, match="STaMP ONNX vs float torch"):
        report.check()


def test_leak_free_positions() -> None:
    def positions(seq_len: int, **changes: object) -> list[int]:
        return leak_free_mask(seq_len, StampConfig(prefix_tokens=0).replace(**changes)).nonzero()[0].tolist()

    assert positions(32, transform="haar", levels=3) == [7, 15, 23, 31]
    assert positions(32, transform="haar", levels=1) == list(range(1, 32, 2))
    assert positions(32, transform="haar", levels=3, prefix_tokens=1) == [0, 8, 16, 24, 31]
    assert leak_free_mask(10, StampConfig(transform="none")).all()
    assert positions(16, transform="dct") == [15]
    assert positions(17, transform="dct", prefix_tokens=1) == [0, 16]
    assert positions(12, transform="wht") == [7, 11]  # blocks 8 + 4


def test_accumulated_sqnr_equals_sqnr_db_of_everything() -> None:
    rng = np.random.default_rng(0)
    refs = [rng.standard_normal((2, 5, 7)).astype(np.float32) for _ in range(3)]
    approx = [r + 0.01 * rng.standard_normal(r.shape).astype(np.float32) for r in refs]
    diff = RunningDiff()
    for r, a in zip(refs, approx, strict=True):
        diff.update(r, a)
    expected = quant.sqnr_db(np.concatenate(refs), np.concatenate(approx))
    assert diff.sqnr_db() == pytest.approx(expected, abs=1e-9)
    assert diff.max_abs == pytest.approx(float(np.abs(np.concatenate(refs) - np.concatenate(approx)).max()))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no such file"):
        read_stamp_metadata(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValidationError, match="not a readable ONNX model"):
        read_stamp_metadata(bad)
