"""A whole model for the HTP: onnxruntime's QNN quantizer for every op, STaMP units for the linear layers.

``quantize_for_htp`` is what ``stamp-onnx quantize --target htp`` runs:

1. :func:`prepare_float`: fixed shapes (batch, seq_len), the named inputs folded to constants
   (a text encoder's all-ones attention_mask: its GatherND/Where mask builder has no HTP op),
   a folded causal mask's float32-lowest entries raised to MASK_FLOOR (-100),
   a decomposed RMSNorm fused into ONNX's RMSNormalization (opset 23, onnxscript's fusion rule),
   constant folding by onnxruntime's basic level (without MatMulAddFusion, which would turn the
   linear layers into Gemms between Reshapes), metadata_props stripped (onnxruntime 1.32's
   ``qnn_preprocess_model`` fails on them), then ``qnn_preprocess_model``.
2. :func:`qnn_baseline`: ``get_qnn_qdq_config`` + ``quantize``: activations u16, MatMul weights
   int8 symmetric per channel (axis 1), every other weight at the default type (an int8
   LayerNorm gamma makes LayerNormalization unsupported). This alone is the A16W8 baseline.
3. :func:`splice_units`: every MatMul with a constant weight (and its bias Add) is replaced by an
   integer STaMP unit (:mod:`stamp_onnx.targets.htp_units`) reading the same u16 input and writing the
   same u16 output encoding, so the rest of the graph is untouched. The unit's inner encodings
   are calibrated on the float model's activations of that layer, in the transformed domain.

Before::  x_q ─► DQ ─► MatMul(DQ(W int8)) ─► Q ─► DQ ─► Add(DQ(b)) ─► Q ─► y_q
After::   x_q ─► [STaMP unit: block transform, hp u16 / lp u8 groups, W, inverse, bias] ─► y_q
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from stamp_onnx.config import BitAllocation, StampConfig
from stamp_onnx.core import transforms
from stamp_onnx.core.naming import counter_namer, layer_name_from_metadata
from stamp_onnx.errors import ConfigError, ModelLoadError, RewriteError, first_line
from stamp_onnx.graph.contract import HTP_KEY
from stamp_onnx.graph.model_io import check_output_path, load_model
from stamp_onnx.targets import htp_units
from stamp_onnx.targets.htp_plan import CALIBRATORS, BlockPlan, Encoding, calibrate_unit
from stamp_onnx.targets.htp_units import QuantWeight, QValue, UnitEmitter, UnitSpec

logger = logging.getLogger(__name__)

HP_BITS, LP_BITS = 16, 8  # the HTP's defaults: the activation types it has


@dataclasses.dataclass(frozen=True)
class HtpOptions:
    """What ``--target htp`` adds to a StampConfig: bit widths the HTP has (16/8 activations,
    8/4 weights), the calibrator (and its percentile), the fixed shape and inputs folded to constants."""

    seq_len: int
    batch: int = 1
    hp_bits: int = HP_BITS
    lp_bits: int = LP_BITS
    weight_bits: int = 8
    calibrator: str = "minmax"  # htp_plan.CALIBRATORS: how the units' groups are ranged
    percentile: float = 99.999  # calibrator "percentile" only
    fold_inputs: tuple[str, ...] = ()
    baseline: bool = False  # only the QNN quantizer (A16W8): no STaMP units

    def __post_init__(self) -> None:
        for name in ("hp_bits", "lp_bits"):
            if getattr(self, name) not in (8, 16):
                raise ConfigError(f"{name}={getattr(self, name)}: the HTP's activations are 8 or 16 bits")
        if self.weight_bits not in (4, 8):
            raise ConfigError(f"weight_bits={self.weight_bits}: the HTP's weights are int8 or int4")
        if self.calibrator not in CALIBRATORS:
            raise ConfigError(f"calibrator {self.calibrator!r} is not known; choose one of {', '.join(CALIBRATORS)}")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile={self.percentile} is not allowed; use a number in (50, 100]")
        if self.seq_len < 1 or self.batch < 1:
            raise ConfigError(f"seq_len={self.seq_len}, batch={self.batch}: the HTP needs fixed positive shapes")


# --- step 1: a fixed-shape float model ----------------------------------------------------


def prepare_float(model_path: str | Path, out_path: str | Path, options: HtpOptions,
                  feeds: dict[str, np.ndarray]) -> dict[str, str]:
    """Write the fixed-shape, folded, preprocessed float model to ``out_path``; returns the layer
    (module) name of each MatMul node, read from the exporter's metadata before it is stripped."""
    import onnxruntime as ort
    from onnxruntime.quantization.execution_providers.qnn import qnn_preprocess_model
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_input_shape_fixed

    load_model(model_path)  # the project's checks: a readable model, safe external data, onnx.checker
    try:
        model = onnx.load(str(model_path))
    except Exception as err:  # OSError, protobuf's DecodeError, onnx's own errors
        raise ModelLoadError(f"cannot read {model_path} as an ONNX model: {first_line(err)}") from err
    names = [i.name for i in model.graph.input]
    for name in options.fold_inputs:
        if name not in names:
            raise ConfigError(f"--fold-input {name}: the model has no input of that name (inputs: {', '.join(names)})")
    for graph_input in list(model.graph.input):
        if graph_input.name in options.fold_inputs:
            value = _constant_feed(feeds, graph_input.name, options)
            model.graph.input.remove(graph_input)
            model.graph.initializer.append(numpy_helper.from_array(value, graph_input.name))
            continue
        # a dynamic first dim is the batch, any other dynamic dim the sequence (text: (batch, sequence);
        # images: (batch, 3, 224, 224) with only the batch dynamic)
        dims = graph_input.type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else
                 (options.batch if i == 0 else options.seq_len) for i, d in enumerate(dims)]
        make_input_shape_fixed(model.graph, graph_input.name, shape)
    fix_output_shapes(model)
    del model.metadata_props[:]
    layers = {}
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            layers[node.name] = layer_name_from_metadata({p.key: p.value for p in node.metadata_props}, node.name)
        del node.metadata_props[:]
    with tempfile.TemporaryDirectory() as tmp:
        fixed, folded = Path(tmp) / "fixed.onnx", Path(tmp) / "folded.onnx"
        onnx.save(model, str(fixed))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(folded)
        try:
            ort.InferenceSession(str(fixed), so, providers=["CPUExecutionProvider"], disabled_optimizers=["MatMulAddFusion"])
        except Exception as err:  # onnxruntime's own error kinds
            raise RewriteError(f"onnxruntime cannot fold {model_path} at fixed shapes: {first_line(err)}") from err
        folded_model = _fuse_rms_norms(onnx.load(str(folded)))
        del folded_model.metadata_props[:]
        _floor_masks(folded_model)
        onnx.save(folded_model, str(folded))
        if not qnn_preprocess_model(str(folded), str(out_path)):
            onnx.save(folded_model, str(out_path))
    return layers


