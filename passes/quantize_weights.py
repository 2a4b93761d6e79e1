"""QuantizeWeightsPass: round-to-nearest quantization of each rewritten layer's weight.

Before::   ... ──► MatMul(x, W)
After::    ... ──► MatMul(x, DequantizeLinear(W_q, scale))

W_q is a signed integer initializer (INT4 for up to 4 bits, INT8 up to 8; the codes use
``weight_bits``), scale a float32 initializer per output channel (axis = the output axis) or
per block of ``weight_block`` input features (axis = the input axis, block_size). The math is
:func:`stamp_onnx.core.weights.quantize_weight`; a DequantizeLinear of the ONNX spec then gives
exactly its ``w_hat``. Runs after RotateFeaturesPass, so a rotated layer quantizes R^T W.
Does nothing for ``weight_bits=0``.

``weight_method="gptq"`` chooses the codes with :func:`stamp_onnx.core.gptq.gptq_quantize` instead,
from H = sum x^T x of what the layer's MatMul reads (its quantizer's output) on the calibration
data, measured by :func:`stamp_onnx.pipeline.calibrate_for` in the same rewrite with
round-to-nearest weights; that input is already rotated or smoothed, in the frame of the
weight being quantized. (A sequence transform L is orthonormal on the tokens, so the MatMul
input Q(L x) and the layer's effective input L^-1 Q(L x) have the same H.) The
DequantizeLinear records the method (:data:`stamp_onnx.graph.contract.METHOD_KEY`).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_ir as ir

from stamp_onnx.config import StampConfig
from stamp_onnx.core.gptq import gptq_quantize
from stamp_onnx.core.weights import quantize_weight
from stamp_onnx.errors import RewriteError
from stamp_onnx.graph.calibration import Calibration
from stamp_onnx.graph.contract import (
    LAYER_KEY,
    METHOD_KEY,
    PASS_KEY,
    configured_weight_format,
    is_transposed,
    rewritten_layers,
)
from stamp_onnx.passes.layer_weights import add_initializer, read_weight, replace_input, stored
from stamp_onnx.passes.linear_layers import unique_namer
from stamp_onnx.passes.report import RewriteReport


class QuantizeWeightsPass(ir.passes.InPlacePass):
    def __init__(self, config: StampConfig, report: RewriteReport, calibration: Calibration | None = None) -> None:
        super().__init__()
        self.config = config
        self.report = report
        self.calibration = calibration

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        c = self.config
        if not c.weight_bits:
            return ir.passes.PassResult(model, modified=False)
        graph = model.graph
        fresh = unique_namer(graph)
        storage, dtype = (ml_dtypes.int4, ir.DataType.INT4) if c.weight_bits <= 4 else (np.int8, ir.DataType.INT8)
        count = 0
        for layer, node, _ in rewritten_layers(graph):
            w = read_weight(node)
            if c.weight_method == "gptq":
                q, scale = gptq_quantize(w, self._hessian(layer, node), c.weight_bits, c.weight_block)
            else:
                q, scale = quantize_weight(w, c.weight_bits, c.weight_block)
            # stored layout: the input axis is 0 (1 when a Gemm stores W^T); the output axis the other
            input_axis = 1 if is_transposed(node) else 0
            q_stored = stored(node, q).astype(storage)
            scale_stored = stored(node, scale) if c.weight_block else scale
            axis = input_axis if c.weight_block else 1 - input_axis
            owner = node.graph or graph  # a subgraph's layer keeps its weights there (onnxruntime's fusions look there)
            codes = add_initializer(owner, fresh(f"{layer}/weight_q"), ir.Tensor(q_stored, dtype=dtype))
            scales = add_initializer(owner, fresh(f"{layer}/weight_scale"), ir.tensor(scale_stored))
            attrs: dict[str, int] = {"axis": axis}
            if c.weight_block:
                attrs["block_size"] = c.weight_block
            dq = ir.Node("", "DequantizeLinear", [codes, scales], attributes=[ir.AttrInt64(k, v) for k, v in attrs.items()],
                         name=fresh(f"{layer}/WeightDequantize"),
                         metadata_props={PASS_KEY: type(self).__name__, LAYER_KEY: layer, METHOD_KEY: c.weight_method})
            w_hat = dq.outputs[0]
            w_hat.name = fresh(f"{layer}/dequantized_weight")
            w_hat.type = ir.TensorType(ir.DataType.FLOAT)
            w_hat.shape = ir.Shape(q_stored.shape)
            owner.insert_before(node, dq)
            replace_input(graph, node, 1, w_hat)
            self.report.layer(layer).weight_format = configured_weight_format(c)
            count += 1
        return ir.passes.PassResult(model, modified=count > 0)

    def _hessian(self, layer: str, node: ir.Node) -> np.ndarray:
        """H of what the layer's MatMul reads, as measured on the calibration data."""
        x = node.inputs[0]
        h = None if self.calibration is None or x is None else self.calibration.hessian.get(x.name or "")
        if h is None:
            raise RewriteError(f"layer {layer!r}: GPTQ needs H = sum x^T x of its input {getattr(x, 'name', None)!r} on the "
                               "calibration data (stamp_onnx.pipeline.calibrate_for measures it)")
        return h
