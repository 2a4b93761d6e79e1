"""QuantizeWeightsPass: round-to-nearest quantization of each rewritten layer's weight.

Before::   ... ──► MatMul(x, W)
After::    ... ──► MatMul(x, DequantizeLinear(W_q, scale))

W_q is a signed integer initializer (INT4 for up to 4 bits, INT8 up to 8; the codes use
``weight_bits``), scale a float32 initializer per output channel (axis = the output axis) or
per block of ``weight_block`` input features (axis = the input axis, block_size). The math is
:func:`stamp_onnx.weights.quantize_weight`; a DequantizeLinear of the ONNX spec then gives
exactly its ``w_hat``. Runs after RotateFeaturesPass, so a rotated layer quantizes R^T W.
Does nothing for ``weight_bits=0``.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_ir as ir

from passes.layer_weights import (
    add_initializer,
    is_transposed,
    read_weight,
    replace_input,
    rewritten_layers,
    stored,
)
from passes.linear_layers import LAYER_KEY, PASS_KEY, unique_namer
from passes.report import RewriteReport
from stamp_onnx.config import StampConfig
from stamp_onnx.weights import quantize_weight


def weight_format(config: StampConfig) -> str:
    """'float', or e.g. 'int4 per channel' / 'int4 block 32'."""
    if not config.weight_bits:
        return "float"
    return f"int{config.weight_bits} " + (f"block {config.weight_block}" if config.weight_block else "per channel")


class QuantizeWeightsPass(ir.passes.InPlacePass):
    def __init__(self, config: StampConfig, report: RewriteReport) -> None:
        super().__init__()
        self.config = config
        self.report = report

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        c = self.config
        if not c.weight_bits:
            return ir.passes.PassResult(model, modified=False)
        graph = model.graph
        fresh = unique_namer(graph)
        storage, dtype = (ml_dtypes.int4, ir.DataType.INT4) if c.weight_bits <= 4 else (np.int8, ir.DataType.INT8)
        count = 0
        for layer, node, _ in rewritten_layers(graph):
            q, scale = quantize_weight(read_weight(node), c.weight_bits, c.weight_block)
            # stored layout: the input axis is 0 (1 when a Gemm stores W^T); the output axis the other
            input_axis = 1 if is_transposed(node) else 0
            q_stored = stored(node, q).astype(storage)
            scale_stored = stored(node, scale) if c.weight_block else scale
            axis = input_axis if c.weight_block else 1 - input_axis
            codes = add_initializer(graph, fresh(f"{layer}/weight_q"), ir.Tensor(q_stored, dtype=dtype))
            scales = add_initializer(graph, fresh(f"{layer}/weight_scale"), ir.tensor(scale_stored))
            attrs: dict[str, int] = {"axis": axis}
            if c.weight_block:
                attrs["block_size"] = c.weight_block
            dq = ir.Node("", "DequantizeLinear", [codes, scales], attributes=[ir.AttrInt64(k, v) for k, v in attrs.items()],
                         name=fresh(f"{layer}/WeightDequantize"),
                         metadata_props={PASS_KEY: type(self).__name__, LAYER_KEY: layer})
            w_hat = dq.outputs[0]
            w_hat.name = fresh(f"{layer}/dequantized_weight")
            w_hat.type = ir.TensorType(ir.DataType.FLOAT)
            w_hat.shape = ir.Shape(q_stored.shape)
            graph.insert_before(node, dq)
            replace_input(graph, node, 1, w_hat)
            self.report.layer(layer).weight_format = weight_format(c)
            count += 1
        return ir.passes.PassResult(model, modified=count > 0)