RMS_NORM_OPSET = 23  # the first ONNX opset with RMSNormalization


def _fuse_rms_norms(model: onnx.ModelProto) -> onnx.ModelProto:
    """Each decomposed RMSNorm (Pow(x, 2) -> ReduceMean -> Add(eps) -> Sqrt -> Reciprocal -> Mul ->
    Mul(gamma)) as one RMSNormalization, which the HTP runs as its integer RmsNorm.

    Decomposed, every step gets one per-tensor u16 encoding: an LLM's massive activations
    (SmolLM2's residual reaches 2.5e4) set Pow's step to ~1e4, an ordinary token's squares
    become 0 and 1/sqrt(eps) blows it up. The model is converted to opset 23 only when it has
    such a norm (a dry run of the rule on a copy counts them first)."""
    import onnx_ir as ir
    from onnxscript.rewriter.rules.fusion._rms_normalization import fuse_rms_normalization

    from stamp_onnx.passes.convert_opset import ConvertOpsetPass

    def explicit(graph: ir.Model) -> ir.Model:
        # the rule matches ReduceMean's attributes as written: spell out the defaults
        for node in ir.traversal.RecursiveGraphIterator(graph.graph):
            if node.op_type == "ReduceMean" and node.domain == "":
                for name in ("keepdims", "noop_with_empty_axes"):
                    if name not in node.attributes:
                        node.attributes[name] = ir.AttrInt64(name, 1 if name == "keepdims" else 0)
        return graph

    if not fuse_rms_normalization(explicit(ir.from_proto(model))):
        return model
    converted = explicit(ir.from_proto(model))
    ConvertOpsetPass(RMS_NORM_OPSET)(converted)
    count = fuse_rms_normalization(converted)
    logger.info("fused %d RMSNorms into RMSNormalization (opset %d)", count, RMS_NORM_OPSET)
    return ir.to_proto(converted)


