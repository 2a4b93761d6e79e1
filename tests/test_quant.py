"""Tests for stamp_onnx.core.quant, the per-token mixed-precision quantizer oracle.

The quantizer is held bit for bit to a literal, scalar transcription of the formula
(tests/oracles.py), and at 8 bits to ONNX Runtime's DynamicQuantizeLinear + DequantizeLinear.
The hard tokens (ties, the clip, one-signed tokens) at every width are in test_hard_tokens.py.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import oracles
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper

from stamp_onnx.core import quant, transforms

BITS = (2, 3, 4, 5, 6, 7, 8, 16)
F32 = np.float32


def _reference(x: np.ndarray, bits_per_token: list[int]) -> np.ndarray:
    """The reference on (s, d): token i at bits_per_token[i]."""
    return np.stack([oracles.literal_qdq_token(x[i], b) for i, b in enumerate(bits_per_token)])


def _mixed(seed: int, s: int = 12, d: int = 16) -> np.ndarray:
    """Tokens of varied character: mixed sign, all positive, all negative, tiny, huge."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((s, d)) * rng.uniform(0.01, 50, size=(s, 1))
    x += rng.uniform(-3, 3, size=(s, 1))
    x[1] = np.abs(x[1]) + 0.5
    x[2] = -np.abs(x[2]) - 0.5
    x[3] *= 1e-6
    x[4] *= 1e4
    return x.astype(F32)


def _ties(bits: int) -> np.ndarray:
    """One token whose scale is exactly 1 and whose values all sit on .5 (rounding ties)."""
    qmax = 2**bits - 1
    # rmin = -2.5, rmax = qmax - 2.5: scale 1, zp = round(2.5) = 2 (half to even).
    return np.arange(-2.5, qmax - 2.5 + 0.5, 1.0, dtype=F32)[None, :]


# --- the literal formula ------------------------------------------------------------------


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("seed", range(4))
def test_qdq_matches_literal_formula(bits: int, seed: int) -> None:
    x = _mixed(seed)
    got = quant.qdq(x, bits)
    assert got.dtype == F32 and got.shape == x.shape
    np.testing.assert_array_equal(got, _reference(x, [bits] * x.shape[0]))


@pytest.mark.parametrize("bits", BITS)
def test_qdq_rounds_half_to_even(bits: int) -> None:
    x = _ties(bits)
    got = quant.qdq(x, bits)
    np.testing.assert_array_equal(got, _reference(x, [bits]))
    np.testing.assert_array_equal(quant.qdq(torch.from_numpy(x), bits).numpy(), got)
    scale, zp = quant.qparams(x, bits)
    assert scale[0, 0] == 1.0 and zp[0, 0] == 2.0
    # -2.5 -> -2, -1.5 -> -2, -0.5 -> 0, 0.5 -> 0, 1.5 -> 2, 2.5 -> 2 (2 bits: only the first 4).
    n = min(6, x.shape[-1])
    np.testing.assert_array_equal(got[0, :n], [-2.0, -2.0, 0.0, 0.0, 2.0, 2.0][:n])


@pytest.mark.parametrize("bits", BITS)
def test_qparams_match_formula(bits: int) -> None:
    x = _mixed(5)
    scale, zp = quant.qparams(x, bits)
    assert scale.shape == zp.shape == (x.shape[0], 1)
    assert scale.dtype == zp.dtype == F32
    qmax = 2**bits - 1
    for i, row in enumerate(x):
        rmin, rmax = min(F32(0), row.min()), max(F32(0), row.max())
        want_scale = F32(rmax - rmin) / F32(qmax)
        assert scale[i, 0] == want_scale
        assert zp[i, 0] == min(max(round(float(-rmin / want_scale)), 0), qmax)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("hp", (0, 5, 12, 40), ids=["k0", "k<s", "k=s", "k>s"])
def test_token_qdq_mixed_precision_matches_literal_formula(hp: int, bits: int) -> None:
    x = _mixed(hp + bits)
    lp_bits = 4 if bits != 4 else 2
    got = quant.token_qdq(x, hp, bits, lp_bits)
    s = x.shape[0]
    want = _reference(x, [bits if i < hp else lp_bits for i in range(s)])
    np.testing.assert_array_equal(got, want)
    # And it is exactly qdq on each part.
    k = min(hp, s)
    np.testing.assert_array_equal(got[:k], quant.qdq(x[:k], bits))
    np.testing.assert_array_equal(got[k:], quant.qdq(x[k:], lp_bits))


