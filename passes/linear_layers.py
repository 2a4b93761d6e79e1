"""Finding the linear layers of a graph: MatMul/Gemm with a constant 2-D weight and a token axis.

A linear layer here is ``y = x W (+ b)`` where W is a constant (an initializer, a Constant
node, or a Transpose of either) and x has rank >= 2 with the tokens on axis -2. MatMuls of two
activations (attention scores, attention x values) are reported as skipped, with the reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import onnx_ir as ir

from stamp_onnx.naming import layer_name_from_metadata, numbered_layer_name
from stamp_onnx.passes.report import SkippedLayer

LINEAR_OPS = ("MatMul", "Gemm")
LAYER_KEY = "stamp_onnx.layer"
PASS_KEY = "stamp_onnx.pass"


@dataclasses.dataclass(frozen=True)
class LinearLayer:
    name: str
    node: ir.Node
    in_features: int
    out_features: int


def is_constant(value: ir.Value | None) -> bool:
    """True for initializers, Constant outputs and Transposes of those."""
    if value is None:
        return False
    if value.is_initializer() or value.const_value is not None:
        return True
    producer = value.producer()
    if producer is None:
        return False
    if producer.op_type == "Constant" and producer.domain in ("", "ai.onnx"):
        return True
    return producer.op_type == "Transpose" and is_constant(producer.inputs[0])


def find_linear_layers(graph: ir.Graph) -> tuple[list[LinearLayer], list[SkippedLayer]]:
    """Every MatMul/Gemm of the main graph, split into linear layers and skipped nodes."""
    layers: list[LinearLayer] = []
    skipped: list[SkippedLayer] = []
    seen: dict[str, int] = {}
    for node in graph:
        if node.op_type not in LINEAR_OPS or node.domain not in ("", "ai.onnx"):
            continue
        base = layer_name_from_metadata(node.metadata_props, node.name or node.outputs[0].name or "")
        seen[base] = seen.get(base, 0) + 1
        name = numbered_layer_name(base, seen[base])
        reason, shape = _check(node)
        if reason is not None:
            skipped.append(SkippedLayer(name, node.name or "", reason))
        else:
            assert shape is not None
            layers.append(LinearLayer(name, node, *shape))
    return layers, skipped


def _check(node: ir.Node) -> tuple[str | None, tuple[int, int] | None]:
    x, w = node.inputs[0], node.inputs[1]
    if not is_constant(w):
        return "weight is not a constant (a product of two activations, e.g. attention)", None
    assert x is not None and w is not None
    if w.shape is None or len(w.shape) != 2:
        return f"weight has rank {None if w.shape is None else len(w.shape)}, expected 2", None
    if x.shape is None:
        return "activation rank is unknown (run shape inference or re-export with shapes)", None
    if len(x.shape) < 2:
        return f"activation has rank {len(x.shape)}: no token axis", None
    if x.dtype != ir.DataType.FLOAT:
        return f"activation dtype is {x.dtype}, only float32 is supported", None
    dims = [w.shape[0], w.shape[1]]
    if node.op_type == "Gemm":
        attrs = node.attributes
        if attrs.get("transA") is not None and attrs["transA"].as_int() != 0:
            return "Gemm with transA=1 has tokens on axis -1", None
        beta = attrs["beta"].as_float() if attrs.get("beta") is not None else 1.0
        if len(node.inputs) > 2 and node.inputs[2] is not None and beta != 1.0:
            return f"Gemm with a bias and beta={beta} is not supported", None
        if attrs.get("transB") is not None and attrs["transB"].as_int() != 0:
            dims.reverse()
    d_in, d_out = dims
    if not isinstance(d_in, int) or not isinstance(d_out, int):
        return "weight shape is not static", None
    return None, (d_in, d_out)


def unique_namer(graph: ir.Graph) -> Callable[[str], str]:
    """A function giving value names not yet used in ``graph`` (base, base_1, ...)."""
    used = {v.name for v in graph.inputs} | set(graph.initializers)
    for node in graph:
        used.update(v.name for v in node.outputs if v.name)

    def fresh(base: str) -> str:
        name, i = base, 0
        while name in used:
            i += 1
            name = f"{base}_{i}"
        used.add(name)
        return name

    return fresh
