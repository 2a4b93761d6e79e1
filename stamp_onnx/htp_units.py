"""Static integer STaMP units for the HTP: the sequence transform as block matrices, two precision
groups with their own calibrated encodings, all in standard ONNX QDQ that the HTP runs integer-only.

The HTP takes only static QDQ (constant scales, uint8/uint16 activations, type-homogeneous ops;
docs/htp.md), so the ``ai.stamp`` ops and their per-token dynamic quantizers cannot run there.
A unit replaces ``y = x W + b`` for an activation of fixed shape (batch, S, d)::

    x (u16) ─┬─ Slice[:P] ──────────────────────────────── Convert(hp) ─┐
             ├─ Slice[body] ─ Reshape(blocks, 2^L, d) ─ Transpose ─┬─ MatMul(F_hp) ─ (u16 hp) ─ Transpose ─ Reshape ─┤ Concat ─ MatMul(W) ─ (u16) ────────────────┐
             │                                                     └─ MatMul(F_lp) ─ Convert(u8 lp) ─ Transpose ─ Reshape ─ Concat ─ MatMul(W) ─ (u8) ─ Convert(u16) ─┤
             └─ Slice[tail] ─ ... the same with the tail's own matrices                                                                                        │
    y (u16) ◄── Add(b) ◄── Concat(prefix, body, tail) ◄── Reshape ◄── Transpose ◄── MatMul(F^T) ◄── Transpose ◄── Concat(hp rows, lp rows) per block ◄─────────┘

Block form: every Haar level pairs tokens (2i, 2i+1), so each run of 2^L consecutive tokens after
the P prefix tokens yields exactly its own coefficients (a_L, d_L, 2 of d_(L-1), ...). A block's
coefficients are one MatMul by the constant 2^L x 2^L matrix F (int8 per output column: every
row of a Haar matrix has entries of one magnitude, so the codes are exact), on the blocks laid
out (blocks, d, 2^L) so that F is the MatMul's weight (a constant as the first MatMul input runs
in float on the HTP). The last, shorter run of r < 2^L tokens is the reference's odd-length rule
and gets its own r x r matrix. ``haar2d`` uses 2-D blocks of 2^L x 2^L grid tokens and their
Kronecker matrix in the reference's group order.

Precision groups: the first K tokens of the reference order [a_L | d_L | ... | d_1] are whole
bands of every block, so the hp group is "the coefficients of the first g bands", which in
block form are the first c rows of every block (c = 2^(g-1) for 1-D, 4^(g-1) for 2-D) and a
prefix of the tail's rows. K is rounded to the nearest band boundary (ties up), so the groups
are exactly those of the reference for the effective K (:attr:`BlockPlan.hp_count`). Each group
gets one per-tensor encoding (the HTP rejects per-token scales), calibrated on the transformed
activations: :func:`calibrate_unit`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from stamp_onnx import transforms
from stamp_onnx.errors import ConfigError

UNIT_TRANSFORMS = ("haar", "haar2d", "none")
PASS_KEY = "stamp_onnx.pass"
LAYER_KEY = "stamp_onnx.layer"
PROVENANCE = "htp_units"
_STORAGE = {8: (np.uint8, TensorProto.UINT8), 16: (np.uint16, TensorProto.UINT16)}


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
        if bits not in _STORAGE:
            raise ConfigError(f"{bits}-bit activations do not run on the HTP; use 8 or 16")
        rmin, rmax = min(float(rmin), 0.0), max(float(rmax), 0.0)
        if rmax - rmin < minimum_range:
            rmax = rmin + minimum_range
        qmax = (1 << bits) - 1
        scale = float(np.float32((rmax - rmin) / qmax))
        return cls(scale, int(np.clip(round(-rmin / scale), 0, qmax)), bits)

    @property
    def onnx_type(self) -> int:
        return _STORAGE[self.bits][1]

    def fake_quantize(self, x: np.ndarray) -> np.ndarray:
        q = np.clip(np.round(x / np.float32(self.scale)) + self.zero_point, 0, (1 << self.bits) - 1)
        return ((q - self.zero_point) * np.float32(self.scale)).astype(np.float32)


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


def calibrate_unit(plan: BlockPlan, x: np.ndarray, weight: np.ndarray, *, percentile: float = 100.0) -> UnitRanges:
    """Ranges of the unit's inner tensors over calibration activations ``x`` (N, S, d) in float.

    ``percentile`` < 100 clips each range to that percentile of the tensor's values on each side
    (e.g. 99.99): a few outliers then saturate instead of stretching the encoding.
    """
    if x.ndim != 3 or x.shape[1] != plan.tokens:
        raise ConfigError(f"calibration activations have shape {x.shape}; the unit needs (samples, {plan.tokens}, d)")
    u = np.einsum("ts,nsd->ntd", plan.unit_matrix(), x.astype(np.float64))
    w = weight.astype(np.float64)
    k = plan.hp_count
    y = u @ w

    def span(a: np.ndarray) -> tuple[float, float]:
        if a.size == 0:
            return (0.0, 0.0)
        if percentile >= 100.0:
            return float(a.min()), float(a.max())
        lo, hi = np.percentile(a, [100.0 - percentile, percentile])
        return float(lo), float(hi)

    def full(a: np.ndarray) -> tuple[float, float]:
        return (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)

    p = plan.prefix  # the prefix tokens are not transformed: their own range, products in token order
    return UnitRanges(span(u[:, p:k]), span(u[:, k:]), full(y[:, p:]), full(y[:, k:]), full(x.astype(np.float64) @ w),
                      span(u[:, :p]))


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


# --- int8 constant matrices ---------------------------------------------------------------


def int8_columns(matrix: np.ndarray, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-column codes of a constant matrix, each column's scale chosen for the
    smallest error rather than max/127: a column of the inverse Haar holds 1/sqrt(8), 1/2 and
    1/sqrt(2), and max/127 puts 1/sqrt(8) at 63.5, half a step off; the grid (1/sqrt(2))/116
    gives 58, 82, 116 (error 1.2e-4)."""
    qmax = (1 << (bits - 1)) - 1
    codes = np.zeros(matrix.shape, dtype=np.int8)
    scales = np.ones(matrix.shape[1], dtype=np.float32)
    for j in range(matrix.shape[1]):
        col = matrix[:, j].astype(np.float64)
        top = float(np.abs(col).max())
        if top == 0.0:
            continue
        best = (math.inf, qmax)
        for q in range(qmax // 2, qmax + 1):
            scale = float(np.float32(top / q))
            err = float(np.abs(np.clip(np.round(col / scale), -qmax, qmax) * scale - col).max())
            if err < best[0] - 1e-12:
                best = (err, q)
        scales[j] = np.float32(top / best[1])
        codes[:, j] = np.clip(np.round(col / scales[j]), -qmax, qmax)
    return codes, scales


@dataclasses.dataclass(frozen=True)
class QuantWeight:
    """An int8 (or int4) symmetric per-output-channel weight: initializer names of codes, scales,
    zero points. A layer's weight is stored transposed, (n, d) per channel on axis 0, for a Gemm
    with transB=1: the QNN provider then hands both precision groups' FullyConnected one static
    tensor (a MatMul's (d, n) weight is transposed per node, so each use would get its own copy).
    The small transform matrices are (k, n) MatMul weights per channel on axis 1."""

    codes: str
    scales: str
    zero_points: str


# --- emitting the unit --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class QValue:
    """A value of the unit: the quantized tensor's name and its encoding (None: float graph)."""

    name: str
    encoding: Encoding | None


class UnitEmitter:
    """Collects the nodes and initializers of one unit. ``quantized=False`` emits the same graph
    without any Q/DQ (a float unit: its output must equal x W + b up to float rounding)."""

    def __init__(self, layer: str, *, quantized: bool = True, fresh: Callable[[str], str] | None = None) -> None:
        self.layer = layer
        self.quantized = quantized
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self._fresh = fresh or counter_namer()
        self._prefix = re.sub(r"[^A-Za-z0-9_.#]", "_", layer)

    def name(self, what: str) -> str:
        return self._fresh(f"{self._prefix}/htp/{what}")

    def const(self, what: str, value: np.ndarray) -> str:
        name = self.name(what)
        self.initializers[name] = numpy_helper.from_array(value, name)
        return name

    def _node(self, op: str, inputs: Sequence[str], what: str, **attrs: Any) -> str:
        out = self.name(what)
        node = helper.make_node(op, list(inputs), [out], name=self.name(f"{what}_{op}"), **attrs)
        for key, value in ((PASS_KEY, PROVENANCE), (LAYER_KEY, self.layer)):
            entry = node.metadata_props.add()
            entry.key, entry.value = key, value
        self.nodes.append(node)
        return out

    def _enc_inputs(self, enc: Encoding) -> list[str]:
        storage = _STORAGE[enc.bits][0]
        return [self.const("scale", np.array(enc.scale, np.float32)), self.const("zero_point", np.array(enc.zero_point, storage))]

    def dq(self, v: QValue) -> str:
        if not self.quantized or v.encoding is None:
            return v.name
        return self._node("DequantizeLinear", [v.name, *self._enc_inputs(v.encoding)], "dq")

    def q(self, real: str, enc: Encoding | None) -> QValue:
        if not self.quantized or enc is None:
            return QValue(real, enc)
        return QValue(self._node("QuantizeLinear", [real, *self._enc_inputs(enc)], "q"), enc)

    def op(self, op: str, inputs: Sequence[QValue], consts: Sequence[str], out: Encoding | None, what: str, **attrs: Any) -> QValue:
        """DQ each input, the op, Q the output: one node unit of the HTP."""
        return self.q(self._node(op, [self.dq(v) for v in inputs] + list(consts), what, **attrs), out)

    def move(self, op: str, v: QValue, consts: Sequence[str], what: str, **attrs: Any) -> QValue:
        """Reshape/Transpose/Slice: the output keeps the input's encoding bit for bit."""
        return self.op(op, [v], consts, v.encoding, what, **attrs)

    def convert(self, v: QValue, enc: Encoding) -> QValue:
        """DQ -> Q to another encoding (the HTP's Convert); nothing when it is the same."""
        if v.encoding == enc or not self.quantized:
            return QValue(v.name, enc)
        return self.q(self.dq(v), enc)

    def reshape(self, v: QValue, shape: Sequence[int]) -> QValue:
        return self.move("Reshape", v, [self.const("shape", np.array(shape, np.int64))], "reshape")

    def transpose(self, v: QValue, perm: Sequence[int]) -> QValue:
        return self.move("Transpose", v, [], "transpose", perm=list(perm))

    def slice(self, v: QValue, start: int, end: int, axis: int = 1) -> QValue:
        consts = [self.const(n, np.array([x], np.int64)) for n, x in (("starts", start), ("ends", end), ("axes", axis))]
        return self.move("Slice", v, consts, "slice")

    def concat(self, parts: Sequence[QValue], axis: int = 1) -> QValue:
        if len(parts) == 1:
            return parts[0]
        encs = {p.encoding for p in parts}
        if self.quantized and len(encs) != 1:
            raise ValueError("Concat inputs must share one encoding")
        return self.op("Concat", parts, [], parts[0].encoding, "concat", axis=axis)

    def weight(self, matrix: np.ndarray, what: str) -> QuantWeight | str:
        """A constant MatMul weight (k, n): int8 per column, or float in a float unit."""
        if not self.quantized:
            return self.const(what, matrix.astype(np.float32))
        codes, scales = int8_columns(matrix)
        return QuantWeight(self.const(what, codes), self.const(f"{what}_scale", scales),
                           self.const(f"{what}_zero_point", np.zeros(scales.shape, np.int8)))

    def linear(self, v: QValue, weight: QuantWeight | str, out: Encoding | None, shape: tuple[int, int, int, int],
               what: str) -> QValue:
        """v (b, rows, d) times the layer's weight (n, d) transposed: Reshape, Gemm(transB=1), Reshape."""
        b, rows, d, n = shape
        flat = self.reshape(v, (b * rows, d))
        if isinstance(weight, QuantWeight):
            w = self._node("DequantizeLinear", [weight.codes, weight.scales, weight.zero_points], "weight", axis=0)
        else:
            w = weight
        y = self.q(self._node("Gemm", [self.dq(flat), w], what, transB=1), out)
        return self.reshape(y, (b, rows, n))

    def matmul(self, v: QValue, weight: QuantWeight | str, out: Encoding | None, what: str = "matmul") -> QValue:
        if isinstance(weight, QuantWeight):
            w = self._node("DequantizeLinear", [weight.codes, weight.scales, weight.zero_points], "weight", axis=1)
        else:
            w = weight
        return self.q(self._node("MatMul", [self.dq(v), w], what), out)


def counter_namer(taken: set[str] | None = None) -> Callable[[str], str]:
    """Fresh names: ``base``, then ``base_1``, ``base_2``...; never one of ``taken``."""
    used = set(taken or ())

    def fresh(base: str) -> str:
        name, n = base, 0
        while name in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name)
        return name

    return fresh


