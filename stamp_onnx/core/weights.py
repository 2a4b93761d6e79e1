"""Weight-side math: round-to-nearest weight quantization and the feature-axis rotation R.

Weights are in the MatMul layout, W of shape (d_in, d_out) with y = x W.

Weight quantization (symmetric, signed, the DequantizeLinear formula of the ONNX spec with a
zero point of 0), per output channel (``block=0``: one scale per column of W) or per block of
``block`` consecutive input features of each column (the last block may be shorter):

    qmax  = 2^(bits-1) - 1
    scale = max |w| / qmax           over the channel or block (1 where it is all zeros)
    q     = clip(round(w / scale), -qmax, qmax)     round half to even
    w_hat = q * scale

Feature rotation (``feature_transform="hadamard"``): an orthonormal R (d x d) applied to the
activation, X -> X R, with R^T folded into the weight, W -> R^T W, so in float X R R^T W = X W.
d = 2^k m with m odd: R = C_m (x) H_(2^k), the Kronecker product of the orthonormal DCT-II of
size m (the identity when m = 1) and the Sylvester-Hadamard matrix of size 2^k divided by
sqrt(2^k). H mixes each block of 2^k consecutive features with entries of equal magnitude
(what spreads an outlier channel evenly); C mixes the m blocks. SmolLM2: 576 = 9 x 64,
1536 = 3 x 512.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from stamp_onnx.core.transforms import matrix


def weight_scales(w: np.ndarray, bits: int, block: int = 0) -> np.ndarray:
    """Scales of ``w`` (d_in, d_out): shape (d_out,) per channel, (ceil(d_in / block), d_out) per block."""
    qmax = np.float32(2 ** (bits - 1) - 1)
    w = np.asarray(w, dtype=np.float32)
    if block:
        blocks = -(-w.shape[0] // block)
        padded = np.zeros((blocks * block, w.shape[1]), np.float32)
        padded[: w.shape[0]] = np.abs(w)
        amax = padded.reshape(blocks, block, w.shape[1]).max(axis=1)
    else:
        amax = np.abs(w).max(axis=0)
    return np.where(amax == 0, np.float32(1), amax / qmax).astype(np.float32)


def expand_scales(scale: np.ndarray, d_in: int, block: int) -> np.ndarray:
    """Per-element scales of a (d_in, d_out) weight."""
    return np.repeat(scale, block, axis=0)[:d_in] if block else np.broadcast_to(scale, (d_in, scale.shape[-1]))


def quantize_weight(w: np.ndarray, bits: int, block: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(q as int8 in [-qmax, qmax], scale); see the module docstring."""
    w = np.asarray(w, dtype=np.float32)
    scale = weight_scales(w, bits, block)
    qmax = 2 ** (bits - 1) - 1
    q = np.clip(np.round(w / expand_scales(scale, w.shape[0], block)), -qmax, qmax).astype(np.int8)
    return q, scale


def fake_quantize_weight(w: Any, bits: int, block: int = 0) -> Any:
    """w_hat = q * scale for numpy or torch ``w`` (d_in, d_out), computed in float32 as onnxruntime does."""
    if bits == 0:
        return w
    array = w.detach().cpu().numpy() if hasattr(w, "detach") else np.asarray(w)
    q, scale = quantize_weight(array, bits, block)
    w_hat = (q.astype(np.float32) * expand_scales(scale, array.shape[0], block)).astype(np.float32)
    if hasattr(w, "detach"):
        import torch

        return torch.from_numpy(np.ascontiguousarray(w_hat)).to(w.dtype)
    return w_hat


def dequantize_linear(q: np.ndarray, scale: np.ndarray, axis: int, block_size: int = 0) -> np.ndarray:
    """DequantizeLinear of the ONNX spec with a zero point of 0: q * scale, float32.

    Per axis (``block_size=0``): ``scale`` is 1-D along ``axis``. Blocked: ``scale`` has q's
    shape except ceil(n / block_size) along ``axis``, each entry covering that many elements.
    """
    q = np.asarray(q).astype(np.float32)
    scale = np.asarray(scale, dtype=np.float32)
    axis %= q.ndim
    if block_size:
        full = np.repeat(scale, block_size, axis=axis)
        full = np.take(full, np.arange(q.shape[axis]), axis=axis)
    else:
        shape = [1] * q.ndim
        shape[axis] = q.shape[axis]
        full = scale.reshape(shape)
    return (q * full).astype(np.float32)


def sylvester_hadamard(n: int) -> np.ndarray:
    """The orthonormal n x n Sylvester-Hadamard matrix (n a power of two), float64."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"a Sylvester-Hadamard matrix needs a power of two, got {n}")
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(n)


def rotation_factors(d: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, C) with R = C^T (x) H: H the orthonormal Sylvester-Hadamard of the largest power of two
    p dividing d, C the orthonormal DCT-II of m = d / p as rows ([[1]] when m = 1), float64.

    With x viewed as X (m, p) (feature f = a p + b), x R is C X H: what FeatureRotation computes.
    """
    if d < 1:
        raise ValueError(f"feature size must be positive, got {d}")
    power = d & -d  # the largest power of two dividing d
    odd = d // power
    return sylvester_hadamard(power), (matrix(odd, "dct") if odd > 1 else np.ones((1, 1)))


@functools.lru_cache(maxsize=16)
def feature_rotation(d: int) -> np.ndarray:
    """R (d x d, float64, orthonormal) for ``feature_transform="hadamard"``; read-only, cached."""
    hadamard, dct = rotation_factors(d)
    r = np.kron(dct.T, hadamard)  # the DCT as rows: transposed to act on the right
    r.setflags(write=False)
    return r


def zero_point_rows(q: np.ndarray, limit: int = 127) -> np.ndarray:
    """int8 rows (m, d_out) whose column sums are -(column sums of the codes ``q`` (d_in, d_out)),
    each entry in [-limit, limit]; m = the fewest that hold the largest column sum (0 when all are 0).

    Appended to an integer layer's weight, they take back the per-token zero points of 8-bit
    activation tokens (:mod:`stamp_onnx.core.quant`, integer codes)."""
    rest = -np.asarray(q, dtype=np.int64).sum(axis=0)
    m = int(-(-np.abs(rest).max(initial=0) // limit))
    rows = np.zeros((m, q.shape[1]), np.int8)
    for j in range(m):
        rows[j] = np.clip(rest, -limit, limit)
        rest -= rows[j]
    assert not rest.any()
    return rows
