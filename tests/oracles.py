"""Independent oracles for the op tests: the literal quantizer, hard tokens, per-element error bounds.

Random normal tokens rarely reach what a per-token quantizer can get wrong: a token that is all
positive or all negative (its range must still include 0), constant or all zero (scale 1),
values on rounding ties (half to even), a symmetric token [-h, h] whose top value rounds one
code past qmax (only the clip brings it back), one outlier among small values.
:func:`hard_tokens` builds such tokens for one bit width, with values that make the ties exact
at that width (scale 1 or a power of two). :func:`literal_token_qdq` is the quantizer of
docs/design.md written one scalar at a time, sharing no code with stamp_onnx.core.quant.
"""

from __future__ import annotations

import zlib

import numpy as np

from stamp_onnx.core import transforms, weights
from stamp_onnx.graph import ops

F32 = np.float32
EPS32 = float(np.finfo(np.float32).eps)
BITS = (2, 3, 4, 5, 6, 7, 8, 16)
FEATURES = 16  # features of every hard token


def literal_qdq_token(row: np.ndarray, bits: int) -> np.ndarray:
    """The quantizer for one float32 token, one numpy float32 scalar operation at a time.

    Rounding uses Python's round(), half to even, exact here: a float32 converts to a Python
    float losslessly.
    """
    qmax = 2**bits - 1
    values = [F32(v) for v in row]
    rmin = min(F32(0), *values)
    rmax = max(F32(0), *values)
    scale = F32(1) if rmax == rmin else F32(rmax - rmin) / F32(qmax)
    zp = min(max(round(float(-rmin / scale)), 0), qmax)
    out = []
    for v in values:
        q = min(max(round(float(v / scale)) + zp, 0), qmax)
        out.append(F32(F32(q - zp) * scale))
    return np.array(out, dtype=F32)


def literal_token_qdq(x: np.ndarray, hp_tokens: int, hp_bits: int, lp_bits: int) -> np.ndarray:
    """Mixed precision over (..., s, d): token i < hp_tokens at hp_bits, the rest at lp_bits."""
    flat = np.asarray(x, dtype=F32).reshape(-1, x.shape[-2], x.shape[-1])
    out = np.stack([
        np.stack([literal_qdq_token(row, hp_bits if i < hp_tokens else lp_bits) for i, row in enumerate(tokens)])
        if tokens.shape[0] else tokens
        for tokens in flat
    ])
    return out.reshape(x.shape)


def needs_clip(x: np.ndarray, bits: int) -> int:
    """How many values of the tokens x (..., d) round past qmax before the clip (at ``bits`` bits)."""
    qmax = 2**bits - 1
    count = 0
    for row in np.asarray(x, F32).reshape(-1, x.shape[-1]):
        rmin, rmax = min(F32(0), row.min()), max(F32(0), row.max())
        scale = F32(1) if rmax == rmin else F32(rmax - rmin) / F32(qmax)
        zp = min(max(round(float(-rmin / scale)), 0), qmax)
        count += sum(round(float(v / scale)) + zp > qmax for v in row)
    return count


