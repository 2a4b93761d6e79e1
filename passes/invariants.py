"""The executable graph invariants of a rewritten model, run by tests and by pass ensures().

1. Every ai.stamp node has a function (domain, name, overload) in the model, and the domain
   has an opset import.
2. Every ai.stamp node carries provenance: which pass inserted it, for which layer.
3. A TokenQDQ or TransformQDQ output feeds only the activation input of MatMul/Gemm nodes; a
   TokenQuantize or TransformQuantize (``--target integer``) feeds its codes only to input 0 and
   its scales only to input 2 (a_scale) of integer GEMMs (com.microsoft.MatMulIntegerToFloat).
4. The output of a layer fed by TransformQDQ or TransformQuantize feeds exactly one inverse
   SequenceTransform with the same transform attributes; no forward SequenceTransform is left
   outside them.
5. Inside every function body, each QuantizeLinear has per-token (axis 0, one value per row)
   parameters and feeds only DequantizeLinear nodes that use the same scale and zero point
   (but in TokenQuantize and TransformQuantize, whose codes are their output).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import onnx_ir as ir

from stamp_onnx.errors import RewriteError
from stamp_onnx.graph import ops
from stamp_onnx.graph.contract import LAYER_KEY, LINEAR_OPS, PASS_KEY, is_integer_gemm


def find_violations(model: ir.Model) -> list[str]:
    problems: list[str] = []
    uses_domain = False
    for node in model.graph.all_nodes():
        if node.domain != ops.DOMAIN:
            continue
        uses_domain = True
        label = f"node {node.name!r} ({node.op_type})"
        if (node.domain, node.op_type, node.overload) not in model.functions:
            problems.append(f"{label}: no function {node.op_type}/{node.overload!r} in the model")
        if PASS_KEY not in node.metadata_props or LAYER_KEY not in node.metadata_props:
            problems.append(f"{label}: missing provenance metadata ({PASS_KEY}, {LAYER_KEY})")
        spec = ops.spec_from_node(node)
        consumers = [(user, index) for user, index in node.outputs[0].uses()]
        if isinstance(spec, ops.TokenQDQSpec | ops.TransformQDQSpec):
            for user, index in consumers:
                if user.op_type not in LINEAR_OPS or index != 0:
                    problems.append(f"{label}: feeds {user.op_type} {user.name!r} input {index}, not a linear layer's activation")
        if isinstance(spec, ops.TokenQuantizeSpec):
            for port, wanted in ((0, 0), (1, 2)):
                for user, index in node.outputs[port].uses():
                    if not is_integer_gemm(user) or index != wanted:
                        problems.append(f"{label}: output {port} feeds {user.op_type} {user.name!r} input {index}, "
                                        f"not input {wanted} of an integer GEMM")
            if spec.transform is not None:
                problems.extend(_check_inverse(label, spec.transform, node))
        if isinstance(spec, ops.TransformQDQSpec):
            problems.extend(_check_inverse(label, spec.transform, node))
        elif isinstance(spec, ops.SequenceTransformSpec) and not spec.inverse:
            problems.append(f"{label}: a forward transform outside TransformQDQ")
    if uses_domain and ops.DOMAIN not in model.opset_imports:
        problems.append(f"the model uses {ops.DOMAIN} ops but has no opset import for it")
    for function in model.functions.values():
        problems.extend(_check_function(function))
    return problems


def assert_invariants(model: ir.Model) -> None:
    problems = find_violations(model)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise RewriteError(f"rewritten graph breaks an invariant: {problems[0]}{more}")


def _check_inverse(label: str, spec: ops.SequenceTransformSpec, qdq: ir.Node) -> list[str]:
    problems = []
    wanted = dataclasses.replace(spec, inverse=True)
    for linear, _ in qdq.outputs[0].uses():
        inverses = [user for user, _ in linear.outputs[0].uses() if ops.spec_from_node(user) == wanted]
        if len(inverses) != 1 or len(linear.outputs[0].uses()) != 1:
            problems.append(f"{label}: layer {linear.name!r} output must feed exactly one matching inverse transform")
    return problems


def _check_function(function: ir.Function) -> list[str]:
    codes = function.domain == ops.DOMAIN and function.name in ops.CODE_QUANTIZERS  # its codes are its output
    return check_qdq_pairs(function, f"function {function.name}/{function.overload!r}", paired=not codes)


def check_qdq_pairs(nodes: Iterable[ir.Node], where: str, *, paired: bool = True) -> list[str]:
    """Every QuantizeLinear is per-token and (``paired``) feeds only DequantizeLinear nodes with its own parameters."""
    problems = []
    for node in nodes:
        if node.op_type != "QuantizeLinear":
            continue
        axis = node.attributes.get("axis")
        if axis is None or axis.as_int() != 0 or node.attributes.get("block_size") is not None:
            problems.append(f"{where}: QuantizeLinear {node.name!r} is not per-token (axis 0, no blocks)")
        if not paired:
            continue
        for user, _ in node.outputs[0].uses():
            same_params = list(user.inputs[1:3]) == list(node.inputs[1:3])
            if user.op_type != "DequantizeLinear" or not same_params:
                problems.append(f"{where}: QuantizeLinear {node.name!r} feeds {user.op_type} {user.name!r}, not its own DequantizeLinear")
    return problems
