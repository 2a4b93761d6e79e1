"""The project's custom ops, each declared once: schema, numpy/torch reference, ONNX function body.

Domain ``ai.stamp`` (version 1). Four ops shape-preserving on (..., s, d), float32, and two
that write integer codes for ``--target integer``:

``SequenceTransform(X) -> Y``
    attributes: transform ("haar" | "haar2d" | "dct" | "wht"), levels (int, Haar only),
    inverse (0 | 1), prefix_tokens (int: the first tokens pass through untransformed),
    grid_width (int, haar2d only: width of the token grid, 0 for a square grid).
    ``levels = -1`` (:data:`AUTO`) chooses the levels per call from the token count s, as
    :func:`stamp_onnx.core.transforms.auto_levels` of s - prefix_tokens tokens with the
    attribute low_band (int >= 0) as its low band: the rewrite writes it for layers whose token
    count is only known at run time (``--levels auto`` on a text model). The forward and the
    inverse of a layer see the same s, so they choose the same levels.
    Reference: :func:`stamp_onnx.core.transforms.forward` / :func:`~stamp_onnx.core.transforms.inverse`.

``TokenQDQ(X) -> Y``
    attributes: hp_tokens, hp_bits, lp_bits, and optionally mid_tokens and mid_bits (ints of
    one length: the middle tiers). Per-token QuantizeLinear/DequantizeLinear pairs, one per
    tier: tokens [0, hp_tokens) at hp_bits, then mid_tokens[i] tokens at mid_bits[i] in turn,
    the rest at lp_bits (``--bit-allocation energy`` writes middle tiers; two tiers have none).
    Reference: :func:`quant.token_qdq`.

``TransformQDQ(X) -> (Y, T?)``
    the two fused, as every rewritten layer uses them: Y = TokenQDQ(SequenceTransform(X)),
    attributes of both (no ``inverse``: always forward). The optional output T is the
    transformed input before quantization: rewritten models call the one-output body; the
    per-layer check swaps in the two-output body to read T. One op lets a native kernel
    transform and quantize in one pass over the activation.

``FeatureRotation(X) -> Y``
    attribute: features (d). Y = X R along the last axis, R the orthonormal rotation of
    ``--feature-transform hadamard`` (:func:`stamp_onnx.core.weights.feature_rotation`,
    R = C_m (x) H_p for d = p m, p a power of two, m odd). The body never forms R: X is viewed
    as (..., m, p) and Y = C (X H) (two MatMuls with a p x p and an m x m constant), which costs
    d (p + m) multiply-adds per token instead of d^2 (576: 8x fewer; 1536 = 3 x 512: 3x).

``TokenQuantize(X) -> (C, S)`` and ``TransformQuantize(X) -> (C, S)``
    TokenQDQ's quantizer (TransformQuantize: after the forward transform, attributes as
    TransformQDQ), writing uint8 codes C (..., s, d + zero_point_columns) around the shared zero
    point 128 and per-token scales S (..., s, 1) instead of the dequantized values: the input of
    com.microsoft.MatMulIntegerToFloat (:func:`stamp_onnx.core.quant.integer_codes`, 2-8 bits).

Each distinct attribute set is shipped as a model-local function *overload* (IR >= 10), so the
function body can be specialised (Haar levels unrolled, bit-widths fixed) while the node still
carries the attributes that a native kernel of the same domain and name reads. Stock ONNX
Runtime inlines the bodies, so a rewritten model needs no extra library.

Bodies are built with onnx-ir (the IR under onnxscript) and use only standard ops, opset >= 21.
Every sequence length s >= 1 is handled by the body with no graph change:

- Haar: unrolled butterflies on dynamic band lengths; a level on a band of one token is a no-op.
- Haar 2-D: the tokens are reshaped to the (H, W) grid (W from grid_width or the integer square
  root of the token count), the 1-D butterflies run along W and then, transposed, along H,
  and a Gather puts the coefficients in group order (the order is computed in the graph from
  H, W: TopK of a group key). A token count that is not a grid fails in Reshape.
- DCT / WHT: the s x s matrix is generated in the graph from s and applied with MatMul
  (O(s^2 d); the fast path is the native kernel). The WHT matrix uses the closed form
  H[k, n] = (-1)^popcount(gray(k) & bitrev(n)) within each block of the binary expansion of s.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from stamp_onnx.config import HAAR_TRANSFORMS, MAX_LEVELS, TRANSFORMS, Tiers, Transform, tier_spans
from stamp_onnx.core import quant, transforms

DOMAIN = "ai.stamp"
DOMAIN_VERSION = 1
SEQUENCE_TRANSFORM = "SequenceTransform"
FEATURE_ROTATION = "FeatureRotation"
TOKEN_QDQ = "TokenQDQ"
TRANSFORM_QDQ = "TransformQDQ"
TOKEN_QUANTIZE = "TokenQuantize"
TRANSFORM_QUANTIZE = "TransformQuantize"
QUANTIZERS = (TOKEN_QDQ, TRANSFORM_QDQ)  # the ops that quantize a layer's activation (fake-quant)
CODE_QUANTIZERS = (TOKEN_QUANTIZE, TRANSFORM_QUANTIZE)  # the same quantizers writing integer codes
MIN_OPSET = 21  # QuantizeLinear/DequantizeLinear with uint4 and computed per-axis scales
_INT64_MAX = np.iinfo(np.int64).max
_WHT_BITS = 31  # WHT bodies support s < 2^31 tokens
AUTO = -1  # the levels attribute of a transform whose levels are chosen from s at run time


@dataclasses.dataclass(frozen=True)
class SequenceTransformSpec:
    """One attribute set of SequenceTransform."""

    transform: str
    levels: int = 0
    inverse: bool = False
    prefix_tokens: int = 0
    grid_width: int = 0
    low_band: int = 0  # levels == AUTO only: the most tokens the low (LL) band may hold

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS or self.transform == Transform.NONE:
            raise ValueError(f"SequenceTransform has no transform {self.transform!r}")
        if self.transform not in HAAR_TRANSFORMS:
            object.__setattr__(self, "levels", 0)
        if self.transform != Transform.HAAR2D:
            object.__setattr__(self, "grid_width", 0)
        if self.levels != AUTO:
            object.__setattr__(self, "low_band", 0)
        elif self.low_band < 0:
            raise ValueError(f"SequenceTransform with automatic levels needs low_band >= 0, got {self.low_band}")

    @property
    def auto(self) -> bool:
        return self.levels == AUTO

    def levels_for(self, tokens: int) -> int:
        """The levels applied to a sequence of ``tokens`` tokens (prefix included)."""
        if not self.auto:
            return self.levels
        return transforms.auto_levels(max(tokens - self.prefix_tokens, 0), self.low_band, self.transform, self.grid_width)

    @property
    def overload(self) -> str:
        levels = f"_auto{self.low_band}" if self.auto else str(self.levels)
        name = f"{self.transform}{levels}" if self.transform in HAAR_TRANSFORMS else self.transform
        if self.grid_width:
            name += f"_w{self.grid_width}"
        if self.prefix_tokens:
            name += f"_p{self.prefix_tokens}"
        return name + ("_inverse" if self.inverse else "")

    def attributes(self) -> list[ir.Attr]:
        attrs = [
            ir.AttrString("transform", self.transform),
            ir.AttrInt64("levels", self.levels),
            ir.AttrInt64("inverse", int(self.inverse)),
            ir.AttrInt64("prefix_tokens", self.prefix_tokens),
        ]
        if self.transform == Transform.HAAR2D:
            attrs.append(ir.AttrInt64("grid_width", self.grid_width))
        if self.auto:
            attrs.append(ir.AttrInt64("low_band", self.low_band))
        return attrs

    def reference(self, x: Any) -> Any:
        fn = transforms.inverse if self.inverse else transforms.forward
        return fn(x, self.transform, self.levels_for(int(x.shape[-2])), self.prefix_tokens, self.grid_width)

    def function(self, opset: int) -> ir.Function:
        body = _Body(f"{SEQUENCE_TRANSFORM}_{self.overload}")
        y = self.emit(body, body.input("X"))
        return body.function(SEQUENCE_TRANSFORM, self.overload, {"Y": y}, self.attributes(), opset)

    def emit(self, body: _Body, x: ir.Value) -> ir.Value:
        """Append the transform of ``x`` to ``body``; return its output."""
        head = x
        if self.prefix_tokens:
            split, end = _i64(body, self.prefix_tokens), _i64(body, _INT64_MAX)
            head = _tokens_slice(body, x, _i64(body, 0), split)
            x = _tokens_slice(body, x, split, end)
        if self.transform == Transform.HAAR:
            levels = _Levels.of(body, x, self)
            y = (_haar_inverse if self.inverse else _haar_forward)(body, x, levels)
        elif self.transform == Transform.HAAR2D:
            y = _haar2d(body, x, self, inverse=self.inverse)
        else:
            m = _dct_matrix(body, x) if self.transform == Transform.DCT else _wht_matrix(body, x)
            if self.inverse:
                m = body.op("Transpose", [m], perm=[1, 0])
            y = body.op("MatMul", [m, x])
        if self.prefix_tokens:
            y = body.op("Concat", [head, y], axis=-2)
        return y


@dataclasses.dataclass(frozen=True)
class TokenQDQSpec:
    """One attribute set of TokenQDQ; ``mid``: the middle tiers, (token count, bits) each."""

    hp_tokens: int
    hp_bits: int
    lp_bits: int
    mid: Tiers = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "mid", tuple((int(count), int(bits)) for count, bits in self.mid))
        if any(count < 1 for count, _ in self.mid):
            raise ValueError(f"a middle tier holds at least one token, got {self.mid}")

    @property
    def overload(self) -> str:
        mid = "".join(f"_m{count}b{bits}" for count, bits in self.mid)
        return f"k{self.hp_tokens}_b{self.hp_bits}{mid}_b{self.lp_bits}"

    @property
    def bits(self) -> tuple[int, ...]:
        """Every tier's width, in token order."""
        return (self.hp_bits, *(bits for _, bits in self.mid), self.lp_bits)

    def spans(self, tokens: int) -> list[tuple[int, int, int]]:
        """(start, end, bits) of each tier over ``tokens`` tokens (:func:`stamp_onnx.config.tier_spans`)."""
        return tier_spans(tokens, self.hp_tokens, self.hp_bits, self.lp_bits, self.mid)

    def attributes(self) -> list[ir.Attr]:
        attrs = [
            ir.AttrInt64("hp_tokens", self.hp_tokens),
            ir.AttrInt64("hp_bits", self.hp_bits),
            ir.AttrInt64("lp_bits", self.lp_bits),
        ]
        if self.mid:
            attrs += [ir.AttrInt64s("mid_tokens", [count for count, _ in self.mid]),
                      ir.AttrInt64s("mid_bits", [bits for _, bits in self.mid])]
        return attrs

    def reference(self, x: Any) -> Any:
        return quant.token_qdq(x, self.hp_tokens, self.hp_bits, self.lp_bits, self.mid)

    def function(self, opset: int) -> ir.Function:
        body = _Body(f"{TOKEN_QDQ}_{self.overload}")
        y = self.emit(body, body.input("X"))
        return body.function(TOKEN_QDQ, self.overload, {"Y": y}, self.attributes(), opset)

    def emit(self, body: _Body, x: ir.Value) -> ir.Value:
        """Append the mixed-precision QDQ of ``x`` to ``body``; return its output."""
        groups = [_qdq_group(body, part, bits) for part, bits in self.tiers(body, x)]
        return body.op("Concat", groups, axis=-2)

    def tiers(self, body: _Body, x: ir.Value) -> list[tuple[ir.Value, int]]:
        """Each tier's tokens of ``x`` (a Slice along axis -2, empty past the end) and its bits."""
        ends = [*np.cumsum([self.hp_tokens, *(count for count, _ in self.mid)]).tolist(), _INT64_MAX]
        end = body.const(np.array([ends[0]], np.int64))
        axis = body.const(np.array([-2], np.int64))
        start = body.const(np.array([0], np.int64))
        parts = []
        for i, bits in enumerate(self.bits):  # the constants in the order two-tier bodies have always had
            if i:
                start, end = end, body.const(np.array([ends[i]], np.int64))
            parts.append((body.op("Slice", [x, start, end, axis]), bits))
        return parts


