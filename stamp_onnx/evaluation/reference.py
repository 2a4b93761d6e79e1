"""The PyTorch STaMP reference: forward pre-hooks that fake-quantize linear-layer inputs.

For each selected ``nn.Linear`` the input x (..., s, d) is replaced by

    x' = L^-1 Q(L x)        (transforms.inverse(quant.token_qdq(transforms.forward(x))))

so the layer computes x' W^T + b = L^-1 (Q(L x) W^T) + b: in exact arithmetic the same as the
rewritten ONNX graph (L^-1 commutes with the feature-axis matmul). The math is
:mod:`stamp_onnx.core.transforms` and :mod:`stamp_onnx.core.quant` themselves, torch branch, float32,
so this reference and the ONNX function bodies are held to one oracle.

With a feature transform the input is first rotated, x -> x R, and the layer's weight becomes
R^T W (``hadamard``), or divided per channel, x -> x / s, with the weight diag(s) W
(``smoothquant``; s per module, as the rewritten model records it); with weight quantization
that weight is fake-quantized (:mod:`stamp_onnx.core.weights`). The hooked layers' weights are
swapped for those while the context is open. With ``bit_allocation="energy"`` each layer's tiers
come from calibration data, so the reference takes them as the rewritten model records them.

Example::

    with stamp_reference(model, StampConfig()) as layers:
        logits = model(input_ids=ids).logits     # STaMP-quantized activations
    # hooks are gone here; ``layers`` lists the hooked module names
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from stamp_onnx.config import BitAllocation, FeatureTransform, StampConfig, WeightMethod
from stamp_onnx.core import smoothing, transforms, weights
from stamp_onnx.errors import ValidationError
from stamp_onnx.graph import ops
from stamp_onnx.graph.contract import SCALE_KEY

logger = logging.getLogger(__name__)


def sequence_transform(x: torch.Tensor, config: StampConfig, *, inverse: bool = False) -> torch.Tensor:
    """L x (or L^-1 x) on the token axis (-2), with every transform setting of ``config``."""
    fn = transforms.inverse if inverse else transforms.forward
    levels = transforms.resolve_levels(config.levels, int(x.shape[-2]), config.hp_tokens, config.prefix_tokens,
                                       config.transform, config.grid_width)
    return fn(x, config.transform, levels, config.prefix_tokens, config.grid_width)


def transform_features(x: torch.Tensor, config: StampConfig, scale: np.ndarray | None = None) -> torch.Tensor:
    """The quantizer's input: x R (``hadamard``), x / s (``smoothquant``, ``scale`` = s) or x, along axis -1."""
    if config.feature_transform == FeatureTransform.HADAMARD:
        r = torch.from_numpy(weights.feature_rotation(int(x.shape[-1])).astype(np.float32)).to(x.dtype)
        return x @ r
    if config.feature_transform == FeatureTransform.SMOOTHQUANT:
        return x / torch.from_numpy(_needs_scale(scale)).to(x.dtype)
    return x


def layer_weight(
    weight: torch.Tensor, config: StampConfig, *, scale: np.ndarray | None = None, quantized: bool = True
) -> torch.Tensor:
    """The nn.Linear weight (d_out, d_in) the rewritten layer multiplies by: fake_quant(R^T W or diag(s) W), transposed.

    ``scale``: the layer's SmoothQuant s. ``quantized=False`` leaves out the weight quantization
    (the float layer on a transformed input).
    """
    w = weight.detach().T  # (d_in, d_out), the MatMul layout
    if config.feature_transform == FeatureTransform.HADAMARD:
        r = weights.feature_rotation(int(w.shape[0]))
        w = torch.from_numpy((r.T @ w.double().numpy()).astype(np.float32)).to(weight.dtype)
    elif config.feature_transform == FeatureTransform.SMOOTHQUANT:
        w = torch.from_numpy(smoothing.smoothed_weight(w.float().numpy(), _needs_scale(scale))).to(weight.dtype)
    if quantized:
        w = weights.fake_quantize_weight(w, config.weight_bits, config.weight_block)
    return w.T.contiguous()


def _needs_scale(scale: np.ndarray | None) -> np.ndarray:
    if scale is None:
        raise ValidationError("a smoothquant layer needs its scale s: read it from the rewritten model "
                              f"({SCALE_KEY} on its quantizer)")
    return np.asarray(scale, dtype=np.float32)


def changes_weights(config: StampConfig) -> bool:
    return bool(config.weight_bits) or config.feature_transform != FeatureTransform.NONE


