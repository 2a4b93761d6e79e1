"""SelectLinearLayersPass: decide which linear layers are rewritten, and give each one its tokens on axis -2.

Every later pass works on a canonical layer: a float32 activation (..., s, d) with the tokens
of one sequence on axis -2. This pass finds the linear layers (:mod:`.linear_layers`), decides
each one's token axis (:mod:`.token_axis`), marks the selected ones (``stamp_onnx.layer``,
``stamp_onnx.token_axis``, ``stamp_onnx.activation_shape`` on the MatMul/Gemm) and brings the
others' layouts to the canonical one; everything else is skipped with a reason.

Seq-first (s, b, d)::

    Before:  x (s, b, d) ──► MatMul(W) ──► y
    After:   x ──► Transpose ──► (b, s, d) ──► MatMul(W) ──► Transpose ──► y (s, b, n)

Flattened tokens, traced back through the flattening Reshape (GPT-2's Conv1D, legacy exports)::

    Before:  x3 (b, s, d) ──► Reshape ──► (b*s, d) ──► Gemm(W, c) ──► y (b*s, n)
    After:   x3 (b, s, d) ──► MatMul(W) ──► Add(c) ──► Reshape(-1, n) ──► y (b*s, n)

float16 activations (the quantizer computes in float32; the layer's weight gets a float32 copy)::

    Before:  x (f16) ──► MatMul(W f16) ──► y (f16)
    After:   x ──► Cast(f32) ──► MatMul(W f32) ──► Cast(f16) ──► y

Later passes insert their ops between the canonical MatMul's input and output, so the tokens
they transform and quantize are always the tokens of one sequence. Skipped, with the reason:
layers not selected by include/exclude, activations without a token axis (the rows of a
(batch, d) classifier input are samples), layers in Loop/Scan bodies (an iteration's values
have no token axis) and, when ``subgraphs`` is False, in any subgraph (calibration cannot
observe their values), activations that are neither float32 nor float16.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from stamp_onnx.graph.contract import (
    ACTIVATION_SHAPE_KEY,
    LAYER_KEY,
    PASS_KEY,
    TOKEN_AXIS_KEY,
    is_transposed,
)
from stamp_onnx.passes.constants import constant_array
from stamp_onnx.passes.layer_weights import add_initializer, drop_if_unused
from stamp_onnx.passes.linear_layers import QUANTIZED_OPS, find_linear_layers, reroute, unique_namer
from stamp_onnx.passes.report import LayerRecord, ReportsInto, RewriteReport, SkippedLayer
from stamp_onnx.passes.token_axis import DimRoles, TokenAxis, decide, shape_text

_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16)


@dataclasses.dataclass
class SelectResult(ir.passes.PassResult, ReportsInto):
    """The pass's findings: the layers to rewrite and the MatMul/Gemm nodes left alone."""

    layers: list[LayerRecord] = dataclasses.field(default_factory=list)
    skipped: list[SkippedLayer] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def merge_into(self, report: RewriteReport) -> None:
        report.rewritten, report.skipped, report.notes = self.layers, self.skipped, self.notes


