"""SmoothQuant's per-channel scales (Xiao et al. 2023), and how a rewritten model records them.

For the activation X (tokens x d) read by a group of linear layers with weights W (d x d_out
each, MatMul layout), channel j gets

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

where max|X_j| is over the calibration tokens and max|W_j| over the output columns of every
weight in the group (both floored at 1e-5, as the SmoothQuant code does). The layers then
compute (X / s)(diag(s) W) = X W: in float nothing changes, but the quantizer sees X / s,
whose outlier channels are divided down while the weight rows take the difference. alpha = 0.5
splits the range evenly; larger alpha moves more of it into the weights.

Layers that read the same activation (q/k/v, gate/up) must share s; so must the calls of one
module (one weight in the PyTorch model). Each rewritten layer's s is recorded on its
quantizer node (:data:`stamp_onnx.graph.contract.SCALE_KEY`) so the PyTorch reference and
the per-layer check rebuild the same layer without the calibration data.
"""

from __future__ import annotations

import numpy as np

FLOOR = 1e-5


def smooth_scales(act_amax: np.ndarray, weight_amax: np.ndarray, alpha: float) -> np.ndarray:
    """s (d,) float32 from per-channel max |X| and max |W| (both (d,)); see the module docstring."""
    act = np.maximum(np.asarray(act_amax, dtype=np.float64), FLOOR)
    weight = np.maximum(np.asarray(weight_amax, dtype=np.float64), FLOOR)
    if act.shape != weight.shape or act.ndim != 1:
        raise ValueError(f"activation and weight maxima must both be (d,), got {act.shape} and {weight.shape}")
    return (act**alpha / weight ** (1 - alpha)).astype(np.float32)


def weight_amax(w: np.ndarray) -> np.ndarray:
    """max |W_j| over the output columns of a (d_in, d_out) weight: shape (d_in,)."""
    return np.abs(np.asarray(w, dtype=np.float32)).max(axis=1)


def smoothed_weight(w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """diag(s) W for W (d_in, d_out), float32."""
    return (np.asarray(w, dtype=np.float32) * np.asarray(scale, dtype=np.float32)[:, None]).astype(np.float32)