def layer_tiers(config: StampConfig, recorded: ops.TokenQDQSpec | None = None) -> ops.TokenQDQSpec:
    """The tiers a layer quantizes with: the config's two, or with energy allocation, the layer's
    ``recorded`` ones (ValidationError without them: they come from calibration data)."""
    if config.bit_allocation != BitAllocation.ENERGY:
        return ops.TokenQDQSpec(config.hp_tokens, config.hp_bits, config.lp_bits)
    if recorded is None:
        raise ValidationError("an energy-allocated layer needs its tiers: read them from the rewritten model "
                              "(the TokenQDQ/TransformQDQ attributes)")
    return recorded


def stamp_activation(x: torch.Tensor, config: StampConfig, tiers: ops.TokenQDQSpec | None = None) -> torch.Tensor:
    """L^-1 Q(L x) on the token axis (-2) of ``x`` (..., s, d), as the rewritten graph does
    (``tiers``: the layer's recorded quantizer, see :func:`layer_tiers`)."""
    y = layer_tiers(config, tiers).reference(sequence_transform(x, config))
    return sequence_transform(y, config, inverse=True)


@contextlib.contextmanager
def stamp_reference(
    module: torch.nn.Module,
    config: StampConfig,
    *,
    layers: Collection[str] | None = None,
    scales: Mapping[str, np.ndarray] | None = None,
    recorded_weights: Mapping[str, np.ndarray] | None = None,
    tiers: Mapping[str, ops.TokenQDQSpec] | None = None,
) -> Iterator[list[str]]:
    """Hook every nn.Linear selected by ``config.selects(name)``; yields the hooked names.

    ``layers``: hook exactly these module names instead (e.g. the layers a rewritten ONNX
    model records); a name that is not an nn.Linear of ``module`` raises ValidationError.
    ``scales``: SmoothQuant's s by module name (needed by ``feature_transform="smoothquant"``).
    ``recorded_weights``: the quantized weights (d_in, d_out) a rewritten model holds, by module
    name, used as they are (needed by ``weight_method="gptq"``: its codes depend on calibration
    data; the GPTQ math itself is tested on its own, tests/test_gptq.py).
    ``tiers``: each layer's quantizer as the rewritten model records it, by module name (needed by
    ``bit_allocation="energy"``).
    The hooks are removed on exit, also when the body raises.
    """
    linears = {name: sub for name, sub in module.named_modules() if isinstance(sub, torch.nn.Linear)}
    if layers is None:
        names = [name for name in linears if config.selects(name) is None]
    else:
        unknown = sorted(set(layers) - set(linears))
        if unknown:
            raise ValidationError(
                f"{len(unknown)} layer(s) are not nn.Linear modules of the PyTorch model "
                f"(e.g. {unknown[0]!r}); was the ONNX model exported from a different model?"
            )
        names = [name for name in linears if name in set(layers)]
    if not names:
        logger.warning("no linear layer selected: the STaMP reference equals the float model")

    scales, recorded_weights, tiers = scales or {}, recorded_weights or {}, tiers or {}
    for needed, given, what in ((config.feature_transform == FeatureTransform.SMOOTHQUANT, scales, "smoothquant layer(s) have no scale s"),
                                (config.weight_method == WeightMethod.GPTQ, recorded_weights, "gptq layer(s) have no recorded weight"),
                                (config.bit_allocation == BitAllocation.ENERGY, tiers, "energy-allocated layer(s) have no tiers")):
        missing = [name for name in names if name not in given] if needed else []
        if missing:
            raise ValidationError(f"{len(missing)} {what} (e.g. {missing[0]!r}); pass what the rewritten model records")

    def hook(name: str, _: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        if x.dim() < 2:
            return args
        return (stamp_activation(transform_features(x, config, scales.get(name)), config, tiers.get(name)), *args[1:])

    # Each hooked layer gets a Parameter of its own (not new data in the old one): a weight tied
    # to an embedding (an LM head) must not change the embedding, as the ONNX rewrite does not.
    originals = {}
    if changes_weights(config):
        for name in names:
            originals[name] = linears[name].weight
            if name in recorded_weights:
                weight = torch.from_numpy(np.ascontiguousarray(recorded_weights[name].T)).to(originals[name].dtype)
            else:
                weight = layer_weight(originals[name], config, scale=scales.get(name))
            linears[name].weight = torch.nn.Parameter(weight, requires_grad=False)
    handles = [linears[name].register_forward_pre_hook(functools.partial(hook, name)) for name in names]
    try:
        yield names
    finally:
        for handle in handles:
            handle.remove()
        for name, weight in originals.items():
            linears[name].weight = weight
