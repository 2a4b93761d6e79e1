"""The rewrite pipeline: one function listing its passes, plus a file-to-file wrapper."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

import stamp_onnx
from stamp_onnx.config import BitAllocation, FeatureTransform, StampConfig, Transform, WeightMethod
from stamp_onnx.errors import ConfigError, RewriteError, StampError, first_line
from stamp_onnx.graph import ops
from stamp_onnx.graph.calibration import Calibration, calibrate
from stamp_onnx.graph.contract import LINEAR_OPS, layer_of_proto, rewritten_layers
from stamp_onnx.graph.model_io import check_output_path, load_model, save_model
from stamp_onnx.passes.allocate_token_bits import AllocateTokenBitsPass
from stamp_onnx.passes.constants import is_constant
from stamp_onnx.passes.convert_opset import ConvertOpsetPass
from stamp_onnx.passes.infer_shapes import InferShapesPass
from stamp_onnx.passes.inline_stamp_ops import InlineStampOpsPass
from stamp_onnx.passes.insert_sequence_transform import InsertSequenceTransformPass
from stamp_onnx.passes.insert_token_qdq import InsertTokenQDQPass
from stamp_onnx.passes.integer_gemm import IntegerGemmPass
from stamp_onnx.passes.quantize_weights import (
    QuantizeWeightsPass,
    WeightQuantizer,
    gptq,
    round_to_nearest,
)
from stamp_onnx.passes.record_config import RecordConfigPass
from stamp_onnx.passes.report import RewriteReport
from stamp_onnx.passes.rotate_features import RotateFeaturesPass
from stamp_onnx.passes.select_linear_layers import SelectLinearLayersPass
from stamp_onnx.passes.smooth_features import SmoothFeaturesPass

logger = logging.getLogger(__name__)

# What a rewrite writes: fake-quant ai.stamp ops for any onnxruntime (onnx), or integer GEMMs for
# onnxruntime's CPU provider (integer). The HTP target has its own pipeline (stamp_onnx.targets).
TARGET_ONNX, TARGET_INTEGER = "onnx", "integer"
TARGETS = (TARGET_ONNX, TARGET_INTEGER)


def rewrite(
    model: ir.Model,
    config: StampConfig,
    *,
    source: str = "the model",
    inline: bool = False,
    calibration: Calibration | None = None,
    target: str = TARGET_ONNX,
) -> RewriteReport:
    """Rewrite every selected linear layer of ``model`` in place; return what was done.

    ``inline`` lowers the ai.stamp ops into standard ONNX ops in the main graph (QDQ pairs
    visible) for runtimes without function or custom-op support. ``calibration``: statistics
    of this float model (:func:`stamp_onnx.graph.calibration.calibrate`), for configs that need them.
    ``target``: ``onnx`` (fake-quant ai.stamp ops) or ``integer`` (integer GEMMs, :func:`check_target`).
    """
    check_target(config, target, inline=inline)
    for node in model.graph.all_nodes():
        if node.domain == ops.DOMAIN:
            raise RewriteError(f"{source} was already rewritten by stamp-onnx; quantize the float model instead")
    report = RewriteReport()
    try:
        for step in (
            InferShapesPass(),  # before the conversion too: symbolic inference knows the older opsets better
            ConvertOpsetPass(ops.MIN_OPSET),
            InferShapesPass(),
            SelectLinearLayersPass(config.selects, config.token_axis_for, subgraphs=not config.needs_calibration),
        ):
            report.merge(step(model))
        if not report.rewritten:
            raise RewriteError(_nothing_to_rewrite(source, report, config))
        for step in (*rewrite_passes(config, calibration, target), RecordConfigPass(config, stamp_onnx.__version__, report.skipped),
                     *([InlineStampOpsPass()] if inline else [])):
            report.merge(step(model))
    except ir.passes.PassError as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, StampError):  # pass managers nest PassErrors
            cause = cause.__cause__
        if cause is not None:
            raise cause from err
        raise RewriteError(f"rewriting {source} failed: {first_line(err)}") from err
    model.ir_version = max(model.ir_version, 10)  # function overloads need IR >= 10
    return report


def rewrite_passes(config: StampConfig, calibration: Calibration | None = None,
                   target: str = TARGET_ONNX) -> list[ir.passes.PassBase]:
    """The passes that rewrite the selected layers as ``config`` asks, in order; a pass that does
    not apply is not in the list. ``calibration``: what :func:`calibrate_for` measured, when needed.
    ``target`` ``integer`` adds the pass set that turns each layer into an integer GEMM."""
    passes: list[ir.passes.PassBase] = [InsertTokenQDQPass(config.hp_tokens, config.hp_bits, config.lp_bits)]
    if config.transform != Transform.NONE:
        passes.append(InsertSequenceTransformPass(config.transform, config.levels, config.prefix_tokens, config.grid_width))
    if config.bit_allocation == BitAllocation.ENERGY:
        energy = _calibrated(calibration, f"bit allocation {BitAllocation.ENERGY}").energy
        passes.append(AllocateTokenBitsPass(config.avg_bits, config.hp_bits, energy))
    feature = FEATURE_TRANSFORMS[FeatureTransform(config.feature_transform)]
    if feature is not None:
        passes.append(feature(config, calibration))
    if config.weight_bits:
        method = WeightMethod(config.weight_method)
        passes.append(QuantizeWeightsPass(config.weight_bits, config.weight_block, method.value,
                                          WEIGHT_METHODS[method](calibration)))
    if target == TARGET_INTEGER:
        passes.append(IntegerGemmPass())
    return passes


def check_target(config: StampConfig, target: str, *, inline: bool = False) -> None:
    """ConfigError unless ``config`` can be written for ``target``: the integer GEMM takes activations
    of 2-8 bits and per-channel weight codes, and its op is onnxruntime's, not a standard one."""
    if target not in TARGETS:
        raise ConfigError(f"target {target!r} is not one of {', '.join(TARGETS)}")
    if target != TARGET_INTEGER:
        return
    refused = [what for what, bad in (
        ("--inline (the integer GEMM is onnxruntime's com.microsoft.MatMulIntegerToFloat, not a standard op)", inline),
        (f"--weight-block {config.weight_block} (the integer GEMM takes one weight scale per output channel)",
         bool(config.weight_block)),
        ("--weight-bits 0 (the integer GEMM needs weight codes; use 8 or 4)", not config.weight_bits),
        (f"activation bits {config.hp_bits}/{config.lp_bits} (uint8 codes hold 2-8 bits)", max(config.hp_bits, config.lp_bits) > 8),
    ) if bad]
    if refused:
        raise ConfigError(f"--target integer does not take {'; '.join(refused)}")


