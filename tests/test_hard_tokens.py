"""Hard tokens bit for bit through all three backends, at every bit width, behind every transform.

The quantizer of each backend (numpy and torch in stamp_onnx.core.quant, the ONNX function bodies,
the native kernels) is held to tests/oracles.py's literal formula on the tokens that random
inputs miss (see oracles.hard_tokens), and to values worked out by hand. Behind a transform,
the hard tokens go in as prefix tokens (quantized as they are) and the transformed tokens are
made hard by construction: all positive or all negative, constant, all zero, symmetric; each
test first checks that its input really is that hard, so it cannot turn easy unnoticed.
"""

from __future__ import annotations

import functools

import backends
import numpy as np
import oracles
import pytest
import torch

from stamp_onnx.core import quant
from stamp_onnx.graph import ops

BITS = oracles.BITS


# oracles.HAND_CHECKED with readable ids: width and token, e.g. 3b[-3.5,0.25,3.5].
HAND_CHECKED = [pytest.param(*case, id=f"{case[0]}b[{','.join(f'{v:g}' for v in case[1])}]")
                for case in oracles.HAND_CHECKED]


def _other(bits: int) -> int:
    """Another width, for the group that the test does not look at."""
    return 8 if bits != 8 else 4


@pytest.mark.parametrize(("bits", "token", "codes", "scale"), HAND_CHECKED)
def test_hand_checked_tokens_in_numpy_and_torch(bits: int, token: list[float], codes: list[int], scale: np.float32) -> None:
    x = np.array([token], np.float32)
    want = np.array(codes, np.float32) * scale
    np.testing.assert_array_equal(oracles.literal_qdq_token(x[0], bits), want)
    np.testing.assert_array_equal(quant.qdq(x, bits)[0], want)
    np.testing.assert_array_equal(quant.qdq(torch.from_numpy(x), bits).numpy()[0], want)


@pytest.mark.parametrize(("bits", "token", "codes", "scale"), HAND_CHECKED)
def test_hand_checked_tokens_in_onnxruntime(backend: str, bits: int, token: list[float], codes: list[int],
                                            scale: np.float32) -> None:
    x = np.array([[token]], np.float32)
    (y,) = backends.session(ops.TokenQDQSpec(0, _other(bits), bits), backend).run(None, {"x": x})
    np.testing.assert_array_equal(y[0, 0], np.array(codes, np.float32) * scale)


def _hard_batch(bits: int) -> np.ndarray:
    """The hard tokens, and the same shuffled: (2, n, d)."""
    hard = oracles.hard_tokens(bits)
    order = np.random.default_rng(bits).permutation(hard.shape[0])
    return np.stack([hard, hard[order]])


def _qdq_specs(bits: int, n: int) -> list[ops.TokenQDQSpec]:
    """Every token at ``bits``: once as the high-precision group, once as the low-precision one."""
    return [ops.TokenQDQSpec(n, bits, _other(bits)), ops.TokenQDQSpec(0, _other(bits), bits)]


@pytest.mark.parametrize("bits", BITS)
def test_hard_tokens_are_hard(bits: int) -> None:
    """The set exercises what it claims at this width: the clip, ties, ranges that must include 0."""
    hard = oracles.hard_tokens(bits)
    assert oracles.needs_clip(hard, bits) > 0
    assert (hard.min(axis=1) > 0).any() and (hard.max(axis=1) < 0).any() and (hard == 0).all(axis=1).any()
    assert (hard == hard[:, :1]).all(axis=1).sum() >= 3  # constant tokens, zero among them
    span = np.maximum(hard.max(axis=1), 0) - np.minimum(hard.min(axis=1), 0)
    scale = np.where(span == 0, np.float32(1), span / np.float32(2**bits - 1))[:, None]
    ratio = hard.astype(np.float64) / scale.astype(np.float64)
    assert np.sum(np.abs(ratio - np.floor(ratio)) == 0.5) > 10  # values on rounding ties


@pytest.mark.parametrize("bits", BITS)
def test_hard_tokens_in_numpy_and_torch(bits: int) -> None:
    x = _hard_batch(bits)
    want = oracles.literal_token_qdq(x, 0, bits, bits)
    for spec in _qdq_specs(bits, x.shape[1]):
        np.testing.assert_array_equal(spec.reference(x), want)
        np.testing.assert_array_equal(spec.reference(torch.from_numpy(x)).numpy(), want)


@pytest.mark.parametrize("bits", BITS)
def test_hard_tokens_in_onnxruntime(backend: str, bits: int) -> None:
    x = _hard_batch(bits)
    want = oracles.literal_token_qdq(x, 0, bits, bits)
    for spec in _qdq_specs(bits, x.shape[1]):
        (y,) = backends.session(spec, backend).run(None, {"x": x})
        np.testing.assert_array_equal(y, want, err_msg=spec.overload)


# --- behind every transform -------------------------------------------------------------------

