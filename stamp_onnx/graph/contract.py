"""The contract of a rewritten model: every key stamp-onnx records in it, and one reader of it.

The passes write these keys; ``inspect``, ``validate``, the per-layer check, ``eval`` and the
deployment targets read them, through :func:`read_model` / :func:`read_layers`, never by
importing a pass. The values are part of the file format (tools/rewrite_fingerprints.py hashes
them): a key or a value format changes only with a new reader for the old one.

Model metadata (``model.metadata_props``):

- :data:`CONFIG_KEY`: the StampConfig as JSON; :data:`VERSION_KEY`: the stamp-onnx version;
  :data:`SKIPPED_KEY`: the MatMul/Gemm nodes left alone, a JSON list of {name, node, reason, linear};
- :data:`SOURCE_KEY`: on a float model written by ``export``, the built-in model it came from.

Node metadata:

- :data:`LAYER_KEY` on every node a pass inserts or marks: the layer it belongs to; the
  layer's MatMul/Gemm carries it too, and its activation quantizer (TokenQDQ or TransformQDQ)
  is what feeds that MatMul/Gemm;
- :data:`PASS_KEY` on every inserted node: the pass that inserted it (provenance only: readers
  tell nodes apart by op, never by this name);
- :data:`TOKEN_AXIS_KEY`, :data:`ACTIVATION_SHAPE_KEY` on the layer's MatMul/Gemm: its token
  axis and how it was found ("1 (inferred)"), its activation shape as found;
- :data:`SCALE_KEY` on the quantizer of a SmoothQuant layer: s, float32 little-endian, base64;
- :data:`METHOD_KEY` on a weight's DequantizeLinear: the weight method that chose its codes;
- :data:`WEIGHT_FORMAT_KEY` on a layer's integer GEMM (``--target integer``: a
  com.microsoft.MatMulIntegerToFloat fed by a TokenQuantize or TransformQuantize, which is the
  layer's quantizer): the format of its weight codes, as :func:`weight_format` writes it.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from stamp_onnx.config import StampConfig, WeightMethod
from stamp_onnx.core.naming import module_of_layer
from stamp_onnx.core.weights import dequantize_linear
from stamp_onnx.errors import ConfigError, RewriteError, StampError, ValidationError
from stamp_onnx.graph import ops
from stamp_onnx.graph.model_io import load_model

LAYER_KEY = "stamp_onnx.layer"
PASS_KEY = "stamp_onnx.pass"
TOKEN_AXIS_KEY = "stamp_onnx.token_axis"
ACTIVATION_SHAPE_KEY = "stamp_onnx.activation_shape"
SCALE_KEY = "stamp_onnx.smooth_scale"
METHOD_KEY = "stamp_onnx.weight_method"
CONFIG_KEY = "stamp_onnx.config"
VERSION_KEY = "stamp_onnx.version"
SKIPPED_KEY = "stamp_onnx.skipped"
SOURCE_KEY = "stamp_onnx.source_model"
HTP_KEY = "stamp_onnx.htp"  # on a model written by --target htp: its settings (JSON)
WEIGHT_FORMAT_KEY = "stamp_onnx.weight_format"  # on an integer GEMM: its weight codes' format, e.g. "int8 per channel"

LINEAR_OPS = ("MatMul", "Gemm")
# The integer GEMM of a layer rewritten by --target integer (onnxruntime's contrib op)
INTEGER_GEMM, INTEGER_GEMM_DOMAIN = "MatMulIntegerToFloat", "com.microsoft"


def encode_scale(scale: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(scale, dtype="<f4").tobytes()).decode("ascii")


def decode_scale(text: str) -> np.ndarray:
    """The (d,) float32 array :func:`encode_scale` wrote; ValueError when ``text`` is not one."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as err:
        raise ValueError(f"{SCALE_KEY} is not base64: {err}") from err
    if not raw or len(raw) % 4:
        raise ValueError(f"{SCALE_KEY} holds {len(raw)} bytes, not a float32 vector")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


def weight_format(kind: str, block: int, method: str) -> str:
    """'int4 per channel', 'int8 block 32', 'int4 per channel gptq' ('rtn' is not named)."""
    return f"{kind} " + (f"block {block}" if block else "per channel") + ("" if method == WeightMethod.RTN else f" {method}")


def configured_weight_format(config: StampConfig) -> str:
    """The weight format ``config`` asks for: 'float', or :func:`weight_format` of its settings."""
    if not config.weight_bits:
        return "float"
    return weight_format(f"int{config.weight_bits}", config.weight_block, config.weight_method)


def is_transposed(node: ir.Node) -> bool:
    """True for a Gemm that stores its weight as W^T (transB=1)."""
    attr = node.attributes.get("transB")
    return node.op_type == "Gemm" and attr is not None and attr.as_int() != 0


