"""Per-token asymmetric min-max quantization with mixed precision (numpy and torch).

The formula is ONNX DynamicQuantizeLinear generalised to b bits (see docs/design.md):

    rmin = min(0, min_j x_j)   rmax = max(0, max_j x_j)
    scale = (rmax - rmin) / (2^b - 1)      (1 where rmax == rmin)
    zp = clip(round(-rmin / scale), 0, 2^b - 1)
    q = clip(round(x / scale) + zp, 0, 2^b - 1)     round half to even
    x_hat = (q - zp) * scale

One scale and zero point per token (axis -2), taken over the features (axis -1). In
:func:`token_qdq` the first ``hp_tokens`` tokens use ``hp_bits``, the rest ``lp_bits``, with
optional middle tiers between them (:func:`stamp_onnx.config.tier_spans`).
All arithmetic stays in the input's float dtype so ONNX Runtime can match it bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stamp_onnx.config import Tiers, tier_spans
from stamp_onnx.core.transforms import _cat, _is_torch


def qparams(x: Any, bits: int) -> tuple[Any, Any]:
    """Per-token (scale, zero_point) of shape (..., s, 1), both in x's float dtype."""
    qmax = float(2**bits - 1)
    if _is_torch(x):
        import torch

        zero = torch.zeros((), dtype=x.dtype)
        rmin = torch.minimum(x.amin(dim=-1, keepdim=True), zero)
        rmax = torch.maximum(x.amax(dim=-1, keepdim=True), zero)
        span = rmax - rmin
        scale = torch.where(span == 0, torch.ones_like(span), span / qmax)
        zp = torch.clamp(torch.round(-rmin / scale), 0, qmax)
        return scale, zp
    dtype = x.dtype.type
    rmin = np.minimum(x.min(axis=-1, keepdims=True), dtype(0))
    rmax = np.maximum(x.max(axis=-1, keepdims=True), dtype(0))
    span = rmax - rmin
    scale = np.where(span == 0, dtype(1), span / dtype(qmax)).astype(x.dtype)
    zp = np.clip(np.round(-rmin / scale), 0, qmax).astype(x.dtype)
    return scale, zp


def qdq(x: Any, bits: int) -> Any:
    """Fake-quantize every token of ``x`` (..., s, d) with ``bits`` bits."""
    if x.shape[-2] == 0:
        return x
    qmax = float(2**bits - 1)
    scale, zp = qparams(x, bits)
    if _is_torch(x):
        import torch

        q = torch.clamp(torch.round(x / scale) + zp, 0, qmax)
        return (q - zp) * scale
    codes = token_codes(x, scale, zp, qmax)
    return ((codes - zp) * scale).astype(x.dtype)


def token_codes(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, qmax: float) -> np.ndarray:
    """q = clip(round(x / scale) + zp, 0, qmax) (numpy, x's float dtype): the codes of :func:`qdq`."""
    q = np.clip(np.round(x / scale) + zp, 0, qmax)
    return q


def token_qdq(x: Any, hp_tokens: int, hp_bits: int, lp_bits: int, mid: Tiers = ()) -> Any:
    """Mixed precision: tokens [0, hp_tokens) at hp_bits, then each ``mid`` tier (count, bits),
    the rest at lp_bits."""
    spans = tier_spans(int(x.shape[-2]), hp_tokens, hp_bits, lp_bits, mid)
    return _cat([qdq(x[..., start:end, :], bits) for start, end, bits in spans])


def token_energy(x: np.ndarray) -> np.ndarray:
    """Each token's energy sum_j x_ij^2 of x (..., s, d), summed over the leading axes: float64 (s,)."""
    return np.square(x, dtype=np.float64).sum(axis=-1).reshape(-1, x.shape[-2]).sum(axis=0)


def sqnr_db(reference: Any, approx: Any) -> float:
    """Signal-to-quantization-noise ratio 10 log10(|ref|^2 / |ref - approx|^2), in dB."""
    ref = np.asarray(reference, dtype=np.float64)
    err = ref - np.asarray(approx, dtype=np.float64)
    noise = float(np.sum(err * err))
    signal = float(np.sum(ref * ref))
    if noise == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(signal / noise))


# --- integer codes (``--target integer``) --------------------------------------------------
#
# The integer GEMM (onnxruntime's MatMulIntegerToFloat) takes uint8 activation codes with ONE
# zero point for the whole tensor, while the quantizer above has one per token. Every token is
# therefore written around the shared zero point CODE_ZERO_POINT = 128, exactly:
#
# - b <= 7 bits: q - zp lies in [-(2^b - 1), 2^b - 1] within [-128, 127], so c = q - zp + 128;
# - b = 8 bits: q - zp spans up to 510 values and does not fit, so c = q, and the difference
#   (c - 128) - (q - zp) = zp - 128 is taken back in the GEMM itself: ``zero_point_columns``
#   extra columns hold zp (128 for the b <= 7 tokens), and the weight gets as many extra rows
#   whose sum is -(column sum of the weight codes) (weights.zero_point_rows), so
#   sum_k (c_k - 128) w_k = sum_k (q_k - zp) w_k for every token, in exact integer arithmetic.
#
# The codes are the quantizer's own: y = scale * sw * ((c - 128) @ W_ext) equals the fake-quant
# product (q - zp) scale @ (w sw) up to float rounding.

CODE_ZERO_POINT = 128
FOLDED_MAX_BITS = 7  # widest tokens whose q - zp fits in int8 around the shared zero point


def integer_codes_group(x: np.ndarray, bits: int, zero_point_columns: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes uint8 (..., s, d + zero_point_columns), scale float32 (..., s, 1)) of tokens at ``bits``."""
    if not 2 <= bits <= 8:
        raise ValueError(f"integer codes take 2-8 bits, got {bits}")
    qmax = float(2**bits - 1)
    scale, zp = qparams(x, bits)
    q = token_codes(x, scale, zp, qmax)
    shape = (*x.shape[:-1], zero_point_columns)
    if bits <= FOLDED_MAX_BITS:
        codes, column = q - zp + CODE_ZERO_POINT, np.full(shape, CODE_ZERO_POINT, np.float32)
    else:
        codes, column = q, np.broadcast_to(zp, shape)
    return np.concatenate([codes, column], axis=-1).astype(np.uint8), scale.astype(np.float32)


def integer_codes(x: np.ndarray, hp_tokens: int, hp_bits: int, lp_bits: int,
                  zero_point_columns: int, mid: Tiers = ()) -> tuple[np.ndarray, np.ndarray]:
    """The codes of :func:`token_qdq`'s quantizer around the shared zero point, and the per-token scales."""
    spans = tier_spans(int(x.shape[-2]), hp_tokens, hp_bits, lp_bits, mid)
    groups = [integer_codes_group(x[..., start:end, :], bits, zero_point_columns) for start, end, bits in spans]
    return np.concatenate([g[0] for g in groups], axis=-2), np.concatenate([g[1] for g in groups], axis=-2)


def integer_matmul(codes: np.ndarray, scale: np.ndarray, weight_codes: np.ndarray, weight_scale: np.ndarray) -> np.ndarray:
    """What MatMulIntegerToFloat computes: scale * weight_scale * ((codes - 128) @ weight_codes), float64 sums."""
    acc = (codes.astype(np.int64) - CODE_ZERO_POINT) @ weight_codes.astype(np.int64)
    return (acc * scale.astype(np.float64) * weight_scale.astype(np.float64)).astype(np.float32)