@dataclasses.dataclass(frozen=True)
class UnitSpec:
    """Everything a unit needs besides its input: the plan, the layer's weight and bias, the
    encodings of the input and output (given by the surrounding QDQ model), the calibrated inner
    ranges and the group widths."""

    plan: BlockPlan
    batch: int
    features: int
    weight: QuantWeight | np.ndarray  # int8 (n, d) initializers already in the model, or a float (d, n) matrix
    outputs: int
    bias: QValue | None  # a quantized bias already in the model (its codes' name and encoding)
    input_encoding: Encoding | None
    output_encoding: Encoding | None
    ranges: UnitRanges | None
    hp_bits: int = 16
    lp_bits: int = 8


def emit_unit(em: UnitEmitter, x: QValue, spec: UnitSpec) -> QValue:
    """Emit the unit for ``x`` (batch, S, d) into ``em``; returns y (batch, S, n) in the output encoding.

    Every part (prefix, full blocks, tail) has its own W products, one per precision group: the
    weight is one shared initializer, and no group is packed into one tensor and sliced apart
    again (each Concat/Slice is a copy on the HTP).
    """
    plan, b, d, n = spec.plan, spec.batch, spec.features, spec.outputs
    r = spec.ranges
    if em.quantized and r is None:
        raise ValueError("a quantized unit needs calibrated ranges")

    def enc(span: tuple[float, float], bits: int) -> Encoding | None:
        return Encoding.from_range(*span, bits) if em.quantized and r is not None else None

    wide = x.encoding.bits if x.encoding is not None else spec.hp_bits  # the transform runs at the input's type
    # No re-encoding within one type anywhere: onnxruntime folds a u16 -> u16 DQ -> Q into the
    # QuantizeLinear before it, and the Reshape/Slice/Concat there then changes encoding (float
    # on the HTP). A group at the input's width keeps the encoding it has; an lp group as wide as
    # the hp group shares its product encoding; without a bias the inverse writes the output's.
    both = (min(r.hp[0], r.lp[0]), max(r.hp[1], r.lp[1])) if r else (0.0, 0.0)
    source = x.encoding if plan.transform == "none" else enc(both, wide)
    out_enc = spec.output_encoding if em.quantized else None
    product_enc = enc(r.product, spec.hp_bits) if r else None
    tokens_enc = enc(r.token_product, spec.hp_bits) if r else None
    if spec.bias is None and out_enc is not None and out_enc.bits == spec.hp_bits:
        tokens_enc = out_enc
    e = _UnitEncodings(
        coefficients=source,
        hp=source if spec.hp_bits == wide else enc(r.hp, spec.hp_bits) if r else None,
        lp=source if spec.lp_bits == wide else enc(r.lp, spec.lp_bits) if r else None,
        product=tokens_enc if plan.transform == "none" else product_enc,
        lp_product=None if spec.lp_bits == spec.hp_bits else enc(r.lp_product, spec.lp_bits) if r else None,
        tokens=tokens_enc,
    )
    weight = spec.weight if isinstance(spec.weight, QuantWeight) else em.const("weight", np.asarray(spec.weight, np.float32).T)
    p, s = plan.prefix, plan.tokens
    pieces: list[QValue] = []

    def take(start: int, end: int) -> QValue:
        return x if (start, end) == (0, s) else em.slice(x, start, end)

    def product(v: QValue, lead: int, rows: int, group: str, target: Encoding | None) -> QValue:
        """v (lead, rows, d) in group ``group`` times W, converted to ``target``: (lead, rows, n)."""
        out = e.lp_product if group == "lp" and e.lp_product is not None else target
        y = em.linear(v, weight, out, (lead, rows, d, n), f"{group}_matmul")
        return em.convert(y, target) if target is not None else y

    if plan.transform == "none":
        k = plan.hp_count
        for start, end, group, genc in ((0, k, "hp", e.hp), (k, s, "lp", e.lp)):
            if end > start:
                part = take(start, end)
                pieces.append(product(em.convert(part, genc) if genc else part, b, end - start, group, e.tokens))
    else:
        if p:
            pre = take(0, p)  # at hp bits: as it comes when those are the input's, else its own encoding
            if spec.hp_bits != wide and r is not None and em.quantized:
                pre = em.convert(pre, Encoding.from_range(*r.prefix, spec.hp_bits))
            pieces.append(product(pre, b, p, "hp", e.tokens))
        nb, blk = plan.blocks, plan.block
        if nb:
            blocks = em.transpose(_emit_blocks(em, plan, take(p, p + nb * blk), b, d), (0, 2, 1))  # (b*nb, d, blk)
            tokens = _block_part(em, blocks, plan.block_matrix(), plan.rows, b * nb, d, e, product)
            pieces.append(_emit_unblocks(em, plan, tokens, b, n))
        if plan.tail:
            tail = em.transpose(take(p + nb * blk, s), (0, 2, 1))  # (b, d, r)
            pieces.append(_block_part(em, tail, plan.tail_matrix(), plan.tail_rows, b, d, e, product))
    y = em.concat(pieces)
    if spec.bias is not None:
        if out_enc is not None and r is not None and out_enc.bits != spec.hp_bits:
            y = em.convert(y, Encoding.from_range(*r.token_product, out_enc.bits))  # the Add reads the output's type
        y = em.op("Add", [y, spec.bias], [], out_enc, "bias")
    elif out_enc is not None:
        y = em.convert(y, out_enc)
    return y


