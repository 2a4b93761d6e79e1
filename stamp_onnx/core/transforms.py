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
- ``haar2d``: 2-D Haar over an H x W token grid (row-major tokens; W = ``grid_width``, or the
  square grid when it is 0). The 1-D multi-level Haar runs along the grid's rows, then along its
  columns, giving coefficient (i, j); the flattened coefficients are then ordered by
  group max(band(i), band(j)), where band 0 is the approximation a_L and band L the finest
  detail d_1, row-major within a group. Group 0 is the LL band (e.g. 2 x 2 for a 16 x 16 grid at
  3 levels), then the coarsest details, and so on. For every group count g, the first g groups
  span exactly the same subspace as the first g levels of the classic (Mallat) 2-D DWT, so the
  energy the first groups hold is the same; only the basis inside a group differs.
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

from stamp_onnx.config import AUTO_LEVELS, MAX_LEVELS, Transform

Array = TypeVar("Array", bound=Any)  # np.ndarray or torch.Tensor

INV_SQRT2 = 1.0 / math.sqrt(2.0)


def forward(x: Array, transform: str, levels: int = 3, prefix: int = 0, grid_width: int = 0) -> Array:
    """Apply the sequence transform L to the token axis (-2) of ``x``.

    ``prefix``: the first ``prefix`` tokens are left out of the transform and stay in front
    (an attention sink, a CLS token); the rest is transformed as a sequence of its own.
    ``grid_width``: haar2d only, the width of the token grid (0: square).
    """
    if transform == Transform.NONE or _tokens(x) <= prefix:
        return x
    if prefix:
        return _cat([x[..., :prefix, :], forward(x[..., prefix:, :], transform, levels, 0, grid_width)])
    if transform == Transform.HAAR:
        return _haar_forward(x, levels)
    if transform == Transform.HAAR2D:
        return _haar2d_forward(x, levels, grid_width)
    return _apply_matrix(matrix(_tokens(x), transform, levels), x)


def inverse(x: Array, transform: str, levels: int = 3, prefix: int = 0, grid_width: int = 0) -> Array:
    """Apply L^-1 = L^T to the token axis (-2) of ``x`` (arguments as in :func:`forward`)."""
    if transform == Transform.NONE or _tokens(x) <= prefix:
        return x
    if prefix:
        return _cat([x[..., :prefix, :], inverse(x[..., prefix:, :], transform, levels, 0, grid_width)])
    if transform == Transform.HAAR:
        return _haar_inverse(x, levels)
    if transform == Transform.HAAR2D:
        return _haar2d_inverse(x, levels, grid_width)
    return _apply_matrix(matrix(_tokens(x), transform, levels).T, x)


@functools.lru_cache(maxsize=64)
def matrix(s: int, transform: str, levels: int = 3, prefix: int = 0, grid_width: int = 0) -> np.ndarray:
    """The s x s float64 matrix M with forward(x, ..., prefix, grid_width) == M @ x (read-only, cached)."""
    if s < 1:
        raise ValueError(f"sequence length must be >= 1, got {s}")
    if 0 < prefix < s:
        m = np.eye(s)
        m[prefix:, prefix:] = matrix(s - prefix, transform, levels, 0, grid_width)
    elif prefix >= s or transform == Transform.NONE:
        m = np.eye(s)
    elif transform == Transform.HAAR:
        m = _haar_forward(np.eye(s), levels)
    elif transform == Transform.HAAR2D:
        m = _haar2d_forward(np.eye(s), levels, grid_width)
    elif transform == Transform.DCT:
        m = _dct_matrix(s)
    elif transform == Transform.WHT:
        m = _wht_matrix(s)
    else:
        raise ValueError(f"unknown transform {transform!r}")
    m.setflags(write=False)
    return m


