"""InsertTokenQDQPass: per-token mixed-precision QDQ on the activation of every selected layer.

Before::   x ──► MatMul(W) ──► y
After::    x ──► TokenQDQ(hp_tokens, hp_bits, lp_bits) ──► MatMul(W) ──► y

Handles MatMul and Gemm with a constant 2-D weight and a float32 activation of rank >= 2
(see :mod:`passes.linear_layers`). Leaves alone: products of two activations, layers not
selected (SelectLinearLayersPass marks the selected ones), and nodes inside subgraphs (If/Loop bodies).
On its own this pass is the ``--transform none`` baseline; InsertSequenceTransformPass then
wraps the quantized layers in the sequence transform.
"""

from __future__ import annotations

import onnx_ir as ir

from stamp_onnx.graph import ops
from stamp_onnx.graph.contract import LAYER_KEY, LINEAR_OPS, PASS_KEY
from stamp_onnx.passes.invariants import assert_invariants
from stamp_onnx.passes.linear_layers import unique_namer


class InsertTokenQDQPass(ir.passes.InPlacePass):
    def __init__(self, hp_tokens: int, hp_bits: int, lp_bits: int) -> None:
        super().__init__()
        self.spec = ops.TokenQDQSpec(hp_tokens, hp_bits, lp_bits)

    def requires(self, model: ir.Model) -> None:
        opset = model.opset_imports.get("", 0)
        if opset < ops.MIN_OPSET:
            raise ir.passes.PreconditionError(
                f"default-domain opset is {opset}; TokenQDQ needs >= {ops.MIN_OPSET} (run ConvertOpsetPass first)"
            )
        for node in model.graph:
            if node.domain == ops.DOMAIN:
                raise ir.passes.PreconditionError(
                    f"node {node.name!r} is already a {ops.DOMAIN} op: the model was rewritten before"
                )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        spec = self.spec
        fresh = unique_namer(model.graph)
        count = 0
        for node in list(model.graph.all_nodes()):
            layer = node.metadata_props.get(LAYER_KEY)
            if layer is None or node.op_type not in LINEAR_OPS:
                continue
            x = node.inputs[0]
            assert x is not None and node.graph is not None
            qdq = ir.Node(
                ops.DOMAIN,
                ops.TOKEN_QDQ,
                [x],
                spec.attributes(),
                overload=spec.overload,
                name=fresh(f"{layer}/TokenQDQ"),
                metadata_props={PASS_KEY: type(self).__name__, LAYER_KEY: layer},
            )
            out = qdq.outputs[0]
            out.name, out.type, out.shape = fresh(f"{layer}/quantized_input"), x.type, x.shape
            node.graph.insert_before(node, qdq)
            node.replace_input_with(0, out)
            count += 1
        if count:
            ops.add_function(model, spec)
        return ir.passes.PassResult(model, modified=bool(count))

    def ensures(self, model: ir.Model) -> None:
        assert_invariants(model)
