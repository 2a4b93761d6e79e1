"""InlineStampOpsPass: lower every ai.stamp node into the standard ops of its function body.

For runtimes that run neither model-local functions nor custom ops (NPU execution providers
that look for explicit QuantizeLinear/DequantizeLinear pairs): each TransformQDQ, TokenQDQ
and SequenceTransform call is replaced by its body, with the call's provenance metadata on
every node it brings in, so the per-token QDQ pairs sit in the main graph. The ai.stamp
functions and the domain's opset import are removed. Numerics are unchanged: onnxruntime
inlines the same bodies when it loads a model that has them.

Leaves alone any other domain's functions.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import InlinePass, NameFixPass

from stamp_onnx.errors import RewriteError
from stamp_onnx.graph import ops
from stamp_onnx.graph.contract import LAYER_KEY
from stamp_onnx.passes.invariants import check_qdq_pairs


class InlineStampOpsPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if not any(key[0] == ops.DOMAIN for key in model.functions):
            return ir.passes.PassResult(model, modified=False)
        InlinePass(criteria=lambda function: function.domain == ops.DOMAIN)(model)
        for key in [k for k in model.functions if k[0] == ops.DOMAIN]:
            del model.functions[key]
        model.opset_imports.pop(ops.DOMAIN, None)
        NameFixPass()(model)
        return ir.passes.PassResult(model, modified=True)

    def ensures(self, model: ir.Model) -> None:
        left = [node.name for node in model.graph if node.domain == ops.DOMAIN]
        if left:
            raise RewriteError(f"ai.stamp nodes left after inlining: {left[:3]}")
        inlined = [node for node in model.graph if LAYER_KEY in node.metadata_props]
        problems = check_qdq_pairs(inlined, "the main graph")
        if problems:
            raise RewriteError(f"inlined graph breaks an invariant: {problems[0]}")
