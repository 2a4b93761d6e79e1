"""Per-layer check of a rewritten model: each STaMP layer in ONNX Runtime vs PyTorch, same input.

End to end, the rewritten ONNX model and the PyTorch reference cannot agree bit for bit at
low precision: the float graphs differ by ~1e-7 relative (kernel summation order), which moves
a few values across a rounding boundary of the first quantizer; one 4-bit step is a large
change, and 30 layers amplify it. So the op-level agreement is checked per layer instead:
every rewritten layer's input x is read from the ONNX run itself, and

    ONNX:   y = L^-1 (Q(L x) W)       (the inverse SequenceTransform's output; Gemm C included)
    torch:  y = linear(stamp_activation(x), W)

are compared on identical x. Layers are found by their provenance metadata (LAYER_KEY on the
TokenQDQ node and on the MatMul/Gemm it feeds), not by value names.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from passes.linear_layers import LAYER_KEY
from stamp_onnx import ops, quant
from stamp_onnx.config import StampConfig
from stamp_onnx.errors import ValidationError
from stamp_onnx.reference import stamp_activation

logger = logging.getLogger(__name__)

_PROTOBUF_LIMIT = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class LayerTap:
    """Where one rewritten layer's input and output live in the graph."""

    layer: str
    module: str
    x: str
    y: str
    has_bias: bool


@dataclasses.dataclass(frozen=True)
class LayerDiff:
    layer: str
    max_abs: float
    ref_max: float
    sqnr_db: float


def find_taps(graph: onnx.GraphProto) -> list[LayerTap]:
    """One tap per TokenQDQ node that carries a layer name, in graph order."""
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    taps = []
    for node in graph.node:
        layer = _layer(node)
        if node.domain != ops.DOMAIN or node.op_type != ops.TOKEN_QDQ or layer is None:
            continue
        x = node.input[0]
        before = producer.get(x)
        if before is not None and _is_transform(before, inverse=False) and _layer(before) == layer:
            x = before.input[0]
        linear = [n for n in consumers.get(node.output[0], []) if n.op_type in ("MatMul", "Gemm")]
        if len(linear) != 1:
            raise ValidationError(f"TokenQDQ node {node.name!r} of layer {layer!r} feeds {len(linear)} MatMul/Gemm nodes, expected 1")
        y = linear[0].output[0]
        has_bias = linear[0].op_type == "Gemm" and len(linear[0].input) > 2 and bool(linear[0].input[2])
        after = [n for n in consumers.get(y, []) if _is_transform(n, inverse=True) and _layer(n) == layer]
        if after:
            y = after[0].output[0]
        taps.append(LayerTap(layer, re.sub(r"#\d+$", "", layer), x, y, has_bias))
    return taps


def per_layer_diffs(
    onnx_path: str | Path,
    module: torch.nn.Module,
    config: StampConfig,
    feeds: dict[str, np.ndarray],
) -> list[LayerDiff]:
    """Run the rewritten model once with every tap as an output; compare each layer with torch."""
    proto = onnx.load(str(onnx_path))
    taps = find_taps(proto.graph)
    if not taps:
        return []
    existing = {o.name for o in proto.graph.output}
    for name in dict.fromkeys(n for tap in taps for n in (tap.x, tap.y)):
        if name not in existing:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    if proto.ByteSize() > _PROTOBUF_LIMIT:
        raise ValidationError(f"{onnx_path} is over 2 GB: the per-layer check cannot rebuild it in memory")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(None, {k: v for k, v in feeds.items() if k in wanted}), strict=True))
    modules = dict(module.named_modules())
    diffs = []
    with torch.no_grad():
        for tap in taps:
            linear = modules.get(tap.module)
            if not isinstance(linear, torch.nn.Linear):
                raise ValidationError(f"layer {tap.layer!r} of {onnx_path} is not an nn.Linear of the PyTorch model")
            x = torch.from_numpy(values[tap.x])
            bias = linear.bias if tap.has_bias else None
            ref = torch.nn.functional.linear(stamp_activation(x, config), linear.weight, bias).numpy()
            got = values[tap.y]
            if got.shape != ref.shape:
                raise ValidationError(f"layer {tap.layer!r}: ONNX output {got.shape} vs PyTorch {ref.shape}")
            err = float(np.abs(ref.astype(np.float64) - got).max(initial=0.0))
            diffs.append(LayerDiff(tap.layer, err, float(np.abs(ref).max(initial=0.0)), quant.sqnr_db(ref, got)))
    logger.info("compared %d rewritten layers one by one", len(diffs))
    return diffs


def _layer(node: onnx.NodeProto) -> str | None:
    return next((p.value for p in node.metadata_props if p.key == LAYER_KEY), None)


def _is_transform(node: onnx.NodeProto, *, inverse: bool) -> bool:
    if node.domain != ops.DOMAIN or node.op_type != ops.SEQUENCE_TRANSFORM:
        return False
    flag = next((a.i for a in node.attribute if a.name == "inverse"), 0)
    return bool(flag) == inverse
