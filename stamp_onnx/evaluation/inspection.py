"""What a rewritten model holds, per layer: transform, levels, bits per token group, average bits.

Everything is read back from the graph itself (:func:`stamp_onnx.graph.contract.read_layers`), not
from the recorded config, so ``inspect`` also tells the truth about hand-edited models.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import onnx_ir as ir

from stamp_onnx.config import AUTO_LEVELS, HAAR_TRANSFORMS, StampConfig, average_bits
from stamp_onnx.graph.contract import read_layers, recorded_config, recorded_skips
from stamp_onnx.graph.ops import SequenceTransformSpec


@dataclasses.dataclass(frozen=True)
class LayerSummary:
    name: str
    transform: str
    levels: int | str  # "auto": chosen by the ops from the sequence length at run time
    prefix_tokens: int
    hp_tokens: int
    hp_bits: int
    lp_bits: int
    average_bits: float
    feature_transform: str = "none"
    weight_format: str = "float"
    activation_shape: str = ""  # as found by the rewrite, e.g. "(batch, seq, 576)"
    token_axis: str = ""  # e.g. "1 (inferred)", "0 (given)"
    gemm: str = "float"  # "integer": the GEMM runs on integer codes (--target integer); "float": fake-quant
    levels_at_seq_len: int = 0  # the levels applied at the summary's seq_len (== levels unless "auto")
    mid: tuple[tuple[int, int], ...] = ()  # middle tiers (tokens, bits) between hp and lp (--bit-allocation energy)

    @property
    def bits_text(self) -> str:
        """The tiers' widths, hp first: '8/4', or '8/7/6/5/3' with middle tiers."""
        return "/".join(map(str, (self.hp_bits, *(bits for _, bits in self.mid), self.lp_bits)))

    @property
    def tiers_text(self) -> str:
        """Every tier as tokens x bits: '1x8 30x7 90x6 rest x3'."""
        return " ".join([f"{count}x{bits}" for count, bits in ((self.hp_tokens, self.hp_bits), *self.mid)] + [f"rest x{self.lp_bits}"])


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
        integer = sum(layer.gemm == "integer" for layer in self.layers)
        lines = [f"opset {self.opset}; {len(self.layers)} rewritten linear layers; "
                 f"{integer} integer GEMMs (uint8 x int8), {len(self.layers) - integer} float GEMMs (fake-quant)"]
        if self.config is not None:
            lines.append("recorded config: " + StampConfig.from_dict(self.config).label())
        if self.layers:
            width = max(len(layer.name) for layer in self.layers)
            lines.append(f"{'layer':<{width}}  transform  levels  prefix  hp tokens  bits hp/lp  avg bits @ s={self.seq_len}"
                         "  features  gemm     weights")
            for layer in self.layers:
                levels = str(layer.levels) if layer.transform in HAAR_TRANSFORMS else "-"
                if layer.levels == AUTO_LEVELS:
                    levels = f"auto {layer.levels_at_seq_len}"
                lines.append(
                    f"{layer.name:<{width}}  {layer.transform:<9}  {levels:>6}  {layer.prefix_tokens:>6}  {layer.hp_tokens:>9}  "
                    f"{layer.bits_text:>9}  {layer.average_bits:>8.3f}  "
                    f"{layer.feature_transform:<8}  {layer.gemm:<7}  {layer.weight_format}"
                )
            tiered = [layer for layer in self.layers if layer.mid]
            if tiered:
                lines.append("tiers (tokens x bits, in transformed-token order):")
                lines.extend(f"  {layer.name:<{width}}  {layer.tiers_text}" for layer in tiered)
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


def summarize(model: ir.Model, *, seq_len: int = 512) -> ModelSummary:
    counts: collections.Counter[str] = collections.Counter(
        f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type for node in model.graph.all_nodes()
    )
    layers = []
    for layer in read_layers(model):
        t, q = layer.transform, layer.qdq
        layers.append(
            LayerSummary(
                name=layer.name,
                transform=t.transform if t else "none",
                levels=(AUTO_LEVELS if t.auto else t.levels) if t else 0,
                levels_at_seq_len=_levels_at(t, seq_len),
                prefix_tokens=t.prefix_tokens if t else 0,
                hp_tokens=q.hp_tokens,
                hp_bits=q.hp_bits,
                lp_bits=q.lp_bits,
                average_bits=average_bits(q.hp_tokens, q.hp_bits, q.lp_bits, seq_len, q.mid),
                mid=q.mid,
                feature_transform=layer.feature_transform,
                weight_format=layer.weight_format,
                activation_shape=layer.activation_shape,
                token_axis=layer.token_axis,
                gemm="integer" if layer.integer else "float",
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


def _levels_at(spec: SequenceTransformSpec | None, seq_len: int) -> int:
    """The levels ``spec`` applies to ``seq_len`` tokens (0 when it has none, or haar2d finds no grid there)."""
    try:
        return spec.levels_for(seq_len) if spec is not None else 0
    except ValueError:
        return 0