def _smooth(config: StampConfig, calibration: Calibration | None) -> ir.passes.PassBase:
    return SmoothFeaturesPass(config.smooth_alpha, _calibrated(calibration, f"feature transform {FeatureTransform.SMOOTHQUANT}").amax)


def _gptq(calibration: Calibration | None) -> WeightQuantizer:
    return gptq(_calibrated(calibration, f"weight method {WeightMethod.GPTQ}").hessian)


def _calibrated(calibration: Calibration | None, what: str) -> Calibration:
    if calibration is None:
        raise RewriteError(f"{what} needs calibration statistics; pass calibration data (quantize --calibration FILE.npz)")
    return calibration


# What each feature transform and weight method adds to the pass list (None: nothing), as
# onnxruntime's quantizer maps op types to quantizers: a new method is one entry here.
FEATURE_TRANSFORMS: dict[FeatureTransform, Callable[[StampConfig, Calibration | None], ir.passes.PassBase] | None] = {
    FeatureTransform.NONE: None,
    FeatureTransform.HADAMARD: lambda config, calibration: RotateFeaturesPass(),
    FeatureTransform.SMOOTHQUANT: _smooth,
}
WEIGHT_METHODS: dict[WeightMethod, Callable[[Calibration | None], WeightQuantizer]] = {
    WeightMethod.RTN: lambda calibration: round_to_nearest,
    WeightMethod.GPTQ: _gptq,
}


def _nothing_to_rewrite(source: str, report: RewriteReport, config: StampConfig) -> str:
    """Why no linear layer of ``source`` can be rewritten, in one line."""
    linear = [item for item in report.skipped if item.linear]
    if not linear:
        why = "the graph has no MatMul or Gemm with a constant weight"
        if report.skipped:
            why = f"its {len(report.skipped)} MatMul/Gemm nodes multiply two activations (attention), none has a constant weight"
    else:
        why = f"all {len(linear)} linear layers were skipped: {report.skip_summary(linear_only=True)}"
    hints = list(report.notes)
    filtered = config.include is not None or config.exclude is not None
    if filtered and any(config.selects(item.name, item.node) for item in linear):
        hints.append("check --include/--exclude")
    return f"no linear layer to rewrite in {source}: {why}" + "".join(f"; {hint}" for hint in hints)


def quantize_file(
    in_path: str | Path,
    out_path: str | Path,
    config: StampConfig,
    *,
    inline: bool = False,
    calibration_feeds: dict[str, np.ndarray] | None = None,
    target: str = TARGET_ONNX,
) -> RewriteReport:
    """Read ``in_path``, rewrite it with ``config``, write ``out_path`` (the input is never touched).

    ``calibration_feeds``: model inputs (one sample per row) to calibrate on; required exactly
    when ``config.needs_calibration``.
    """
    out = check_output_path(in_path, out_path)
    check_target(config, target, inline=inline)
    if config.needs_calibration and calibration_feeds is None:
        what = ("weight method gptq" if config.weight_method == WeightMethod.GPTQ
                else "bit allocation energy" if config.bit_allocation == BitAllocation.ENERGY
                else f"feature transform {config.feature_transform}")
        raise ConfigError(f"{what} needs calibration data: pass --calibration FILE.npz "
                          "(arrays named after the model inputs; `stamp-onnx export MODEL --calibration-data FILE.npz` writes one)")
    if calibration_feeds is not None and not config.needs_calibration:
        raise ConfigError("calibration data is only used by --feature-transform smoothquant, --weight-method gptq and "
                          "--bit-allocation energy; drop --calibration")
    logger.info("loading %s", in_path)
    model = load_model(in_path)
    calibration = None if calibration_feeds is None else calibrate_for(in_path, model, config, calibration_feeds)
    report = rewrite(model, config, source=str(in_path), inline=inline, calibration=calibration, target=target)
    logger.info("rewrote %d linear layers; checking (onnx.checker, full) and writing %s", len(report.rewritten), out)
    save_model(model, out)
    return report


