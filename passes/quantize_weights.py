"""QuantizeWeightsPass: integer codes for each rewritten layer's weight, chosen by a weight method.

Before::   ... ──► MatMul(x, W)
After::    ... ──► MatMul(x, DequantizeLinear(W_q, scale))

W_q is a signed integer initializer (INT4 for up to 4 bits, INT8 up to 8; the codes use
``weight_bits``), scale a float32 initializer per output channel (axis = the output axis) or
per block of ``weight_block`` input features (axis = the input axis, block_size). The math is
:func:`stamp_onnx.core.weights.quantize_weight`; a DequantizeLinear of the ONNX spec then gives
exactly its ``w_hat``. Runs after RotateFeaturesPass, so a rotated layer quantizes R^T W.
The pipeline runs it when ``weight_bits`` is set.

The weight method is a function given to the pass (the pipeline maps ``weight_method`` to it):
:func:`round_to_nearest`, or :func:`gptq`, which chooses the codes with :func:`stamp_onnx.core.gptq.gptq_quantize` instead,
from H = sum x^T x of what the layer's MatMul reads (its quantizer's output) on the calibration
data, measured by :func:`stamp_onnx.pipeline.calibrate_for` in the same rewrite with
round-to-nearest weights; that input is already rotated or smoothed, in the frame of the
weight being quantized. (A sequence transform L is orthonormal on the tokens, so the MatMul
input Q(L x) and the layer's effective input L^-1 Q(L x) have the same H.) The
DequantizeLinear records the method (:data:`stamp_onnx.graph.contract.METHOD_KEY`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import ml_dtypes
import numpy as np
import onnx_ir as ir

from stamp_onnx.core.gptq import gptq_quantize
from stamp_onnx.core.weights import quantize_weight
from stamp_onnx.errors import RewriteError
from stamp_onnx.graph.contract import (
    LAYER_KEY,
    METHOD_KEY,
    PASS_KEY,
    is_transposed,
    rewritten_layers,
    weight_format,
)
from stamp_onnx.passes.layer_weights import add_initializer, read_weight, replace_input, stored
from stamp_onnx.passes.linear_layers import unique_namer
from stamp_onnx.passes.report import WeightResult

# (layer name, linear node, W (d_in, d_out), bits, block) -> (codes, scales) as quantize_weight returns them
WeightQuantizer = Callable[[str, ir.Node, np.ndarray, int, int], tuple[np.ndarray, np.ndarray]]


def round_to_nearest(layer: str, node: ir.Node, w: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    return quantize_weight(w, bits, block)


def gptq(hessians: Mapping[str, np.ndarray]) -> WeightQuantizer:
    """GPTQ with H = sum x^T x of each layer's MatMul input (by value name), as calibration measured it."""

    def quantize(layer: str, node: ir.Node, w: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
        x = node.inputs[0]
        h = None if x is None else hessians.get(x.name or "")
        if h is None:
            raise RewriteError(f"layer {layer!r}: GPTQ needs H = sum x^T x of its input {getattr(x, 'name', None)!r} on the "
                               "calibration data (stamp_onnx.pipeline.calibrate_for measures it)")
        return gptq_quantize(w, h, bits, block)

    return quantize


class QuantizeWeightsPass(ir.passes.InPlacePass):
    """``bits`` (2-8) and ``block`` (0: per output channel) of the codes; ``method`` names the
    weight method that ``quantizer`` implements (recorded on each DequantizeLinear)."""

    def __init__(self, bits: int, block: int, method: str, quantizer: WeightQuantizer) -> None:
        super().__init__()
        self.bits, self.block, self.method, self.quantizer = bits, block, method, quantizer

    def requires(self, model: ir.Model) -> None:
        if not 2 <= self.bits <= 8:
            raise ir.passes.PreconditionError(f"weight bits {self.bits} are not in 2-8")
        if not rewritten_layers(model.graph):
            raise ir.passes.PreconditionError("no rewritten layer (a linear layer fed by its activation quantizer): "
                                              "run InsertTokenQDQPass first")

    def call(self, model: ir.Model) -> WeightResult:
        bits, block = self.bits, self.block
        graph = model.graph
        fresh = unique_namer(graph)
        storage, dtype = (ml_dtypes.int4, ir.DataType.INT4) if bits <= 4 else (np.int8, ir.DataType.INT8)
        label = weight_format(f"int{bits}", block, self.method)
        done: dict[str, str] = {}
        count = 0
        for layer, node, _ in rewritten_layers(graph):
            w = read_weight(node)
            q, scale = self.quantizer(layer, node, w, bits, block)
            # stored layout: the input axis is 0 (1 when a Gemm stores W^T); the output axis the other
            input_axis = 1 if is_transposed(node) else 0
            q_stored = stored(node, q).astype(storage)
            scale_stored = stored(node, scale) if block else scale
            axis = input_axis if block else 1 - input_axis
            owner = node.graph or graph  # a subgraph's layer keeps its weights there (onnxruntime's fusions look there)
            codes = add_initializer(owner, fresh(f"{layer}/weight_q"), ir.Tensor(q_stored, dtype=dtype))
            scales = add_initializer(owner, fresh(f"{layer}/weight_scale"), ir.tensor(scale_stored))
            attrs: dict[str, int] = {"axis": axis}
            if block:
                attrs["block_size"] = block
            dq = ir.Node("", "DequantizeLinear", [codes, scales], attributes=[ir.AttrInt64(k, v) for k, v in attrs.items()],
                         name=fresh(f"{layer}/WeightDequantize"),
                         metadata_props={PASS_KEY: type(self).__name__, LAYER_KEY: layer, METHOD_KEY: self.method})
            w_hat = dq.outputs[0]
            w_hat.name = fresh(f"{layer}/dequantized_weight")
            w_hat.type = ir.TensorType(ir.DataType.FLOAT)
            w_hat.shape = ir.Shape(q_stored.shape)
            owner.insert_before(node, dq)
            replace_input(graph, node, 1, w_hat)
            done[layer] = label
            count += 1
        return WeightResult(model, modified=count > 0, values=done)
