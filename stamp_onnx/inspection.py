"""What a rewritten model holds, per layer: transform, levels, bits per token group, average bits.

Everything is read back from the graph itself (node attributes and provenance metadata), not
from the recorded config, so ``inspect`` also tells the truth about hand-edited models.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import onnx_ir as ir

from stamp_onnx import ops
from stamp_onnx.passes.layer_weights import rewritten_layers
from stamp_onnx.passes.linear_layers import (
    ACTIVATION_SHAPE_KEY,
    LAYER_KEY,
    PASS_KEY,
    TOKEN_AXIS_KEY,
)
from stamp_onnx.passes.quantize_weights import METHOD_KEY
from stamp_onnx.passes.record_config import recorded_config, recorded_skips
from stamp_onnx.smoothing import SCALE_KEY


@dataclasses.dataclass(frozen=True)
class LayerSummary:
    name: str
    transform: str
    levels: int
    prefix_tokens: int
    hp_tokens: int
    hp_bits: int
    lp_bits: int
    average_bits: float
    feature_transform: str = "none"
    weight_format: str = "float"
    activation_shape: str = ""  # as found by the rewrite, e.g. "(batch, seq, 576)"
    token_axis: str = ""  # e.g. "1 (inferred)", "0 (given)"


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    layers: list[LayerSummary]
    op_counts: dict[str, int]
    functions: list[str]
    config: dict[str, Any] | None
    seq_len: int
    opset: int
    skipped: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # recorded by the rewrite: name, node, reason

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_text(self) -> str:
        lines = [f"opset {self.opset}; {len(self.layers)} rewritten linear layers"]
        if self.config is not None:
            lines.append("recorded config: " + ", ".join(f"{k}={v}" for k, v in sorted(self.config.items())))
        if self.layers:
            width = max(len(layer.name) for layer in self.layers)
            lines.append(f"{'layer':<{width}}  transform  levels  prefix  hp tokens  bits hp/lp  avg bits @ s={self.seq_len}"
                         "  features  weights")
            for layer in self.layers:
                levels = str(layer.levels) if layer.transform.startswith("haar") else "-"
                lines.append(
                    f"{layer.name:<{width}}  {layer.transform:<9}  {levels:>6}  {layer.prefix_tokens:>6}  {layer.hp_tokens:>9}  "
                    f"{layer.hp_bits:>4}/{layer.lp_bits:<4}  {layer.average_bits:>8.3f}  "
                    f"{layer.feature_transform:<8}  {layer.weight_format}"
                )
            lines.append("activations and token axes:")
            lines.extend(f"  {layer.name:<{width}}  {layer.activation_shape}  token axis {layer.token_axis}" for layer in self.layers)
        linear = [item for item in self.skipped if item.get("linear", True)]
        if linear:
            lines.append(f"skipped {len(linear)} linear layers:")
            lines.extend(f"  {item['name']}: {item['reason']}" for item in linear)
        products = len(self.skipped) - len(linear)
        if products:
            lines.append(f"left alone: {products} MatMuls of two activations (attention), not linear layers")
        lines.append("op counts: " + ", ".join(f"{op} {n}" for op, n in self.op_counts.items()))
        if self.functions:
            lines.append("model-local functions: " + ", ".join(self.functions))
        return "\n".join(lines)


def average_bits(hp_tokens: int, hp_bits: int, lp_bits: int, seq_len: int) -> float:
    """(k*hp + (s-k)*lp) / s with k = min(hp_tokens, s)."""
    k = min(hp_tokens, seq_len)
    return (k * hp_bits + (seq_len - k) * lp_bits) / seq_len


def summarize(model: ir.Model, *, seq_len: int = 512) -> ModelSummary:
    qdq: dict[str, ops.TokenQDQSpec] = {}
    transform: dict[str, ops.SequenceTransformSpec] = {}
    counts: collections.Counter[str] = collections.Counter()
    for node in model.graph.all_nodes():
        counts[f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type] += 1
        spec = ops.spec_from_node(node)
        layer = node.metadata_props.get(LAYER_KEY)
        if spec is None or layer is None:
            continue
        if isinstance(spec, ops.TransformQDQSpec):
            qdq[layer], transform[layer] = spec.qdq, spec.transform
        elif isinstance(spec, ops.TokenQDQSpec):
            qdq[layer] = spec
    features, weight_formats = _weight_side(model)
    linear_nodes = {layer: node for layer, node, _ in rewritten_layers(model.graph)}
    layers = []
    for name, q in qdq.items():
        t = transform.get(name)
        layers.append(
            LayerSummary(
                name=name,
                transform=t.transform if t else "none",
                levels=t.levels if t else 0,
                prefix_tokens=t.prefix_tokens if t else 0,
                hp_tokens=q.hp_tokens,
                hp_bits=q.hp_bits,
                lp_bits=q.lp_bits,
                average_bits=average_bits(q.hp_tokens, q.hp_bits, q.lp_bits, seq_len),
                feature_transform=features.get(name, "none"),
                weight_format=weight_formats.get(name, "float"),
                activation_shape=linear_nodes[name].metadata_props.get(ACTIVATION_SHAPE_KEY, "") if name in linear_nodes else "",
                token_axis=linear_nodes[name].metadata_props.get(TOKEN_AXIS_KEY, "") if name in linear_nodes else "",
            )
        )
    config = recorded_config(model)
    return ModelSummary(
        layers=layers,
        op_counts=dict(counts.most_common()),
        functions=sorted(f"{d}::{n}[{o}]" for d, n, o in model.functions),
        config=dataclasses.asdict(config) if config else None,
        seq_len=seq_len,
        opset=model.opset_imports.get("", 0),
        skipped=recorded_skips(model),
    )


def _weight_side(model: ir.Model) -> tuple[dict[str, str], dict[str, str]]:
    """Per layer: its feature transform and weight format, read from what feeds its quantizer and weight.

    A rotation can be shared by the layers that read the same activation, so it is found through
    each layer's quantizer input, not by the layer named in the rotation node's provenance.
    """
    features: dict[str, str] = {}
    formats: dict[str, str] = {}
    for layer, node, quantizer in rewritten_layers(model.graph):
        before = quantizer.inputs[0].producer() if quantizer.inputs[0] is not None else None
        made_by = before.metadata_props.get(PASS_KEY) if before is not None else None
        if made_by == "RotateFeaturesPass":
            features[layer] = "hadamard"
        elif SCALE_KEY in quantizer.metadata_props:  # s divides the activation: online, or folded upstream
            features[layer] = "smoothquant" + (" (online)" if made_by == "SmoothFeaturesPass" else " (folded)")
        dq = node.inputs[1].producer() if node.inputs[1] is not None else None
        if dq is not None and dq.metadata_props.get(PASS_KEY) == "QuantizeWeightsPass" and dq.inputs[0] is not None:
            block = dq.attributes.get("block_size")
            kind = f"block {block.as_int()}" if block is not None and block.as_int() else "per channel"
            method = dq.metadata_props.get(METHOD_KEY, "rtn")
            formats[layer] = f"{'int4' if dq.inputs[0].dtype == ir.DataType.INT4 else 'int8'} {kind}" + (
                "" if method == "rtn" else f" {method}")
    return features, formats