@dataclasses.dataclass(frozen=True)
class TransformQDQSpec:
    """One attribute set of TransformQDQ: a forward SequenceTransform and a TokenQDQ, fused.

    Outputs Y = TokenQDQ(L x) and, optionally, T = L x (the per-layer check asks for it).
    """

    transform: SequenceTransformSpec
    qdq: TokenQDQSpec

    def __post_init__(self) -> None:
        if self.transform.inverse:
            raise ValueError("TransformQDQ applies the forward transform only")

    @property
    def overload(self) -> str:
        return f"{self.transform.overload}_{self.qdq.overload}"

    def attributes(self) -> list[ir.Attr]:
        return [a for a in self.transform.attributes() if a.name != "inverse"] + self.qdq.attributes()

    def reference(self, x: Any) -> Any:
        return self.qdq.reference(self.transform.reference(x))

    def function(self, opset: int, *, with_transformed: bool = False) -> ir.Function:
        """The body; ``with_transformed`` adds the output T (a node calling it must then name two outputs)."""
        body = _Body(f"{TRANSFORM_QDQ}_{self.overload}")
        t = self.transform.emit(body, body.input("X"))
        y = self.qdq.emit(body, t)
        outputs = {"Y": y, "T": t} if with_transformed else {"Y": y}
        return body.function(TRANSFORM_QDQ, self.overload, outputs, self.attributes(), opset)


