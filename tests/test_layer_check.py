"""The per-layer check finds every rewritten layer and catches a wrong op, with either backend.

Each check runs the rewritten model once with the function bodies and once with the native
kernels (the ``backend`` fixture): validate and eval use the kernels when they are built, a
model file shipped to stock onnxruntime runs the bodies, and both must match the reference.
"""

from __future__ import annotations

from pathlib import Path

import backends
import onnx
import pytest
from torch_models import tiny_llama, tiny_llama_onnx

from stamp_onnx.config import StampConfig
from stamp_onnx.evaluation.layer_check import find_taps, per_layer_diffs
from stamp_onnx.graph import ops
from stamp_onnx.pipeline import quantize_file
from stamp_onnx.zoo.models import linear_layer_names, sample_inputs


@pytest.mark.parametrize("transform", ["haar", "dct", "wht", "none"])
def test_every_layer_is_found_and_matches(backend: str, transform: str, tmp_path: Path) -> None:
    config = StampConfig(transform=transform, hp_tokens=8)
    out = tmp_path / "q.onnx"
    quantize_file(tiny_llama_onnx(), out, config)
    proto = onnx.load(str(out), load_external_data=False)
    ops.expose_transformed(proto)
    taps = find_taps(proto.graph)
    assert sorted(t.module for t in taps) == sorted(linear_layer_names(tiny_llama().module))
    feeds = sample_inputs(tiny_llama(), 2, 37, seed=7)
    diffs = per_layer_diffs(out, tiny_llama().module, config, feeds, native=backend == backends.NATIVE)
    assert len(diffs) == 15
    assert all(d.qdq_mismatches == 0 and d.qdq_elements > 0 for d in diffs)
    # Haar and no transform: the same float32 operations as the reference, bit for bit.
    worst = max(d.transform_rel for d in diffs)
    assert (worst == 0) if transform in ("haar", "none") else (worst < 1e-5)
    assert max(d.output_rel for d in diffs) < 1e-5


def test_haar2d_layers_match_on_a_grid(backend: str, tmp_path: Path) -> None:
    """1 prefix token + a 6 x 6 grid: every layer's transform and codes bit for bit, like the 1-D Haar."""
    config = StampConfig(transform="haar2d", prefix_tokens=1, hp_tokens=8)
    out = tmp_path / "q.onnx"
    quantize_file(tiny_llama_onnx(), out, config)
    diffs = per_layer_diffs(out, tiny_llama().module, config, sample_inputs(tiny_llama(), 2, 37, seed=9),
                            native=backend == backends.NATIVE)
    assert len(diffs) == 15 and all(d.qdq_mismatches == 0 for d in diffs)
    assert max(d.transform_rel for d in diffs) == 0 and max(d.output_rel for d in diffs) < 1e-5


def test_wrong_bits_are_caught(backend: str, tmp_path: Path) -> None:
    """The graph quantizes at 4 bits, the reference is told 8: every layer must disagree."""
    out = tmp_path / "q.onnx"
    quantize_file(tiny_llama_onnx(), out, StampConfig(hp_tokens=4, hp_bits=4, lp_bits=4))
    feeds = sample_inputs(tiny_llama(), 1, 32, seed=8)
    diffs = per_layer_diffs(out, tiny_llama().module, StampConfig(hp_tokens=4, hp_bits=8, lp_bits=4), feeds,
                            native=backend == backends.NATIVE)
    assert all(d.qdq_mismatches > 0 for d in diffs)


@pytest.mark.parametrize("transform", ["haar", "dct"])
def test_prefix_tokens_match_per_layer(backend: str, transform: str, tmp_path: Path) -> None:
    """The attention-sink option: the ONNX model and the torch reference keep the same prefix."""
    config = StampConfig(transform=transform, hp_tokens=8, prefix_tokens=1)
    out = tmp_path / "q.onnx"
    quantize_file(tiny_llama_onnx(), out, config)
    diffs = per_layer_diffs(out, tiny_llama().module, config, sample_inputs(tiny_llama(), 1, 29, seed=3),
                            native=backend == backends.NATIVE)
    assert all(d.qdq_mismatches == 0 for d in diffs)
    assert max(d.transform_rel for d in diffs) < 1e-5
    # A reference that forgets the prefix must disagree.
    wrong = per_layer_diffs(out, tiny_llama().module, config.replace(prefix_tokens=0), sample_inputs(tiny_llama(), 1, 29, seed=3))
    assert max(d.transform_rel for d in wrong) > 1e-3


def test_energy_share_of_the_first_tokens(tmp_path: Path) -> None:
    """hp_energy is the share of L x's energy in the first K tokens: 1 when K covers all."""
    feeds = sample_inputs(tiny_llama(), 1, 24, seed=5)
    shares = {}
    for k in (4, 24):
        config = StampConfig(hp_tokens=k)
        out = tmp_path / f"q{k}.onnx"
        quantize_file(tiny_llama_onnx(), out, config)
        shares[k] = [d.hp_energy for d in per_layer_diffs(out, tiny_llama().module, config, feeds)]
    assert all(0 < s < 1 for s in shares[4]) and all(abs(s - 1) < 1e-12 for s in shares[24])
