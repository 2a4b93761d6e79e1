"""InferShapesPass: the shapes every later pass reads, from ONNX's and onnxruntime's shape inference.

Before::   x (batch, seq, 16) ──► Reshape ──► ? ──► Gemm ──► ?
After::    x (batch, seq, 16) ──► Reshape ──► (batch*seq, 16) ──► Gemm ──► (batch*seq, 48)

ONNX's shape inference runs first. Where it leaves a linear layer's activation with an unknown
rank or dims (it names them ``unk__N``: a Reshape of computed shape, a ReduceMean, ...),
onnxruntime's symbolic shape inference (``onnxruntime.tools.symbolic_shape_infer``) runs on a
copy of the graph and its dims fill the gaps: it keeps expressions such as ``batch*seq``, which
is how a flattened token axis is recognised (:mod:`stamp_onnx.passes.token_axis`). Either
inference may fail on an exotic graph; the pass then keeps what it has, and layers whose shapes
stay unknown are skipped with that reason. Negative dims (``-1``, which some exporters write for
a dynamic axis and onnxruntime accepts) are read as unknown symbolic dims first, and the unnamed
dims of graph inputs get names, which are recorded in the output model.

ONNX's inference runs in non-strict mode: a converted legacy model (paddle2onnx at opset 11)
failed strict inference on an inconsistent value_info and lost every shape. The pipeline runs
this pass before the opset conversion as well as after it: onnxruntime's symbolic inference
failed on magika's graph after the conversion and follows it before.

A Constant's declared output shape is set to its value's shape first: onnxruntime-genai's model
builder declares a 1-element constant as a scalar, which the output's full onnx.checker refuses.

Shapes are a help here, never a requirement: the pass does not change any node.
"""

from __future__ import annotations

import logging

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from stamp_onnx.errors import first_line
from stamp_onnx.graph.contract import LINEAR_OPS
from stamp_onnx.passes.token_axis import FLATTENING_OPS, dims_of

logger = logging.getLogger(__name__)


class InferShapesPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        _negative_dims_to_symbolic(model)
        _constant_shapes(model)
        try:
            common_passes.ShapeInferencePass(strict_mode=False)(model)
        except Exception as err:  # shapes are a help, not a requirement
            logger.warning("ONNX shape inference failed (%s)", first_line(err))
        if any(_incomplete(value) for value in _activations(model)):
            self._symbolic(model)
        if any(_incomplete(value) for value in _activations(model)):
            _carry_names(model)
        return ir.passes.PassResult(model, modified=False)

    def _symbolic(self, model: ir.Model) -> None:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        proto = ir.to_proto(model)
        for info in proto.graph.value_info:  # ONNX's unk__N dims would be taken as given, and kept
            for dim in info.type.tensor_type.shape.dim:
                if dim.dim_param.startswith("unk__"):
                    dim.ClearField("dim_param")
        try:
            inferred = SymbolicShapeInference.infer_shapes(proto, auto_merge=True, guess_output_rank=True)
        except Exception as err:  # it asserts on graphs it cannot follow
            logger.info("symbolic shape inference failed (%s); keeping ONNX's shapes", first_line(err) or type(err).__name__)
            return
        if inferred is None:
            return
        found = {info.name: info for info in inferred.graph.value_info}
        for node in model.graph.all_nodes():
            for value in node.outputs:
                info = found.get(value.name or "")
                if info is None or not _incomplete(value) or not info.type.HasField("tensor_type"):
                    continue
                tensor = info.type.tensor_type
                if not tensor.HasField("shape"):
                    continue
                value.shape = _to_shape([d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                         for d in tensor.shape.dim])


def _constant_shapes(model: ir.Model) -> None:
    """Declare every Constant's output with the shape of the value it holds."""
    for node in model.graph.all_nodes():
        value = node.attributes.get("value") if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        if value is None or not node.outputs:
            continue
        tensor = value.as_tensor()
        output = node.outputs[0]
        if output.shape is not None and output.shape != tensor.shape:
            output.shape = ir.Shape(list(tensor.shape.numpy()))