def layer_of_proto(node: onnx.NodeProto) -> str | None:
    """The layer a node of a serialized model belongs to (its LAYER_KEY provenance), if any."""
    return next((p.value for p in node.metadata_props if p.key == LAYER_KEY), None)


def rewritten_layers(graph: ir.Graph) -> list[tuple[str, ir.Node, ir.Node]]:
    """(layer name, linear node, its activation quantizer) of every rewritten layer, in graph order
    (subgraphs included: a layer in an If branch is rewritten like any other)."""
    found = []
    for node in graph.all_nodes():
        layer = node.metadata_props.get(LAYER_KEY)
        integer = is_integer_gemm(node)
        if (node.op_type not in LINEAR_OPS and not integer) or layer is None or not node.inputs or node.inputs[0] is None:
            continue
        quantizer = node.inputs[0].producer()
        if quantizer is not None and quantizer.domain == ops.DOMAIN and quantizer.op_type in (
                ops.CODE_QUANTIZERS if integer else ops.QUANTIZERS):
            found.append((layer, node, quantizer))
    return found


def is_integer_gemm(node: ir.Node) -> bool:
    """True for a layer's GEMM on integer codes (``--target integer``)."""
    return node.op_type == INTEGER_GEMM and node.domain == INTEGER_GEMM_DOMAIN


def weight_dequantizer(node: ir.Node) -> ir.Node | None:
    """The DequantizeLinear that makes ``node``'s weight when the rewrite quantized it, else None."""
    dq = node.inputs[1].producer() if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if dq is None or dq.op_type != "DequantizeLinear" or METHOD_KEY not in dq.metadata_props:
        return None
    return dq


@dataclasses.dataclass(frozen=True)
class RewrittenLayer:
    """One rewritten layer as the model records it (read back from the graph, not the config)."""

    name: str
    node: ir.Node  # the MatMul/Gemm
    quantizer: ir.Node  # the TokenQDQ or TransformQDQ feeding it
    qdq: ops.TokenQDQSpec  # the recorded quantizer settings
    transform: ops.SequenceTransformSpec | None  # the recorded sequence transform (None: none)
    feature_transform: str  # "none", "hadamard", "smoothquant (online)", "smoothquant (folded)"
    weight_format: str  # "float", "int4 per channel", ...
    token_axis: str  # e.g. "1 (inferred)"; "" for models written before it was recorded
    activation_shape: str  # e.g. "(batch, seq, 576)"
    smooth_scale: np.ndarray | None  # SmoothQuant's s

    @property
    def module(self) -> str:
        """The PyTorch module the layer belongs to (a module called twice has two layers)."""
        return module_of_layer(self.name)

    @property
    def integer(self) -> bool:
        """True when the layer's GEMM runs on integer codes (``--target integer``)."""
        return is_integer_gemm(self.node)

    def dequantized_weight(self) -> np.ndarray | None:
        """w_hat (d_in, d_out) float32 as the graph computes it; None for a float weight."""
        if self.integer:  # codes (d_in + zero-point rows, d_out) and a per-column scale
            codes, scales = (v.const_value.numpy() if v is not None and v.const_value is not None else None
                             for v in (self.node.inputs[1], self.node.inputs[3]))
            if codes is None or scales is None:
                raise RewriteError(f"layer {self.name!r}: its weight codes or scales are not initializers")
            spec = ops.spec_from_node(self.quantizer)
            assert isinstance(spec, ops.TokenQuantizeSpec)
            d_in = codes.shape[0] - spec.zero_point_columns
            return (codes[:d_in].astype(np.float32) * scales.astype(np.float32)).astype(np.float32)
        dq = weight_dequantizer(self.node)
        if dq is None:
            return None
        codes, scales = (v.const_value.numpy() if v is not None and v.const_value is not None else None for v in dq.inputs[:2])
        if codes is None or scales is None:
            raise RewriteError(f"layer {self.name!r}: its weight codes or scales are not initializers")
        block = dq.attributes.get("block_size")
        w_hat = dequantize_linear(codes, scales, dq.attributes["axis"].as_int(), block.as_int() if block is not None else 0)
        return w_hat.T if is_transposed(self.node) else w_hat


def read_layers(model: ir.Model) -> list[RewrittenLayer]:
    """Every rewritten layer of ``model`` in graph order; ValueError on a malformed smoothing scale."""
    layers = []
    for name, node, quantizer in rewritten_layers(model.graph):
        spec = ops.spec_from_node(quantizer)
        qdq = ops.token_qdq_of(spec)
        transform = spec.transform if isinstance(spec, (ops.TransformQDQSpec, ops.TokenQuantizeSpec)) else None
        scale_text = quantizer.metadata_props.get(SCALE_KEY)
        layers.append(RewrittenLayer(
            name=name, node=node, quantizer=quantizer, qdq=qdq, transform=transform,
            feature_transform=_feature_transform(quantizer),
            weight_format=weight_format_of(node),
            token_axis=node.metadata_props.get(TOKEN_AXIS_KEY, ""),
            activation_shape=node.metadata_props.get(ACTIVATION_SHAPE_KEY, ""),
            smooth_scale=None if scale_text is None else _decode(name, scale_text),
        ))
    return layers


