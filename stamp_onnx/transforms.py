"""Orthonormal sequence transforms along the token axis (-2), for numpy arrays and torch tensors.

This module is the oracle: the ONNX function bodies, the PyTorch reference and the tests are all
held to it. Shapes: ``x`` is (..., s, d); every transform maps it to (..., s, d) and its inverse
undoes it exactly (up to float rounding). Every s >= 1 is defined:

- ``haar``: multi-level Haar DWT. One level on a band of n tokens writes
  low[i] = (x[2i] + x[2i+1]) / sqrt(2), high[i] = (x[2i] - x[2i+1]) / sqrt(2), i < n // 2; an
  odd last token is appended unchanged to the low band. Order [low | high]; the next level
  transforms the low band only; a band of one token is left alone, so extra levels are no-ops.
  After L levels: [a_L | d_L | ... | d_1].
- ``dct``: orthonormal DCT-II, coefficient 0 first (scipy.fft.dct(norm="ortho")).
- ``wht``: Walsh-Hadamard in sequency order. For s a power of two this is the usual WHT. For
  other s, the tokens are split into blocks along the binary expansion of s, largest first
  (s = 6 -> blocks of 4 and 2), and each block gets its own sequency-ordered WHT; the
  coefficients of all blocks are then merged by normalised sequency k / size (ties: larger
  block first), so every block's low-sequency coefficients come first, where the high-precision
  tokens are. The result stays orthonormal; s = 2^m is the special case of one block.
- ``none``: identity.

With ``prefix=p`` the first p tokens are kept out of the transform (identity on them) and the
remaining s - p tokens are transformed as above; s <= p is the identity.

Example::

    >>> x = np.random.default_rng(0).standard_normal((2, 10, 4)).astype(np.float32)
    >>> np.allclose(inverse(forward(x, "haar", 3), "haar", 3), x, atol=1e-6)
    True
"""

from __future__ import annotations

import functools
import math
from typing import Any, TypeVar

import numpy as np

Array = TypeVar("Array", bound=Any)  # np.ndarray or torch.Tensor

INV_SQRT2 = 1.0 / math.sqrt(2.0)


def forward(x: Array, transform: str, levels: int = 3, prefix: int = 0) -> Array:
    """Apply the sequence transform L to the token axis (-2) of ``x``.

    ``prefix``: the first ``prefix`` tokens are left out of the transform and stay in front
    (an attention sink, a CLS token); the rest is transformed as a sequence of its own.
    """
    if transform == "none" or _tokens(x) <= prefix:
        return x
    if prefix:
        return _cat([x[..., :prefix, :], forward(x[..., prefix:, :], transform, levels)])
    if transform == "haar":
        return _haar_forward(x, levels)
    return _apply_matrix(matrix(_tokens(x), transform, levels), x)


def inverse(x: Array, transform: str, levels: int = 3, prefix: int = 0) -> Array:
    """Apply L^-1 = L^T to the token axis (-2) of ``x`` (``prefix`` as in :func:`forward`)."""
    if transform == "none" or _tokens(x) <= prefix:
        return x
    if prefix:
        return _cat([x[..., :prefix, :], inverse(x[..., prefix:, :], transform, levels)])
    if transform == "haar":
        return _haar_inverse(x, levels)
    return _apply_matrix(matrix(_tokens(x), transform, levels).T, x)


@functools.lru_cache(maxsize=64)
def matrix(s: int, transform: str, levels: int = 3, prefix: int = 0) -> np.ndarray:
    """The s x s float64 matrix M with forward(x, ..., prefix) == M @ x (read-only, cached)."""
    if s < 1:
        raise ValueError(f"sequence length must be >= 1, got {s}")
    if 0 < prefix < s:
        m = np.eye(s)
        m[prefix:, prefix:] = matrix(s - prefix, transform, levels)
    elif prefix >= s or transform == "none":
        m = np.eye(s)
    elif transform == "haar":
        m = _haar_forward(np.eye(s), levels)
    elif transform == "dct":
        m = _dct_matrix(s)
    elif transform == "wht":
        m = _wht_matrix(s)
    else:
        raise ValueError(f"unknown transform {transform!r}")
    m.setflags(write=False)
    return m


