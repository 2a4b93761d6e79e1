"""Per-layer check of a rewritten model: each STaMP layer in ONNX Runtime vs PyTorch, same input.

End to end, the rewritten ONNX model and the PyTorch reference cannot agree bit for bit at
low precision: the float graphs differ by ~1e-7 relative (kernel summation order), which moves
a few values across a rounding boundary of the first quantizer; one 4-bit step is a large
change, and 30 layers amplify it. So the op-level agreement is checked per layer instead, one
stage at a time, each stage fed with the ONNX run's own input to that stage:

    transform   ONNX t = L x                vs  transforms.forward(x)             float rounding
    QDQ         ONNX q = Q(t)               vs  quant.token_qdq(t)                bit for bit
    W, L^-1     ONNX y = L^-1 (q W) (+ C)   vs  transforms.inverse(q W^T) (+ b)   float rounding

plus the whole layer, y vs linear(stamp_activation(x), W), as an SQNR (here a transform that
differs from the reference by one float ulp may flip a rounding, so it is reported, not judged),
and the quantization error where it arises: y vs the float layer linear(x, W) on the same x.
Layers are found by their provenance metadata (LAYER_KEY on the TokenQDQ or TransformQDQ node
and on the MatMul/Gemm it feeds), not by value names. A TransformQDQ node is given its optional
output T (the transformed input) for the check.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import onnx
import torch

from stamp_onnx.config import StampConfig, WeightMethod
from stamp_onnx.core import quant
from stamp_onnx.core.naming import module_of_layer
from stamp_onnx.errors import ValidationError
from stamp_onnx.evaluation.reference import (
    layer_tiers,
    layer_weight,
    sequence_transform,
    stamp_activation,
)
from stamp_onnx.graph import ops, runtime
from stamp_onnx.graph.contract import (
    SCALE_KEY,
    RewrittenModel,
    decode_scale,
    layer_of_proto,
    read_model,
)

logger = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class LayerTap:
    """Where one rewritten layer's input and output live in the graph."""

    layer: str
    module: str
    x: str  # the layer's input
    t: str  # the TokenQDQ input (L x; equals x without a transform)
    q: str  # the TokenQDQ output
    y: str  # the layer's output (after the inverse transform)
    has_bias: bool
    scale: np.ndarray | None = None  # SmoothQuant's s, as the quantizer records it
    qdq: ops.TokenQDQSpec | None = None  # the quantizer's tiers, as the node records them


@dataclasses.dataclass(frozen=True)
class LayerDiff:
    """One layer's stages, ONNX vs torch; ``*_rel`` are max |diff| / max |reference|."""

    layer: str
    transform_rel: float
    qdq_mismatches: int
    qdq_elements: int
    output_rel: float
    sqnr_db: float  # whole layer, ONNX vs the STaMP reference
    float_sqnr_db: float  # whole layer, ONNX vs the float layer on the same input
    hp_energy: float  # share of the energy of L x in the first hp_tokens tokens (0..1)
    # share of the energy of L x held by each transformed token, in token order (sums to 1);
    # the batch is pooled per token, so hp_energy == sum(token_energy[:hp_tokens])
    token_energy: tuple[float, ...] = ()


