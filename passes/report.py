"""What the passes did, per layer: each pass returns its findings as a PassResult subclass
(:class:`OpsetResult`, :class:`LayerUpdates`, ``SelectResult``), the pipeline merges them into one
:class:`RewriteReport` (:meth:`RewriteReport.merge`), the CLI prints it, never by print()."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import onnx_ir as ir


@dataclasses.dataclass
class LayerRecord:
    """One rewritten linear layer."""

    name: str
    node: str
    op_type: str
    in_features: int
    out_features: int
    transform: str = "none"
    feature_transform: str = "none"
    weight_format: str = "float"  # e.g. "int4 per channel", "int4 block 32"
    token_axis: int = -2  # in the original activation's layout
    activation_shape: str = ""  # e.g. "(batch, seq, 576)"; "(batch*seq, 768) from (batch, seq, 768)" when traced


@dataclasses.dataclass(frozen=True)
class SkippedLayer:
    """A MatMul/Gemm left alone, and why."""

    name: str
    node: str
    reason: str
    linear: bool = True  # False: a MatMul of two activations, not a linear layer at all


class ReportsInto:
    """A PassResult that carries findings for the report."""

    def merge_into(self, report: RewriteReport) -> None:
        raise NotImplementedError


@dataclasses.dataclass
class OpsetResult(ir.passes.PassResult, ReportsInto):
    """ConvertOpsetPass: the default-domain opset before and after."""

    opset_from: int | None = None
    opset_to: int | None = None

    def merge_into(self, report: RewriteReport) -> None:
        report.opset_from, report.opset_to = self.opset_from, self.opset_to


@dataclasses.dataclass
class LayerUpdates(ir.passes.PassResult, ReportsInto):
    """What a pass set on each layer it changed: one :class:`LayerRecord` field, by layer name."""

    field: ClassVar[str]
    values: dict[str, str] = dataclasses.field(default_factory=dict)

    def merge_into(self, report: RewriteReport) -> None:
        records = {record.name: record for record in report.rewritten}
        for layer, value in self.values.items():
            setattr(records[layer], self.field, value)


class TransformResult(LayerUpdates):
    """InsertSequenceTransformPass: the sequence transform of each layer it wrapped."""

    field = "transform"


class FeatureResult(LayerUpdates):
    """RotateFeaturesPass, SmoothFeaturesPass: each layer's feature transform (and where it went)."""

    field = "feature_transform"


class WeightResult(LayerUpdates):
    """QuantizeWeightsPass: each layer's weight format."""

    field = "weight_format"


@dataclasses.dataclass
class RewriteReport:
    rewritten: list[LayerRecord] = dataclasses.field(default_factory=list)
    skipped: list[SkippedLayer] = dataclasses.field(default_factory=list)
    opset_from: int | None = None
    opset_to: int | None = None
    notes: list[str] = dataclasses.field(default_factory=list)  # e.g. "the model is already quantized (...)"

    def merge(self, result: ir.passes.PassResult) -> None:
        """Take in what a pass found (results that carry nothing for the report are ignored)."""
        if isinstance(result, ReportsInto):
            result.merge_into(self)

    @property
    def skipped_linear(self) -> list[SkippedLayer]:
        """The linear layers left alone (MatMuls of two activations are not linear layers)."""
        return [item for item in self.skipped if item.linear]

    def skip_summary(self, *, linear_only: bool = False) -> str:
        """'3 weight is not a constant; 1 matches exclude ...' (most frequent first)."""
        counts: dict[str, int] = {}
        for item in self.skipped_linear if linear_only else self.skipped:
            counts[item.reason] = counts.get(item.reason, 0) + 1
        return "; ".join(f"{n} {reason}" for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]))

    def to_dict(self) -> dict[str, object]:
        return {
            "rewritten": [dataclasses.asdict(r) for r in self.rewritten],
            "skipped": [dataclasses.asdict(s) for s in self.skipped],
            "opset_from": self.opset_from,
            "opset_to": self.opset_to,
            "notes": self.notes,
        }
