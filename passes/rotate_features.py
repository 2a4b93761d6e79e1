"""RotateFeaturesPass: rotate each rewritten layer's activation along the features, X -> X R.

Before::   x ──► TransformQDQ / TokenQDQ ──► MatMul(W)
After::    x ──► FeatureRotation(d) ──► TransformQDQ / TokenQDQ ──► MatMul(R^T W)

R is the orthonormal d x d matrix of :func:`stamp_onnx.core.weights.feature_rotation`, applied
online by the ``ai.stamp::FeatureRotation`` op (:mod:`stamp_onnx.graph.ops`: two small MatMuls on
x viewed as (m, p), d (p + m) multiply-adds per token instead of the d^2 of a dense x R).
Layers that read the same activation (q/k/v, gate/up) share one rotation node, so x R is
computed once. R^T W is a new initializer (the original stays if something else uses it, e.g.
a tied embedding). The activation is quantized after the rotation, so outlier channels are
spread over all features first; in float the layer is unchanged (X R R^T W = X W). Runs after
the quantizer insertion, before weight quantization (which then quantizes R^T W). The pipeline runs it for ``feature_transform="hadamard"``.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from stamp_onnx.core.weights import feature_rotation
from stamp_onnx.graph import ops
from stamp_onnx.graph.contract import LAYER_KEY, PASS_KEY, rewritten_layers
from stamp_onnx.passes.layer_weights import add_initializer, read_weight, replace_input, stored
from stamp_onnx.passes.linear_layers import unique_namer
from stamp_onnx.passes.report import FeatureResult


class RotateFeaturesPass(ir.passes.InPlacePass):
    def requires(self, model: ir.Model) -> None:
        if not rewritten_layers(model.graph):
            raise ir.passes.PreconditionError("no rewritten layer (a linear layer fed by its activation quantizer): "
                                              "run InsertTokenQDQPass first")

    def call(self, model: ir.Model) -> FeatureResult:
        graph = model.graph
        done: dict[str, str] = {}
        fresh = unique_namer(graph)
        rotated: dict[tuple[ir.Value, int], ir.Value] = {}  # (activation, graph) -> its rotation, shared by its layers
        count = 0
        for layer, node, quantizer in rewritten_layers(graph):
            w = read_weight(node)
            d = w.shape[0]
            folded = (feature_rotation(d).T @ w.astype(np.float64)).astype(np.float32)
            new_weight = add_initializer(node.graph or graph, fresh(f"{layer}/rotated_weight"), ir.tensor(stored(node, folded)))
            replace_input(graph, node, 1, new_weight)

            x = quantizer.inputs[0]
            assert x is not None
            key = (x, id(quantizer.graph))
            if key not in rotated:  # the first of its layers in graph order: before all their quantizers
                spec = ops.FeatureRotationSpec(d)
                rotate = ir.Node(ops.DOMAIN, ops.FEATURE_ROTATION, [x], spec.attributes(), overload=spec.overload,
                                 name=fresh(f"{layer}/FeatureRotation"),
                                 metadata_props={PASS_KEY: type(self).__name__, LAYER_KEY: layer})
                ops.add_function(model, spec)
                out = rotate.outputs[0]
                out.name, out.type, out.shape = fresh(f"{layer}/rotated_input"), x.type, x.shape
                (quantizer.graph or graph).insert_before(quantizer, rotate)
                rotated[key] = out
            quantizer.replace_input_with(0, rotated[key])
            done[layer] = "hadamard"
            count += 1
        return FeatureResult(model, modified=count > 0, values=done)