class SelectLinearLayersPass(ir.passes.InPlacePass):
    """``selects(layer, node) -> reason | None`` applies include/exclude; ``token_axis(layer,
    node) -> int | None`` gives a user's token axis (None: infer it)."""

    def __init__(
        self,
        selects: Callable[[str, str], str | None],
        token_axis: Callable[[str, str], int | None],
        *,
        subgraphs: bool = True,
    ) -> None:
        super().__init__()
        self.selects = selects
        self.token_axis = token_axis
        self.subgraphs = subgraphs

    def call(self, model: ir.Model) -> SelectResult:
        roles = DimRoles.of(model)
        layers, skipped = find_linear_layers(model.graph)
        owners = _subgraph_owners(model.graph)
        fresh = unique_namer(model.graph)
        records = []
        for layer in layers:
            node = layer.node
            reason = self._check(layer.name, node, owners, model.graph)
            decision: TokenAxis | str | None = None
            if reason is None:
                decision = decide(node.inputs[0], roles, self.token_axis(layer.name, node.name or ""), layer.in_features)
                reason = decision if isinstance(decision, str) else None
            if reason is not None or not isinstance(decision, TokenAxis):
                skipped.append(SkippedLayer(layer.name, node.name or "", reason or "no token axis"))
                continue
            x = node.inputs[0]
            assert x is not None
            shape = shape_text(x) + (f" from {shape_text(decision.source)}" if decision.flattened else "")
            node = _canonicalize(model.graph, node, decision, fresh, {PASS_KEY: type(self).__name__, LAYER_KEY: layer.name})
            node.metadata_props[LAYER_KEY] = layer.name
            node.metadata_props[TOKEN_AXIS_KEY] = f"{decision.axis} ({decision.how})"
            node.metadata_props[ACTIVATION_SHAPE_KEY] = shape
            records.append(LayerRecord(
                layer.name, node.name or "", node.op_type, layer.in_features, layer.out_features,
                token_axis=decision.axis, activation_shape=shape,
            ))
        notes = []
        quantized = sorted({n.op_type for n in model.graph.all_nodes() if n.op_type in QUANTIZED_OPS})
        if quantized:
            notes.append(f"the model is already quantized ({', '.join(quantized)}): quantize its float original instead")
        return SelectResult(model, modified=bool(records), layers=records, skipped=skipped, notes=notes)

    def _check(self, name: str, node: ir.Node, owners: dict[int, ir.Node], main: ir.Graph) -> str | None:
        reason = self.selects(name, node.name or "")
        if reason is not None:
            return reason
        graph = node.graph
        while graph is not None and graph is not main:
            owner = owners.get(id(graph))
            if owner is None:
                break
            if owner.op_type in ("Loop", "Scan"):
                return f"inside a {owner.op_type} body: one iteration's values have no token axis"
            if not self.subgraphs:
                return f"inside an {owner.op_type} subgraph, where calibration cannot observe values"
            graph = owner.graph
        x = node.inputs[0]
        assert x is not None
        if x.dtype is not None and x.dtype not in _FLOATS:
            return f"activation dtype is {x.dtype}; float32 and float16 are rewritten"
        return None


def _subgraph_owners(graph: ir.Graph) -> dict[int, ir.Node]:
    """id(subgraph) -> the If/Loop/Scan node holding it."""
    owners = {}
    for node in graph.all_nodes():
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                owners[id(attr.as_graph())] = node
            elif attr.type == ir.AttributeType.GRAPHS:
                owners.update((id(g), node) for g in attr.as_graphs())
    return owners


