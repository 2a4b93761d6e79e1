"""IntegerGemmPass: each rewritten layer computes its GEMM on integer codes (``--target integer``).

Before::   x ──► TokenQDQ / TransformQDQ ──► MatMul(·, DequantizeLinear(W_q, s_w)) ──► y
After::    x ──► TokenQuantize / TransformQuantize ──► C (uint8), S (..., s, 1)
                 ──► com.microsoft.MatMulIntegerToFloat(C, [W_q; Z], S, s_w, 128) ──► y

The quantizer keeps its attributes and its codes (:func:`stamp_onnx.core.quant.integer_codes`):
tokens of up to 7 bits are written around the shared zero point 128; 8-bit tokens keep their
own zero point in ``zero_point_columns`` extra columns of C, which the extra weight rows Z
(:func:`stamp_onnx.core.weights.zero_point_rows`, int8, summing to minus each column sum of
W_q) turn into the exact correction inside the integer GEMM. y then equals the fake-quant
layer's product up to float rounding. A Gemm's bias becomes an Add after the GEMM (onnxruntime
1.32 multiplies the op's own bias input by a per-token a_scale); a Gemm with transB stores W_q^T,
which is transposed back. Everything after the GEMM (the inverse transform,
a bias Add) stays as it is.

Runs last in the rewrite (after QuantizeWeightsPass). Requires per-channel weight codes of up to
8 bits and activations of 2-8 bits (the pipeline refuses other configs for this target).
onnxruntime's CPU provider runs MatMulIntegerToFloat with uint8 codes and a per-token scale of
shape (..., s, 1) (its schema documents a scalar or per-column scale; tests pin that it works).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from stamp_onnx.core import quant
from stamp_onnx.core.weights import zero_point_rows
from stamp_onnx.graph import ops
from stamp_onnx.graph.contract import (
    INTEGER_GEMM,
    INTEGER_GEMM_DOMAIN,
    LAYER_KEY,
    PASS_KEY,
    WEIGHT_FORMAT_KEY,
    is_transposed,
    rewritten_layers,
    weight_dequantizer,
    weight_format_of,
)
from stamp_onnx.passes.invariants import assert_invariants
from stamp_onnx.passes.layer_weights import add_initializer, drop_if_unused
from stamp_onnx.passes.linear_layers import reroute, unique_namer
from stamp_onnx.passes.report import WeightResult


class IntegerGemmPass(ir.passes.InPlacePass):
    def requires(self, model: ir.Model) -> None:
        layers = rewritten_layers(model.graph)
        if not layers:
            raise ir.passes.PreconditionError("no rewritten layer: run InsertTokenQDQPass first")
        for layer, node, quantizer in layers:
            dq = weight_dequantizer(node)
            if dq is None or "block_size" in dq.attributes or dq.inputs[0] is None or dq.inputs[0].const_value is None:
                raise ir.passes.PreconditionError(f"layer {layer!r}: the integer GEMM needs per-channel weight codes "
                                                  "(run QuantizeWeightsPass with weight_block 0 first)")
            qdq = ops.token_qdq_of(ops.spec_from_node(quantizer))
            if max(qdq.bits) > 8:
                raise ir.passes.PreconditionError(f"layer {layer!r}: integer codes take 2-8 activation bits, not {qdq}")

    def call(self, model: ir.Model) -> WeightResult:
        graph = model.graph
        fresh = unique_namer(graph)
        done: dict[str, str] = {}
        specs: set[ops.TokenQuantizeSpec] = set()
        for layer, node, quantizer in rewritten_layers(graph):
            owner = node.graph or graph
            provenance = {PASS_KEY: type(self).__name__, LAYER_KEY: layer}
            dq = weight_dequantizer(node)
            assert dq is not None
            codes_value, scale_value = dq.inputs[0], dq.inputs[1]
            assert codes_value is not None and scale_value is not None
            assert codes_value.const_value is not None and scale_value.const_value is not None
            codes = np.asarray(codes_value.const_value.numpy()).astype(np.int8)
            if is_transposed(node):
                codes = codes.T
            old = ops.spec_from_node(quantizer)
            qdq = ops.token_qdq_of(old)
            transform = old.transform if isinstance(old, ops.TransformQDQSpec) else None
            eight_bit = max(qdq.bits) > quant.FOLDED_MAX_BITS
            extra = zero_point_rows(codes) if eight_bit else np.zeros((0, codes.shape[1]), np.int8)
            spec = ops.TokenQuantizeSpec(qdq, extra.shape[0], transform)
            specs.add(spec)

            quantize = ir.Node(ops.DOMAIN, ops.op_type(spec), list(quantizer.inputs), spec.attributes(),
                               overload=spec.overload, num_outputs=2, name=fresh(f"{layer}/{ops.op_type(spec)}"),
                               metadata_props=dict(quantizer.metadata_props) | provenance)
            c, s = quantize.outputs
            c.name, c.type = fresh(f"{layer}/input_codes"), ir.TensorType(ir.DataType.UINT8)
            s.name, s.type = fresh(f"{layer}/input_scale"), ir.TensorType(ir.DataType.FLOAT)
            weight = add_initializer(owner, fresh(f"{layer}/weight_codes"), ir.tensor(np.concatenate([codes, extra])))
            weight_scale = add_initializer(owner, fresh(f"{layer}/weight_scale"),
                                           ir.tensor(np.asarray(scale_value.const_value.numpy(), np.float32)))
            zero_point = add_initializer(owner, fresh(f"{layer}/input_zero_point"),
                                         ir.tensor(np.array(quant.CODE_ZERO_POINT, np.uint8)))
            bias = node.inputs[2] if node.op_type == "Gemm" and len(node.inputs) > 2 else None
            inputs: list[ir.Value | None] = [c, weight, s, weight_scale, zero_point]
            label = weight_format_of(node)
            gemm = ir.Node(INTEGER_GEMM_DOMAIN, INTEGER_GEMM, inputs, name=fresh(f"{layer}/{INTEGER_GEMM}"),
                           metadata_props={k: v for k, v in node.metadata_props.items() if k != PASS_KEY}
                           | provenance | {WEIGHT_FORMAT_KEY: label})
            y = node.outputs[0]
            out = gemm.outputs[0]
            out.name, out.type, out.shape = fresh(f"{layer}/output"), y.type, y.shape
            new_nodes = [gemm]
            if bias is not None:  # not the op's bias input: onnxruntime scales it with a per-token a_scale
                add = ir.Node("", "Add", [out, bias], name=fresh(f"{layer}/bias"), metadata_props=dict(provenance))
                biased = add.outputs[0]
                biased.name, biased.type, biased.shape = fresh(f"{layer}/output_biased"), y.type, y.shape
                new_nodes.append(add)
                out = biased
            owner.insert_before(quantizer, quantize)
            owner.insert_after(node, new_nodes)
            reroute(y, out, skip=node)
            owner.remove(node, safe=True)
            if not dq.outputs[0].uses():
                (dq.graph or graph).remove(dq, safe=True)
                for value in (codes_value, scale_value):
                    drop_if_unused(graph, value)
            if not quantizer.outputs[0].uses():
                owner.remove(quantizer, safe=True)
            done[layer] = f"{label}, integer GEMM"
        for spec in sorted(specs, key=lambda item: (ops.op_type(item), item.overload)):
            ops.add_function(model, spec)
        model.opset_imports[INTEGER_GEMM_DOMAIN] = 1
        ops.drop_unused_functions(model)  # the fake-quant bodies
        return WeightResult(model, modified=bool(done), values=done)

    def ensures(self, model: ir.Model) -> None:
        assert_invariants(model)