MASK_FLOOR = -100.0  # exp(-100) is 0 in float32 next to any unmasked score; keeps a u16 step of ~2e-3


def _floor_masks(model: onnx.ModelProto) -> None:
    """Raise a folded attention mask's "minus infinity" (float32's lowest, from a causal mask
    builder) to MASK_FLOOR: the QNN quantizer calibrates the Add of scores and mask over the whole
    range, and a u16 step of 5e33 turns every attention score into the same code."""
    for index, init in enumerate(model.graph.initializer):
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(init)
        if values.size and values.min() < -1e30:
            logger.info("%s: values below -1e30 raised to %g (a folded attention mask)", init.name, MASK_FLOOR)
            model.graph.initializer[index].CopyFrom(
                numpy_helper.from_array(np.maximum(values, np.float32(MASK_FLOOR)), init.name))


def _constant_feed(feeds: dict[str, np.ndarray], name: str, options: HtpOptions) -> np.ndarray:
    if name not in feeds:
        raise ConfigError(f"--fold-input {name}: the calibration file has no array {name!r} to take its value from")
    rows = np.asarray(feeds[name])
    if not (rows == rows[:1]).all():
        raise ConfigError(f"--fold-input {name}: its calibration values differ between samples; "
                          "only an input that is the same for every sample can be folded")
    return np.repeat(rows[:1], options.batch, axis=0)


