"""GPTQ weight quantization: round-to-nearest when H is the identity, the textbook OBS walk, output error.

The math is held to an independent, slow implementation written here (``textbook_gptq``: H^-1
downdated row by row, no Cholesky, no batches, its own scales). The pass test is a wiring
check: its expectation calls gptq_quantize itself, with a Hessian computed here from the
layer input it reads out of the model, so it checks which weight, which Hessian and which
layout the pass feeds GPTQ, not GPTQ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from torch_models import tiny_llama, tiny_llama_onnx

from stamp_onnx.config import StampConfig
from stamp_onnx.core import gptq, weights
from stamp_onnx.core.smoothing import smoothed_weight
from stamp_onnx.errors import ConfigError
from stamp_onnx.evaluation.layer_check import per_layer_diffs
from stamp_onnx.graph import runtime
from stamp_onnx.graph.calibration import calibrate
from stamp_onnx.graph.contract import SCALE_KEY, decode_scale, dequantized_weights, rewritten_layers
from stamp_onnx.graph.model_io import load_model
from stamp_onnx.passes.layer_weights import read_weight
from stamp_onnx.passes.linear_layers import find_linear_layers
from stamp_onnx.pipeline import quantize_file
from stamp_onnx.zoo.models import calibration_samples


def random_weight(rng: np.random.Generator, d_in: int, d_out: int) -> np.ndarray:
    """Heavy-tailed weights with one all-zero output channel (scale 1)."""
    w = (rng.standard_t(4, (d_in, d_out)) * 0.05).astype(np.float32)
    w[:, 1] = 0.0
    return w


def near_ties(d_in: int) -> np.ndarray:
    """A column whose w / scale are exact halves in float32 but not in float64 (every 32nd row is the max)."""
    step = np.float32(7 * 0.0342808) / np.float32(7)  # the scale of the column and of each block of 32
    k = np.arange(d_in) % 14 - 7
    column = ((k + 0.5) * np.float64(step)).astype(np.float32)
    column[::32] = np.float32(7 * 0.0342808)
    return column


def correlated_inputs(rng: np.random.Generator, tokens: int, d_in: int) -> np.ndarray:
    """x = z A: features mixed by a random A, so H = x^T x is far from diagonal."""
    z = rng.standard_normal((tokens, d_in))
    a = rng.standard_normal((d_in, d_in)) + 2.0 * rng.standard_normal((1, d_in))  # a shared direction
    return (z @ a).astype(np.float32)


def w_hat(q: np.ndarray, scale: np.ndarray, block: int) -> np.ndarray:
    return q.astype(np.float32) * weights.expand_scales(scale, q.shape[0], block)


def column_scales(w: np.ndarray, bits: int) -> np.ndarray:
    """max |w| / qmax per column in float32, 1 for an all-zero column (symmetric weight scales)."""
    amax = np.abs(w.astype(np.float32)).max(axis=0)
    return np.where(amax == 0, np.float32(1), amax / np.float32(2 ** (bits - 1) - 1)).astype(np.float32)


def textbook_gptq(w: np.ndarray, h: np.ndarray, bits: int, block: int, damp: float) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ written the slow way: H^-1 downdated after every row (OBS), no Cholesky, no batches."""
    current = w.astype(np.float64)
    h = h.copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    current[dead] = 0.0
    h += damp * np.mean(np.diag(h)) * np.eye(len(h))
    h_inv = np.linalg.inv(h)
    qmax = 2 ** (bits - 1) - 1
    q = np.zeros(w.shape, np.int8)
    scale = np.zeros((-(-w.shape[0] // block), w.shape[1]), np.float32) if block else column_scales(w, bits)
    s = scale
    for i in range(w.shape[0]):
        if block and i % block == 0:
            s = scale[i // block] = column_scales(current[i : i + block], bits)
        q[i] = np.clip(np.round(current[i].astype(np.float32) / s), -qmax, qmax)
        err = (current[i] - q[i] * s.astype(np.float64)) / h_inv[i, i]
        current -= np.outer(h_inv[:, i], err)  # rows < i have h_inv[:, i] = 0 after their downdates
        h_inv -= np.outer(h_inv[:, i], h_inv[i, :]) / h_inv[i, i]
    return q, scale


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize(("d_in", "block"), [(96, 0), (96, 32), (100, 32), (100, 0)])
def test_identity_hessian_is_round_to_nearest(bits: int, d_in: int, block: int) -> None:
    """No error moves when the inputs are uncorrelated: exactly weights.quantize_weight."""
    w = random_weight(np.random.default_rng(d_in + block + bits), d_in, 24)
    w[:, 2] = near_ties(d_in)  # ties round half to even in float32, as quantize_weight does
    q, scale = gptq.gptq_quantize(w, 3.5 * np.eye(d_in), bits, block, column_block=40)
    q_rtn, scale_rtn = weights.quantize_weight(w, bits, block)
    assert q.dtype == np.int8 and scale.dtype == np.float32
    np.testing.assert_array_equal(scale, scale_rtn)
    np.testing.assert_array_equal(q, q_rtn)


@pytest.mark.parametrize(("bits", "block"), [(4, 0), (4, 16), (3, 7), (8, 16)])
@pytest.mark.parametrize("column_block", [1, 24, 128])
def test_matches_the_textbook_algorithm(bits: int, block: int, column_block: int) -> None:
    """Cholesky form and lazy batches (24 rows: blocks of 16 straddle two batches) == the OBS walk."""
    rng = np.random.default_rng(7 * bits + block)
    x = correlated_inputs(rng, 256, 56)
    x[:, 9] = 0.0  # a dead input as well
    w = random_weight(rng, 56, 20)
    h = gptq.hessian(x)
    q, scale = gptq.gptq_quantize(w, h, bits, block, column_block=column_block)
    q_ref, scale_ref = textbook_gptq(w, h, bits, block, 0.01)
    np.testing.assert_allclose(scale, scale_ref, rtol=1e-6)
    np.testing.assert_array_equal(q, q_ref)


@pytest.mark.parametrize("block", [0, 16])
def test_output_error_is_smaller_than_round_to_nearest(block: int) -> None:
    rng = np.random.default_rng(2024)
    x = correlated_inputs(rng, 2048, 64)
    w = (rng.standard_normal((64, 48)) * 0.1).astype(np.float32)
    q, scale = gptq.gptq_quantize(w, gptq.hessian(x), 4, block)
    q_rtn, scale_rtn = weights.quantize_weight(w, 4, block)
    assert q.dtype == np.int8 and scale.dtype == np.float32
    assert q.shape == w.shape and scale.shape == scale_rtn.shape
    assert np.abs(q).max() <= 7 and np.abs(q).max() == 7
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    err_gptq = np.linalg.norm(x64 @ (w64 - w_hat(q, scale, block)))
    err_rtn = np.linalg.norm(x64 @ (w64 - w_hat(q_rtn, scale_rtn, block)))
    assert err_gptq < 0.8 * err_rtn, (err_gptq, err_rtn)
    # while each weight moves by at most a few steps from its round-to-nearest code
    assert np.abs(w_hat(q, scale, block) - w).max() < 4 * scale.max()


@pytest.mark.parametrize("block", [0, 16])
def test_dead_input_gives_a_zero_row(block: int) -> None:
    rng = np.random.default_rng(5)
    x = correlated_inputs(rng, 512, 48)
    x[:, [5, 47]] = 0.0
    w = random_weight(rng, 48, 16)
    q, scale = gptq.gptq_quantize(w, gptq.hessian(x), 4, block)
    assert np.isfinite(scale).all() and (scale > 0).all()
    assert not q[[5, 47]].any()
    assert q[[4, 6]].any()


def test_all_zero_hessian_gives_all_zero_codes() -> None:
    w = random_weight(np.random.default_rng(6), 32, 8)
    q, scale = gptq.gptq_quantize(w, np.zeros((32, 32)), 4, 8)
    assert not q.any()
    np.testing.assert_array_equal(scale, 1.0)


def test_deterministic() -> None:
    rng = np.random.default_rng(11)
    x = correlated_inputs(rng, 512, 40)
    w = random_weight(rng, 40, 12)
    h = gptq.hessian(x)
    first = gptq.gptq_quantize(w, h, 4, 8, column_block=16)
    second = gptq.gptq_quantize(w, h.copy(), 4, 8, column_block=16)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_hessian_sums_over_leading_axes() -> None:
    x = np.random.default_rng(3).standard_normal((2, 5, 6)).astype(np.float32)
    h = gptq.hessian(x)
    assert h.dtype == np.float64 and h.shape == (6, 6)
    expected = sum(x[b].astype(np.float64).T @ x[b].astype(np.float64) for b in range(2))
    np.testing.assert_allclose(h, expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("w_shape", "h_shape", "kwargs", "message"),
    [
        ((16, 4), (16, 15), {}, r"hessian must have shape \(d_in, d_in\) = \(16, 16\)"),
        ((16, 4), (4, 4), {}, r"hessian must have shape .* got \(4, 4\)"),
        ((16,), (16, 16), {}, r"w must be a non-empty \(d_in, d_out\) matrix"),
        ((16, 4), (16, 16), {"bits": 1}, "bits must be in 2..8"),
        ((16, 4), (16, 16), {"block": -1}, "block must be 0"),
        ((16, 4), (16, 16), {"column_block": 0}, "column_block must be >= 1"),
    ],
)
def test_bad_arguments(w_shape: tuple[int, ...], h_shape: tuple[int, ...], kwargs: dict[str, int], message: str) -> None:
    w = np.ones(w_shape, np.float32)
    args = {"bits": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        gptq.gptq_quantize(w, np.eye(h_shape[0], h_shape[1]), **args)


def test_not_positive_definite_hessian_is_reported() -> None:
    h = -np.eye(8)
    with pytest.raises(ValueError, match="not positive definite"):
        gptq.gptq_quantize(np.ones((8, 2), np.float32), h, 4, damp=0.0)


# --- the rewrite with --weight-method gptq --------------------------------------------------


def _gptq_model(tmp_path: Path, config: StampConfig) -> tuple[Path, dict[str, np.ndarray]]:
    feeds = calibration_samples(tiny_llama(), 4, 24, held_out=2).feeds
    out = tmp_path / f"{config.weight_method}.onnx"
    quantize_file(tiny_llama_onnx(), out, config, calibration_feeds=feeds)
    return out, feeds


def _hessian_of(path: Path, value: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """sum x^T x in float64 of the model's ``value`` (..., d) over the samples of ``feeds``, run all at once."""
    proto = onnx.load(str(path))
    proto.graph.output.append(onnx.helper.make_tensor_value_info(value, onnx.TensorProto.FLOAT, None))
    session = runtime.session(proto.SerializeToString())
    wanted = {i.name for i in session.get_inputs()}
    (x,) = session.run([value], {k: v for k, v in feeds.items() if k in wanted})
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    return flat.T @ flat


@pytest.mark.parametrize("feature", ["none", "hadamard", "smoothquant"])
def test_the_pass_quantizes_in_the_frame_of_the_weight(feature: str, tmp_path: Path) -> None:
    """The codes are gptq_quantize(R^T W or diag(s) W, H) with H of the layer's MatMul input in
    the same model rewritten with round-to-nearest weights (every earlier layer quantized).

    A wiring check (module docstring); H is also recomputed here from that input, read out of
    the RTN model, to hold calibrate's Hessian to it.
    """
    config = StampConfig(hp_tokens=8, weight_bits=4, weight_block=16, weight_method="gptq", feature_transform=feature)
    out, feeds = _gptq_model(tmp_path, config)
    rtn = tmp_path / "rtn.onnx"
    quantize_file(tiny_llama_onnx(), rtn, config.replace(weight_method="rtn"),
                  calibration_feeds=feeds if feature == "smoothquant" else None)
    layer = "model.layers.1.self_attn.q_proj"
    node = next(item.node for item in find_linear_layers(load_model(tiny_llama_onnx()).graph)[0] if item.name == layer)
    w = read_weight(node)
    rewritten = ir.load(str(out))
    linear = next(n for name, n, _ in rewritten_layers(rewritten.graph) if name == layer)
    name = str(linear.inputs[0].name)
    h = calibrate(rtn, feeds, [name], hessians=True).hessian[name]
    np.testing.assert_allclose(h, _hessian_of(rtn, name, feeds), rtol=0, atol=1e-5 * float(np.abs(h).max()))
    if feature == "hadamard":
        w = (weights.feature_rotation(w.shape[0]).T @ w.astype(np.float64)).astype(np.float32)
    if feature == "smoothquant":
        quantizer = next(q for name, _, q in rewritten_layers(rewritten.graph) if name == layer)
        w = smoothed_weight(w, decode_scale(quantizer.metadata_props[SCALE_KEY]))
    q, scale = gptq.gptq_quantize(w, h, 4, 16)
    expected = q.astype(np.float32) * weights.expand_scales(scale, w.shape[0], 16)
    np.testing.assert_array_equal(dequantized_weights(rewritten)[layer], expected)


def test_gptq_lowers_the_layer_error_on_the_calibration_data(tmp_path: Path) -> None:
    """16-bit activations: the float-layer SQNR on the calibration inputs is higher than RTN's, layer by layer on average."""
    sqnr = {}
    for method in ("rtn", "gptq"):
        config = StampConfig(hp_tokens=8, hp_bits=16, lp_bits=16, weight_bits=3, weight_method=method,
                             feature_transform="none")
        if method == "rtn":  # RTN takes no calibration data
            out = tmp_path / "rtn.onnx"
            quantize_file(tiny_llama_onnx(), out, config)
            feeds = _gptq_model(tmp_path, config.replace(weight_method="gptq"))[1]
        else:
            out, feeds = _gptq_model(tmp_path, config)
        diffs = per_layer_diffs(out, tiny_llama().module, config, feeds)
        assert diffs and all(d.qdq_mismatches == 0 for d in diffs) and max(d.output_rel for d in diffs) < 1e-4
        sqnr[method] = np.mean([d.float_sqnr_db for d in diffs])
    assert sqnr["gptq"] > sqnr["rtn"] + 1.0, sqnr


def test_gptq_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs weight_bits"):
        StampConfig(weight_method="gptq")
    with pytest.raises(ConfigError, match="weight_method='obs'"):
        StampConfig(weight_bits=4, weight_method="obs")
    with pytest.raises(ConfigError, match="weight method gptq needs calibration data"):
        quantize_file(tiny_llama_onnx(), tmp_path / "x.onnx", StampConfig(weight_bits=4, weight_method="gptq"))
