"""SmoothFeaturesPass: SmoothQuant, each rewritten layer's activation divided per channel by s.

Before::   x ──► TransformQDQ / TokenQDQ ──► MatMul(W)
After::    x / s ──► TransformQDQ / TokenQDQ ──► MatMul(diag(s) W)

s comes from calibration statistics (:mod:`stamp_onnx.core.smoothing`, :mod:`stamp_onnx.graph.calibration`);
layers that read one activation or belong to one module share it. The division is folded
offline where the activation is made by a per-channel scale that nothing else reads:

- ``Mul(x, c)`` with a constant c of d elements along the last axis (the weight of an
  RMSNorm as the exporter writes it: the q/k/v and gate/up inputs of a LLaMA block): c / s;
- ``LayerNormalization`` over the last axis with constant scale (and bias): both / s
  (a pre-LN ViT's attention and MLP inputs).

Elsewhere (the attention output before o_proj, the SwiGLU product before down_proj, a
post-LN encoder's block input that also feeds the residual) a ``Div(x, s)`` node runs
online, shared by the group's quantizers: an O(d) elementwise op per token. diag(s) W is a new
initializer; the original stays if anything else reads it. Each quantizer records its s
(:data:`stamp_onnx.core.smoothing.SCALE_KEY`). Runs where RotateFeaturesPass does, before weight
quantization; the pipeline runs it for ``feature_transform="smoothquant"``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx_ir as ir

from stamp_onnx.core.naming import module_of_layer
from stamp_onnx.core.smoothing import smooth_scales, smoothed_weight, weight_amax
from stamp_onnx.errors import RewriteError
from stamp_onnx.graph.contract import LAYER_KEY, PASS_KEY, SCALE_KEY, encode_scale, rewritten_layers
from stamp_onnx.passes.constants import channel_constant
from stamp_onnx.passes.layer_weights import add_initializer, read_weight, replace_input, stored
from stamp_onnx.passes.linear_layers import unique_namer
from stamp_onnx.passes.report import FeatureResult

_Layer = tuple[str, ir.Node, ir.Node]  # (layer name, linear node, its quantizer)


class SmoothFeaturesPass(ir.passes.InPlacePass):
    """``alpha``: the migration strength; ``amax``: max |x| per channel of each activation
    (value name) read by a linear layer, measured on the float model (:mod:`stamp_onnx.graph.calibration`)."""

    def __init__(self, alpha: float, amax: Mapping[str, np.ndarray]) -> None:
        super().__init__()
        self.alpha = alpha
        self.amax = amax

    def requires(self, model: ir.Model) -> None:
        if not rewritten_layers(model.graph):
            raise ir.passes.PreconditionError("no rewritten layer (a linear layer fed by its activation quantizer): "
                                              "run InsertTokenQDQPass first")

    def call(self, model: ir.Model) -> FeatureResult:
        graph = model.graph
        done: dict[str, str] = {}
        fresh = unique_namer(graph)
        groups = _groups(rewritten_layers(graph))
        for group in groups:
            activations = list(dict.fromkeys(quantizer.inputs[0] for _, _, quantizer in group))
            weights = [read_weight(node) for _, node, _ in group]
            act = np.max([self._amax(x, group[0][0], weights[0].shape[0]) for x in activations if x is not None], axis=0)
            scale = smooth_scales(act, np.max([weight_amax(w) for w in weights], axis=0), self.alpha)
            for (layer, node, quantizer), w in zip(group, weights, strict=True):
                new = add_initializer(graph, fresh(f"{layer}/smoothed_weight"),
                                      ir.tensor(stored(node, smoothed_weight(w, scale))))
                replace_input(graph, node, 1, new)
                quantizer.metadata_props[SCALE_KEY] = encode_scale(scale)
            for x in activations:
                assert x is not None
                quantizers = [q for _, _, q in group if q.inputs[0] is x]
                where = _fold(graph, fresh, x, scale, quantizers) or _divide(graph, fresh, x, scale, quantizers, group[0][0])
                for layer, _, quantizer in group:
                    if quantizer in quantizers:
                        done[layer] = f"smoothquant ({where})"
        return FeatureResult(model, modified=bool(groups), values=done)

    def _amax(self, x: ir.Value | None, layer: str, d: int) -> np.ndarray:
        assert x is not None
        amax = self.amax.get(x.name or "")
        if amax is None:
            raise RewriteError(f"layer {layer!r}: no calibration statistics for its input {x.name!r}; "
                               "calibrate on the same float model that is being rewritten")
        if amax.shape != (d,):
            raise RewriteError(f"layer {layer!r}: calibration statistics of {x.name!r} have shape {amax.shape}, expected ({d},)")
        return amax


def _groups(layers: list[_Layer]) -> list[list[_Layer]]:
    """Layers that must share s: connected by a shared activation or a shared module."""
    parent: dict[object, object] = {}

    def root(key: object) -> object:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for layer, _, quantizer in layers:
        parent[root(("module", module_of_layer(layer)))] = root(("value", id(quantizer.inputs[0])))
    grouped: dict[object, list[_Layer]] = {}
    for item in layers:
        grouped.setdefault(root(("value", id(item[2].inputs[0]))), []).append(item)
    return list(grouped.values())


def _fold(graph: ir.Graph, fresh: Callable[[str], str], x: ir.Value, scale: np.ndarray, quantizers: list[ir.Node]) -> str | None:
    """Divide the per-channel constant that makes ``x`` by ``scale``; where it went, or None if it cannot."""
    producer = x.producer()
    if producer is None or x.is_graph_output() or {use.node for use in x.uses()} != set(quantizers):
        return None
    if producer.domain not in ("", "ai.onnx") or producer.op_type not in ("Mul", "LayerNormalization"):
        return None
    d = scale.shape[0]
    if producer.op_type == "Mul":
        consts = [i for i, v in enumerate(producer.inputs) if channel_constant(v, d) is not None]
        if len(consts) != 1:
            return None
        slots = consts
    else:
        axis = producer.attributes.get("axis")
        rank = None if x.shape is None else len(x.shape)
        if axis is not None and axis.as_int() not in (-1, (rank or 0) - 1):
            return None
        slots = [i for i in (1, 2) if i < len(producer.inputs) and producer.inputs[i] is not None]
        if not slots or any(channel_constant(producer.inputs[i], d) is None for i in slots):
            return None
    for i in slots:
        value = producer.inputs[i]
        c = channel_constant(value, d)
        assert c is not None and value is not None
        divided = (c.astype(np.float64) / scale.astype(np.float64).reshape(c.shape)).astype(np.float32)
        new = add_initializer(graph, fresh(f"{value.name or 'constant'}/smoothed"), ir.tensor(divided))
        replace_input(graph, producer, i, new)
    return f"folded into {producer.op_type} {producer.name}"


def _divide(graph: ir.Graph, fresh: Callable[[str], str], x: ir.Value, scale: np.ndarray, quantizers: list[ir.Node], layer: str) -> str:
    """Insert Div(x, s) before the first of ``quantizers``; they read its output."""
    s = add_initializer(graph, fresh(f"{layer}/smooth_scale"), ir.tensor(scale))
    div = ir.Node("", "Div", [x, s], name=fresh(f"{layer}/SmoothDivide"),
                  metadata_props={PASS_KEY: SmoothFeaturesPass.__name__, LAYER_KEY: layer})
    out = div.outputs[0]
    out.name, out.type, out.shape = fresh(f"{layer}/smoothed_input"), x.type, x.shape
    graph.insert_before(quantizers[0], div)
    for quantizer in quantizers:
        quantizer.replace_input_with(0, out)
    return "online Div"
