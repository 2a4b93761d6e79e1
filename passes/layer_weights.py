"""The constant weight of a linear layer in MatMul layout, (d_in, d_out), read and replaced.

Shared by the passes that change weights. A Gemm with transB=1 stores W^T; the helpers hide
that. Only initializers (or values with a constant) are read; the original initializer is left
in place for any other user (a tied embedding) and dropped when nothing uses it any more.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from stamp_onnx.errors import RewriteError
from stamp_onnx.graph.contract import is_transposed
from stamp_onnx.passes.constants import PURE_OPS, constant_array


def read_weight(node: ir.Node) -> np.ndarray:
    """W (d_in, d_out) of ``node`` as float32 (read from memory or external data)."""
    array = constant_array(node.inputs[1])
    if array is None:
        raise RewriteError(
            f"layer {node.name!r}: its weight is not a constant this pass can read; weight quantization "
            "and feature transforms need an initializer (re-export the model with constant folding)"
        )
    array = array.astype(np.float32)
    return array.T if is_transposed(node) else array


def stored(node: ir.Node, w: np.ndarray) -> np.ndarray:
    """``w`` (d_in, d_out) in the layout ``node`` stores its weight in."""
    return np.ascontiguousarray(w.T if is_transposed(node) else w)


def replace_input(graph: ir.Graph, node: ir.Node, index: int, new: ir.Value) -> None:
    """Point input ``index`` of ``node`` at ``new``; drop what fed the old input if nothing else uses it."""
    old = node.inputs[index]
    node.replace_input_with(index, new)
    drop_if_unused(graph, old)


def drop_if_unused(graph: ir.Graph, value: ir.Value | None) -> None:
    if value is None or value.uses() or value.is_graph_output():
        return
    if value.is_initializer() and value.name:
        owner = value.graph or graph
        owner.initializers.pop(value.name)
        if value in owner.inputs:  # IR < 4 lists initializers as graph inputs too
            owner.inputs.remove(value)
        return
    producer = value.producer()
    if producer is not None and (producer.op_type in PURE_OPS or producer.op_type == "Constant") and len(producer.outputs) == 1:
        inputs = list(producer.inputs)
        (producer.graph or graph).remove(producer, safe=True)
        for inner in inputs:
            drop_if_unused(graph, inner)


def add_initializer(graph: ir.Graph, name: str, tensor: ir.TensorProtocol) -> ir.Value:
    value = ir.Value(name=name, shape=ir.Shape(tensor.shape.numpy()), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value
