"""The HTP's static QDQ rules (docs/htp.md), checked on an ONNX graph: what makes an op run in
float on the NPU without an error, found before the model ever reaches one."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from stamp_onnx.graph.contract import PASS_KEY
from stamp_onnx.targets.htp_units import PROVENANCE

_MOVES = {"Reshape", "Transpose", "Slice", "Concat"}


def rule_violations(model: onnx.ModelProto, *, only_units: bool = True) -> list[str]:
    """The HTP rules (docs/htp.md) that nodes break, as one line each; empty when none.

    Every compute node reads activations through a DequantizeLinear with constant scale and
    zero point and writes them through a QuantizeLinear (or into a graph output); its activation
    inputs and output share one type (uint8 or uint16); Reshape/Transpose/Slice/Concat keep their
    input's encoding exactly; weights are int8/int4 with zero point 0, per channel on axis 1.
    ``only_units``: check only the nodes a unit emitted (the QNN quantizer's own are left alone).
    """
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    problems: list[str] = []

    def encoding(qdq: onnx.NodeProto) -> tuple[Any, ...] | None:
        scale, zp = (inits.get(qdq.input[1]), inits.get(qdq.input[2]) if len(qdq.input) > 2 else None)
        if scale is None or zp is None:
            return None
        return (zp.dtype.name, scale.tobytes(), zp.tobytes())

    def ours(node: onnx.NodeProto) -> bool:
        return any(p.key == PASS_KEY and p.value == PROVENANCE for p in node.metadata_props)

    for node in graph.node:
        if only_units and not ours(node):
            continue
        label = f"{node.op_type} {node.name}"
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            if encoding(node) is None:
                problems.append(f"{label}: scale/zero point not constant initializers")
            src = producer.get(node.input[0])
            if node.op_type == "QuantizeLinear" and src is not None and src.op_type == "DequantizeLinear":
                before, after = encoding(src), encoding(node)
                if before and after and before[0] == after[0] and before != after:
                    problems.append(f"{label}: re-encodes within {after[0]} (onnxruntime folds that into the "
                                    "QuantizeLinear before it, whose op then changes encoding)")
            continue
        act_in: list[tuple[Any, ...] | None] = []
        for index, name in enumerate(node.input):
            if name in inits:
                if inits[name].dtype.kind == "f" and inits[name].size > 1:
                    problems.append(f"{label}: float constant input {name}")
                continue
            src = producer.get(name)
            if src is None or src.op_type != "DequantizeLinear":
                problems.append(f"{label}: input {name} is not dequantized from a static QDQ")
                continue
            if src.input[0] in inits and node.op_type in ("MatMul", "Gemm") and index == 1:  # a weight
                codes = inits[src.input[0]]
                zp = inits.get(src.input[2]) if len(src.input) > 2 else None
                axis = next((a.i for a in src.attribute if a.name == "axis"), 1)
                trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
                want = 0 if trans_b else 1  # the output channels
                if codes.dtype.name not in ("int8", "int4") or zp is None or np.any(zp != 0) or (codes.ndim == 2 and axis != want):
                    problems.append(f"{label}: weight {src.input[0]} is not int8/int4 symmetric per output channel")
                continue
            act_in.append(encoding(src))
        outs = []
        for name in node.output:
            users = consumers.get(name, [])
            if name in outputs and node.op_type == "Identity":
                continue
            if not users or any(u.op_type != "QuantizeLinear" for u in users):
                problems.append(f"{label}: output {name} is not quantized")
                continue
            outs += [encoding(u) for u in users]
        kinds = {e[0] for e in act_in + outs if e is not None}
        if len(kinds) > 1:
            problems.append(f"{label}: mixes activation types {sorted(kinds)}")
        if node.op_type in _MOVES and len({e for e in act_in + outs}) > 1:
            problems.append(f"{label}: changes the encoding (the HTP then runs it in float)")
    return problems
