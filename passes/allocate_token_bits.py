"""AllocateTokenBitsPass: each layer's transformed tokens get widths from their calibrated energy.

Before::   x ──► TransformQDQ(L; K tokens at hp_bits, the rest at lp_bits) ──► MatMul(W)
After::    x ──► TransformQDQ(L; tiers, e.g. 1 x 8 | 30 x 7 | 90 x 6 | ... | rest x 3 bits) ──► MatMul(W)

The widths come from :func:`stamp_onnx.core.allocation.allocate_widths`: the layer's mean
energy per transformed token, measured on calibration data (``energy``, by layer name), a
budget of ``avg_bits`` bits per token at the calibration length, widths from 2 to
``max_bits``, the transform's prefix tokens at ``max_bits``. The widths are non-increasing, so
each width is one contiguous tier: the quantizer's hp tier, middle tiers and lp tier
(TokenQDQ's mid_tokens / mid_bits). Tokens past the calibration length take the last width.

Handles the TokenQDQ (``--transform none``) and TransformQDQ nodes of the rewritten layers
(a precondition: each has its layer's energy profile). Leaves the transform alone.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from stamp_onnx.config import ALLOWED_BITS, average_bits
from stamp_onnx.core.allocation import allocate_widths, tiers_of
from stamp_onnx.errors import ConfigError
from stamp_onnx.graph import ops
from stamp_onnx.graph.contract import LAYER_KEY
from stamp_onnx.passes.invariants import assert_invariants

_TIER_ATTRIBUTES = ("hp_tokens", "hp_bits", "lp_bits", "mid_tokens", "mid_bits")


class AllocateTokenBitsPass(ir.passes.InPlacePass):
    def __init__(self, avg_bits: float, max_bits: int, energy: Mapping[str, np.ndarray]) -> None:
        super().__init__()
        self.avg_bits = avg_bits
        self.widths = tuple(b for b in ALLOWED_BITS if b <= max_bits)
        self.energy = energy

    def requires(self, model: ir.Model) -> None:
        layers = [layer for layer, _ in _quantizers(model)]
        if not layers:
            raise ir.passes.PreconditionError("no TokenQDQ or TransformQDQ node of a layer: run InsertTokenQDQPass first")
        missing = [layer for layer in layers if layer not in self.energy]
        if missing:
            raise ir.passes.PreconditionError(
                f"{len(missing)} layer(s) have no calibrated token energy (e.g. {missing[0]!r}): calibrate the model rewritten "
                "with the same config (stamp_onnx.pipeline.calibrate_for)")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        specs: dict[str, ops.Spec] = {}
        for layer, node in _quantizers(model):
            spec = ops.spec_from_node(node)
            prefix = spec.transform.prefix_tokens if isinstance(spec, ops.TransformQDQSpec) else 0
            energy = self.energy[layer]
            try:
                widths = allocate_widths(energy, self.avg_bits, self.widths, prefix)
            except ValueError as err:
                raise ConfigError(f"layer {layer!r}: {err}; raise avg_bits") from err
            hp_tokens, hp_bits, mid, lp_bits = tiers_of(widths)
            qdq = ops.TokenQDQSpec(hp_tokens, hp_bits, lp_bits, mid)
            new = ops.TransformQDQSpec(spec.transform, qdq) if isinstance(spec, ops.TransformQDQSpec) else qdq
            for name in _TIER_ATTRIBUTES:
                node.attributes.pop(name, None)
            for attr in qdq.attributes():
                node.attributes[attr.name] = attr
            node.overload = new.overload
            specs[new.overload] = new
        for overload in sorted(specs):
            ops.add_function(model, specs[overload])
        ops.drop_unused_functions(model)
        return ir.passes.PassResult(model, modified=bool(specs))

    def ensures(self, model: ir.Model) -> None:
        assert_invariants(model)
        for layer, node in _quantizers(model):
            qdq = ops.token_qdq_of(ops.spec_from_node(node))
            tokens = len(self.energy[layer])
            spent = average_bits(qdq.hp_tokens, qdq.hp_bits, qdq.lp_bits, tokens, qdq.mid)
            if spent > self.avg_bits + 1e-9 or any(b not in self.widths for b in qdq.bits):
                raise ir.passes.PostconditionError(
                    f"layer {layer!r}: tiers {qdq.overload} spend {spent:.3f} bits per token at {tokens} tokens "
                    f"(budget {self.avg_bits:g}, widths {self.widths})")


def _quantizers(model: ir.Model) -> list[tuple[str, ir.Node]]:
    """(layer, node) of every TokenQDQ and TransformQDQ node that quantizes a layer."""
    return [(node.metadata_props[LAYER_KEY], node) for node in model.graph.all_nodes()
            if node.domain == ops.DOMAIN and node.op_type in ops.QUANTIZERS and LAYER_KEY in node.metadata_props]