def _decode(layer: str, text: str) -> np.ndarray:
    try:
        return decode_scale(text)
    except ValueError as err:
        raise ValueError(f"layer {layer!r}: {err}") from err


def _feature_transform(quantizer: ir.Node) -> str:
    """What feeds the quantizer: a FeatureRotation (a rotation can be shared by the layers that
    read one activation, so it is found through the quantizer's input), or SmoothQuant's s,
    divided online (a Div the rewrite inserted) or folded upstream."""
    before = quantizer.inputs[0].producer() if quantizer.inputs[0] is not None else None
    if before is not None and before.domain == ops.DOMAIN and before.op_type == ops.FEATURE_ROTATION:
        return "hadamard"
    if SCALE_KEY in quantizer.metadata_props:
        online = before is not None and before.op_type == "Div" and LAYER_KEY in before.metadata_props
        return "smoothquant" + (" (online)" if online else " (folded)")
    return "none"


def weight_format_of(node: ir.Node) -> str:
    """The format of a rewritten layer's weight: 'float', 'int4 per channel', ..."""
    if is_integer_gemm(node):
        return node.metadata_props.get(WEIGHT_FORMAT_KEY, "int8 per channel")
    dq = weight_dequantizer(node)
    if dq is None or dq.inputs[0] is None:
        return "float"
    block = dq.attributes.get("block_size")
    kind = "int4" if dq.inputs[0].dtype == ir.DataType.INT4 else "int8"
    return weight_format(kind, block.as_int() if block is not None else 0, dq.metadata_props.get(METHOD_KEY, "rtn"))


def dequantized_weights(model: ir.Model) -> dict[str, np.ndarray]:
    """w_hat (d_in, d_out) float32, as the graph computes it, per rewritten layer with a quantized weight."""
    return _dequantized(read_layers(model))


def _dequantized(layers: list[RewrittenLayer]) -> dict[str, np.ndarray]:
    found = {}
    for layer in layers:
        w_hat = layer.dequantized_weight()
        if w_hat is not None:
            found[layer.name] = w_hat
    return found


def recorded_config(model: ir.Model) -> StampConfig | None:
    """The config the model was rewritten with; None when it records none; ConfigError when invalid."""
    text = model.metadata_props.get(CONFIG_KEY)
    return None if text is None else StampConfig.from_json(text)


def recorded_skips(model: ir.Model) -> list[dict[str, Any]]:
    """The MatMul/Gemm nodes the rewrite left alone: {name, node, reason, linear} each."""
    text = model.metadata_props.get(SKIPPED_KEY)
    return [] if text is None else list(json.loads(text))


@dataclasses.dataclass(frozen=True)
class RewrittenModel:
    """A rewritten model read once: its graph (external weights stay on disk until read), the
    recorded config and version, its layers and what was left alone."""

    path: Path
    model: ir.Model
    config: StampConfig | None  # None: the file records none (not written by ``quantize``)
    version: str
    layers: list[RewrittenLayer]
    skipped: list[dict[str, Any]]

    @property
    def modules(self) -> list[str]:
        """The PyTorch modules of the rewritten layers, sorted (a module called twice: once)."""
        return sorted({layer.module for layer in self.layers})

    def scales_by_module(self) -> dict[str, np.ndarray]:
        """SmoothQuant's s per module (a module called twice shares one s)."""
        out: dict[str, np.ndarray] = {}
        for layer in self.layers:
            if layer.smooth_scale is not None:
                out.setdefault(layer.module, layer.smooth_scale)
        return out

    def tiers_by_module(self) -> dict[str, ops.TokenQDQSpec]:
        """Each module's quantizer settings as recorded (a module called twice: its first layer's)."""
        out: dict[str, ops.TokenQDQSpec] = {}
        for layer in self.layers:
            out.setdefault(layer.module, layer.qdq)
        return out

    def dequantized_weights(self) -> dict[str, np.ndarray]:
        """w_hat (d_in, d_out) per layer with a quantized weight."""
        return _dequantized(self.layers)


def read_model(path: str | Path, error: type[StampError] = ValidationError) -> RewrittenModel:
    """Read the rewritten model at ``path`` once (``error`` when it cannot be read or what it records is invalid)."""
    model = load_model(path, error)
    try:
        config = recorded_config(model)
    except ConfigError as err:
        raise error(f"{path}: the recorded config is invalid: {err}") from err
    try:
        layers = read_layers(model)
    except ValueError as err:
        raise error(f"{path}: {err}") from err
    return RewrittenModel(Path(path), model, config, model.metadata_props.get(VERSION_KEY, ""), layers, recorded_skips(model))
