"""Static integer STaMP units for the HTP: standard ONNX QDQ that the HTP runs integer-only.

The HTP takes only static QDQ (constant scales, uint8/uint16 activations, type-homogeneous ops;
docs/htp.md), so the ``ai.stamp`` ops and their per-token dynamic quantizers cannot run there.
A unit replaces ``y = x W + b`` for an activation of fixed shape (batch, S, d)::

    x (u16) ─ Slice[:P] ──────────────────────────────────────────── Gemm(W) ─ (u16) ─────────────────┐
            ─ Slice[blocks] ─ Reshape ─ Transpose ─ MatMul(F^T) ─ Transpose ─┬ Slice[hp] ─ Gemm(W) ─ (u16) ─────────────┐   │
                                                                             └ Slice[lp] ─ Convert(u8) ─ Gemm(W) ─ Convert ┤   │
            ─ Slice[tail] ─ the same with the tail's matrix ──────────────── ... Concat ─ Transpose ─ MatMul(F) ─ Transpose ┤
    y (u16) ◄── Add(b) ◄── Concat(prefix, blocks, tail) ◄──────────────────────────────────────────────────────────────────┘

The geometry (blocks, tail, groups) and the calibration are :mod:`stamp_onnx.targets.htp_plan`. F^T is
the weight of its MatMul, on the blocks laid out (blocks, d, 2^L): a constant as the first MatMul
input runs in float on the HTP. Each group has one per-tensor encoding (per-token scales are
refused); the transform runs at the input's type and the lp group is converted to 8 bits after
it. W is one (n, d) initializer shared by every Gemm(transB=1) of the unit (a MatMul's weight is
copied per node by the QNN provider).
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

from stamp_onnx.core.naming import counter_namer
from stamp_onnx.errors import ConfigError
from stamp_onnx.graph.contract import LAYER_KEY, PASS_KEY
from stamp_onnx.targets.htp_plan import BlockPlan, Encoding, UnitRanges, calibrate_unit

PROVENANCE = "htp_units"


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
        storage = np.uint16 if enc.bits == 16 else np.uint8
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
    batch: int = 1, hp_bits: int = 16, lp_bits: int = 8, weight_bits: int = 8, calibrator: str = "minmax",
    percentile: float = 99.999, baseline: bool = False,
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
        ranges = calibrate_unit(plan, calib, w_real, calibrator=calibrator, percentile=percentile, hp_bits=hp_bits,
                                lp_bits=lp_bits)
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