@dataclasses.dataclass(frozen=True)
class TokenQuantizeSpec:
    """One attribute set of TokenQuantize: TokenQDQ's quantizer, writing the codes (``--target integer``).

    Outputs C (uint8, (..., s, d + zero_point_columns)) and S (float32, (..., s, 1)) as
    :func:`stamp_onnx.core.quant.integer_codes` defines them; with ``transform`` set, the op is
    TransformQuantize, which quantizes L x (the forward transform first, as TransformQDQ).
    """

    qdq: TokenQDQSpec
    zero_point_columns: int = 0
    transform: SequenceTransformSpec | None = None

    def __post_init__(self) -> None:
        for bits in self.qdq.bits:
            if not 2 <= bits <= 8:
                raise ValueError(f"integer codes take 2-8 bits, got {bits}")
        if self.zero_point_columns < 0:
            raise ValueError(f"zero_point_columns must be >= 0, got {self.zero_point_columns}")
        if self.transform is not None and self.transform.inverse:
            raise ValueError("TransformQuantize applies the forward transform only")

    @property
    def overload(self) -> str:
        head = f"{self.transform.overload}_" if self.transform is not None else ""
        return f"{head}{self.qdq.overload}_z{self.zero_point_columns}"

    def attributes(self) -> list[ir.Attr]:
        head = [a for a in self.transform.attributes() if a.name != "inverse"] if self.transform is not None else []
        return head + self.qdq.attributes() + [ir.AttrInt64("zero_point_columns", self.zero_point_columns)]

    def reference(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.transform is not None:
            x = self.transform.reference(x)
        q = self.qdq
        return quant.integer_codes(x, q.hp_tokens, q.hp_bits, q.lp_bits, self.zero_point_columns, q.mid)

    def function(self, opset: int) -> ir.Function:
        body = _Body(f"{op_type(self)}_{self.overload}")
        x = body.input("X")
        if self.transform is not None:
            x = self.transform.emit(body, x)
        groups = [_codes_group(body, part, bits, self.zero_point_columns) for part, bits in self.qdq.tiers(body, x)]
        codes = body.op("Concat", [g[0] for g in groups], axis=-2)
        scales = body.op("Concat", [g[1] for g in groups], axis=-2)
        return body.function(op_type(self), self.overload, {"C": codes, "S": scales}, self.attributes(), opset)


@dataclasses.dataclass(frozen=True)
class FeatureRotationSpec:
    """FeatureRotation for one feature size d."""

    features: int

    def __post_init__(self) -> None:
        if self.features < 1:
            raise ValueError(f"FeatureRotation needs features >= 1, got {self.features}")

    @property
    def overload(self) -> str:
        return f"d{self.features}"

    def attributes(self) -> list[ir.Attr]:
        return [ir.AttrInt64("features", self.features)]

    def reference(self, x: Any) -> Any:
        from stamp_onnx.core.weights import feature_rotation

        r = feature_rotation(self.features).astype(np.float32)
        return x @ (r if isinstance(x, np.ndarray) else _torch_like(x, r))

    def function(self, opset: int) -> ir.Function:
        from stamp_onnx.core.weights import rotation_factors

        body = _Body(f"{FEATURE_ROTATION}_{self.overload}")
        x = body.input("X")
        hadamard, dct = rotation_factors(self.features)
        blocks = body.op("Reshape", [x, _i64(body, -1, dct.shape[0], hadamard.shape[0])])
        y = body.op("MatMul", [blocks, body.const(hadamard.astype(np.float32))])
        if dct.shape[0] > 1:
            y = body.op("MatMul", [body.const(dct.astype(np.float32)), y])
        y = body.op("Reshape", [y, body.op("Shape", [x])])
        return body.function(FEATURE_ROTATION, self.overload, {"Y": y}, self.attributes(), opset)


def _torch_like(x: Any, array: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(array).to(x.dtype)


Spec = SequenceTransformSpec | TokenQDQSpec | TransformQDQSpec | FeatureRotationSpec | TokenQuantizeSpec
_OP_TYPES = {SequenceTransformSpec: SEQUENCE_TRANSFORM, TokenQDQSpec: TOKEN_QDQ, TransformQDQSpec: TRANSFORM_QDQ,
             FeatureRotationSpec: FEATURE_ROTATION}


def op_type(spec: Spec) -> str:
    """The op name of ``spec``'s nodes."""
    if isinstance(spec, TokenQuantizeSpec):
        return TOKEN_QUANTIZE if spec.transform is None else TRANSFORM_QUANTIZE
    return _OP_TYPES[type(spec)]


def spec_from_node(node: ir.Node) -> Spec | None:
    """Read the spec back from a node of this domain (None for any other node)."""
    if node.domain != DOMAIN:
        return None
    attrs = {name: attr.value for name, attr in node.attributes.items()}

    def transform(inverse: bool) -> SequenceTransformSpec:
        return SequenceTransformSpec(
            attrs["transform"],
            int(attrs.get("levels", 0)),
            inverse,
            int(attrs.get("prefix_tokens", 0)),
            int(attrs.get("grid_width", 0)),
            int(attrs.get("low_band", 0)),
        )

    def qdq() -> TokenQDQSpec:
        mid = tuple(zip(attrs.get("mid_tokens", ()), attrs.get("mid_bits", ()), strict=True))
        return TokenQDQSpec(int(attrs["hp_tokens"]), int(attrs["hp_bits"]), int(attrs["lp_bits"]), mid)

    if node.op_type == SEQUENCE_TRANSFORM:
        return transform(bool(attrs.get("inverse", 0)))
    if node.op_type == TOKEN_QDQ:
        return qdq()
    if node.op_type == TRANSFORM_QDQ:
        return TransformQDQSpec(transform(False), qdq())
    if node.op_type == FEATURE_ROTATION:
        return FeatureRotationSpec(int(attrs["features"]))
    if node.op_type in CODE_QUANTIZERS:
        columns = int(attrs.get("zero_point_columns", 0))
        return TokenQuantizeSpec(qdq(), columns, transform(False) if node.op_type == TRANSFORM_QUANTIZE else None)
    return None


def spec_from_proto(node: onnx.NodeProto) -> Spec | None:
    """:func:`spec_from_node` of a NodeProto (its attributes only: no inputs to look up)."""
    return spec_from_node(ir.serde.deserialize_node(onnx.NodeProto(domain=node.domain, op_type=node.op_type,
                                                                   attribute=node.attribute)))


def token_qdq_of(spec: Spec | None) -> TokenQDQSpec:
    """The tiers of a quantizer's spec (TokenQDQ, TransformQDQ, TokenQuantize, TransformQuantize)."""
    qdq = spec.qdq if isinstance(spec, (TransformQDQSpec, TokenQuantizeSpec)) else spec
    if not isinstance(qdq, TokenQDQSpec):
        raise ValueError(f"{spec!r} is not a quantizer's spec")
    return qdq


def add_function(model: ir.Model, spec: Spec) -> None:
    """Ship the function body of ``spec`` in ``model`` (idempotent) and import the domain."""
    key = (DOMAIN, op_type(spec), spec.overload)
    if key not in model.functions:
        model.functions[key] = spec.function(model.opset_imports[""])
    model.opset_imports[DOMAIN] = DOMAIN_VERSION


def expose_transformed(proto: onnx.ModelProto) -> None:
    """Give every TransformQDQ node its optional output T (= L x), with the two-output body."""
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    bodies = {}
    for node in proto.graph.node:
        if node.domain != DOMAIN or node.op_type != TRANSFORM_QDQ or len(node.output) > 1:
            continue
        node.output.append(f"{node.output[0]}/transformed")
        spec = spec_from_proto(node)
        assert isinstance(spec, TransformQDQSpec)
        bodies[(DOMAIN, TRANSFORM_QDQ, spec.overload)] = spec.function(opset, with_transformed=True)
    for i, function in enumerate(proto.functions):
        body = bodies.get((function.domain, function.name, function.overload))
        if body is not None:
            proto.functions[i].CopyFrom(ir.serde.serialize_function(body))



def drop_unused_functions(model: ir.Model, op_types: tuple[str, ...] = QUANTIZERS) -> None:
    """Remove the ai.stamp bodies of ``op_types`` that no node calls any more (after a pass swapped
    the nodes' specs). Not onnx-ir's RemoveUnusedFunctionsPass: it removes every function no node
    calls, also those the input model brought, which the rewrite leaves as they are."""
    used = {(node.domain, node.op_type, node.overload) for node in model.graph.all_nodes()}
    for key in [k for k in model.functions if k[0] == DOMAIN and k[1] in op_types and k not in used]:
        del model.functions[key]


def quant_type(bits: int) -> ir.DataType:
    """The narrowest unsigned ONNX type that holds ``bits``-bit codes."""
    if bits <= 4:
        return ir.DataType.UINT4
    if bits <= 8:
        return ir.DataType.UINT8
    return ir.DataType.UINT16


# --- function-body construction -----------------------------------------------------------


class _Body:
    """A function body recorded on onnx-ir's :class:`ir.tape.Tape`, with the naming the bodies
    keep: nodes ``n0, n1, ...`` and values ``v1, v2, ...`` in order, inputs and outputs by name."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.tape = ir.tape.Tape()
        self.inputs: list[ir.Value] = []
        self._count = 0

    def input(self, name: str) -> ir.Value:
        value = ir.Value(name=name)
        self.inputs.append(value)
        return value

    def op(self, op_type: str, inputs: list[ir.Value], **attributes: Any) -> ir.Value:
        return self.op_multi(op_type, inputs, 1, **attributes)[0]

    def op_multi(self, op_type: str, inputs: list[ir.Value], count: int, **attributes: Any) -> list[ir.Value]:
        attrs = {attr.name: attr for attr in _attrs(attributes)}
        outputs = self.tape.op_multi_out(op_type, inputs, attrs, num_outputs=count, name=f"n{len(self.tape.nodes)}")
        for value in outputs:
            self._count += 1
            value.name = f"v{self._count}"
        return list(outputs)

    def const(self, array: np.ndarray) -> ir.Value:
        return self.op("Constant", [], value=ir.tensor(array))

    def function(
        self, name: str, overload: str, outputs: dict[str, ir.Value], attributes: list[ir.Attr], opset: int
    ) -> ir.Function:
        for output_name, value in outputs.items():
            value.name = output_name
        graph = ir.Graph(self.inputs, list(outputs.values()), nodes=self.tape.nodes, opset_imports={"": opset}, name=self.prefix)
        return ir.Function(DOMAIN, name, overload, graph=graph, attributes=attributes)


def _attrs(attributes: dict[str, Any]) -> list[ir.Attr]:
    out: list[ir.Attr] = []
    for key, value in attributes.items():
        if isinstance(value, ir.TensorProtocol):
            out.append(ir.AttrTensor(key, value))
        elif isinstance(value, list):
            out.append(ir.AttrInt64s(key, value))
        elif isinstance(value, float):
            out.append(ir.AttrFloat32(key, value))
        else:
            out.append(ir.AttrInt64(key, int(value)))
    return out


def _i64(body: _Body, *values: int) -> ir.Value:
    return body.const(np.array(values, np.int64))


def _tokens_slice(body: _Body, x: ir.Value, start: ir.Value, end: ir.Value, step: int = 1) -> ir.Value:
    return body.op("Slice", [x, start, end, _i64(body, -2), _i64(body, step)])


class _Levels:
    """The Haar levels of a body: ``count`` levels unrolled and, for AUTO, ``active``: the levels
    applied, an int64 [1] computed in the graph from the token count (MAX_LEVELS are unrolled by
    :func:`_haar_forward_auto` / :func:`_haar_inverse_auto`; a level at or past ``active`` pairs
    no tokens and only passes the low band on, which then holds at most low_band tokens)."""

    def __init__(self, count: int, active: ir.Value | None = None) -> None:
        self.count, self.active = count, active

    @staticmethod
    def of(body: _Body, x: ir.Value, spec: SequenceTransformSpec,
           grid: tuple[ir.Value, ir.Value] | None = None) -> _Levels:
        """The levels of ``spec`` for the tokens of ``x`` (after the prefix), or of the (H, W) ``grid``."""
        if not spec.auto:
            return _Levels(spec.levels)
        height, width = grid if grid is not None else (_i64(body, 1), body.op("Shape", [x], start=-2, end=-1))
        steps = body.const(np.array([1 << level for level in range(MAX_LEVELS)], np.int64))
        def ceil(length: ir.Value) -> ir.Value:
            return body.op("Div", [body.op("Sub", [body.op("Add", [length, steps]), _i64s(body, 1)]), steps])
        band = body.op("Mul", [ceil(height), ceil(width)])  # the low band's tokens after 0, 1, ... levels
        above = body.op("Cast", [body.op("Greater", [band, _i64s(body, max(spec.low_band, 1))])], to=ir.DataType.INT64)
        return _Levels(MAX_LEVELS, body.op("ReduceSum", [above, _i64(body, 0)], keepdims=1))

    def applied(self, body: _Body, level: int) -> ir.Value:
        """bool [1]: whether level ``level`` (0-based) is applied (AUTO only)."""
        assert self.active is not None
        return body.op("Less", [_i64(body, level), self.active])

    def counts(self, body: _Body, level: int, above: ir.Value) -> ir.Value:
        """``above`` (bool), kept only where level ``level`` (1-based) is applied."""
        if self.active is None:
            return above
        return body.op("And", [above, body.op("LessOrEqual", [_i64(body, level), self.active])])


def _haar_forward(body: _Body, x: ir.Value, levels: _Levels) -> ir.Value:
    if levels.active is not None:
        return _haar_forward_auto(body, x, levels)
    c = body.const(np.array(transforms.INV_SQRT2, np.float32))
    zero, one, two, end = _i64(body, 0), _i64(body, 1), _i64(body, 2), _i64(body, _INT64_MAX)
    n = body.op("Shape", [x], start=-2, end=-1)
    for _ in range(levels.count):
        m = body.op("Div", [n, two])
        two_m = body.op("Mul", [m, two])
        even = _tokens_slice(body, x, zero, two_m, 2)
        odd = _tokens_slice(body, x, one, two_m, 2)
        low = body.op("Mul", [body.op("Add", [even, odd]), c])
        high = body.op("Mul", [body.op("Sub", [even, odd]), c])
        tail = _tokens_slice(body, x, two_m, n)
        rest = _tokens_slice(body, x, n, end)
        x = body.op("Concat", [low, tail, high, rest], axis=-2)
        n = body.op("Div", [body.op("Add", [n, one]), two])
    return x


def _haar_inverse(body: _Body, y: ir.Value, levels: _Levels) -> ir.Value:
    if levels.active is not None:
        return _haar_inverse_auto(body, y, levels)
    c = body.const(np.array(transforms.INV_SQRT2, np.float32))
    zero, two, end = _i64(body, 0), _i64(body, 2), _i64(body, _INT64_MAX)
    s = body.op("Shape", [y], start=-2, end=-1)
    lead = body.op("Shape", [y], end=-2)
    feat = body.op("Shape", [y], start=-1)
    for level in reversed(range(levels.count)):
        step = 1 << level
        n = body.op("Div", [body.op("Add", [s, _i64(body, step - 1)]), _i64(body, step)])
        m = body.op("Div", [n, two])
        low_len = body.op("Sub", [n, m])
        low = _tokens_slice(body, y, zero, m)
        tail = _tokens_slice(body, y, m, low_len)
        high = _tokens_slice(body, y, low_len, n)
        rest = _tokens_slice(body, y, n, end)
        y = body.op("Concat", [_butterfly_interleave(body, low, high, c, (lead, m, feat)), tail, rest], axis=-2)
    return y


def _butterfly_interleave(body: _Body, low: ir.Value, high: ir.Value, c: ir.Value,
                          dims: tuple[ir.Value, ir.Value, ir.Value]) -> ir.Value:
    """One inverse Haar level's tokens: (low + high) c and (low - high) c interleaved along the
    tokens, as (lead..., 2 m, features) for ``dims`` = (lead shape, m, feature shape)."""
    lead, m, feat = dims
    even = body.op("Mul", [body.op("Add", [low, high]), c])
    odd = body.op("Mul", [body.op("Sub", [low, high]), c])
    pairs = body.op(
        "Concat",
        [body.op("Unsqueeze", [even, _i64(body, -2)]), body.op("Unsqueeze", [odd, _i64(body, -2)])],
        axis=-2,
    )
    shape = body.op("Concat", [lead, body.op("Mul", [m, _i64(body, 2)]), feat], axis=0)
    return body.op("Reshape", [pairs, shape], allowzero=1)


def _haar_forward_auto(body: _Body, x: ir.Value, levels: _Levels) -> ir.Value:
    """The forward Haar with its levels chosen in the graph: the butterflies of :func:`_haar_forward`
    (the same float32 operations), each level on the low band only, its details set aside and
    concatenated at the end as [a_L | d_L | ... | d_1]. A level that is not applied pairs no
    tokens (m = 0) and passes on a low band of at most low_band tokens, so the levels past L cost
    almost nothing (the fixed-level body copies the whole sequence at every level)."""
    c = body.const(np.array(transforms.INV_SQRT2, np.float32))
    zero, one, two, end = _i64(body, 0), _i64(body, 1), _i64(body, 2), _i64(body, _INT64_MAX)
    details = []
    for level in range(levels.count):
        n = body.op("Shape", [x], start=-2, end=-1)
        m = body.op("Where", [levels.applied(body, level), body.op("Div", [n, two]), zero])
        two_m = body.op("Mul", [m, two])
        even = _tokens_slice(body, x, zero, two_m, 2)
        odd = _tokens_slice(body, x, one, two_m, 2)
        details.append(body.op("Mul", [body.op("Sub", [even, odd]), c]))
        approximation = body.op("Mul", [body.op("Add", [even, odd]), c])
        x = body.op("Concat", [approximation, _tokens_slice(body, x, two_m, end)], axis=-2)
    return body.op("Concat", [x, *reversed(details)], axis=-2)


def _haar_inverse_auto(body: _Body, y: ir.Value, levels: _Levels) -> ir.Value:
    """The inverse of :func:`_haar_forward_auto` with the butterflies of :func:`_haar_inverse`:
    from a_L = y[:ceil(s / 2^L)], each applied level l = L..1 interleaves its low band with d_l,
    read from y at [ceil(s / 2^l), ceil(s / 2^(l-1))); a level not applied reads nothing."""
    assert levels.active is not None
    c = body.const(np.array(transforms.INV_SQRT2, np.float32))
    zero, two = _i64(body, 0), _i64(body, 2)
    s = body.op("Shape", [y], start=-2, end=-1)
    lead = body.op("Shape", [y], end=-2)
    feat = body.op("Shape", [y], start=-1)
    steps = body.const(np.array([1 << level for level in range(levels.count + 1)], np.int64))
    step = body.op("Gather", [steps, levels.active], axis=0)
    a = _tokens_slice(body, y, zero, body.op("Div", [body.op("Sub", [body.op("Add", [s, step]), _i64(body, 1)]), step]))
    for level in reversed(range(levels.count)):
        size = 1 << level
        n = body.op("Div", [body.op("Add", [s, _i64(body, size - 1)]), _i64(body, size)])  # band length before the level
        applied = levels.applied(body, level)
        m = body.op("Where", [applied, body.op("Div", [n, two]), zero])
        stop = body.op("Where", [applied, n, zero])
        high = _tokens_slice(body, y, body.op("Sub", [stop, m]), stop)
        low = _tokens_slice(body, a, zero, m)
        tail = _tokens_slice(body, a, m, _i64(body, _INT64_MAX))
        a = body.op("Concat", [_butterfly_interleave(body, low, high, c, (lead, m, feat)), tail], axis=-2)
    return a


def _haar2d(body: _Body, x: ir.Value, spec: SequenceTransformSpec, *, inverse: bool) -> ir.Value:
    """2-D Haar on the (H, W) token grid: rows, then columns, then the group order (see module doc)."""
    grid_width = spec.grid_width
    shape = body.op("Shape", [x])
    n = body.op("Shape", [x], start=-2, end=-1)
    if grid_width:
        width = _i64(body, grid_width)
    else:
        root = body.op("Sqrt", [body.op("Cast", [n], to=ir.DataType.DOUBLE)])
        width = body.op("Cast", [body.op("Round", [root])], to=ir.DataType.INT64)
    width = body.op("Max", [width, _i64(body, 1)])  # no division by zero on an empty sequence
    height = body.op("Div", [n, width])
    levels = _Levels.of(body, x, spec, (height, width))
    lead = body.op("ReduceProd", [body.op("Shape", [x], end=-2)], keepdims=1)
    grid_shape = body.op("Concat", [lead, height, width, body.op("Shape", [x], start=-1)], axis=0)
    # Group key of token t = i W + j: max(band_H(i), band_W(j)) * n + t, sorted ascending.
    s, t = _token_index(body, x)
    w = body.op("Squeeze", [width])
    bands = body.op("Max", [_haar_bands(body, body.op("Div", [t, w]), height, levels),
                            _haar_bands(body, body.op("Mod", [t, w]), width, levels)])
    key = body.op("Add", [body.op("Mul", [bands, s]), t])
    _, order = body.op_multi("TopK", [key, n], 2, largest=0, sorted=1)
    rows_then_columns = [0, 2, 1, 3]
    if not inverse:
        grid = _haar_forward(body, body.op("Reshape", [x, grid_shape], allowzero=1), levels)
        grid = body.op("Transpose", [grid], perm=rows_then_columns)
        grid = body.op("Transpose", [_haar_forward(body, grid, levels)], perm=rows_then_columns)
        return body.op("Gather", [body.op("Reshape", [grid, shape], allowzero=1), order], axis=-2)
    _, unorder = body.op_multi("TopK", [order, n], 2, largest=0, sorted=1)
    grid = body.op("Reshape", [body.op("Gather", [x, unorder], axis=-2), grid_shape], allowzero=1)
    grid = body.op("Transpose", [grid], perm=rows_then_columns)
    grid = body.op("Transpose", [_haar_inverse(body, grid, levels)], perm=rows_then_columns)
    return body.op("Reshape", [_haar_inverse(body, grid, levels), shape], allowzero=1)


def _haar_bands(body: _Body, index: ir.Value, length: ir.Value, levels: _Levels) -> ir.Value:
    """transforms.haar_bands in the graph: #{l <= levels : index >= ceil(length / 2^l)}."""
    bands = body.op("Mul", [index, _i64s(body, 0)])
    for level in range(1, levels.count + 1):
        step = 1 << level
        low = body.op("Div", [body.op("Add", [length, _i64(body, step - 1)]), _i64(body, step)])
        above = levels.counts(body, level, body.op("GreaterOrEqual", [index, low]))
        above = body.op("Cast", [above], to=ir.DataType.INT64)
        bands = body.op("Add", [bands, above])
    return bands


def _token_index(body: _Body, x: ir.Value) -> tuple[ir.Value, ir.Value]:
    """(s as a scalar int64, Range(0, s) int64)."""
    s = body.op("Squeeze", [body.op("Shape", [x], start=-2, end=-1)])
    return s, body.op("Range", [_i64s(body, 0), s, _i64s(body, 1)])


def _i64s(body: _Body, value: int) -> ir.Value:
    return body.const(np.array(value, np.int64))


def _dct_matrix(body: _Body, x: ir.Value) -> ir.Value:
    """M[k, n] = c_k cos(pi (2n+1) k / 2s); the angle index is reduced mod 4s in int64 first."""
    s, k = _token_index(body, x)
    rows = body.op("Unsqueeze", [k, _i64(body, 1)])
    cols = body.op("Unsqueeze", [k, _i64(body, 0)])
    odd = body.op("Add", [body.op("Mul", [cols, _i64s(body, 2)]), _i64s(body, 1)])
    # Max(s, 1): with a prefix the transformed part may be empty, and Mod checks its divisor.
    period = body.op("Mul", [body.op("Max", [s, _i64s(body, 1)]), _i64s(body, 4)])
    idx = body.op("Mod", [body.op("Mul", [rows, odd]), period])
    s64 = body.op("Cast", [s], to=ir.DataType.DOUBLE)
    step = body.op("Div", [body.const(np.array(math.pi / 2, np.float64)), s64])
    cos = body.op("Cos", [body.op("Mul", [body.op("Cast", [idx], to=ir.DataType.DOUBLE), step])])
    norm = body.op("Sqrt", [body.op("Div", [body.const(np.array(2.0, np.float64)), s64])])
    first = body.op("Equal", [rows, _i64s(body, 0)])
    row_scale = body.op(
        "Where", [first, body.const(np.array(transforms.INV_SQRT2, np.float64)), body.const(np.array(1.0, np.float64))]
    )
    m = body.op("Mul", [body.op("Mul", [cos, norm]), row_scale])
    return body.op("Cast", [m], to=ir.DataType.FLOAT)


def _wht_matrix(body: _Body, x: ir.Value) -> ir.Value:
    """Block-diagonal sequency-ordered WHT over the binary expansion of s (see module doc)."""
    s, i = _token_index(body, x)
    pow2 = body.const(np.array([1 << b for b in range(_WHT_BITS + 1)], np.int64))
    # Token i lies in the block of size 2^h, h = highest set bit of (i XOR s).
    diff = body.op("Unsqueeze", [body.op("BitwiseXor", [i, s]), _i64(body, 1)])
    above = body.op("GreaterOrEqual", [diff, body.const(np.array([1 << b for b in range(1, _WHT_BITS + 1)], np.int64))])
    h = body.op("ReduceSum", [body.op("Cast", [above], to=ir.DataType.INT64), _i64(body, 1)], keepdims=0)
    size = body.op("Gather", [pow2, h])
    local = body.op("Mod", [i, size])
    gray = body.op("BitwiseXor", [local, body.op("Div", [local, _i64s(body, 2)])])
    bit_pos = body.const(np.array([1 << b for b in range(_WHT_BITS)], np.int64))
    row_bits = body.op("Mod", [body.op("Div", [body.op("Unsqueeze", [gray, _i64(body, 1)]), bit_pos]), _i64s(body, 2)])
    # Column bits of bitrev_h(local): bit t is bit (h - 1 - t) of local, zero for t >= h.
    rev = body.op(
        "Sub",
        [body.op("Sub", [body.op("Unsqueeze", [h, _i64(body, 1)]), _i64s(body, 1)]), body.const(np.arange(_WHT_BITS, dtype=np.int64))],
    )
    valid = body.op("Cast", [body.op("GreaterOrEqual", [rev, _i64s(body, 0)])], to=ir.DataType.INT64)
    shift = body.op("Gather", [pow2, body.op("Max", [rev, _i64s(body, 0)])])
    col_bits = body.op(
        "Mul",
        [body.op("Mod", [body.op("Div", [body.op("Unsqueeze", [local, _i64(body, 1)]), shift]), _i64s(body, 2)]), valid],
    )
    count = body.op(
        "MatMul",
        [body.op("Cast", [row_bits], to=ir.DataType.FLOAT), body.op("Transpose", [body.op("Cast", [col_bits], to=ir.DataType.FLOAT)], perm=[1, 0])],
    )
    parity = body.op("Mod", [count, body.const(np.array(2.0, np.float32))], fmod=1)
    sign = body.op("Sub", [body.const(np.array(1.0, np.float32)), body.op("Mul", [parity, body.const(np.array(2.0, np.float32))])])
    row_scale = body.op("Reciprocal", [body.op("Sqrt", [body.op("Cast", [size], to=ir.DataType.FLOAT)])])
    values = body.op("Mul", [sign, body.op("Unsqueeze", [row_scale, _i64(body, 1)])])
    same_block = body.op("Equal", [body.op("Unsqueeze", [h, _i64(body, 1)]), body.op("Unsqueeze", [h, _i64(body, 0)])])
    blocks = body.op("Where", [same_block, values, body.const(np.array(0.0, np.float32))])
    # Merge the blocks' rows by normalised sequency local / 2^h, ties larger block first:
    # key = (local << (31 - h)) * 64 + (31 - h), sorted ascending.
    shift_h = body.op("Sub", [_i64s(body, _WHT_BITS), h])
    key = body.op(
        "Add", [body.op("Mul", [body.op("Mul", [local, body.op("Gather", [pow2, shift_h])]), _i64s(body, 64)]), shift_h]
    )
    count = body.op("Shape", [key])
    _, order = body.op_multi("TopK", [key, count], 2, largest=0, sorted=1)
    return body.op("Gather", [blocks, order], axis=0)


def _codes_group(body: _Body, x: ir.Value, bits: int, zero_point_columns: int) -> tuple[ir.Value, ir.Value]:
    """Integer codes (uint8, (..., t, d + zero_point_columns)) and scales ((..., t, 1)) of x (..., t, d)
    at ``bits`` (quant.integer_codes_group). The parameters are _qdq_group's; tokens of up to 7 bits
    are clipped as there and quantized around 128 (c = q - zp + 128), 8-bit tokens keep c = q
    and copy zp into the extra columns."""
    flat, scale, zp_float, fqmax = _token_params(body, x, bits)
    rows = body.op("Shape", [scale])
    if bits <= quant.FOLDED_MAX_BITS:
        flat = _clip_to_codes(body, flat, scale, zp_float, fqmax)
        zp = body.op("Expand", [body.const(np.array(quant.CODE_ZERO_POINT, np.uint8)), rows])
        column = body.const(np.array([[quant.CODE_ZERO_POINT]], np.uint8))
    else:
        zp = body.op("Cast", [zp_float], to=ir.DataType.UINT8)
        column = body.op("Unsqueeze", [zp, _i64(body, 1)])
    codes = body.op("QuantizeLinear", [flat, scale, zp], axis=0)
    if zero_point_columns:
        extra = body.op("Expand", [column, body.op("Concat", [rows, _i64(body, zero_point_columns)], axis=0)])
        codes = body.op("Concat", [codes, extra], axis=1)
    lead = body.op("Shape", [x], end=-1)
    width = body.op("Add", [body.op("Shape", [x], start=-1), _i64(body, zero_point_columns)])
    codes = body.op("Reshape", [codes, body.op("Concat", [lead, width], axis=0)], allowzero=1)
    scales = body.op("Reshape", [scale, body.op("Concat", [lead, _i64(body, 1)], axis=0)], allowzero=1)
    return codes, scales


def _token_params(body: _Body, x: ir.Value, bits: int) -> tuple[ir.Value, ir.Value, ir.Value, ir.Value]:
    """(x as rows (tokens, d), per-row scale, per-row zero point as float, qmax) of quant.qparams."""
    qmax = float(2**bits - 1)
    fzero, fone, fqmax = (body.const(np.array(v, np.float32)) for v in (0.0, 1.0, qmax))
    flat = body.op("Reshape", [x, body.op("Concat", [_i64(body, -1), body.op("Shape", [x], start=-1)], axis=0)])
    rmin = body.op("Min", [body.op("ReduceMin", [flat, _i64(body, 1)], keepdims=0), fzero])
    rmax = body.op("Max", [body.op("ReduceMax", [flat, _i64(body, 1)], keepdims=0), fzero])
    span = body.op("Sub", [rmax, rmin])
    scale = body.op("Where", [body.op("Equal", [span, fzero]), fone, body.op("Div", [span, fqmax])])
    zp_float = body.op("Clip", [body.op("Round", [body.op("Div", [body.op("Neg", [rmin]), scale])]), fzero, fqmax])
    return flat, scale, zp_float, fqmax


def _clip_to_codes(body: _Body, flat: ir.Value, scale: ir.Value, zp_float: ir.Value, fqmax: ir.Value) -> ir.Value:
    """flat clipped to [-zp * scale, (qmax - zp) * scale] per row, which equals clipping q to [0, qmax]."""
    low = body.op("Mul", [body.op("Neg", [zp_float]), scale])
    high = body.op("Mul", [body.op("Sub", [fqmax, zp_float]), scale])
    col = _i64(body, 1)
    return body.op("Min", [body.op("Max", [flat, body.op("Unsqueeze", [low, col])]), body.op("Unsqueeze", [high, col])])


def _qdq_group(body: _Body, x: ir.Value, bits: int) -> ir.Value:
    """Per-token QuantizeLinear/DequantizeLinear of x (..., t, d) with ``bits``-bit codes.

    Tokens are flattened to rows of a 2-D tensor so one per-axis scale and zero point per
    token can be used (axis 0). For widths below the storage type (2, 3, 5, 6, 7 bits) the
    input is clipped to [-zp * scale, (qmax - zp) * scale] first, which equals clipping q.
    """
    flat, scale, zp_float, fqmax = _token_params(body, x, bits)
    zp = body.op("Cast", [zp_float], to=quant_type(bits))
    if bits not in (4, 8, 16):
        flat = _clip_to_codes(body, flat, scale, zp_float, fqmax)
    q = body.op("QuantizeLinear", [flat, scale, zp], axis=0)
    dq = body.op("DequantizeLinear", [q, scale, zp], axis=0)
    return body.op("Reshape", [dq, body.op("Shape", [x])], allowzero=1)