def auto_levels(n: int, low_band: int, transform: str, grid_width: int = 0) -> int:
    """``levels="auto"`` for n transformed tokens: the fewest levels (at most MAX_LEVELS) after
    which the low band (``haar``: ceil(n / 2^L) tokens) or the LL band (``haar2d``:
    ceil(H / 2^L) ceil(W / 2^L) on the H x W grid) holds at most max(low_band, 1) tokens.

    With low_band = K - P (the high-precision tokens after the prefix) the whole approximation
    band is quantized at hp_bits and as few detail tokens as possible share it: DINOv2 with
    K=5, P=1 (256 patches) gets 6 levels in 1-D (a_6 = 4 tokens) and 3 in 2-D (LL = 2 x 2).
    Other transforms have no levels (0). A haar2d length that is no grid raises ValueError.
    """
    if transform not in (Transform.HAAR, Transform.HAAR2D) or n < 1:
        return 0
    target = max(low_band, 1)
    height, width = grid_shape(n, grid_width) if transform == Transform.HAAR2D else (1, n)
    levels = 0
    while levels < MAX_LEVELS and -(-height // (1 << levels)) * -(-width // (1 << levels)) > target:
        levels += 1
    return levels


def resolve_levels(levels: int | str, tokens: int, hp_tokens: int, prefix: int, transform: str, grid_width: int = 0) -> int:
    """The Haar levels a layer of ``tokens`` tokens uses: ``levels`` itself, or :func:`auto_levels`
    of the tokens after the prefix with the high-precision tokens after the prefix as its low band."""
    if levels != AUTO_LEVELS:
        return int(levels)
    return auto_levels(max(tokens - prefix, 0), hp_tokens - prefix, transform, grid_width)


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


def haar_bands(n: int, levels: int) -> np.ndarray:
    """Band of each of the n 1-D Haar coefficients: 0 for a_L, 1 for d_L, ..., levels for d_1.

    After level l the low band holds ceil(n / 2^l) tokens, so coefficient i belongs to band
    #{l <= levels : i >= ceil(n / 2^l)} (levels that a short band skips count as empty bands).
    """
    i = np.arange(n)
    bands = np.zeros(n, dtype=np.int64)
    for level in range(1, levels + 1):
        bands += i >= -(-n // (1 << level))
    return bands


def grid_shape(n: int, grid_width: int = 0) -> tuple[int, int]:
    """(H, W) of the grid of n tokens: W = grid_width, or the square grid when grid_width is 0."""
    width = grid_width or max(math.isqrt(n), 1)
    if n % width or (grid_width == 0 and width * width != n):
        what = f"a grid of width {grid_width}" if grid_width else "a square grid"
        raise ValueError(
            f"haar2d: {n} tokens (after the prefix tokens) do not form {what}; "
            "set grid_width and prefix_tokens to the model's patch grid and its non-grid tokens"
        )
    return n // width, width


@functools.lru_cache(maxsize=64)
def grid_order(height: int, width: int, levels: int) -> np.ndarray:
    """The 2-D Haar output order: flattened coefficient indices sorted by group (see module doc)."""
    group = np.maximum.outer(haar_bands(height, levels), haar_bands(width, levels)).ravel()
    order = np.argsort(group, kind="stable")
    order.setflags(write=False)
    return order


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


def _haar2d_forward(x: Array, levels: int, grid_width: int) -> Array:
    height, width = grid_shape(_tokens(x), grid_width)
    grid = x.reshape(*x.shape[:-2], height, width, x.shape[-1])
    grid = _haar_forward(grid, levels)  # along each grid row (axis -2 of the grid)
    grid = _swap_grid(_haar_forward(_swap_grid(grid), levels))  # along each column
    return _take_tokens(grid.reshape(x.shape), grid_order(height, width, levels))


def _haar2d_inverse(y: Array, levels: int, grid_width: int) -> Array:
    height, width = grid_shape(_tokens(y), grid_width)
    unordered = _take_tokens(y, np.argsort(grid_order(height, width, levels)))
    grid = unordered.reshape(*y.shape[:-2], height, width, y.shape[-1])
    grid = _swap_grid(_haar_inverse(_swap_grid(grid), levels))
    return _haar_inverse(grid, levels).reshape(y.shape)


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


def _swap_grid(x: Any) -> Any:
    """Swap the grid's row and column axes (-3, -2)."""
    return x.transpose(-3, -2) if _is_torch(x) else np.swapaxes(x, -3, -2)


def _take_tokens(x: Any, order: np.ndarray) -> Any:
    if _is_torch(x):
        import torch

        return x[..., torch.from_numpy(np.array(order)).to(x.device), :]
    return x[..., order, :]


def _apply_matrix(m: np.ndarray, x: Any) -> Any:
    if _is_torch(x):
        import torch

        return torch.matmul(torch.tensor(m, dtype=x.dtype, device=x.device), x)
    return np.matmul(m.astype(x.dtype, copy=False), x)