def test_token_qdq_batched_uses_token_axis() -> None:
    x = np.stack([_mixed(1), _mixed(2), _mixed(3)]).reshape(3, 1, 12, 16)
    got = quant.token_qdq(x, 5, 8, 4)
    assert got.shape == x.shape and got.dtype == F32
    bits = [8] * 5 + [4] * 7
    for b in range(3):
        np.testing.assert_array_equal(got[b, 0], _reference(x[b, 0], bits))


# --- ONNX spec: DynamicQuantizeLinear + DequantizeLinear -----------------------------------


@pytest.fixture(scope="module")
def dynamic_qdq_session() -> ort.InferenceSession:
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "scale", "zp"]),
        helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "dynamic_qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["d"])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["d"]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("zp", TensorProto.UINT8, []),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("seed", range(3))
def test_8bit_matches_onnxruntime_dynamic_quantize_linear(
    dynamic_qdq_session: ort.InferenceSession, seed: int
) -> None:
    x = np.concatenate([_mixed(seed, s=40, d=37), _ties(8)[:, :37]])
    x[7] = 0.0  # a zero token: scale 1 in both
    x[8] = 3.0  # a constant positive token
    x[9] = -0.1  # a constant negative token
    got = quant.qdq(x, 8)
    scale, zp = quant.qparams(x, 8)
    for i, row in enumerate(x):
        y, ort_scale, ort_zp = dynamic_qdq_session.run(None, {"x": np.ascontiguousarray(row)})
        np.testing.assert_array_equal(got[i], y, err_msg=f"token {i}")
        assert scale[i, 0] == ort_scale, i
        assert zp[i, 0] == ort_zp, i


# --- edge cases, error bound, numpy == torch ----------------------------------------------


@pytest.mark.parametrize("bits", BITS)
def test_zero_tokens_are_exact_with_scale_one(bits: int) -> None:
    x = _mixed(bits)
    x[[0, 6]] = 0.0
    scale, zp = quant.qparams(x, bits)
    assert scale[0, 0] == scale[6, 0] == 1.0 and zp[0, 0] == zp[6, 0] == 0.0
    got = quant.token_qdq(x, 3, bits, 2)
    np.testing.assert_array_equal(got[[0, 6]], 0.0)
    np.testing.assert_array_equal(got, _reference(x, [bits] * 3 + [2] * 9))


@pytest.mark.parametrize("bits", BITS)
def test_constant_tokens(bits: int) -> None:
    """A constant token c has range [min(0,c), max(0,c)] and maps to the end of the grid.

    x_hat = qmax * (|c| / qmax) is c only up to float32 rounding: about 5% of random c come
    back one ulp off (in ONNX Runtime too), so this checks <= 1 ulp and the formula exactly.
    """
    consts = np.random.default_rng(bits).standard_normal(64).astype(F32) * F32(10)
    x = np.repeat(consts[:, None], 8, axis=1)
    got = quant.qdq(x, bits)
    np.testing.assert_array_equal(got, _reference(x, [bits] * 64))
    np.testing.assert_array_max_ulp(got, x, maxulp=1)
    assert np.all(got == got[:, :1])  # still constant


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_error_is_at_most_half_a_step(bits: int, dtype: type) -> None:
    x: np.ndarray = _mixed(100 + bits, s=32, d=64).astype(dtype)
    got = quant.qdq(x, bits)
    scale, _ = quant.qparams(x, bits)
    eps = float(np.finfo(dtype).eps)
    qmax = 2**bits - 1
    # Half a step, plus float rounding in x / scale (relative to qmax) and in (q - zp) * scale.
    bound = scale * (0.5 + 2 * qmax * eps) + 2 * eps * np.abs(x)
    assert np.all(np.abs(x - got) <= bound)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_numpy_and_torch_identical(bits: int, dtype: type) -> None:
    x: np.ndarray = np.stack([_mixed(bits), _mixed(bits + 1)]).astype(dtype)
    x[0, 7] = 0.0
    xt = torch.from_numpy(x.copy())
    for got_np, got_t in [
        (quant.qdq(x, bits), quant.qdq(xt, bits)),
        (quant.token_qdq(x, 5, bits, 3), quant.token_qdq(xt, 5, bits, 3)),
        (quant.token_qdq(x, 0, bits, 3), quant.token_qdq(xt, 0, bits, 3)),
        (quant.token_qdq(x, 99, bits, 3), quant.token_qdq(xt, 99, bits, 3)),
        *zip(quant.qparams(x, bits), quant.qparams(xt, bits), strict=True),
    ]:
        assert isinstance(got_t, torch.Tensor) and got_t.dtype == xt.dtype
        assert got_np.dtype == dtype
        np.testing.assert_array_equal(got_t.numpy(), got_np)