def _canonicalize(
    main: ir.Graph, node: ir.Node, where: TokenAxis, fresh: Callable[[str], str], provenance: dict[str, str]
) -> ir.Node:
    """Rewire ``node`` so it reads a float32 (..., s, d) activation; return the linear node (a
    Gemm fed a rank >= 3 activation becomes MatMul + Add)."""
    graph = node.graph
    assert graph is not None
    x, y = node.inputs[0], node.outputs[0]
    assert x is not None
    source = where.source
    name = provenance[LAYER_KEY]
    before: list[ir.Node] = []
    after: list[ir.Node] = []

    def add(nodes: list[ir.Node], op: str, inputs: list[ir.Value | None], label: str, attrs: list[ir.Attr]) -> ir.Value:
        new = ir.Node("", op, inputs, attrs, name=fresh(f"{name}/{label}"), metadata_props=dict(provenance))
        new.outputs[0].name = fresh(f"{name}/{label}_output")
        nodes.append(new)
        return new.outputs[0]

    if where.view:
        source = _view_rows(x, where, add, before, main, fresh, name)
    half = source.dtype == ir.DataType.FLOAT16
    rank = len(source.shape) if source.shape is not None else 2
    perm = [i for i in range(rank - 1) if i != where.axis] + [where.axis, rank - 1]
    permuted = perm != list(range(rank))
    if not half and not permuted and source is x:
        return node  # already canonical
    original_type, original_shape = y.type, y.shape
    a = source
    if half:
        a = add(before, "Cast", [a], "to_float32", [ir.AttrInt64("to", ir.DataType.FLOAT)])
        a.type, a.shape = ir.TensorType(ir.DataType.FLOAT), source.shape
    if permuted:
        a = add(before, "Transpose", [a], "tokens_to_axis_-2", [ir.AttrInt64s("perm", perm)])
        a.type = ir.TensorType(ir.DataType.FLOAT)
        a.shape = None if source.shape is None else ir.Shape([source.shape[i] for i in perm])
    d_out = original_shape[-1] if original_shape is not None else None
    canonical = None if a.shape is None else ir.Shape([*list(a.shape)[:-1], d_out])
    old_inputs = list(node.inputs)
    weight, bias = node.inputs[1], node.inputs[2] if len(node.inputs) > 2 else None
    if half:
        weight, bias = _float32_copy(graph, weight, fresh), _float32_copy(graph, bias, fresh)
    linear = node
    if node.op_type == "Gemm" and (source is not x or rank > 2):
        if is_transposed(node):
            weight = add(before, "Transpose", [weight], "weight_transposed", [ir.AttrInt64s("perm", [1, 0])])
        linear = ir.Node("", "MatMul", [a, weight], name=node.name, metadata_props=dict(node.metadata_props))
        before.append(linear)
        out = linear.outputs[0]
        out.name = fresh(f"{name}/output")
        if bias is not None:
            out.type, out.shape = ir.TensorType(ir.DataType.FLOAT), canonical
            out = add(after, "Add", [out, bias], "bias", [])
    else:
        node.replace_input_with(0, a)
        node.replace_input_with(1, weight)
        if len(node.inputs) > 2:
            node.replace_input_with(2, bias)
        out = y
    out.type, out.shape = ir.TensorType(ir.DataType.FLOAT), canonical
    if permuted:
        inverse = [perm.index(i) for i in range(rank)]
        out = add(after, "Transpose", [out], "tokens_back", [ir.AttrInt64s("perm", inverse)])
    if source is not x:
        shape = add_initializer(graph, fresh(f"{name}/flat_shape"), ir.tensor(np.array([-1, d_out or -1], dtype=np.int64)))
        out = add(after, "Reshape", [out, shape], "flatten_tokens", [])
    if half:
        out = add(after, "Cast", [out], "to_float16", [ir.AttrInt64("to", ir.DataType.FLOAT16)])
    out.type, out.shape = original_type, original_shape
    if linear is node:
        graph.insert_before(node, before)
        graph.insert_after(node, after)
        reroute(y, out, skip=after[0])
    else:
        graph.insert_before(node, [*before, *after])
        reroute(y, out, skip=linear)
        graph.remove(node, safe=True)
    for value in old_inputs:
        drop_if_unused(main, value)
    return linear


def _view_rows(x: ir.Value, where: TokenAxis, add: Callable[..., ir.Value], before: list[ir.Node],
               main: ir.Graph, fresh: Callable[[str], str], name: str) -> ir.Value:
    """x (rows, d) reshaped to (the source's first ``where.view`` dims, ..., d): the rows regrouped by
    sequence, the source's dims read at run time."""
    features = where.features
    lead = add(before, "Shape", [where.source], "source_dims", [ir.AttrInt64("start", 0), ir.AttrInt64("end", where.view)])
    rest = [-1, features] if where.view == 1 else [features]
    tail = add_initializer(main, fresh(f"{name}/rows_view_tail"), ir.tensor(np.array(rest, dtype=np.int64)))
    target = add(before, "Concat", [lead, tail], "rows_view_shape", [ir.AttrInt64("axis", 0)])
    viewed = add(before, "Reshape", [x, target], "rows_view", [])
    dims = list(where.source.shape or [])[:where.view] + ([ir.SymbolicDim(None)] if where.view == 1 else []) + [features]
    viewed.type, viewed.shape = x.type, ir.Shape(dims)
    return viewed


def _float32_copy(main: ir.Graph, value: ir.Value | None, fresh: Callable[[str], str]) -> ir.Value | None:
    if value is None:
        return None
    array = constant_array(value)
    assert array is not None, "a linear layer's weight and bias are constants"
    return add_initializer(main, fresh(f"{value.name or 'weight'}_float32"), ir.tensor(array.astype(np.float32)))
