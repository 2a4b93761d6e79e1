"""Where a STaMP unit for the HTP puts the tokens (block form of the Haar transforms), and the
static encodings of its tensors, calibrated on float activations (:mod:`stamp_onnx.targets.htp_units`
builds the graph from these).

Block form: every Haar level pairs tokens (2i, 2i+1), so each run of 2^L consecutive tokens after
the P prefix tokens yields exactly its own coefficients (a_L, d_L, 2 of d_(L-1), ...): one
2^L x 2^L matrix F for all blocks. The last, shorter run of r < 2^L tokens follows the
reference's odd-length rule, which is the r-token Haar: a block of its own. ``haar2d`` uses 2-D
blocks of 2^L x 2^L grid tokens and the Kronecker matrix, rows in the reference's group order.

Precision groups: the first K tokens of the reference order [a_L | d_L | ... | d_1] are whole
bands of every block when K ends on a band boundary, i.e. the first c rows of every block
(c = 2^(g-1) for g bands in 1-D, 4^(g-1) in 2-D) and the first rows of the tail. K is rounded to
the nearest band boundary (ties up), so the groups are exactly the reference's first K tokens
and the rest (:attr:`BlockPlan.hp_count`, :meth:`BlockPlan.unit_matrix`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from stamp_onnx.core import transforms
from stamp_onnx.errors import ConfigError

UNIT_TRANSFORMS = ("haar", "haar2d", "none")
ACTIVATION_BITS = (8, 16)  # uint8 / uint16: the HTP's activation types


# --- geometry -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """Where the tokens of one layer go: prefix, full blocks, tail, and the two precision groups.

    tokens: S, fixed. hp_tokens: the K asked for (prefix included); the unit uses
    :attr:`hp_count`, K rounded to a band boundary. grid_width: haar2d only (0: square).
    """

    transform: str
    tokens: int
    levels: int = 3
    prefix: int = 1
    hp_tokens: int = 64
    grid_width: int = 0

    def __post_init__(self) -> None:
        if self.transform not in UNIT_TRANSFORMS:
            raise ConfigError(f"transform={self.transform!r} has no HTP unit; choose one of {', '.join(UNIT_TRANSFORMS)}")
        if self.transform == "none":
            object.__setattr__(self, "prefix", 0)
        if not 0 <= self.prefix <= self.tokens:
            raise ConfigError(f"prefix_tokens={self.prefix} does not fit {self.tokens} tokens")
        if self.levels < 1 and self.transform != "none":
            raise ConfigError(f"levels={self.levels}: the HTP unit needs at least one Haar level")
        if self.transform == "haar2d":
            try:
                height, width = transforms.grid_shape(self.tokens - self.prefix, self.grid_width)
            except ValueError as err:
                raise ConfigError(str(err)) from err
            if height % self.side or width % self.side:
                raise ConfigError(
                    f"haar2d on the HTP needs a grid divisible by 2^levels = {self.side}; "
                    f"{height} x {width} is not (lower levels)"
                )

    @property
    def side(self) -> int:
        return 1 << self.levels

    @property
    def body(self) -> int:
        """Tokens after the prefix."""
        return self.tokens - self.prefix

    @property
    def block(self) -> int:
        """Tokens per block: 2^L (1-D), 4^L (2-D); 0 for ``none``."""
        if self.transform == "none":
            return 0
        return self.side * self.side if self.transform == "haar2d" else self.side

    @property
    def blocks(self) -> int:
        return self.body // self.block if self.block else 0

    @property
    def tail(self) -> int:
        """Tokens in the last, shorter 1-D block (0 for haar2d, which must tile exactly)."""
        return self.body - self.blocks * self.block if self.block else 0

    def grid(self) -> tuple[int, int]:
        return transforms.grid_shape(self.body, self.grid_width)

    def block_matrix(self) -> np.ndarray:
        """F (block x block): the coefficients of one block, in the reference's order, = F @ tokens."""
        one = transforms.matrix(self.side, "haar", self.levels)
        if self.transform == "haar":
            return np.array(one)
        return np.kron(one, one)[transforms.grid_order(self.side, self.side, self.levels)]

    def tail_matrix(self) -> np.ndarray:
        return np.array(transforms.matrix(self.tail, "haar", self.levels))

    def _block_bands(self) -> np.ndarray:
        bands = transforms.haar_bands(self.side, self.levels)
        if self.transform == "haar":
            return bands
        return np.sort(np.maximum.outer(bands, bands).ravel(), kind="stable")

    @property
    def bands(self) -> int:
        """g: the number of whole bands (a_L first) in the hp group, K rounded to the nearest boundary."""
        if self.transform == "none":
            return 0
        want = self.hp_tokens - self.prefix
        best = 0
        for g in range(self.levels + 2):
            if abs(self._count(g) - want) <= abs(self._count(best) - want):
                best = g
        return best

    def _count(self, g: int) -> int:
        rows = int((self._block_bands() < g).sum())
        tail = int((transforms.haar_bands(self.tail, self.levels) < g).sum()) if self.tail else 0
        return self.blocks * rows + tail

    @property
    def rows(self) -> int:
        """c: hp coefficient rows per full block."""
        return int((self._block_bands() < self.bands).sum()) if self.block else 0

    @property
    def tail_rows(self) -> int:
        return int((transforms.haar_bands(self.tail, self.levels) < self.bands).sum()) if self.tail else 0

    @property
    def hp_count(self) -> int:
        """Tokens at hp bits (prefix included): the K the unit really uses."""
        if self.transform == "none":
            return min(self.hp_tokens, self.tokens)
        return self.prefix + self.blocks * self.rows + self.tail_rows

    def unit_matrix(self) -> np.ndarray:
        """(S, S) float64: row i is the i-th token of the unit's [hp group | lp group] as a
        combination of the input tokens. Its rows are the reference transform's rows, permuted."""
        s, p = self.tokens, self.prefix
        if self.transform == "none":
            return np.eye(s)
        hp: list[np.ndarray] = [np.eye(s)[:p]]
        lp: list[np.ndarray] = []
        f, c = self.block_matrix(), self.rows
        starts = self._block_starts()
        for part, take in ((hp, slice(0, c)), (lp, slice(c, None))):
            for start in starts:
                rows = np.zeros((self.block, s))
                rows[:, start] = f
                part.append(rows[take])
        if self.tail:
            t = np.zeros((self.tail, s))
            t[:, p + self.blocks * self.block :] = self.tail_matrix()
            hp.append(t[: self.tail_rows])
            lp.append(t[self.tail_rows :])
        return np.concatenate(hp + lp)

    def _block_starts(self) -> list[np.ndarray]:
        """Input token indices of each full block, in block order and in-block order."""
        p = self.prefix
        if self.transform == "haar":
            return [p + np.arange(k * self.block, (k + 1) * self.block) for k in range(self.blocks)]
        height, width = self.grid()
        side = self.side
        out = []
        for bi in range(height // side):
            for bj in range(width // side):
                rr, cc = np.meshgrid(bi * side + np.arange(side), bj * side + np.arange(side), indexing="ij")
                out.append(p + (rr * width + cc).ravel())
        return out


# --- encodings ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Encoding:
    """A static per-tensor asymmetric encoding: real = (q - zero_point) * scale, q in [0, 2^bits)."""

    scale: float
    zero_point: int
    bits: int = 16

    @classmethod
    def from_range(cls, rmin: float, rmax: float, bits: int, minimum_range: float = 1e-4) -> Encoding:
        """onnxruntime's rule: the range is widened to hold 0 (and at least ``minimum_range``)."""
        if bits not in ACTIVATION_BITS:
            raise ConfigError(f"{bits}-bit activations do not run on the HTP; use 8 or 16")
        return cls(*range_encoding(rmin, rmax, bits, minimum_range), bits)


def range_encoding(rmin: float, rmax: float, bits: int, minimum_range: float = 1e-4) -> tuple[float, int]:
    """(scale, zero point) of the unsigned ``bits``-bit encoding of [rmin, rmax], widened to hold 0."""
    rmin, rmax = min(float(rmin), 0.0), max(float(rmax), 0.0)
    if rmax - rmin < minimum_range:
        rmax = rmin + minimum_range
    qmax = (1 << bits) - 1
    scale = float(np.float32((rmax - rmin) / qmax))
    return scale, int(np.clip(round(-rmin / scale), 0, qmax))


@dataclasses.dataclass(frozen=True)
class UnitRanges:
    """Calibrated (min, max) of the unit's inner tensors: the hp and lp groups (transformed
    activations, prefix tokens apart), the W products of both groups and of the lp group, x W in
    token order, and the prefix tokens."""

    hp: tuple[float, float]
    lp: tuple[float, float]
    product: tuple[float, float]
    lp_product: tuple[float, float]
    token_product: tuple[float, float]
    prefix: tuple[float, float] = (0.0, 0.0)


CALIBRATORS = ("minmax", "percentile", "mse")
_MSE_RATIOS = np.linspace(0.2, 1.0, 41)  # the clipping ratios the MSE search tries
_MSE_VALUES = 1 << 21  # values the search scores at most (an even subsample beyond)


def calibrate_unit(plan: BlockPlan, x: np.ndarray, weight: np.ndarray, *, calibrator: str = "minmax",
                   percentile: float = 99.999, hp_bits: int = 16, lp_bits: int = 8) -> UnitRanges:
    """Ranges of the unit's inner tensors over calibration activations ``x`` (N, S, d) in float.

    ``calibrator`` sets the two groups' ranges (the products keep their min/max):
    ``minmax``; ``percentile``: clipped to the ``percentile``-th percentile on each side (a few
    outliers then saturate instead of stretching the encoding); ``mse``: the group's min and max
    scaled by the ratio in [0.2, 1] whose ``bits``-bit encoding has the least squared error on the
    calibration values (groups at 16 bits keep min/max: their step is fine already).
    """
    if x.ndim != 3 or x.shape[1] != plan.tokens:
        raise ConfigError(f"calibration activations have shape {x.shape}; the unit needs (samples, {plan.tokens}, d)")
    if calibrator not in CALIBRATORS:
        raise ConfigError(f"calibrator {calibrator!r} is not known; choose one of {', '.join(CALIBRATORS)}")
    u = np.einsum("ts,nsd->ntd", plan.unit_matrix(), x.astype(np.float64))
    w = weight.astype(np.float64)
    k = plan.hp_count

    def span(a: np.ndarray, bits: int) -> tuple[float, float]:
        if a.size == 0:
            return (0.0, 0.0)
        if calibrator == "percentile":
            lo, hi = np.percentile(a, [100.0 - percentile, percentile])
            return float(lo), float(hi)
        if calibrator == "mse" and bits <= 8:
            return mse_range(a, bits)
        return float(a.min()), float(a.max())

    def full(a: np.ndarray) -> tuple[float, float]:
        return (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)

    y = u @ w
    p = plan.prefix  # the prefix tokens are not transformed: their own range, products in token order
    return UnitRanges(span(u[:, p:k], hp_bits), span(u[:, k:], lp_bits), full(y[:, p:]), full(y[:, k:]),
                      full(x.astype(np.float64) @ w), span(u[:, :p], 16))


def mse_range(values: np.ndarray, bits: int) -> tuple[float, float]:
    """The clipped (min, max) whose ``bits``-bit asymmetric encoding gives ``values`` the least
    mean squared error, among min/max scaled by each ratio in :data:`_MSE_RATIOS`."""
    flat = values.ravel()
    if flat.size > _MSE_VALUES:
        flat = flat[:: flat.size // _MSE_VALUES + 1]
    lo, hi = min(float(flat.min()), 0.0), max(float(flat.max()), 0.0)
    best, best_error = (lo, hi), np.inf
    for ratio in _MSE_RATIOS:
        scale, zero = range_encoding(lo * ratio, hi * ratio, bits)
        codes = np.clip(np.round(flat / scale) + zero, 0, (1 << bits) - 1)
        error = float(np.mean(((codes - zero) * scale - flat) ** 2))
        if error < best_error:
            best, best_error = (lo * ratio, hi * ratio), error
    return best


def block_forward(plan: BlockPlan, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The unit's float transform in numpy, op for op as in the graph: (hp group, lp group)."""
    b, _, d = x.shape
    p, c, nb = plan.prefix, plan.rows, plan.blocks
    if plan.transform == "none":
        k = plan.hp_count
        return x[:, :k], x[:, k:]
    hp, lp = [x[:, :p]], []
    body = x[:, p : p + nb * plan.block]
    if nb:
        blocks = _to_blocks(plan, body, b, d).transpose(0, 2, 1)  # (b*nb, d, block)
        f = plan.block_matrix().astype(np.float32)
        hp.append((blocks @ f[:c].T).transpose(0, 2, 1).reshape(b, nb * c, d))
        lp.append((blocks @ f[c:].T).transpose(0, 2, 1).reshape(b, nb * (plan.block - c), d))
    if plan.tail:
        tail = x[:, p + nb * plan.block :].transpose(0, 2, 1)
        ft = plan.tail_matrix().astype(np.float32)
        hp.append((tail @ ft[: plan.tail_rows].T).transpose(0, 2, 1))
        lp.append((tail @ ft[plan.tail_rows :].T).transpose(0, 2, 1))
    return np.concatenate(hp, axis=1), np.concatenate(lp, axis=1) if lp else x[:, :0]


def _to_blocks(plan: BlockPlan, body: np.ndarray, b: int, d: int) -> np.ndarray:
    if plan.transform == "haar":
        return body.reshape(b * plan.blocks, plan.block, d)
    height, width = plan.grid()
    side = plan.side
    grid = body.reshape(b * height // side, side, width // side, side * d).transpose(0, 2, 1, 3)
    return grid.reshape(b * plan.blocks, plan.block, d)
