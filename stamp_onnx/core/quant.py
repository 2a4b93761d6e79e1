"""Per-token asymmetric min-max quantization with mixed precision (numpy and torch).

The formula is ONNX DynamicQuantizeLinear generalised to b bits (see docs/design.md):

    rmin = min(0, min_j x_j)   rmax = max(0, max_j x_j)
    scale = (rmax - rmin) / (2^b - 1)      (1 where rmax == rmin)
    zp = clip(round(-rmin / scale), 0, 2^b - 1)
    q = clip(round(x / scale) + zp, 0, 2^b - 1)     round half to even
    x_hat = (q - zp) * scale

One scale and zero point per token (axis -2), taken over the features (axis -1). In
:func:`token_qdq` the first ``hp_tokens`` tokens use ``hp_bits``, the rest ``lp_bits``.
All arithmetic stays in the input's float dtype so ONNX Runtime can match it bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

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
    q = np.clip(np.round(x / scale) + zp, 0, qmax)
    return ((q - zp) * scale).astype(x.dtype)


def token_qdq(x: Any, hp_tokens: int, hp_bits: int, lp_bits: int) -> Any:
    """Mixed precision: tokens [0, hp_tokens) at hp_bits, the rest at lp_bits."""
    k = min(hp_tokens, int(x.shape[-2]))
    return _cat([qdq(x[..., :k, :], hp_bits), qdq(x[..., k:, :], lp_bits)])


def sqnr_db(reference: Any, approx: Any) -> float:
    """Signal-to-quantization-noise ratio 10 log10(|ref|^2 / |ref - approx|^2), in dB."""
    ref = np.asarray(reference, dtype=np.float64)
    err = ref - np.asarray(approx, dtype=np.float64)
    noise = float(np.sum(err * err))
    signal = float(np.sum(ref * ref))
    if noise == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(signal / noise))