TRANSFORMED = 20  # tokens after the prefix: odd Haar bands at 3 levels, WHT blocks 16 + 4, a 5 x 4 grid
TRANSFORMS = [("haar", 1, 0), ("haar", 3, 0), ("haar2d", 2, 4), ("dct", 0, 0), ("wht", 0, 0)]
BIT_EXACT = ("haar", "haar2d")  # the transforms whose backends agree with numpy bit for bit


def structured_tokens() -> np.ndarray:
    """(5, TRANSFORMED, d) inputs whose transformed tokens are hard by construction, whatever the transform.

    0: positive and decreasing along the tokens (Haar details > 0): all-positive coefficients;
    1: its negative; 2: every feature column the same, constant over blocks of 4 tokens:
    constant tokens, and all-zero Haar details; 3: features in +- pairs: every coefficient
    token is symmetric, and most of them need the clip; 4: small values and one outlier.
    """
    rng = np.random.default_rng(2026)
    n, d = TRANSFORMED, oracles.FEATURES
    slope = rng.uniform(0.5, 2.0, d)
    decreasing = (n - np.arange(n))[:, None] * slope + rng.uniform(0, 0.4, (n, 1)) * slope
    constant = np.repeat(rng.standard_normal(n // 4) * 3, 4)[:, None].repeat(d, axis=1)
    half = rng.standard_normal((n, d // 2))
    outlier = rng.standard_normal((n, d)) * 0.01
    outlier[7, 3] = 50.0
    return np.stack([decreasing, -decreasing, constant, np.concatenate([half, -half], axis=1), outlier]).astype(np.float32)


def _sequence(bits: int) -> np.ndarray:
    """The hard tokens of ``bits`` as the prefix of every batch slice, then the structured tokens."""
    hard = oracles.hard_tokens(bits)
    structured = structured_tokens()
    return np.concatenate([np.broadcast_to(hard, (structured.shape[0], *hard.shape)), structured], axis=1)


@functools.lru_cache(maxsize=256)
def _literal(t_bytes: bytes, shape: tuple[int, ...], hp_tokens: int, hp_bits: int, lp_bits: int) -> np.ndarray:
    return oracles.literal_token_qdq(np.frombuffer(t_bytes, np.float32).reshape(shape), hp_tokens, hp_bits, lp_bits)


def literal(t: np.ndarray, spec: ops.TokenQDQSpec) -> np.ndarray:
    """The literal quantizer of ``spec`` on t (cached: the bit-exact backends hand it the same t)."""
    return _literal(np.ascontiguousarray(t).tobytes(), t.shape, spec.hp_tokens, spec.hp_bits, spec.lp_bits)


def _fused_specs(transform: str, levels: int, width: int, bits: int, prefix: int) -> list[ops.TransformQDQSpec]:
    st = ops.SequenceTransformSpec(transform, levels, False, prefix, width)
    return [ops.TransformQDQSpec(st, ops.TokenQDQSpec(prefix + 4, bits, _other(bits))),
            ops.TransformQDQSpec(st, ops.TokenQDQSpec(0, _other(bits), bits))]


def _id(case: tuple[str, int, int]) -> str:
    return f"{case[0]}{case[1]}"


@pytest.mark.parametrize("case", TRANSFORMS, ids=_id)
def test_structured_tokens_are_hard_after_the_transform(case: tuple[str, int, int]) -> None:
    transform, levels, width = case
    t = ops.SequenceTransformSpec(transform, levels, grid_width=width).reference(structured_tokens())
    assert (t.min(axis=-1) > 0).any() and (t.max(axis=-1) < 0).any()
    assert (t == t[..., :1]).all(axis=-1).any()
    np.testing.assert_array_equal(t[3].max(axis=-1), -t[3].min(axis=-1))  # symmetric, exactly
    if transform.startswith("haar"):
        assert (t == 0).all(axis=-1).any()
    for bits in BITS:
        assert oracles.needs_clip(t, bits) > 0, bits


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("case", TRANSFORMS, ids=_id)
def test_transform_qdq_reference_on_hard_tokens(case: tuple[str, int, int], bits: int) -> None:
    x = _sequence(bits)
    prefix = oracles.hard_tokens(bits).shape[0]
    for spec in _fused_specs(*case, bits, prefix):
        t = spec.transform.reference(x)
        np.testing.assert_array_equal(t[:, :prefix], x[:, :prefix])
        np.testing.assert_array_equal(spec.reference(x), literal(t, spec.qdq))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("case", TRANSFORMS, ids=_id)
def test_transform_qdq_on_hard_tokens(backend: str, case: tuple[str, int, int], bits: int) -> None:
    """Y is the literal quantizer of the backend's own T, bit for bit; T is numpy's (Haar: bit for bit)."""
    transform, levels, width = case
    x = _sequence(bits)
    prefix = oracles.hard_tokens(bits).shape[0]
    for spec in _fused_specs(*case, bits, prefix):
        y, t = backends.session(spec, backend, with_transformed=True).run(None, {"x": x})
        if transform in BIT_EXACT:
            np.testing.assert_array_equal(t, spec.transform.reference(x))
        else:
            oracles.assert_within_bound(t, x, transform, levels, prefix, width)
        np.testing.assert_array_equal(y, literal(t, spec.qdq), err_msg=spec.overload)

