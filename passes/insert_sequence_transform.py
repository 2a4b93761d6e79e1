"""InsertSequenceTransformPass: wrap each quantized linear layer in L and L^-1 along the tokens.

Before::   x ──► TokenQDQ ──► MatMul(W) ──► y ──► (Add b)
After::    x ──► TransformQDQ(L, Q) ──► MatMul(W) ──► SequenceTransform(L^-1) ──► (Add b)

so y = L^-1 (Q(L x) W) + b: the bias stays after the inverse. The TokenQDQ node is replaced by
the fused TransformQDQ (the forward transform and the same quantizer, one op), so a native
kernel makes one pass over the activation. A Gemm's C input is moved out
into an Add after the inverse for the same reason. If the layer's output is a graph output,
the new output takes over its name, so graph inputs and outputs keep names, types and shapes.

Handles the layers InsertTokenQDQPass quantized (a precondition); the pipeline leaves this
pass out for ``transform="none"``.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from stamp_onnx.graph import ops
from stamp_onnx.graph.contract import LAYER_KEY, PASS_KEY
from stamp_onnx.passes.invariants import assert_invariants
from stamp_onnx.passes.linear_layers import reroute, unique_namer
from stamp_onnx.passes.report import TransformResult


class InsertSequenceTransformPass(ir.passes.InPlacePass):
    def __init__(self, transform: str, levels: int, prefix_tokens: int, grid_width: int) -> None:
        super().__init__()
        self.forward = ops.SequenceTransformSpec(transform, levels, False, prefix_tokens, grid_width)

    def requires(self, model: ir.Model) -> None:
        if not any(node.domain == ops.DOMAIN and node.op_type == ops.TOKEN_QDQ for node in model.graph.all_nodes()):
            raise ir.passes.PreconditionError("no TokenQDQ node to wrap: run InsertTokenQDQPass first")

    def call(self, model: ir.Model) -> TransformResult:
        forward = self.forward
        inverse = dataclasses.replace(forward, inverse=True)
        done: dict[str, str] = {}
        fused_specs: set[ops.TransformQDQSpec] = set()
        graph = model.graph
        fresh = unique_namer(graph)
        count = 0
        for node in list(graph.all_nodes()):
            layer = node.metadata_props.get(LAYER_KEY)
            qdq = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
            if layer is None or qdq is None or qdq.op_type != ops.TOKEN_QDQ or qdq.domain != ops.DOMAIN:
                continue
            provenance = {PASS_KEY: type(self).__name__, LAYER_KEY: layer}
            qdq_spec = ops.spec_from_node(qdq)
            assert isinstance(qdq_spec, ops.TokenQDQSpec)
            fused = ops.TransformQDQSpec(forward, qdq_spec)
            fused_specs.add(fused)
            fwd = self._node(fused, list(qdq.inputs), fresh(f"{layer}/TransformQDQ"), provenance)
            _like(fwd.outputs[0], qdq.outputs[0], fresh(f"{layer}/quantized_transformed_input"))
            owner = node.graph
            assert owner is not None
            owner.insert_before(qdq, fwd)
            qdq.outputs[0].replace_all_uses_with(fwd.outputs[0])
            owner.remove(qdq, safe=True)

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
            reroute(y, final, skip=inv)
            owner.insert_after(node, new_nodes)
            done[layer] = forward.transform
            count += 1
        for spec in sorted(fused_specs, key=lambda f: f.overload):
            ops.add_function(model, spec)
        if count:
            ops.add_function(model, inverse)
        _drop_unused_qdq_functions(model)
        return TransformResult(model, modified=count > 0, values=done)

    @staticmethod
    def _node(spec: ops.Spec, inputs: list[ir.Value | None], name: str, meta: dict[str, str]) -> ir.Node:
        return ir.Node(
            ops.DOMAIN, ops.op_type(spec), inputs, spec.attributes(),
            overload=spec.overload, name=name, metadata_props=dict(meta),
        )

    def ensures(self, model: ir.Model) -> None:
        assert_invariants(model)


def _drop_unused_qdq_functions(model: ir.Model) -> None:
    """Remove the TokenQDQ bodies that no node calls any more (all were fused).

    Not onnx-ir's RemoveUnusedFunctionsPass: it removes every function no node calls, also
    those the input model brought, which the rewrite leaves as they are."""
    used = {(node.domain, node.op_type, node.overload) for node in model.graph.all_nodes()}
    for key in [k for k in model.functions if k[1] == ops.TOKEN_QDQ and k not in used]:
        del model.functions[key]


def _like(value: ir.Value, model_value: ir.Value, name: str) -> None:
    value.name, value.type, value.shape = name, model_value.type, model_value.shape


def _detach_gemm_bias(node: ir.Node) -> ir.Value | None:
    if node.op_type != "Gemm" or len(node.inputs) < 3 or node.inputs[2] is None:
        return None
    bias = node.inputs[2]
    node.replace_input_with(2, None)
    return bias
