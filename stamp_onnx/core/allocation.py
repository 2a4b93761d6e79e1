"""Energy-based bit allocation: a width for each transformed token, from its calibrated energy.

Theorem 1 of the STaMP paper bounds the error of a per-token min-max quantizer after an
orthogonal sequence transform by

    E ||L^-1 Q(L X) - X||^2  <=  d/2 * sum_i e_i / (2^b_i - 1)^2,      e_i = E ||(L X)_i||^2

so a bit is worth most where the energy is: the continuous optimum under a fixed total is
b_i = log2(sqrt(e_i)) + C. :func:`allocate_widths` solves the discrete version: every token
starts at the narrowest width, and the bound's largest drop per bit spent is taken, one step
to the next supported width at a time, until the budget is spent (greedy is optimal here: each
token's drops shrink as it widens, so the bound is convex in the bits).

The widths must be non-increasing in token order, so that the tokens of one width are one
contiguous run, quantized by one QuantizeLinear/DequantizeLinear pair. The energies are first
replaced by their best non-increasing fit (pool-adjacent-violators); on a non-increasing
profile the greedy order gives non-increasing widths by itself (ties go to the earlier token).
The ``prefix`` tokens (kept out of the transform: an attention sink, a CLS token) take the
widest width first, as the two-tier quantizer gives them hp_bits.

Example::

    widths = allocate_widths(energy, avg_bits=4.5, widths=(2, 3, 4, 5, 6, 7, 8), prefix=1)
    hp_tokens, hp_bits, mid, lp_bits = tiers_of(widths)     # what TokenQDQ takes
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

from stamp_onnx.config import Tiers


def allocate_widths(energy: np.ndarray, avg_bits: float, widths: Sequence[int], prefix: int = 0) -> np.ndarray:
    """Bit width of each of the s tokens whose mean energies are ``energy`` (s,): non-increasing in
    token order, each one of ``widths``, the first ``prefix`` at the widest, and at most
    ``avg_bits * s`` bits in all (a step whose drop of the bound is zero is not taken).

    ValueError when the budget cannot hold the prefix at the widest width and the rest at the
    narrowest.
    """
    energy = np.asarray(energy, dtype=np.float64)
    ladder = sorted(set(widths))
    s, p = len(energy), min(prefix, len(energy))
    spare = int(np.floor(avg_bits * s + 1e-9)) - p * ladder[-1] - (s - p) * ladder[0]
    if spare < 0:
        raise ValueError(f"{avg_bits:g} average bits over {s} tokens cannot hold {p} prefix token(s) at {ladder[-1]} bits "
                         f"and the rest at {ladder[0]}")
    step = np.zeros(s, dtype=np.int64)  # index into ladder
    step[:p] = len(ladder) - 1
    fitted = non_increasing_fit(energy[p:])
    inverse_square = [1.0 / (2.0**b - 1.0) ** 2 for b in ladder]

    def candidate(i: int) -> tuple[float, int, int] | None:
        k = step[i]
        if k + 1 >= len(ladder):
            return None
        cost = ladder[k + 1] - ladder[k]
        gain = fitted[i - p] * (inverse_square[k] - inverse_square[k + 1]) / cost
        return (-gain, i, cost) if gain > 0 else None

    heap = [c for i in range(p, s) if (c := candidate(i)) is not None]
    heapq.heapify(heap)
    while heap and spare > 0:
        _, i, cost = heapq.heappop(heap)
        if cost > spare:  # a wider jump (8 -> 16) that no longer fits: the token stays
            continue
        step[i] += 1
        spare -= cost
        if (c := candidate(i)) is not None:
            heapq.heappush(heap, c)
    return np.asarray(ladder, dtype=np.int64)[step]


def non_increasing_fit(values: np.ndarray) -> np.ndarray:
    """The non-increasing sequence closest to ``values`` in least squares (pool adjacent violators)."""
    means: list[float] = []
    counts: list[int] = []
    for v in np.asarray(values, dtype=np.float64):
        means.append(float(v))
        counts.append(1)
        while len(means) > 1 and means[-2] < means[-1]:  # a rise: pool the two blocks
            n = counts[-2] + counts[-1]
            means[-2] = (means[-2] * counts[-2] + means[-1] * counts[-1]) / n
            counts[-2] = n
            del means[-1], counts[-1]
    return np.repeat(np.asarray(means), counts)


def tiers_of(widths: np.ndarray) -> tuple[int, int, Tiers, int]:
    """(hp_tokens, hp_bits, mid, lp_bits) of the TokenQDQ whose tiers are ``widths``' runs (non-increasing):
    the first run is the hp tier, the last run's width is lp_bits (it also covers tokens past the
    end), the runs between are the middle tiers. One width: hp_tokens covers all tokens at it."""
    values = np.asarray(widths, dtype=np.int64)
    if values.size == 0 or np.any(np.diff(values) > 0):
        raise ValueError(f"tiers need a non-empty, non-increasing list of widths, got {values.tolist()}")
    cuts = np.flatnonzero(np.diff(values)) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [values.size]])
    runs = [(int(e - b), int(values[b])) for b, e in zip(starts, ends, strict=True)]
    hp_tokens, hp_bits = runs[0]
    lp_bits = runs[-1][1]
    return hp_tokens, hp_bits, tuple(runs[1:-1]), lp_bits
