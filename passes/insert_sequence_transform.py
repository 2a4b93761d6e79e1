"""InsertSequenceTransformPass: wrap each quantized linear layer in L and L^-1 along the tokens.

Before::   x ──► TokenQDQ ──► MatMul(W) ──► y ──► (Add b)
After::    x ──► SequenceTransform(L) ──► TokenQDQ ──► MatMul(W) ──► SequenceTransform(L^-1) ──► (Add b)

so y = L^-1 (Q(L x) W) + b: the bias stays after the inverse. A Gemm's C input is moved out
into an Add after the inverse for the same reason. If the layer's output is a graph output,
the new output takes over its name, so graph inputs and outputs keep names, types and shapes.

Handles the layers InsertTokenQDQPass marked. Does nothing for ``transform="none"``.
"""

from __future__ import annotations

import onnx_ir as ir

from passes.invariants import assert_invariants
from passes.linear_layers import LAYER_KEY, PASS_KEY, unique_namer
from passes.report import RewriteReport
from stamp_onnx import ops
from stamp_onnx.config import StampConfig


class InsertSequenceTransformPass(ir.passes.InPlacePass):
    def __init__(self, config: StampConfig, report: RewriteReport) -> None:
        super().__init__()
        self.config = config
        self.report = report

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if self.config.transform == "none":
            return ir.passes.PassResult(model, modified=False)
        c = self.config
        forward, inverse = (
            ops.SequenceTransformSpec(c.transform, c.levels, inv, c.prefix_tokens, c.grid_width) for inv in (False, True)
        )
        graph = model.graph
        fresh = unique_namer(graph)
        count = 0
        for node in list(graph):
            layer = node.metadata_props.get(LAYER_KEY)
            qdq = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
            if layer is None or qdq is None or qdq.op_type != ops.TOKEN_QDQ or qdq.domain != ops.DOMAIN:
                continue
            provenance = {PASS_KEY: type(self).__name__, LAYER_KEY: layer}
            x = qdq.inputs[0]
            assert x is not None
            fwd = self._node(forward, [x], fresh(f"{layer}/SequenceTransform"), provenance)
            _like(fwd.outputs[0], x, fresh(f"{layer}/transformed_input"))
            graph.insert_before(qdq, fwd)
            qdq.replace_input_with(0, fwd.outputs[0])

            y = node.outputs[0]
            bias = _detach_gemm_bias(node)
            inv = self._node(inverse, [y], fresh(f"{layer}/SequenceTransformInverse"), provenance)
            _like(inv.outputs[0], y, fresh(f"{layer}/output"))
            new_nodes = [inv]
            final = inv.outputs[0]
            if bias is not None:
                add = ir.Node("", "Add", [final, bias], name=fresh(f"{layer}/bias"), metadata_props=dict(provenance))
                _like(add.outputs[0], y, fresh(f"{layer}/output_biased"))
                new_nodes.append(add)
                final = add.outputs[0]
            _reroute(graph, y, final, skip=inv)
            graph.insert_after(node, new_nodes)
            self.report.layer(layer).transform = self.config.transform
            count += 1
        if count:
            ops.add_function(model, forward)
            ops.add_function(model, inverse)
        return ir.passes.PassResult(model, modified=count > 0)

    @staticmethod
    def _node(spec: ops.SequenceTransformSpec, inputs: list[ir.Value], name: str, meta: dict[str, str]) -> ir.Node:
        return ir.Node(
            ops.DOMAIN, ops.SEQUENCE_TRANSFORM, inputs, spec.attributes(),
            overload=spec.overload, name=name, metadata_props=dict(meta),
        )

    def ensures(self, model: ir.Model) -> None:
        assert_invariants(model)


def _like(value: ir.Value, model_value: ir.Value, name: str) -> None:
    value.name, value.type, value.shape = name, model_value.type, model_value.shape


def _detach_gemm_bias(node: ir.Node) -> ir.Value | None:
    if node.op_type != "Gemm" or len(node.inputs) < 3 or node.inputs[2] is None:
        return None
    bias = node.inputs[2]
    node.replace_input_with(2, None)
    return bias


def _reroute(graph: ir.Graph, old: ir.Value, new: ir.Value, *, skip: ir.Node) -> None:
    """Point every consumer of ``old`` (but ``skip``) and any graph output at ``new``."""
    for user, index in list(old.uses()):
        if user is not skip:
            user.replace_input_with(index, new)
    if old.is_graph_output():
        name = old.name
        old.name = f"{name}/before_inverse"
        new.name = name
        for i, out in enumerate(graph.outputs):
            if out is old:
                graph.outputs[i] = new
