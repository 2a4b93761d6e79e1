"""InsertTokenQDQPass: per-token mixed-precision QDQ on the activation of every selected layer.

Before::   x ──► MatMul(W) ──► y
After::    x ──► TokenQDQ(hp_tokens, hp_bits, lp_bits) ──► MatMul(W) ──► y

Handles MatMul and Gemm with a constant 2-D weight and a float32 activation of rank >= 2
(see :mod:`passes.linear_layers`). Leaves alone: products of two activations, layers not
selected by the config's include/exclude, and nodes inside subgraphs (If/Loop bodies).
On its own this pass is the ``--transform none`` baseline; InsertSequenceTransformPass then
wraps the quantized layers in the sequence transform.
"""

from __future__ import annotations

import onnx_ir as ir

from stamp_onnx import ops
from stamp_onnx.config import StampConfig
from stamp_onnx.passes.invariants import assert_invariants
from stamp_onnx.passes.linear_layers import LAYER_KEY, PASS_KEY, find_linear_layers, unique_namer
from stamp_onnx.passes.report import LayerRecord, RewriteReport, SkippedLayer


class InsertTokenQDQPass(ir.passes.InPlacePass):
    def __init__(self, config: StampConfig, report: RewriteReport) -> None:
        super().__init__()
        self.config = config
        self.report = report

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
        spec = ops.TokenQDQSpec(self.config.hp_tokens, self.config.hp_bits, self.config.lp_bits)
        layers, skipped = find_linear_layers(model.graph)
        self.report.skipped.extend(skipped)
        fresh = unique_namer(model.graph)
        for layer in layers:
            node = layer.node
            reason = self.config.selects(layer.name, node.name or "")
            if reason is not None:
                self.report.skipped.append(SkippedLayer(layer.name, node.name or "", reason))
                continue
            x = node.inputs[0]
            assert x is not None
            qdq = ir.Node(
                ops.DOMAIN,
                ops.TOKEN_QDQ,
                [x],
                spec.attributes(),
                overload=spec.overload,
                name=fresh(f"{layer.name}/TokenQDQ"),
                metadata_props={PASS_KEY: type(self).__name__, LAYER_KEY: layer.name},
            )
            out = qdq.outputs[0]
            out.name, out.type, out.shape = fresh(f"{layer.name}/quantized_input"), x.type, x.shape
            model.graph.insert_before(node, qdq)
            node.replace_input_with(0, out)
            node.metadata_props[LAYER_KEY] = layer.name
            self.report.rewritten.append(
                LayerRecord(layer.name, node.name or "", node.op_type, layer.in_features, layer.out_features)
            )
        if self.report.rewritten:
            ops.add_function(model, spec)
        return ir.passes.PassResult(model, modified=bool(self.report.rewritten))

    def ensures(self, model: ir.Model) -> None:
        assert_invariants(model)
