"""Finding the linear layers of a graph: MatMul/Gemm with a constant 2-D weight.

A linear layer here is ``y = x W (+ b)`` where W is a constant (:mod:`stamp_onnx.passes.constants`),
anywhere in the model (If/Loop/Scan bodies included). MatMuls of two activations (attention
scores, attention x values) are reported as skipped, as not linear layers; linear layers that
cannot be rewritten (a weight already quantized, a com.microsoft fused op) are reported with
the reason. Where the tokens are is decided later, per layer (:mod:`stamp_onnx.passes.token_axis`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import onnx_ir as ir

from stamp_onnx.core.naming import counter_namer, layer_name_from_metadata, numbered_layer_name
from stamp_onnx.graph.contract import LINEAR_OPS
from stamp_onnx.passes.constants import is_constant
from stamp_onnx.passes.report import SkippedLayer

# com.microsoft ops that hold linear layers inside (onnxruntime's transformer optimizer writes them)
FUSED_OPS = frozenset({
    "Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention", "PackedMultiHeadAttention",
    "DecoderAttention", "DecoderMaskedMultiHeadAttention", "DecoderMaskedSelfAttention", "SparseAttention",
    "LongformerAttention", "FusedMatMul", "FusedGemm", "QAttention",
})
# ops of a model that is already quantized
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul", "MatMulNBits",
    "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm", "QLinearConv", "ConvInteger", "MatMulBnb4", "MatMulFpQ4",
})
# linear ops that are already integer: listed as skipped layers
_QUANTIZED_LINEAR_OPS = frozenset({"MatMulInteger", "QLinearMatMul", "MatMulNBits", "MatMulIntegerToFloat",
                                   "DynamicQuantizeMatMul", "QGemm", "MatMulBnb4", "MatMulFpQ4"})


@dataclasses.dataclass(frozen=True)
class LinearLayer:
    name: str
    node: ir.Node
    in_features: int
    out_features: int


def find_linear_layers(graph: ir.Graph) -> tuple[list[LinearLayer], list[SkippedLayer]]:
    """Every MatMul/Gemm of the model (subgraphs included), split into linear layers and skipped
    nodes; fused and already integer linear ops are listed as skipped linear layers."""
    layers: list[LinearLayer] = []
    skipped: list[SkippedLayer] = []
    seen: dict[str, int] = {}
    for node in graph.all_nodes():
        standard = node.domain in ("", "ai.onnx")
        if node.op_type in FUSED_OPS and node.domain == "com.microsoft":
            skipped.append(SkippedLayer(node.name or node.op_type, node.name or "", f"not rewritten: fused op {node.domain}.{node.op_type}"))
            continue
        if node.op_type in _QUANTIZED_LINEAR_OPS:
            skipped.append(SkippedLayer(node.name or node.op_type, node.name or "", f"already quantized ({node.op_type})"))
            continue
        if node.op_type not in LINEAR_OPS or not standard:
            continue
        base = layer_name_from_metadata(node.metadata_props, node.name or node.outputs[0].name or "")
        seen[base] = seen.get(base, 0) + 1
        name = numbered_layer_name(base, seen[base])
        reason, shape = _check(node)
        if reason is not None:
            linear = not reason.startswith(NOT_LINEAR)
            skipped.append(SkippedLayer(name, node.name or "", reason, linear=linear))
        else:
            assert shape is not None
            layers.append(LinearLayer(name, node, *shape))
    return layers, skipped


NOT_LINEAR = "not a linear layer"


def _check(node: ir.Node) -> tuple[str | None, tuple[int, int] | None]:
    x, w = node.inputs[0], node.inputs[1]
    for value in (x, w):
        producer = None if value is None else value.producer()
        if producer is not None and producer.op_type == "DequantizeLinear":
            return "already quantized (an input comes from DequantizeLinear)", None
    if not is_constant(w):
        return f"{NOT_LINEAR}: the weight is not a constant (a product of two activations, e.g. attention)", None
    assert x is not None and w is not None
    if w.shape is None or len(w.shape) != 2:
        return f"weight has rank {None if w.shape is None else len(w.shape)}, expected 2", None
    dims = [w.shape[0], w.shape[1]]
    if node.op_type == "Gemm":
        attrs = node.attributes
        if attrs.get("transA") is not None and attrs["transA"].as_int() != 0:
            return "Gemm with transA=1 has tokens on axis -1", None
        beta = attrs["beta"].as_float() if attrs.get("beta") is not None else 1.0
        if len(node.inputs) > 2 and node.inputs[2] is not None and beta != 1.0:
            return f"Gemm with a bias and beta={beta} is not supported", None
        alpha = attrs["alpha"].as_float() if attrs.get("alpha") is not None else 1.0
        if alpha != 1.0:
            return f"Gemm with alpha={alpha} is not supported", None
        if attrs.get("transB") is not None and attrs["transB"].as_int() != 0:
            dims.reverse()
    d_in, d_out = dims
    if not isinstance(d_in, int) or not isinstance(d_out, int):
        return "weight shape is not static", None
    return None, (d_in, d_out)


def unique_namer(graph: ir.Graph) -> Callable[[str], str]:
    """A function giving value names not yet used anywhere in the model of ``graph`` (base, base_1, ...)."""
    used = {v.name for v in graph.inputs} | set(graph.initializers)
    for node in graph.all_nodes():
        used.update(v.name for v in node.outputs if v.name)
        for sub in node.attributes.values():
            if sub.type == ir.AttributeType.GRAPH:
                used.update(v.name for v in sub.as_graph().inputs)
            elif sub.type == ir.AttributeType.GRAPHS:
                used.update(v.name for g in sub.as_graphs() for v in g.inputs)
    return counter_namer(name for name in used if name)


def reroute(old: ir.Value, new: ir.Value, *, skip: ir.Node) -> None:
    """Point every consumer of ``old`` (but ``skip``) and any graph output at ``new``; a graph
    output keeps its name, so the model's interface is unchanged.

    Not ``old.replace_all_uses_with(new, replace_graph_outputs=True)``: ``skip`` (the node that
    makes ``new`` from ``old``) must keep reading ``old``, and the output's name must move to ``new``."""
    for user, index in list(old.uses()):
        if user is not skip:
            user.replace_input_with(index, new)
    graph = old.graph
    if graph is not None and old.is_graph_output():
        name = old.name
        old.name = f"{name}/before_rewrite"
        new.name = name
        for i, out in enumerate(graph.outputs):
            if out is old:
                graph.outputs[i] = new
