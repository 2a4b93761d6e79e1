"""Constant values of a graph: what a linear layer's weight may be, and reading it.

A weight is constant when it is an initializer, a Constant node's output, or the output of a
pure op whose inputs are all constant: ``Transpose(W)`` (a Gemm-less exporter's W^T),
``Identity(W)`` (torch.onnx's legacy exporter shares tied weights that way), ``Cast``,
``Reshape``/``Squeeze``/``Unsqueeze``/``Flatten``, ``Slice`` (nn.MultiheadAttention's packed
q/k/v projection), ``Gather``/``Concat``. ``DequantizeLinear`` is deliberately not pure here:
a weight behind it is already quantized and the layer is reported as such.

An initializer that a model of IR version < 4 also lists as a graph input counts as a constant:
onnxruntime uses the initializer unless the caller feeds that input, which nobody does for
weights; a rewrite that replaces the weight (weight quantization, feature transforms) makes a
fed value unused, which docs/design.md states.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.reference
import onnx_ir as ir

PURE_OPS = frozenset(
    {"Identity", "Transpose", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Gather", "Concat"}
)


def is_constant(value: ir.Value | None) -> bool:
    """True when ``value`` can be computed from initializers and Constant nodes alone (no data is read)."""
    if value is None:
        return False
    if value.is_initializer() or value.const_value is not None:
        return True
    producer = value.producer()
    if producer is None or producer.domain not in ("", "ai.onnx"):
        return False
    if producer.op_type == "Constant":
        return True
    return producer.op_type in PURE_OPS and all(v is None or is_constant(v) for v in producer.inputs)


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The array of a constant ``value`` (see :func:`is_constant`), or None when it is not one."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)  # an initializer or a Constant node's output
    if tensor is not None:
        return tensor.numpy()
    producer = value.producer()
    if producer is None or producer.domain not in ("", "ai.onnx") or not is_constant(value):
        return None
    if producer.op_type == "Constant":
        return None  # a Constant node of a form get_const_tensor does not read
    inputs = [None if v is None else constant_array(v) for v in producer.inputs]
    if producer.op_type == "Identity":
        return inputs[0]
    if producer.op_type == "Transpose":
        perm = producer.attributes.get("perm")
        assert inputs[0] is not None
        return np.transpose(inputs[0], None if perm is None else perm.as_ints())
    return _evaluate(producer, inputs)[producer.outputs.index(value)]


def channel_constant(value: ir.Value | None, d: int) -> np.ndarray | None:
    """The float32 initializer ``value`` when it holds d numbers along the last axis only (a per-channel
    scale that SmoothQuant can fold its s into); None otherwise. Only initializers: a new one replaces it."""
    if value is None or value.const_value is None or value.dtype != ir.DataType.FLOAT:
        return None
    array = value.const_value.numpy()
    if array.size != d or array.shape[-1:] != (d,):
        return None
    return array


def _evaluate(node: ir.Node, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
    """Run one standard node on constant inputs with onnx's reference evaluator."""
    names = [f"in{i}" if array is not None else "" for i, array in enumerate(inputs)]
    outputs = [f"out{i}" for i in range(len(node.outputs))]
    proto = onnx.helper.make_node(node.op_type, names, outputs)
    proto.attribute.extend(ir.serde.serialize_attribute(attr) for attr in node.attributes.values())
    opset = node.graph.opset_imports.get("", 21) if node.graph is not None else 21
    graph = onnx.helper.make_graph(
        [proto], "constant", [onnx.helper.make_tensor_value_info(n, 0, None) for n in names if n],
        [onnx.helper.make_tensor_value_info(n, 0, None) for n in outputs],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    feeds = {n: array for n, array in zip(names, inputs, strict=True) if n}
    return list(onnx.reference.ReferenceEvaluator(model).run(None, feeds))
