"""``--bit-allocation energy``: widths from the calibrated energy of each transformed token.

The allocation is held to its math (the bound of the paper's Theorem 1, minimized exactly on
small cases by brute force), the tiers to the ops and the PyTorch reference, and the whole
rewrite to its budget and to the one-line errors of bad input.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from torch_models import tiny_llama, tiny_llama_onnx

from stamp_onnx.cli.commands import main
from stamp_onnx.config import StampConfig, average_bits
from stamp_onnx.core.allocation import allocate_widths, non_increasing_fit, tiers_of
from stamp_onnx.errors import ConfigError
from stamp_onnx.graph import ops
from stamp_onnx.graph.calibration import save_feeds
from stamp_onnx.graph.contract import read_model
from stamp_onnx.graph.op_models import single_op_model
from stamp_onnx.pipeline import quantize_file
from stamp_onnx.zoo.models import calibration_samples

WIDTHS = (2, 3, 4, 5, 6, 7, 8)


def _bound(energy: np.ndarray, widths: np.ndarray) -> float:
    """sum_i e_i / (2^b_i - 1)^2: Theorem 1's bound without its constant d/2."""
    return float(np.sum(energy / (2.0 ** widths - 1.0) ** 2))


@pytest.mark.parametrize("ladder", [WIDTHS, (2, 4, 8, 16), (3, 5, 8)], ids=lambda w: "-".join(map(str, w)))
@pytest.mark.parametrize("seed", range(6))
def test_allocation_minimizes_the_bound(seed: int, ladder: tuple[int, ...]) -> None:
    """Brute force over every assignment within the budget: none has a lower bound (16 bits cost
    eight more than 8, where a greedy per bit goes wrong)."""
    rng = np.random.default_rng(seed)
    s = 6
    energy = np.sort(rng.lognormal(0, 3, s))[::-1]  # non-increasing: the fit is the identity
    avg = float(rng.uniform(min(ladder) + 0.5, max(ladder) - 0.5))
    widths = allocate_widths(energy, avg, ladder)
    assert widths.sum() <= avg * s + 1e-9 and np.all(np.diff(widths) <= 0)
    best = min(_bound(energy, np.array(w)) for w in itertools.product(ladder, repeat=s) if sum(w) <= avg * s + 1e-9)
    assert _bound(energy, widths) == pytest.approx(best, rel=1e-9)


def test_allocation_budget_prefix_and_order() -> None:
    rng = np.random.default_rng(7)
    energy = np.concatenate([[1e6], np.exp(-np.arange(255) / 20) * 50 + rng.random(255)])
    for avg in (2.5, 4.25, 4.5, 5.0, 7.9):
        widths = allocate_widths(energy, avg, WIDTHS, prefix=1)
        assert widths[0] == 8 and np.all(np.diff(widths) <= 0)
        assert avg * len(energy) - 1 < widths.sum() <= avg * len(energy)  # the budget is spent to the last bit
        hp_tokens, hp_bits, mid, lp_bits = tiers_of(widths)
        assert average_bits(hp_tokens, hp_bits, lp_bits, len(widths), mid) == widths.mean()
    with pytest.raises(ValueError, match="cannot hold 1 prefix token"):
        allocate_widths(energy, 2.01, WIDTHS, prefix=1)


def test_sixteen_bits_where_the_budget_allows_it() -> None:
    widths = allocate_widths(np.array([1e9, 1.0, 1.0, 1.0]), 5.5, (2, 4, 8, 16))
    assert widths.tolist() == [16, 2, 2, 2]
    # the 8 -> 16 jump drops the bound more than a cheaper step elsewhere, though less per bit
    assert allocate_widths(np.array([1e6, 50.0]), 9, (2, 4, 8, 16)).tolist() == [16, 2]


def test_beats_every_two_tier_split_of_the_same_budget() -> None:
    """A two-tier split is one non-increasing assignment, so the optimum's bound is never higher."""
    rng = np.random.default_rng(3)
    energy = np.sort(rng.lognormal(0, 1.5, 256))[::-1] + rng.random(256)
    for k in (16, 32, 64):
        two = np.array([8] * k + [4] * (256 - k))
        ours = allocate_widths(energy, two.mean(), WIDTHS)
        assert _bound(non_increasing_fit(energy), ours) <= _bound(non_increasing_fit(energy), two)


def test_non_increasing_fit_and_tiers() -> None:
    fit = non_increasing_fit(np.array([3.0, 1.0, 2.0, 5.0, 0.0]))
    np.testing.assert_allclose(fit, [3.0, 8 / 3, 8 / 3, 8 / 3, 0.0])  # 1, 2 pooled, then 5 with them
    np.testing.assert_allclose(non_increasing_fit(np.array([2.0, 1.0, 1.5])), [2.0, 1.25, 1.25])  # a small rise pooled too
    values = np.random.default_rng(0).lognormal(0, 1, 200)
    fit = non_increasing_fit(values)
    assert np.all(np.diff(fit) <= 0) and fit.sum() == pytest.approx(values.sum())  # pooling keeps each block's sum
    assert tiers_of(np.array([8, 8, 6, 5, 5, 3])) == (2, 8, ((1, 6), (2, 5)), 3)
    assert tiers_of(np.array([4, 4])) == (2, 4, (), 4)
    with pytest.raises(ValueError, match="non-increasing"):
        tiers_of(np.array([4, 5]))