@dataclasses.dataclass(frozen=True)
class _UnitEncodings:
    coefficients: Encoding | None  # the forward transform's output, at the input's type
    hp: Encoding | None
    lp: Encoding | None
    product: Encoding | None  # the coefficient-domain products, both groups (hp bits)
    lp_product: Encoding | None  # the lp group's own product (lp bits)
    tokens: Encoding | None  # x W in token order (hp bits): the inverse's output


def _block_part(
    em: UnitEmitter, blocks_t: QValue, matrix: np.ndarray, rows: int, count: int, d: int,
    e: _UnitEncodings, product: Callable[[QValue, int, int, str, Encoding | None], QValue],
) -> QValue:
    """Blocks laid out (count, d, size): one MatMul by F^T at the input's type, the coefficients
    back to (count, size, d), sliced into the hp rows and the lp rows (each converted to its
    group's encoding), each group times W, a block's coefficients joined again and F^T's
    inverse applied; returns (count, size, n) tokens.

    One forward MatMul for both groups: with one per group, onnxruntime's transpose optimizer
    copied the Transpose between them for each MatMul (it still moves it past the Slices and
    leaves a Convert in its place: docs/htp.md, "Data movement").
    """
    size = matrix.shape[0]
    coef = em.matmul(blocks_t, em.weight(matrix.T, "forward"), e.coefficients, "forward")
    coef = em.transpose(coef, (0, 2, 1))  # (count, size, d)
    coefs = []
    for start, end, group, what in ((0, rows, e.hp, "hp"), (rows, size, e.lp, "lp")):
        if end == start:
            continue
        part = coef if (start, end) == (0, size) else em.slice(coef, start, end)
        if group is not None:
            part = em.convert(part, group)
        coefs.append(product(part, count, end - start, what, e.product))  # (count, k, n)
    joined_t = em.transpose(em.concat(coefs), (0, 2, 1))  # (count, n, size)
    tokens_t = em.matmul(joined_t, em.weight(matrix, "inverse"), e.tokens, "inverse")
    return em.transpose(tokens_t, (0, 2, 1))


