"""Energy-based bit allocation: a width for each transformed token, from its calibrated energy.

Theorem 1 of the STaMP paper bounds the error of a per-token min-max quantizer after an
orthogonal sequence transform by

    E ||L^-1 Q(L X) - X||^2  <=  d/2 * sum_i e_i / (2^b_i - 1)^2,      e_i = E ||(L X)_i||^2

so a bit is worth most where the energy is: the continuous optimum under a fixed total is
b_i = log2(sqrt(e_i)) + C. :func:`allocate_widths` solves the discrete version exactly: the
supported widths and an integer budget of bits make it a knapsack, solved by dynamic
programming over the tokens and the bits spent (s x budget x widths steps: well under a second
for thousands of tokens). A greedy that buys the largest drop per bit is exact only while
every step costs one bit; the jump from 8 to 16 bits costs eight, and the greedy then misses
the optimum.

The widths must be non-increasing in token order, so that the tokens of one width are one
contiguous run, quantized by one QuantizeLinear/DequantizeLinear pair. The energies are first
replaced by their best non-increasing fit (pool-adjacent-violators); on a non-increasing
profile some optimum has non-increasing widths (swapping two widths against the energy order
never lowers the bound), and sorting the chosen widths finds it.
The ``prefix`` tokens (kept out of the transform: an attention sink, a CLS token) take the
widest width first, as the two-tier quantizer gives them hp_bits.

Example::

    widths = allocate_widths(energy, avg_bits=4.5, widths=(2, 3, 4, 5, 6, 7, 8), prefix=1)
    hp_tokens, hp_bits, mid, lp_bits = tiers_of(widths)     # what TokenQDQ takes
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stamp_onnx.config import Tiers


def allocate_widths(energy: np.ndarray, avg_bits: float, widths: Sequence[int], prefix: int = 0) -> np.ndarray:
    """Bit width of each of the s tokens whose mean energies are ``energy`` (s,): non-increasing in
    token order, each one of ``widths``, the first ``prefix`` at the widest, at most
    ``avg_bits * s`` bits in all, and the bound sum_i e_i / (2^b_i - 1)^2 of the rest (their
    energies made non-increasing) as low as those allow.

    ValueError when the budget cannot hold the prefix at the widest width and the rest at the
    narrowest.
    """
    ladder = np.asarray(sorted(set(widths)), dtype=np.int64)
    energy = np.asarray(energy, dtype=np.float64)
    s, p = len(energy), min(prefix, len(energy))
    spare = int(np.floor(avg_bits * s + 1e-9)) - p * int(ladder[-1]) - (s - p) * int(ladder[0])
    if spare < 0:
        raise ValueError(f"{avg_bits:g} average bits over {s} tokens cannot hold {p} prefix token(s) at {ladder[-1]} bits "
                         f"and the rest at {ladder[0]}")
    fitted = non_increasing_fit(energy[p:])
    extra = ladder - ladder[0]  # bits over the narrowest width, per choice
    spare = min(spare, int(extra[-1]) * (s - p))  # more than every token at the widest buys nothing
    # best[r]: the lowest bound of the tokens so far with at most r spare bits spent; choice[i, r]
    # the width token i takes in it (a knapsack over the budget: exact for any ladder, 2..8 or with 16)
    best = np.zeros(spare + 1)
    choice = np.zeros((s - p, spare + 1), dtype=np.int8)
    inverse_square = 1.0 / (2.0 ** ladder.astype(np.float64) - 1.0) ** 2
    for i, e in enumerate(fitted):
        options = np.full((len(ladder), spare + 1), np.inf)
        for k, cost in enumerate(extra[extra <= spare]):
            options[k, cost:] = best[: spare + 1 - cost] + e * inverse_square[k]
        # ties (a step that no longer lowers the bound in float64): the wider width, so the budget is spent
        choice[i] = len(ladder) - 1 - np.argmin(options[::-1], axis=0)
        best = options[choice[i], np.arange(spare + 1)]
    picked = np.zeros(s - p, dtype=np.int64)
    r = spare
    for i in range(s - p - 1, -1, -1):
        picked[i] = choice[i, r]
        r -= int(extra[picked[i]])
    # energies are non-increasing, so sorting the widths the same way never raises the bound
    rest = np.sort(ladder[picked])[::-1]
    return np.concatenate([np.full(p, ladder[-1], dtype=np.int64), rest])


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
