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

``levels="auto"``: a layer whose token count is static (a ViT's 257 tokens, Whisper's 1500
frames) gets the levels :func:`~stamp_onnx.core.transforms.auto_levels` gives for it, written as
a plain count; a layer whose count is only known at run time (a text model's sequence axis) gets
``levels=-1`` with ``low_band`` = its hp_tokens - prefix_tokens, and the ops choose the levels
per call from the length they see (the forward and the inverse alike).
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from stamp_onnx.config import AUTO_LEVELS
from stamp_onnx.graph import ops
from stamp_onnx.graph.contract import LAYER_KEY, PASS_KEY
from stamp_onnx.passes.invariants import assert_invariants
from stamp_onnx.passes.linear_layers import reroute, unique_namer
from stamp_onnx.passes.report import TransformResult


class InsertSequenceTransformPass(ir.passes.InPlacePass):
    def __init__(self, transform: str, levels: int | str, prefix_tokens: int, grid_width: int) -> None:
        super().__init__()
        self.levels = levels
        self.forward = ops.SequenceTransformSpec(transform, 0 if levels == AUTO_LEVELS else int(levels), False,
                                                 prefix_tokens, grid_width)

    def requires(self, model: ir.Model) -> None:
        if not any(node.domain == ops.DOMAIN and node.op_type == ops.TOKEN_QDQ for node in model.graph.all_nodes()):
            raise ir.passes.PreconditionError("no TokenQDQ node to wrap: run InsertTokenQDQPass first")

    def call(self, model: ir.Model) -> TransformResult:
        done: dict[str, str] = {}
        fused_specs: set[ops.TransformQDQSpec] = set()
        inverse_specs: set[ops.SequenceTransformSpec] = set()
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
            forward = self._forward_for(qdq.inputs[0], qdq_spec)
            inverse = dataclasses.replace(forward, inverse=True)
            inverse_specs.add(inverse)
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
        for inverse in sorted(inverse_specs, key=lambda f: f.overload):
            ops.add_function(model, inverse)
        ops.drop_unused_functions(model, (ops.TOKEN_QDQ,))  # all were fused
        return TransformResult(model, modified=count > 0, values=done)

    def _forward_for(self, x: ir.Value | None, qdq: ops.TokenQDQSpec) -> ops.SequenceTransformSpec:
        """The forward transform of the layer reading ``x`` (tokens on axis -2) through ``qdq``."""
        if self.levels != AUTO_LEVELS:
            return self.forward
        auto = dataclasses.replace(self.forward, levels=ops.AUTO, low_band=max(qdq.hp_tokens - self.forward.prefix_tokens, 0))
        tokens = x.shape[-2] if x is not None and x.shape is not None and len(x.shape) >= 2 else None
        if not isinstance(tokens, int):
            return auto
        try:
            return dataclasses.replace(self.forward, levels=auto.levels_for(tokens))
        except ValueError:  # haar2d on a count that is no grid: the ops report it when they run
            return auto

    @staticmethod
    def _node(spec: ops.Spec, inputs: list[ir.Value | None], name: str, meta: dict[str, str]) -> ir.Node:
        return ir.Node(
            ops.DOMAIN, ops.op_type(spec), inputs, spec.attributes(),
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