def test_empty_token_axis_passes_through() -> None:
    x = np.zeros((2, 0, 5), dtype=F32)
    assert quant.qdq(x, 8).shape == (2, 0, 5)
    assert quant.token_qdq(x, 64, 8, 4).shape == (2, 0, 5)


# --- Theorem 1: the transform moves bits to where the energy is ----------------------------


@pytest.mark.parametrize("transform", ("haar", "dct", "wht"))
def test_transform_then_mixed_precision_beats_plain_mixed_precision(transform: str) -> None:
    rng = np.random.default_rng(2026)
    x = np.cumsum(rng.standard_normal((256, 64)), axis=0).astype(F32)
    plain = quant.token_qdq(x, 64, 8, 4)
    stamp = transforms.inverse(
        quant.token_qdq(transforms.forward(x, transform, 3), 64, 8, 4), transform, 3
    )
    mse_plain = float(np.mean((x - plain) ** 2))
    mse_stamp = float(np.mean((x - stamp) ** 2))
    assert mse_stamp < 0.5 * mse_plain, (mse_stamp, mse_plain)
    assert quant.sqnr_db(x, stamp) > quant.sqnr_db(x, plain) + 3.0


# --- properties ------------------------------------------------------------------------------


@st.composite
def _activations(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    batch = draw(st.lists(st.integers(1, 3), min_size=0, max_size=2))
    shape = (*batch, draw(st.integers(1, 40)), draw(st.integers(1, 9)))
    elements = st.floats(
        -1e4,
        1e4,
        allow_nan=False,
        allow_infinity=False,
        allow_subnormal=False,
        width=32 if dtype == np.float32 else 64,
    )
    return draw(hnp.arrays(dtype, shape, elements=elements))


@settings(max_examples=150, deadline=None)
@given(
    x=_activations(),
    hp=st.integers(0, 50),
    hp_bits=st.sampled_from(BITS),
    lp_bits=st.sampled_from(BITS),
)
def test_property_shape_and_dtype(x: np.ndarray, hp: int, hp_bits: int, lp_bits: int) -> None:
    got = quant.token_qdq(x, hp, hp_bits, lp_bits)
    assert got.shape == x.shape and got.dtype == x.dtype
    assert np.all(np.isfinite(got))
    got_t = quant.token_qdq(torch.from_numpy(x.copy()), hp, hp_bits, lp_bits)
    assert tuple(got_t.shape) == x.shape and got_t.dtype == torch.from_numpy(x).dtype


@settings(max_examples=150, deadline=None)
@given(x=_activations(), hp=st.integers(0, 50))
def test_property_16_bit_is_nearly_lossless(x: np.ndarray, hp: int) -> None:
    # Non-degenerate: some real signal (tiny tokens' own error is negligible against it).
    if not float(np.abs(x).max()) >= 1e-3:
        x = x + np.arange(x.size, dtype=x.dtype).reshape(x.shape) + 1
    assert quant.sqnr_db(x, quant.token_qdq(x, hp, 16, 16)) > 80.0


@settings(max_examples=60, deadline=None)
@given(x=_activations())
def test_property_sqnr_of_identical_is_inf(x: np.ndarray) -> None:
    assert quant.sqnr_db(x, x) == math.inf
    assert quant.sqnr_db(x, x.copy()) == math.inf