def _emit_blocks(em: UnitEmitter, plan: BlockPlan, body: QValue, b: int, d: int) -> QValue:
    """(b, nb*block, d) -> (b*nb, block, d), rank <= 4 throughout."""
    if plan.transform == "haar":
        return em.reshape(body, (b * plan.blocks, plan.block, d))
    height, width = plan.grid()
    side = plan.side
    grid = em.transpose(em.reshape(body, (b * height // side, side, width // side, side * d)), (0, 2, 1, 3))
    return em.reshape(grid, (b * plan.blocks, plan.block, d))


def _emit_unblocks(em: UnitEmitter, plan: BlockPlan, tokens: QValue, b: int, n: int) -> QValue:
    """(b*nb, block, n) -> (b, nb*block, n): the inverse of :func:`_emit_blocks`."""
    if plan.transform == "haar":
        return em.reshape(tokens, (b, plan.blocks * plan.block, n))
    height, width = plan.grid()
    side = plan.side
    grid = em.transpose(em.reshape(tokens, (b * height // side, width // side, side, side * n)), (0, 2, 1, 3))
    return em.reshape(grid, (b, plan.blocks * plan.block, n))


# --- a one-layer model --------------------------------------------------------------------


def quantize_weight_columns(weight: np.ndarray, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-column codes of a layer weight (d, n): scale = max|w| / (2^(bits-1) - 1)."""
    qmax = (1 << (bits - 1)) - 1
    scales = (np.abs(weight).max(axis=0) / qmax).astype(np.float32)
    scales[scales == 0] = 1.0
    return np.clip(np.round(weight / scales), -qmax, qmax).astype(np.int8), scales


def layer_model(
    plan: BlockPlan, weight: np.ndarray, bias: np.ndarray | None, calib: np.ndarray | None, *,
    batch: int = 1, hp_bits: int = 16, lp_bits: int = 8, weight_bits: int = 8, percentile: float = 100.0,
    baseline: bool = False,
) -> onnx.ModelProto:
    """A one-layer model x (batch, S, d) float -> y float, fixed shapes, for tests and the HTP proof.

    Quantized (``calib`` given): x is quantized to u16 with its calibrated range, the unit runs, y
    is dequantized from u16. ``baseline``: the plain A16 layer (one u16 encoding, W int8) instead.
    ``calib`` None: the float unit (no QDQ). ``weight_bits`` 4: int4 codes with an int4 zero point.
    """
    d, n = weight.shape
    s = plan.tokens
    quantized = calib is not None
    em = UnitEmitter("layer", quantized=quantized)
    x_name, y_name = "x", "y"
    ranges = x_enc = y_enc = None
    bias_value = None
    if quantized:
        assert calib is not None
        codes, scales = quantize_weight_columns(weight, weight_bits)
        w_real = (codes.astype(np.float32) * scales).astype(np.float32)
        ranges = calibrate_unit(plan, calib, w_real, percentile=percentile)
        x_enc = Encoding.from_range(float(calib.min()), float(calib.max()), 16)
        full = calib.astype(np.float64) @ w_real.astype(np.float64) + (0 if bias is None else bias)
        y_enc = Encoding.from_range(float(full.min()), float(full.max()), 16)
        weight_arg: QuantWeight | np.ndarray = _weight_initializers(em, codes.T.copy(), scales, weight_bits)
        if bias is not None:
            b_enc = Encoding.from_range(float(bias.min()), float(bias.max()), 16)
            b_codes = np.clip(np.round(bias / b_enc.scale) + b_enc.zero_point, 0, 65535).astype(np.uint16)
            bias_value = QValue(em.const("bias", b_codes.reshape(1, 1, n)), b_enc)
        xq = em.q(x_name, x_enc)
    else:
        weight_arg = weight
        if bias is not None:
            bias_value = QValue(em.const("bias", bias.astype(np.float32).reshape(1, 1, n)), None)
        xq = QValue(x_name, None)
    spec = UnitSpec(plan, batch, d, weight_arg, n, bias_value, x_enc, y_enc, ranges, hp_bits, lp_bits)
    if baseline:
        assert quantized and y_enc is not None
        token_enc = Encoding.from_range(*ranges.token_product, 16) if (ranges and bias is not None) else y_enc
        assert isinstance(weight_arg, QuantWeight)
        y = em.linear(xq, weight_arg, token_enc, (batch, s, d, n), "matmul")
        if bias_value is not None:
            y = em.op("Add", [y, bias_value], [], y_enc, "bias")
    else:
        y = emit_unit(em, xq, spec)
    out = em.dq(y) if quantized else y.name
    em.nodes.append(helper.make_node("Identity", [out], [y_name], name="output"))
    graph = helper.make_graph(
        em.nodes, "stamp_htp_unit",
        [helper.make_tensor_value_info(x_name, TensorProto.FLOAT, [batch, s, d])],
        [helper.make_tensor_value_info(y_name, TensorProto.FLOAT, [batch, s, n])],
        list(em.initializers.values()),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], producer_name="stamp-onnx")
    model.ir_version = 10
    return model


def _weight_initializers(em: UnitEmitter, codes: np.ndarray, scales: np.ndarray, bits: int) -> QuantWeight:
    if bits == 8:
        return QuantWeight(em.const("weight", codes), em.const("weight_scale", scales),
                           em.const("weight_zero_point", np.zeros(scales.shape, np.int8)))
    if bits != 4:
        raise ConfigError(f"weight_bits={bits}: the HTP takes int8 or int4 weights")
    codes_name, zp_name = em.name("weight"), em.name("weight_zero_point")
    em.initializers[codes_name] = helper.make_tensor(codes_name, TensorProto.INT4, codes.shape, codes.ravel().tolist())
    em.initializers[zp_name] = helper.make_tensor(zp_name, TensorProto.INT4, scales.shape, [0] * scales.size)
    return QuantWeight(codes_name, em.const("weight_scale", scales), zp_name)


# --- the HTP's rules, checked on the graph ------------------------------------------------

_MOVES = {"Reshape", "Transpose", "Slice", "Concat"}


def rule_violations(model: onnx.ModelProto, *, only_units: bool = True) -> list[str]:
    """The HTP rules (docs/htp.md) that nodes break, as one line each; empty when none.

    Every compute node reads activations through a DequantizeLinear with constant scale and
    zero point and writes them through a QuantizeLinear (or into a graph output); its activation
    inputs and output share one type (uint8 or uint16); Reshape/Transpose/Slice/Concat keep their
    input's encoding exactly; weights are int8/int4 with zero point 0, per channel on axis 1.
    ``only_units``: check only the nodes a unit emitted (the QNN quantizer's own are left alone).
    """
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    problems: list[str] = []

    def encoding(qdq: onnx.NodeProto) -> tuple[Any, ...] | None:
        scale, zp = (inits.get(qdq.input[1]), inits.get(qdq.input[2]) if len(qdq.input) > 2 else None)
        if scale is None or zp is None:
            return None
        return (zp.dtype.name, scale.tobytes(), zp.tobytes())

    def ours(node: onnx.NodeProto) -> bool:
        return any(p.key == PASS_KEY and p.value == PROVENANCE for p in node.metadata_props)

    for node in graph.node:
        if only_units and not ours(node):
            continue
        label = f"{node.op_type} {node.name}"
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            if encoding(node) is None:
                problems.append(f"{label}: scale/zero point not constant initializers")
            src = producer.get(node.input[0])
            if node.op_type == "QuantizeLinear" and src is not None and src.op_type == "DequantizeLinear":
                before, after = encoding(src), encoding(node)
                if before and after and before[0] == after[0] and before != after:
                    problems.append(f"{label}: re-encodes within {after[0]} (onnxruntime folds that into the "
                                    "QuantizeLinear before it, whose op then changes encoding)")
            continue
        act_in: list[tuple[Any, ...] | None] = []
        for index, name in enumerate(node.input):
            if name in inits:
                if inits[name].dtype.kind == "f" and inits[name].size > 1:
                    problems.append(f"{label}: float constant input {name}")
                continue
            src = producer.get(name)
            if src is None or src.op_type != "DequantizeLinear":
                problems.append(f"{label}: input {name} is not dequantized from a static QDQ")
                continue
            if src.input[0] in inits and node.op_type in ("MatMul", "Gemm") and index == 1:  # a weight
                codes = inits[src.input[0]]
                zp = inits.get(src.input[2]) if len(src.input) > 2 else None
                axis = next((a.i for a in src.attribute if a.name == "axis"), 1)
                trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
                want = 0 if trans_b else 1  # the output channels
                if codes.dtype.name not in ("int8", "int4") or zp is None or np.any(zp != 0) or (codes.ndim == 2 and axis != want):
                    problems.append(f"{label}: weight {src.input[0]} is not int8/int4 symmetric per output channel")
                continue
            act_in.append(encoding(src))
        outs = []
        for name in node.output:
            users = consumers.get(name, [])
            if name in outputs and node.op_type == "Identity":
                continue
            if not users or any(u.op_type != "QuantizeLinear" for u in users):
                problems.append(f"{label}: output {name} is not quantized")
                continue
            outs += [encoding(u) for u in users]
        kinds = {e[0] for e in act_in + outs if e is not None}
        if len(kinds) > 1:
            problems.append(f"{label}: mixes activation types {sorted(kinds)}")
        if node.op_type in _MOVES and len({e for e in act_in + outs}) > 1:
            problems.append(f"{label}: changes the encoding (the HTP then runs it in float)")
    return problems