_SAME_SHAPE = frozenset({
    "Relu", "Gelu", "Erf", "Tanh", "Sigmoid", "Softmax", "LogSoftmax", "LayerNormalization", "Dropout", "Cast",
    "Identity", "Sqrt", "Neg", "Abs", "Exp", "Log", "Clip", "LeakyRelu", "HardSigmoid", "Softplus", "Mish",
    "SimplifiedLayerNormalization", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "BiasGelu", "FastGelu",
})
_BROADCAST = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where"})


def _carry_names(model: ir.Model) -> None:
    """Where both inferences leave a dim unknown, carry a named dim through ops that keep it.

    Elementwise and normalization ops keep their input's dims; a broadcasting op's output dim
    is the one named non-1 dim its inputs have there (a residual Add of a known stream and an
    unknown attention branch: valid models have equal dims there); a MatMul/Gemm keeps its
    activation's leading dims. Legacy exports that compute Reshape targets at run time are
    where this is needed: the residual stream keeps the input's names across every layer.
    """
    for node in model.graph.all_nodes():
        out = node.outputs[0] if node.outputs else None
        if out is None or not _incomplete(out):
            continue
        known = dims_of(out)
        if node.op_type in _SAME_SHAPE or node.op_type in _BROADCAST:
            inputs = [dims_of(v) for v in node.inputs if v is not None and not v.is_initializer() and v.const_value is None]
            rank = max((len(d) for d in inputs if d is not None), default=None)
            if rank is None or (known is not None and len(known) != rank):
                continue
            merged: list[int | str | None] = list(known) if known is not None else [None] * rank
            for i in range(rank):
                if merged[i] is not None and not _made_up(merged[i]):
                    continue
                names = {d[len(d) - rank + i] for d in inputs if d is not None and len(d) - rank + i >= 0}
                names = {n for n in names if n is not None and n != 1 and not _made_up(n)}
                if len(names) == 1:
                    merged[i] = names.pop()
            out.shape = _to_shape(merged)
        elif node.op_type in LINEAR_OPS and node.inputs[0] is not None and known is not None:
            source = dims_of(node.inputs[0])
            if source is None or len(source) != len(known):
                continue
            merged = [s if (k is None or _made_up(k)) and s is not None and not _made_up(s) else k
                      for s, k in zip(source[:-1], known[:-1], strict=True)] + [known[-1]]
            out.shape = _to_shape(merged)


def _to_shape(dims: list[int | str | None]) -> ir.Shape:
    return ir.Shape([d if isinstance(d, int) else ir.SymbolicDim(d) for d in dims])


def _made_up(dim: int | str | None) -> bool:
    return isinstance(dim, str) and dim.startswith("unk__")


def _activations(model: ir.Model) -> list[ir.Value]:
    """The activations of every MatMul/Gemm, and what a flattening Reshape/Flatten read them from."""
    found = []
    for node in model.graph.all_nodes():
        if node.op_type in LINEAR_OPS and node.inputs and node.inputs[0] is not None:
            x = node.inputs[0]
            found.append(x)
            producer = x.producer()
            if producer is not None and producer.op_type in FLATTENING_OPS and producer.inputs[0] is not None:
                found.append(producer.inputs[0])
    return found


def _incomplete(value: ir.Value) -> bool:
    """Rank or a dim unknown, or a dim named ``unk__N`` (what ONNX's inference calls a dim it cannot follow)."""
    dims = dims_of(value)
    return dims is None or any(d is None or _made_up(d) for d in dims)


def _negative_dims_to_symbolic(model: ir.Model) -> None:
    """-1 dims become unknown ones; a graph input's unknown dims get names (``x_dim0``), so that
    shape inference carries them through the graph and token_axis can give them roles."""
    values = [*model.graph.outputs, *(v for node in model.graph.all_nodes() for v in node.outputs)]
    for value in values:
        if value.shape is not None and any(isinstance(d, int) and d < 0 for d in value.shape):
            value.shape = ir.Shape([ir.SymbolicDim(None) if isinstance(d, int) and d < 0 else d for d in value.shape])
    for value in model.graph.inputs:
        if value.shape is None or value.is_initializer():
            continue
        unnamed = [(isinstance(d, int) and d < 0) or (not isinstance(d, int) and d.value is None) for d in value.shape]
        if any(unnamed):
            value.shape = ir.Shape([ir.SymbolicDim(f"{value.name}_dim{i}") if blank else d
                                    for i, (d, blank) in enumerate(zip(value.shape, unnamed, strict=True))])