def haar_band_lengths(s: int, levels: int) -> list[int]:
    """Lengths of the bands that each Haar level transforms, finest first: [s, ceil(s/2), ...]."""
    lengths = []
    n = s
    for _ in range(levels):
        if n < 2:
            break
        lengths.append(n)
        n = (n + 1) // 2
    return lengths


def wht_blocks(s: int) -> list[int]:
    """Block sizes of the WHT of length s: the binary expansion of s, largest first."""
    return [1 << b for b in range(s.bit_length() - 1, -1, -1) if s >> b & 1]


# --- Haar: O(s d) butterflies -------------------------------------------------------------


def _haar_forward(x: Array, levels: int) -> Array:
    for n in haar_band_lengths(_tokens(x), levels):
        m = n // 2
        even, odd = x[..., 0 : 2 * m : 2, :], x[..., 1 : 2 * m : 2, :]
        low, high = (even + odd) * INV_SQRT2, (even - odd) * INV_SQRT2
        x = _cat([low, x[..., 2 * m : n, :], high, x[..., n:, :]])
    return x


def _haar_inverse(y: Array, levels: int) -> Array:
    for n in reversed(haar_band_lengths(_tokens(y), levels)):
        m = n // 2
        low_len = n - m
        low, tail, high = y[..., :m, :], y[..., m:low_len, :], y[..., low_len:n, :]
        even, odd = (low + high) * INV_SQRT2, (low - high) * INV_SQRT2
        pairs = _stack_tokens(even, odd)  # (..., 2m, d): even0, odd0, even1, ...
        y = _cat([pairs, tail, y[..., n:, :]])
    return y


# --- Dense transforms ---------------------------------------------------------------------


def _dct_matrix(s: int) -> np.ndarray:
    k = np.arange(s)[:, None]
    n = np.arange(s)[None, :]
    m = np.cos(np.pi * (2 * n + 1) * k / (2 * s)) * math.sqrt(2.0 / s)
    m[0] *= INV_SQRT2
    return m


def _sequency_hadamard(p: int) -> np.ndarray:
    """Orthonormal p x p Walsh-Hadamard matrix, rows in sequency order (p a power of two)."""
    h = np.ones((1, 1))
    while h.shape[0] < p:
        h = np.block([[h, h], [h, -h]])
    sign_changes = (np.diff(h, axis=1) != 0).sum(axis=1)
    return h[np.argsort(sign_changes, kind="stable")] / math.sqrt(p)


def _wht_matrix(s: int) -> np.ndarray:
    m = np.zeros((s, s))
    keys: list[tuple[float, int]] = []
    start = 0
    for block, size in enumerate(wht_blocks(s)):
        m[start : start + size, start : start + size] = _sequency_hadamard(size)
        keys += [(k / size, block) for k in range(size)]
        start += size
    order = sorted(range(s), key=keys.__getitem__)  # merge blocks by normalised sequency
    return m[order]


# --- numpy / torch glue -------------------------------------------------------------------


def _tokens(x: Array) -> int:
    return int(x.shape[-2])


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _cat(parts: list[Any]) -> Any:
    if _is_torch(parts[0]):
        import torch

        return torch.cat(parts, dim=-2)
    return np.concatenate(parts, axis=-2)


def _stack_tokens(even: Any, odd: Any) -> Any:
    shape = (*even.shape[:-2], 2 * even.shape[-2], even.shape[-1])
    if _is_torch(even):
        import torch

        return torch.stack([even, odd], dim=-2).reshape(shape)
    return np.stack([even, odd], axis=-2).reshape(shape)


def _apply_matrix(m: np.ndarray, x: Any) -> Any:
    if _is_torch(x):
        import torch

        return torch.matmul(torch.tensor(m, dtype=x.dtype, device=x.device), x)
    return np.matmul(m.astype(x.dtype, copy=False), x)