def calibrate_for(in_path: str | Path, model: ir.Model, config: StampConfig, feeds: dict[str, np.ndarray]) -> Calibration:
    """What ``config`` needs measured on ``feeds`` for the float model ``model`` read from ``in_path``.

    SmoothQuant: max |x| per channel of every linear input of the float model. GPTQ:
    H = sum x^T x of each rewritten layer's actual input, the quantized activation that its
    MatMul reads, in the model rewritten with ``config`` but round-to-nearest weights: the
    inputs a layer gets with every earlier layer quantized, as GPTQ quantizes block by block
    (Hessians of the float model's activations made SmolLM2 worse than RTN, docs/results.md).
    The layers' value names are the same in both rewrites (the weight pass runs last). Energy
    allocation: each layer's mean energy per transformed token (:func:`token_energies`).
    """
    logger.info("calibrating %s", in_path)
    calibration = None
    if config.feature_transform == FeatureTransform.SMOOTHQUANT:
        calibration = calibrate(in_path, feeds, _linear_inputs(model))
    if config.bit_allocation == BitAllocation.ENERGY:
        measured = token_energies(in_path, config, feeds, calibration)
        calibration = measured if calibration is None else dataclasses.replace(calibration, energy=measured.energy)
    if config.weight_method != WeightMethod.GPTQ:
        assert calibration is not None
        return calibration
    first = load_model(in_path)
    rewrite(first, config.replace(weight_method=WeightMethod.RTN), source=str(in_path), calibration=calibration)
    # Every quantizer of a model has one config, so layers whose quantizers read one activation
    # (q/k/v, gate/up) get the same MatMul input: measure it once, for the first of them.
    readers: dict[str, list[str]] = {}
    for _, node, quantizer in rewritten_layers(first.graph):
        activation, read = quantizer.inputs[0], node.inputs[0]
        assert activation is not None and read is not None
        readers.setdefault(str(activation.name), []).append(str(read.name))
    with tempfile.TemporaryDirectory(prefix="stamp-onnx-") as tmp:
        path = Path(tmp) / "rtn.onnx"
        logger.info("measuring GPTQ's Hessians on the model with round-to-nearest weights")
        save_model(first, path)
        measured = calibrate(path, feeds, [names[0] for names in readers.values()], hessians=True)
    hessian = {name: measured.hessian[names[0]] for names in readers.values() for name in names}
    if calibration is None:
        return dataclasses.replace(measured, amax={}, hessian=hessian)
    return dataclasses.replace(calibration, hessian=hessian)


def token_energies(in_path: str | Path, config: StampConfig, feeds: dict[str, np.ndarray],
                   calibration: Calibration | None) -> Calibration:
    """Each rewritten layer's mean energy per transformed token, E ||(L x)_i||^2 over ``feeds``
    (``energy``, by layer name; no other statistic).

    Measured where the quantizer reads it: the model is rewritten with ``config``'s transform and
    feature transform (``calibration``: what those need) but two tiers and float weights, each
    TransformQDQ exposes its output T = L x (TokenQDQ: its input), and T is calibrated. The layers
    before a layer are then quantized with two tiers, which moves its energy profile very little.
    """
    first = load_model(in_path)
    rewrite(first, config.replace(bit_allocation=BitAllocation.TIERS, avg_bits=0.0, weight_bits=0, weight_block=0,
                                  weight_method=WeightMethod.RTN), source=str(in_path), calibration=calibration)
    with tempfile.TemporaryDirectory(prefix="stamp-onnx-") as tmp:
        path = Path(tmp) / "tiers.onnx"
        save_model(first, path)
        proto = onnx.load(str(path), load_external_data=False)  # its weights stay in the file next to it
        ops.expose_transformed(proto)
        onnx.save(proto, str(path))
        taps = {}
        for node in proto.graph.node:
            layer = layer_of_proto(node)
            if node.domain == ops.DOMAIN and node.op_type in ops.QUANTIZERS and layer is not None:
                taps[layer] = node.output[1] if node.op_type == ops.TRANSFORM_QDQ else node.input[0]
        logger.info("measuring the token energies of %d layers", len(taps))
        measured = calibrate(path, feeds, list(dict.fromkeys(taps.values())), energies=True)
    return dataclasses.replace(measured, amax={}, energy={layer: measured.energy[name] for layer, name in taps.items()})


def _linear_inputs(model: ir.Model) -> list[str]:
    """Names of the activations read by MatMul/Gemm nodes with a constant weight (what calibration measures)."""
    return [node.inputs[0].name for node in model.graph
            if node.op_type in LINEAR_OPS and node.inputs[0] is not None and node.inputs[0].name
            and len(node.inputs) > 1 and is_constant(node.inputs[1])]