def find_taps(graph: onnx.GraphProto) -> list[LayerTap]:
    """One tap per TokenQDQ or TransformQDQ node that carries a layer name, in graph order.

    A TransformQDQ node must expose its output T (see :func:`ops.expose_transformed`).
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    taps = []
    for node in graph.node:
        layer = layer_of_proto(node)
        if node.domain != ops.DOMAIN or node.op_type not in ops.QUANTIZERS or layer is None:
            continue
        x = t = node.input[0]
        if node.op_type == ops.TRANSFORM_QDQ:
            if len(node.output) < 2:
                raise ValidationError(f"TransformQDQ node {node.name!r} does not expose T: call expose_transformed first")
            t = node.output[1]
        linear = [n for n in consumers.get(node.output[0], []) if n.op_type in ("MatMul", "Gemm")]
        if len(linear) != 1:
            raise ValidationError(f"TokenQDQ node {node.name!r} of layer {layer!r} feeds {len(linear)} MatMul/Gemm nodes, expected 1")
        y = linear[0].output[0]
        has_bias = linear[0].op_type == "Gemm" and len(linear[0].input) > 2 and bool(linear[0].input[2])
        after = [n for n in consumers.get(y, []) if _is_transform(n, inverse=True) and layer_of_proto(n) == layer]
        if after:
            y = after[0].output[0]
        recorded = next((p.value for p in node.metadata_props if p.key == SCALE_KEY), None)
        try:
            scale = None if recorded is None else decode_scale(recorded)
        except ValueError as err:
            raise ValidationError(f"layer {layer!r}: {err}") from err
        qdq = ops.token_qdq_of(ops.spec_from_proto(node))
        taps.append(LayerTap(layer, module_of_layer(layer), x, t, node.output[0], y, has_bias, scale, qdq))
    return taps


def per_layer_diffs(
    onnx_path: str | Path,
    module: torch.nn.Module,
    config: StampConfig,
    feeds: dict[str, np.ndarray],
    *,
    native: bool = True,
    recorded: dict[str, np.ndarray] | None = None,
) -> list[LayerDiff]:
    """Run the rewritten model once with every tap as an output; compare each layer with torch.

    ``recorded``: :func:`recorded_weights` of the model when the caller has read them already.
    """
    proto = onnx.load(str(onnx_path))
    ops.expose_transformed(proto)
    taps = find_taps(proto.graph)
    if not taps:
        return []
    names = [n for tap in taps for n in (tap.x, tap.t, tap.q, tap.y)]
    session = runtime.session_exposing(proto, names, native=native, source=onnx_path, what="the per-layer check",
                                       error=ValidationError)
    wanted = {i.name for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(None, {k: v for k, v in feeds.items() if k in wanted}), strict=True))
    modules = dict(module.named_modules())
    if recorded is None:
        recorded = recorded_weights(read_model(onnx_path), config) if config.weight_method == WeightMethod.GPTQ else {}
    diffs = []
    with torch.no_grad():
        for tap in taps:
            linear = modules.get(tap.module)
            if not isinstance(linear, torch.nn.Linear):
                raise ValidationError(f"layer {tap.layer!r} of {onnx_path} is not an nn.Linear of the PyTorch model")
            diffs.append(_compare_layer(tap, values, linear, config, recorded.get(tap.layer)))
    logger.info("compared %d rewritten layers one by one", len(diffs))
    return diffs


def recorded_weights(rewritten: RewrittenModel, config: StampConfig) -> dict[str, np.ndarray]:
    """The quantized weights (d_in, d_out) of a GPTQ model, by layer name; {} for other methods.

    GPTQ's codes depend on calibration data, so the reference takes them from the model.
    """
    return rewritten.dequantized_weights() if config.weight_method == WeightMethod.GPTQ else {}


def _compare_layer(
    tap: LayerTap, values: dict[str, np.ndarray], linear: torch.nn.Linear, config: StampConfig,
    recorded: np.ndarray | None = None,
) -> LayerDiff:
    x, t, q, y = (torch.from_numpy(values[name]) for name in (tap.x, tap.t, tap.q, tap.y))
    bias = linear.bias if tap.has_bias else None
    # x is the quantizer's input: already rotated (or smoothed) when there is a feature transform
    if recorded is not None:
        weight = torch.from_numpy(np.ascontiguousarray(recorded.T))
    else:
        weight = layer_weight(linear.weight, config, scale=tap.scale)
    tiers = layer_tiers(config, tap.qdq)
    whole = torch.nn.functional.linear(stamp_activation(x, config, tiers), weight, bias)
    if whole.shape != y.shape:
        raise ValidationError(f"layer {tap.layer!r}: ONNX output {tuple(y.shape)} vs PyTorch {tuple(whole.shape)}")
    t_ref = sequence_transform(x, config)
    q_ref = tiers.reference(t)
    y_ref = sequence_transform(torch.nn.functional.linear(q, weight), config, inverse=True)
    if bias is not None:
        y_ref = y_ref + bias
    shares = _token_energy(t)
    return LayerDiff(
        layer=tap.layer,
        transform_rel=_rel(t_ref, t),
        qdq_mismatches=int((q_ref != q).sum()),
        qdq_elements=q.numel(),
        output_rel=_rel(y_ref, y),
        sqnr_db=quant.sqnr_db(whole.numpy(), y.numpy()),
        float_sqnr_db=quant.sqnr_db(
            torch.nn.functional.linear(x, layer_weight(linear.weight, config, scale=tap.scale, quantized=False), bias).numpy(), y.numpy()
        ),
        hp_energy=float(shares[: tiers.hp_tokens].sum()),
        token_energy=tuple(shares.tolist()),
    )


def _token_energy(t: torch.Tensor) -> np.ndarray:
    """Each token's share of the energy of t (..., s, d), leading axes pooled: shape (s,), sums to 1.

    Energies are summed over the batch before normalizing (a batch-wide share, not a mean of
    per-sample shares), so the first k entries add up to the share the first k tokens hold.
    All zeros when t is all zeros.
    """
    energy = quant.token_energy(t.numpy())
    total = float(energy.sum())
    return energy / total if total else np.zeros_like(energy)


def _rel(ref: torch.Tensor, got: torch.Tensor) -> float:
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    err = float((ref.double() - got.double()).abs().max()) if ref.numel() else 0.0
    return err / scale if scale else err


def _is_transform(node: onnx.NodeProto, *, inverse: bool) -> bool:
    if node.domain != ops.DOMAIN or node.op_type != ops.SEQUENCE_TRANSFORM:
        return False
    flag = next((a.i for a in node.attribute if a.name == "inverse"), 0)
    return bool(flag) == inverse