def test_tiers_round_trip_through_the_node() -> None:
    spec = ops.TransformQDQSpec(ops.SequenceTransformSpec("haar", 3, False, 1), ops.TokenQDQSpec(1, 8, 3, ((4, 7), (9, 5))))
    proto = single_op_model(spec, function_body=False)
    assert ops.spec_from_proto(proto.graph.node[0]) == spec
    assert "m4b7_m9b5" in spec.overload


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    save_feeds(path, calibration_samples(tiny_llama(), 4, 64, held_out=2).feeds)
    return path


@pytest.mark.parametrize("config", [
    StampConfig(bit_allocation="energy", avg_bits=4.5),
    StampConfig(bit_allocation="energy", avg_bits=3.0, feature_transform="hadamard"),
    StampConfig(transform="none", bit_allocation="energy", avg_bits=4.25),
], ids=lambda c: c.label())
def test_rewrite_spends_each_layers_budget_and_validates(config: StampConfig, calibration: Path, tmp_path: Path) -> None:
    from stamp_onnx.evaluation.validate import validate

    out = tmp_path / "e.onnx"
    feeds = dict(np.load(calibration))
    quantize_file(tiny_llama_onnx(), out, config, calibration_feeds=feeds)
    layers = read_model(out).layers
    assert len(layers) == 15
    for layer in layers:
        q = layer.qdq
        assert config.avg_bits - 1 / 64 < average_bits(q.hp_tokens, q.hp_bits, q.lp_bits, 64, q.mid) <= config.avg_bits
        assert list(q.bits) == sorted(q.bits, reverse=True) and min(q.bits) >= 2
    assert any(layer.qdq.mid for layer in layers)  # more than two tiers somewhere
    report = validate(tiny_llama(), out, seq_len=64, n_windows=2)
    assert sum(d.qdq_mismatches for d in report.layer_diffs) == 0  # the ops are the recorded tiers' reference
    assert min(d.sqnr_db for d in report.layer_diffs) > 100  # each layer as its PyTorch reference
    assert report.ok


def test_integer_target_takes_the_tiers(calibration: Path, tmp_path: Path) -> None:
    out = tmp_path / "i.onnx"
    config = StampConfig(bit_allocation="energy", avg_bits=4.5, weight_bits=8)
    quantize_file(tiny_llama_onnx(), out, config, calibration_feeds=dict(np.load(calibration)), target="integer")
    layers = read_model(out).layers
    assert all(layer.integer for layer in layers) and any(layer.qdq.mid for layer in layers)


def test_cli_quantize_and_inspect(calibration: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c.onnx"
    assert main(["-q", "quantize", str(tiny_llama_onnx()), "-o", str(out), "--bit-allocation", "energy",
                 "--avg-bits", "4.5", "--calibration", str(calibration)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out), "--seq-len", "64"]) == 0
    text = capsys.readouterr().out
    assert "energy 4.5 bits" in text and "tiers (tokens x bits" in text and "rest x" in text
    assert main(["inspect", str(out), "--json", "--seq-len", "64"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert all(layer["average_bits"] <= 4.5 for layer in summary["layers"])


@pytest.mark.parametrize(("flags", "message"), [
    (["--bit-allocation", "energy", "--avg-bits", "4.5"], "bit allocation energy needs calibration data"),
    (["--avg-bits", "4.5"], "avg_bits=4.5 only applies to bit_allocation energy"),
    (["--bit-allocation", "energy"], "avg_bits=0 is not allowed with bit_allocation energy"),
    (["--bit-allocation", "energy", "--avg-bits", "9"], "avg_bits=9 is not allowed"),
    (["--bit-allocation", "greedy", "--avg-bits", "4"], "bit_allocation='greedy' is not allowed"),
])
def test_bad_flags_are_one_line(flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bad.onnx"
    assert main(["quantize", str(tiny_llama_onnx()), "-o", str(out), *flags]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_budget_too_small_for_the_prefix_names_the_layer(calibration: Path, tmp_path: Path) -> None:
    out = tmp_path / "small.onnx"
    config = StampConfig(bit_allocation="energy", avg_bits=2.05, prefix_tokens=4, hp_tokens=64)
    with pytest.raises(ConfigError, match=r"layer 'model\.layers\.0\.self_attn\.q_proj': 2\.05 average bits .* raise avg_bits"):
        quantize_file(tiny_llama_onnx(), out, config, calibration_feeds=dict(np.load(calibration)))
    assert not out.exists()


def test_the_htp_target_refuses_energy_allocation(calibration: Path, tmp_path: Path) -> None:
    from stamp_onnx.targets.htp_model import HtpOptions, quantize_for_htp

    with pytest.raises(ConfigError, match="--target htp does not take --bit-allocation energy"):
        quantize_for_htp(tiny_llama_onnx(), tmp_path / "h.onnx", dict(np.load(calibration)),
                         StampConfig(bit_allocation="energy", avg_bits=4.5), HtpOptions(seq_len=64))