def _fill(values: list[float]) -> np.ndarray:
    """``values`` repeated to FEATURES features (cut if longer)."""
    reps = -(-FEATURES // len(values))
    return np.array((values * reps)[:FEATURES], dtype=F32)


def hard_tokens(bits: int) -> np.ndarray:
    """Tokens (n, FEATURES) that a per-token quantizer at ``bits`` bits can get wrong (module docstring)."""
    qmax = 2**bits - 1
    half = qmax / 2  # the symmetric token [-half, half] has scale 1 and zp = round(half) = 2^(bits-1)
    positive = [1, 2, 3.7, 5, 0.5, 4.25, 1.75, 2.5, 3, 0.125, 4.5, 1.5, 2.25, 3.25, 0.75, 4]
    # Ties at scale 1: range [-2.5, qmax - 2.5], every value a half-integer inside it.
    ties = sorted({-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, qmax - 2.5, qmax - 3.5, qmax - 4.5, qmax // 2 + 0.5, qmax // 4 + 0.5})
    ties = [v for v in ties if -2.5 <= v <= qmax - 2.5]
    symmetric = sorted({-half, half, -half + 1, half - 1, 0.5, -0.5, qmax // 4 + 0.5})
    symmetric = [v for v in symmetric if -half <= v <= half]
    outlier = [0.01 * k for k in range(-7, 8)] + [1000.0]
    rng = np.random.default_rng(bits)
    rows = [
        _fill(positive),                                # all positive: rmin = 0, not the smallest value
        -_fill(positive[::-1]),                         # all negative: rmax = 0
        _fill([3.3]), _fill([-0.7]),                    # constant
        _fill([0.0]),                                   # all zero: scale 1
        _fill(ties), -_fill(ties),                      # rounding ties, zp on a tie as well
        _fill(symmetric),                               # symmetric ties: the top value needs the clip
        _fill(symmetric) * F32(2.0**-6), _fill(symmetric) * F32(2.0**5),  # the same at scale 2^k
        _fill(outlier), -_fill(outlier),                # one outlier among small values
        _fill([1e-6, -3e-7, 2e-6, 5e-7]),               # tiny
        _fill([3e5, -1e6, 2.5e6, -7e5]),                # large
        rng.standard_normal(FEATURES).astype(F32), (rng.standard_normal(FEATURES) * 40).astype(F32),
    ]
    return np.stack(rows).astype(F32)


# Tokens whose quantized values were worked out by hand (bits, token, codes minus zero point, scale).
HAND_CHECKED = [
    # 3 bits, symmetric: scale 1, zp = round(3.5) = 4; 3.5 -> 4 + 4 = 8, clipped to 7 -> 3.
    (3, [-3.5, 0.25, 3.5], [-4, 0, 3], F32(1)),
    # 2 bits, all positive: rmin = 0 (not 1), scale 5/3, zp 0; 3.7 / (5/3) = 2.22 -> 2, 5 -> 3.
    (2, [1, 2, 3.7, 5], [1, 1, 2, 3], F32(5) / F32(3)),
    # 2 bits, symmetric: scale 1, zp = round(1.5) = 2; 1.5 -> 2 + 2 = 4, clipped to 3 -> 1.
    (2, [-1.5, -0.5, 0.5, 1.5], [-2, 0, 0, 1], F32(1)),
    # 4 bits, ties: scale 1, zp = round(2.5) = 2; -2.5 -> -2 -> 0; -0.5 -> 0; 12.5 -> 12 + 2 = 14.
    (4, [-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 12.5], [-2, -2, 0, 0, 2, 2, 12], F32(1)),
    # 16 bits, symmetric: zp = round(32767.5) = 32768; the top value 32768 + 32768 is clipped to 65535.
    (16, [-32767.5, 0.5, 32767.5], [-32768, 0, 32767], F32(1)),
    # 8 bits, all zero: scale 1, zp 0.
    (8, [0.0, 0.0, 0.0], [0, 0, 0], F32(1)),
    # 8 bits, all negative constant: rmax = 0, scale 2/255, zp 255, every value at code 0.
    (8, [-2.0, -2.0], [-255, -255], F32(2) / F32(255)),
]


def transform_bound(x: np.ndarray, transform: str, levels: int, prefix: int = 0, grid_width: int = 0,
                    *, inverse: bool = False) -> np.ndarray:
    """Per-element bound on |float32 L x - L x| for any summation order: (s + 2) eps32 |L| |x| + 1e-15 sum |x|.

    The textbook bound of a float dot product of length s, plus the rounding of L's entries to
    float32 and of the result; element by element, so a small output is held to a small error.
    The last term is the float64 matrix's own error: an entry that is 0 in exact arithmetic
    (a DCT cosine of pi/2) is 1e-16 there, and a body that reduces the angle first gets 0.
    """
    s = x.shape[-2]
    m = transforms.matrix(s, transform, levels, prefix, grid_width)
    m = m.T if inverse else m
    ax = np.abs(x.astype(np.float64))
    return (s + 2) * EPS32 * (np.abs(m) @ ax) + 1e-15 * ax.sum(axis=-2, keepdims=True)


def exact_transform(x: np.ndarray, transform: str, levels: int, prefix: int = 0, grid_width: int = 0,
                    *, inverse: bool = False) -> np.ndarray:
    """L x (or L^T x) in float64 from the float64 matrix."""
    m = transforms.matrix(x.shape[-2], transform, levels, prefix, grid_width)
    return (m.T if inverse else m) @ x.astype(np.float64)


def assert_within_bound(got: np.ndarray, x: np.ndarray, transform: str, levels: int, prefix: int = 0,
                        grid_width: int = 0, *, inverse: bool = False) -> None:
    """Every element of ``got`` within :func:`transform_bound` of the exact transform of ``x``."""
    want = exact_transform(x, transform, levels, prefix, grid_width, inverse=inverse)
    bound = transform_bound(x, transform, levels, prefix, grid_width, inverse=inverse)
    err = np.abs(got.astype(np.float64) - want)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), f"|got - exact| = {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}"


def check_transform(got: np.ndarray, x: np.ndarray, spec: ops.SequenceTransformSpec) -> None:
    """A SequenceTransform's output: Haar (1-D, 2-D) numpy's bit for bit, DCT/WHT each element within its bound."""
    if spec.transform.startswith("haar"):
        np.testing.assert_array_equal(got, spec.reference(x))
    else:
        assert_within_bound(got, x, spec.transform, spec.levels, spec.prefix_tokens, spec.grid_width,
                            inverse=spec.inverse)


def assert_rotation_within_bound(got: np.ndarray, x: np.ndarray) -> None:
    """FeatureRotation: every element of ``got`` within (d + 2) eps (|x| |R|) of x R in float64.

    Whether R is applied densely or as C (X H), each output is a sum of at most d products of
    |x| and |R| entries (|C (x) H| = |C| (x) |H|), so the dot-product bound of the dense form holds.
    """
    d = x.shape[-1]
    r = weights.feature_rotation(d)
    want = x.astype(np.float64) @ r
    bound = (d + 2) * EPS32 * (np.abs(x.astype(np.float64)) @ np.abs(r))
    err = np.abs(got.astype(np.float64) - want)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), f"|got - x R| = {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}"


def stable_seed(text: str) -> int:
    """A seed from a name, the same in every process (Python salts str hashes per process)."""
    return zlib.crc32(text.encode())
