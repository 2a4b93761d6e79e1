"""GPTQ weight quantization (Frantar et al. 2022): round-to-nearest codes, errors pushed forward.

Same output as ``weights.quantize_weight`` (symmetric signed int8 codes in [-qmax, qmax], float32
scales per output channel or per block of ``block`` input features, w_hat = q * scale), but the
codes are chosen to keep the layer output x W close rather than each weight.

Weights are in the MatMul layout, W of shape (d_in, d_out) with y = x W, and H = sum over
calibration tokens of x^T x (d_in x d_in). The output error ||x W - x W_hat||^2 is
tr(dW^T H dW), so the input features (rows of W) interact through H. GPTQ walks the rows in
order i = 0 .. d_in-1; it rounds row i and spreads its error over the rows not yet rounded,
the optimal brain surgeon update for the remaining features:

    q_i   = clip(round(w_i / s), -qmax, qmax)            w_i the CURRENT (updated) row i
    e_i   = (w_i - q_i s) / U[i, i]
    w_j  -= U[i, j] e_i                                   for every j > i

U is the upper Cholesky factor of H^-1 (H^-1 = U^T U): row i of U holds, up to the factor
U[i, i], row i of the inverse Hessian of the features i.. once features < i are fixed, so one
factorization replaces d_in rank-one downdates. The updates are applied lazily: inside a batch
of ``column_block`` rows at once, to the rows after the batch with one matrix product.

H is damped, H += damp * mean(diag H) * I, so it stays positive definite; an input that was
zero on every token (H[i, i] = 0) cannot affect the output: its row of W is set to 0 and
H[i, i] to 1. Scales: per channel they are ``weights.weight_scales`` of the original W; per
block, the scale of a block comes from the current (already updated) rows of that block when
the walk reaches its first row, with the same formula (max |w| / qmax, 1 where all zeros).
With H a multiple of the identity no error moves and the result is round-to-nearest exactly.

Shapes, e.g. d_in = 576, d_out = 1536, block = 32:
    w (576, 1536), hessian (576, 576)  ->  q int8 (576, 1536), scale float32 (18, 1536)
"""

from __future__ import annotations

import numpy as np

from stamp_onnx.core.weights import weight_scales


def hessian(x: np.ndarray) -> np.ndarray:
    """x^T x (float64, d_in x d_in) summed over every leading axis of ``x`` (..., d_in)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 1:
        raise ValueError("hessian() needs activations of shape (..., d_in), got a scalar")
    flat = x.reshape(-1, x.shape[-1])
    return flat.T @ flat


def inverse_cholesky(h: np.ndarray) -> np.ndarray:
    """The upper triangular U with U^T U = h^-1, for a symmetric positive definite ``h``."""
    try:
        lower = np.linalg.cholesky(h)  # h = L L^T
        lower_inv = np.linalg.inv(lower)
        return np.linalg.cholesky(lower_inv.T @ lower_inv).T  # h^-1 = L^-T L^-1
    except np.linalg.LinAlgError as err:
        raise ValueError(
            "the damped Hessian is not positive definite: pass H = sum of x^T x over the "
            "calibration tokens, or raise damp"
        ) from err


def round_row(w: np.ndarray, scale: np.ndarray, qmax: int) -> np.ndarray:
    """int8 codes of one row of W, rounded in float32 exactly as ``weights.quantize_weight``."""
    return np.clip(np.round(w.astype(np.float32) / scale), -qmax, qmax).astype(np.int8)


def check_inputs(w: np.ndarray, h: np.ndarray, bits: int, block: int, damp: float, column_block: int) -> None:
    """Raise ValueError naming the argument, the value got and the one expected."""
    if w.ndim != 2 or 0 in w.shape:
        raise ValueError(f"w must be a non-empty (d_in, d_out) matrix, got shape {w.shape}")
    if h.shape != (w.shape[0], w.shape[0]):
        raise ValueError(f"hessian must have shape (d_in, d_in) = {(w.shape[0],) * 2} for w of shape {w.shape}, got {h.shape}")
    if not (np.isfinite(w).all() and np.isfinite(h).all()):
        raise ValueError("w and hessian must be finite (no NaN or inf)")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8 for int8 codes, got {bits}")
    if block < 0:
        raise ValueError(f"block must be 0 (per channel) or a positive block size, got {block}")
    if not damp >= 0:
        raise ValueError(f"damp must be >= 0, got {damp}")
    if column_block < 1:
        raise ValueError(f"column_block must be >= 1, got {column_block}")


def gptq_quantize(
    w: np.ndarray,
    hessian: np.ndarray,
    bits: int,
    block: int = 0,
    *,
    damp: float = 0.01,
    column_block: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """(q as int8 in [-qmax, qmax], scale float32) of ``w`` (d_in, d_out); see the module docstring.

    The shapes and dtypes are those of ``weights.quantize_weight(w, bits, block)``: w_hat is
    q * expand_scales(scale, d_in, block). ``hessian`` is sum x^T x (d_in, d_in), ``damp`` the
    fraction of its mean diagonal added to the diagonal, ``column_block`` the lazy batch size.
    """
    w32 = np.asarray(w, dtype=np.float32)
    h = np.array(hessian, dtype=np.float64)  # a copy: the dead inputs are patched below
    check_inputs(w32, h, bits, block, damp, column_block)
    d_in, d_out = w32.shape
    qmax = 2 ** (bits - 1) - 1

    current = w32.astype(np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    current[dead] = 0.0
    h[np.diag_indices(d_in)] += damp * np.mean(np.diag(h))
    u = inverse_cholesky(h)

    q = np.zeros((d_in, d_out), np.int8)
    if block:
        scale = np.zeros((-(-d_in // block), d_out), np.float32)
    else:
        scale = weight_scales(w32, bits, 0)  # from the original W, before the dead rows are zeroed
    row_scale = scale
    for start in range(0, d_in, column_block):
        stop = min(start + column_block, d_in)
        batch = current[start:stop].copy()  # updated in place row by row
        errors = np.zeros((stop - start, d_out))
        for k in range(stop - start):
            i = start + k
            if block and i % block == 0:
                # the block's rows as they stand now: in the batch, or after it minus the updates
                # still pending from the batch's rows < i
                end = min(i + block, d_in)
                after = current[stop:end] - u[start:i, stop:end].T @ errors[:k]
                rows = np.concatenate([batch[k : k + end - i], after])
                row_scale = scale[i // block] = weight_scales(rows.astype(np.float32), bits, 0)
            q[i] = round_row(batch[k], row_scale, qmax)
            err = (batch[k] - q[i] * row_scale.astype(np.float64)) / u[i, i]
            batch[k + 1 :] -= np.outer(u[i, i + 1 : stop], err)
            errors[k] = err
        current[stop:] -= u[start:stop, stop:].T @ errors
    return q, scale