def model_feeds(model_path: str | Path, feeds: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """One feed dict per sample, for the inputs ``model_path`` has (folded ones dropped)."""
    model = onnx.load(str(model_path), load_external_data=False)
    names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise ConfigError(f"the data has no array for the model input(s) {', '.join(missing)} (it has: "
                          f"{', '.join(feeds) or 'nothing'}); name the arrays after the model's inputs")
    batch = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value or 1
    count = min(len(feeds[n]) for n in names)
    for start in range(0, count - batch + 1, batch):
        yield {n: np.asarray(feeds[n][start : start + batch]) for n in names}


# --- step 2: onnxruntime's QNN quantizer --------------------------------------------------


def qnn_baseline(prepared: str | Path, out_path: str | Path, feeds: dict[str, np.ndarray], options: HtpOptions) -> None:
    """Quantize the prepared float model with onnxruntime's QNN tooling: A16W8, MatMul weights
    int8 symmetric per channel on axis 1 (the strongest configuration measured here)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantType,
        quantize,
    )
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    model = onnx.load(str(prepared))
    inits = {i.name for i in model.graph.initializer}
    weight_type = QuantType.QInt8 if options.weight_bits == 8 else QuantType.QInt4
    overrides = {n.input[1]: [{"quant_type": weight_type, "axis": 1, "symmetric": True}]
                 for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits}
    samples = list(model_feeds(prepared, feeds))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter(samples)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.rows, None)

    # onnxruntime has no MSE calibrator: with "mse" the rest of the graph is calibrated min/max
    method = CalibrationMethod.Percentile if options.calibrator == "percentile" else CalibrationMethod.MinMax
    config = get_qnn_qdq_config(str(prepared), Reader(), calibrate_method=method, activation_type=QuantType.QUInt16,
                                weight_type=QuantType.QUInt8, init_overrides=overrides)
    if method == CalibrationMethod.Percentile:
        config.extra_options["CalibPercentile"] = options.percentile
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer's advice to preprocess (done) goes to the root logger
    try:
        quantize(str(prepared), str(out_path), config)
    except Exception as err:  # the quantizer raises plain exceptions of many kinds
        raise RewriteError(f"onnxruntime's QNN quantizer failed: {first_line(err)}") from err
    finally:
        root.setLevel(level)


# --- step 3: STaMP units in place of the linear layers -----------------------------------


@dataclasses.dataclass
class LinearRegion:
    """One linear layer in the QDQ model: the nodes from the u16 input to the u16 output."""

    name: str
    matmul: onnx.NodeProto
    float_input: str  # the activation's name in the float model
    x_q: str
    x_encoding: Encoding
    weight: QuantWeight
    bias: QValue | None
    y_q: str  # the final quantized output (after the bias Add when there is one)
    y_encoding: Encoding
    removed: list[onnx.NodeProto]


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.inits = {i.name: i for i in self.graph.initializer}
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name])

    def encoding(self, node: onnx.NodeProto) -> Encoding:
        zp = self.array(node.input[2])
        bits = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(zp.dtype)
        if bits is None:
            raise RewriteError(f"{node.name}: activation encoding of type {zp.dtype}; the HTP path expects uint8/uint16")
        return Encoding(float(self.array(node.input[1])), int(zp), bits)

    def only(self, name: str, op: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op else None


def linear_regions(model: onnx.ModelProto, float_model: onnx.ModelProto, config: StampConfig,
                   layer_names: dict[str, str] | None = None) -> tuple[list[LinearRegion], list[str]]:
    """The linear layers of a QNN-quantized model that get a unit, and why others do not
    (``layer_names``: node name -> module name, for the config's include/exclude)."""
    layer_names = layer_names or {}
    g = _Graph(model)
    float_nodes = {n.name: n for n in float_model.graph.node}
    regions, skipped = [], []
    for node in g.graph.node:
        if node.op_type == "Gemm" and len(node.input) > 1 and _is_constant(g, node.input[1]):
            skipped.append(f"{layer_names.get(node.name, node.name)}: a Gemm (only MatMul + Add layers get units)")
            continue
        if node.op_type != "MatMul":
            continue
        x_dq, w_dq = (g.producer.get(node.input[0]), g.producer.get(node.input[1]))
        if w_dq is None or w_dq.op_type != "DequantizeLinear" or w_dq.input[0] not in g.inits:
            continue  # a product of two activations (attention)
        layer = layer_names.get(node.name, node.name)
        why = config.selects(layer, node.name)
        if why:
            skipped.append(f"{layer}: {why}")
            continue
        if x_dq is None or x_dq.op_type != "DequantizeLinear" or node.name not in float_nodes:
            skipped.append(f"{node.name}: its input is not a QDQ activation")
            continue
        q = g.only(node.output[0], "QuantizeLinear")
        if q is None:
            skipped.append(f"{node.name}: its output is not quantized once")
            continue
        removed = [node, q]
        if len(g.consumers.get(w_dq.output[0], [])) == 1:
            removed.append(w_dq)
        y_q, y_enc, bias = q.output[0], g.encoding(q), None
        dq = g.only(q.output[0], "DequantizeLinear")
        add = g.only(dq.output[0], "Add") if dq is not None else None
        if dq is not None and add is not None:
            other = add.input[1] if add.input[0] == dq.output[0] else add.input[0]
            b_dq = g.producer.get(other)
            q2 = g.only(add.output[0], "QuantizeLinear")
            if b_dq is not None and b_dq.op_type == "DequantizeLinear" and b_dq.input[0] in g.inits and q2 is not None:
                bias = QValue(b_dq.input[0], g.encoding(b_dq))
                removed += [dq, add, q2] + ([b_dq] if len(g.consumers[b_dq.output[0]]) == 1 else [])
                y_q, y_enc = q2.output[0], g.encoding(q2)
        weight = QuantWeight(*w_dq.input[:3])
        regions.append(LinearRegion(layer, node, float_nodes[node.name].input[0], x_dq.input[0], g.encoding(x_dq),
                                    weight, bias, y_q, y_enc, removed))
    return regions, skipped


def _is_constant(g: _Graph, name: str) -> bool:
    """An initializer, or the DequantizeLinear of one."""
    src = g.producer.get(name)
    return name in g.inits or (src is not None and src.op_type == "DequantizeLinear" and src.input[0] in g.inits)


def float_activations(float_path: str | Path, names: Sequence[str], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float model's values ``names`` over all calibration samples, stacked on axis 0."""
    import onnxruntime as ort

    model = onnx.load(str(float_path))
    known = {o.name for o in model.graph.output}
    for name in names:
        if name not in known:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in model_feeds(float_path, feeds):
        values = session.run(list(names), feed)
        for n, v in zip(names, values, strict=True):
            out[n].append(v)
    return {n: np.concatenate(v) for n, v in out.items()}


def splice_units(model: onnx.ModelProto, float_path: str | Path, feeds: dict[str, np.ndarray],
                 config: StampConfig, options: HtpOptions,
                 layer_names: dict[str, str] | None = None) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Replace every selected linear layer of the QNN-quantized ``model`` by an integer STaMP unit."""
    float_model = onnx.load(str(float_path))
    regions, skipped = linear_regions(model, float_model, config, layer_names)
    if not regions:
        raise RewriteError("no linear layer (MatMul with a constant weight between QDQ activations) to rewrite")
    acts = float_activations(float_path, sorted({r.float_input for r in regions}), feeds)
    g = _Graph(model)
    index = {id(n): i for i, n in enumerate(model.graph.node)}
    units: dict[int, UnitEmitter] = {}
    removed: set[int] = set()
    layers = []
    taken = {n.name for n in model.graph.node} | {o for n in model.graph.node for o in n.output} | set(g.inits)
    fresh = counter_namer(taken)
    for region in regions:
        x = acts[region.float_input]
        if x.ndim != 3:
            skipped.append(f"{region.name}: activation of rank {x.ndim}; the unit needs (batch, tokens, features)")
            continue
        levels = transforms.resolve_levels(config.levels, x.shape[1], config.hp_tokens, config.prefix_tokens,
                                           config.transform, config.grid_width)  # the length is static here
        plan = BlockPlan(config.transform, x.shape[1], levels, config.prefix_tokens, config.hp_tokens,
                         config.grid_width)
        codes, scales = g.array(region.weight.codes), g.array(region.weight.scales)
        w_real = (codes.astype(np.float32) * scales.reshape(1, -1)).astype(np.float32)
        weight_t = _transposed_weight(g, region.weight, fresh(f"{region.name}/htp/weight_t"))
        ranges = calibrate_unit(plan, x, w_real, calibrator=options.calibrator, percentile=options.percentile,
                                hp_bits=options.hp_bits, lp_bits=options.lp_bits)
        em = UnitEmitter(region.name, fresh=fresh)
        em.initializers.update(weight_t[1])
        spec = UnitSpec(plan, options.batch, x.shape[2], weight_t[0], w_real.shape[1], region.bias,
                        region.x_encoding, region.y_encoding, ranges, options.hp_bits, options.lp_bits)
        y = htp_units.emit_unit(em, QValue(region.x_q, region.x_encoding), spec)
        _rename_output(em, y.name, region.y_q)
        units[index[id(region.matmul)]] = em
        removed |= {index[id(n)] for n in region.removed}
        # the bytes of the layer's input as its products with W read it (hp rows at hp bits, the rest at lp),
        # against one u16 tensor (A16): K = 64 of 257 tokens at 16 bits reads 0.62x
        rows, features = options.batch * x.shape[1], x.shape[2]
        hp_rows = options.batch * plan.hp_count
        layers.append({"layer": region.name, "hp_tokens": plan.hp_count, "rows_per_block": plan.rows,
                       "tail": plan.tail, "nodes": len(em.nodes),
                       "input_bytes": features * (hp_rows * options.hp_bits + (rows - hp_rows) * options.lp_bits) // 8,
                       "a16_input_bytes": features * rows * 2})
    _replace(model, units, removed)
    _drop_unused(model)
    return model, {"layers": layers, "skipped": skipped}


def _transposed_weight(g: _Graph, weight: QuantWeight, name: str) -> tuple[QuantWeight, dict[str, onnx.TensorProto]]:
    """The QNN quantizer's (d, n) MatMul weight as (n, d) codes for Gemm(transB=1), same scales."""
    source = g.inits[weight.codes]
    codes = g.array(weight.codes).T
    if source.data_type == onnx.TensorProto.INT4:
        tensor = onnx.helper.make_tensor(name, onnx.TensorProto.INT4, codes.shape, codes.astype(np.int8).ravel().tolist())
    else:
        tensor = numpy_helper.from_array(np.ascontiguousarray(codes), name)
    return QuantWeight(name, weight.scales, weight.zero_points), {name: tensor}


def _rename_output(em: UnitEmitter, old: str, new: str) -> None:
    for node in em.nodes:
        for i, out in enumerate(node.output):
            if out == old:
                node.output[i] = new


def _replace(model: onnx.ModelProto, units: dict[int, UnitEmitter], removed: set[int]) -> None:
    """Rebuild the node list once: each unit where its layer's MatMul was (its inputs come before
    it, the users of its output after), the layer's old nodes left out."""
    nodes: list[onnx.NodeProto] = []
    for i, node in enumerate(model.graph.node):
        if i in units:
            nodes += units[i].nodes
        elif i not in removed:
            nodes.append(onnx.NodeProto.FromString(node.SerializeToString()))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    for em in units.values():
        model.graph.initializer.extend(em.initializers.values())


def _drop_unused(model: onnx.ModelProto) -> None:
    """Remove nodes whose outputs nobody reads (a DQ of x left without users) and orphaned initializers."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    while True:
        used = {name for n in graph.node for name in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {name for n in graph.node for name in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


# --- the command ----------------------------------------------------------------------------


def quantize_for_htp(input_path: str | Path, output_path: str | Path, feeds: dict[str, np.ndarray],
                     config: StampConfig, options: HtpOptions, *, check_htp: bool = True) -> dict[str, Any]:
    """``stamp-onnx quantize IN -o OUT --target htp --calibration FILE.npz --seq-len S``: a
    fixed-shape static QDQ model for the HTP; returns a report (layers rewritten, skipped).
    The output is written to a temporary file, checked (``onnx.checker``; with ``check_htp``, every
    node taken by the HTP when onnxruntime-qnn is there) and renamed into place."""
    output_path = check_output_path(input_path, output_path)
    if config.bit_allocation != BitAllocation.TIERS:
        raise ConfigError(f"--target htp does not take --bit-allocation {config.bit_allocation}: its STaMP units have two "
                          "tiers (hp and lp encodings); use --bit-allocation tiers")
    with tempfile.TemporaryDirectory(dir=output_path.parent) as tmp:
        prepared, base = Path(tmp) / "float.onnx", Path(tmp) / "qnn.onnx"
        layer_names = prepare_float(input_path, prepared, options, feeds)
        qnn_baseline(prepared, base, feeds, options)
        model = onnx.load(str(base))
        report: dict[str, Any] = {"layers": [], "skipped": []}
        if not options.baseline:
            model, report = splice_units(model, prepared, feeds, config, options, layer_names)
        entry = model.metadata_props.add()
        entry.key, entry.value = HTP_KEY, _describe(config, options)
        staged = Path(tmp) / "out.onnx"
        onnx.save(model, str(staged))
        try:
            onnx.checker.check_model(str(staged), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
            raise RewriteError(f"the HTP model fails onnx.checker (full check): {first_line(err)}") from err
        if check_htp:
            _check_htp_takes_all(staged, input_path)
        staged.replace(output_path)
    return report


def _check_htp_takes_all(staged: Path, input_path: str | Path) -> None:
    """Refuse a model with nodes the HTP has no kernel for (listed by name and op type): such a file
    fails every HTP session with CPU fallback disabled. Opens one HTP session (seconds for a small
    model, about a minute for SmolLM2 on this simulator)."""
    from stamp_onnx.targets import htp_runtime

    if not htp_runtime.available():
        return
    nodes = htp_runtime.refused_nodes(staged)
    if nodes:
        raise RewriteError(htp_runtime.refusal_message(input_path, nodes))


def _describe(config: StampConfig, options: HtpOptions) -> str:
    import json

    if options.baseline:  # its "baseline": true says the file is the QNN quantizer's A16W8 alone
        return json.dumps(dataclasses.asdict(options), sort_keys=True)
    keys = ("transform", "levels", "prefix_tokens", "hp_tokens", "grid_width", "include", "exclude")
    return json.dumps({k: getattr(config, k) for k in keys} | dataclasses.asdict(options), sort_keys=True)
