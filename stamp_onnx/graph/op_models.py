"""One-node ONNX models of the ai.stamp ops: what the parity tests and the op benchmark run.

``single_op_model(spec)`` holds one node calling ``spec``'s op on an input ``x`` of rank
``rank`` (tokens on axis -2); with ``function_body=False`` the model carries no function, so
only a native kernel can run it.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from stamp_onnx.graph import ops

OPSET = 21


def single_op_model(
    spec: ops.Spec, rank: int = 3, *, with_transformed: bool = False, function_body: bool = True
) -> onnx.ModelProto:
    """Input ``x`` (float32, dynamic dims), outputs ``y`` and, with ``with_transformed``, TransformQDQ's ``t``
    (TokenQuantize and TransformQuantize: the codes ``c`` and the scales ``s``)."""
    if not 2 <= rank <= 4:
        raise ValueError(f"rank must be 2, 3 or 4, got {rank}")
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["b", "a", "s", "d"][-rank:]))
    if with_transformed and not isinstance(spec, ops.TransformQDQSpec):
        raise ValueError("only TransformQDQ has the output t")
    codes = isinstance(spec, ops.TokenQuantizeSpec)  # outputs c (uint8 codes) and s (per-token scales)
    node = ir.Node(
        ops.DOMAIN, ops.op_type(spec), [x], spec.attributes(), overload=spec.overload, name="op",
        num_outputs=2 if with_transformed or codes else 1,
    )
    for out, name in zip(node.outputs, ("c", "s") if codes else ("y", "t"), strict=False):
        out.name, out.type = name, ir.TensorType(ir.DataType.UINT8) if name == "c" else x.type
        out.shape = x.shape if name in ("y", "t") else None
    graph = ir.Graph([x], list(node.outputs), nodes=[node], opset_imports={"": OPSET, ops.DOMAIN: ops.DOMAIN_VERSION}, name="g")
    model = ir.Model(graph, ir_version=10)
    if function_body:
        if isinstance(spec, ops.TransformQDQSpec):
            function = spec.function(OPSET, with_transformed=with_transformed)
        else:
            function = spec.function(OPSET)
        model.functions[(ops.DOMAIN, ops.op_type(spec), spec.overload)] = function
    return ir.serde.serialize_model(model)
