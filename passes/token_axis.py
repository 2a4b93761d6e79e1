"""Which axis of a linear layer's activation holds the tokens of one sequence, from shapes alone.

STaMP transforms and quantizes along the tokens of ONE sequence. Taking the wrong axis mixes
the samples of a batch: a sample's output then changes with its batch-mates, and samples past
index K get the low bit-width. So each layer's token axis is decided from the shapes (after
ONNX's and onnxruntime's symbolic shape inference, :mod:`stamp_onnx.passes.infer_shapes`), and a
layer whose axis cannot be decided is skipped with the reason, never guessed.

The roles of the model's symbolic dimensions come first (:class:`DimRoles`):

- sequence dims: a graph input dim whose name says so (``seq``, ``sequence_length``, ``time``,
  ``frames``, ...), and the dim an attention score matrix is square in (a MatMul of two
  activations with output (..., n, n));
- batch dims: a graph input dim named like a batch, else the first dynamic dim of each graph
  input that is not a sequence dim ((batch, seq) ids, (batch, 3, H, W) images, (S, B, d)
  seq-first inputs once S is known from attention).

Then, per activation x of shape (a_0, ..., a_{r-2}, d), with d the features (:func:`decide`):

=====================================  ======================================================
(batch, seq, d), (seq, batch, d)       the axis with a sequence dim
(batch, 257, d), (1, 128, d)           the one axis left when batch dims and size-1 axes are
                                       removed (static token counts: ViTs, Whisper)
(batch*seq, d) from Reshape/Flatten    traced back to the (batch, seq, d) tensor before the
                                       flattening Reshape; quantized per sequence there
(batch, d)                             skipped: the rows are samples (a pooled output, a
                                       classifier head)
(seq, d)                               the rows are the tokens of one sequence
anything else                          skipped with the reason (``--token-axis`` overrides)
=====================================  ======================================================
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

import onnx_ir as ir

from stamp_onnx.core.naming import looks_like_batch, looks_like_sequence
from stamp_onnx.passes.constants import is_constant

FLATTENING_OPS = ("Reshape", "Flatten")

Dim = int | str | None  # static, symbolic (an expression such as "batch*seq" after symbolic inference), unknown


def dims_of(value: ir.Value) -> list[Dim] | None:
    """The dims of ``value`` (None when its rank is unknown). A symbol keeps its name whatever it
    is (``unk__214`` may be an exporter's name for a graph input's batch); one that no graph input
    carries simply has no role."""
    if value.shape is None:
        return None
    out: list[Dim] = []
    for dim in value.shape:
        if isinstance(dim, int):
            out.append(dim)
        elif dim.value is None:
            out.append(None)
        else:
            out.append(str(dim.value))
    return out


def shape_text(value: ir.Value) -> str:
    """'(batch, seq, 576)' or '(?)' for an unknown rank."""
    dims = dims_of(value)
    return "(?)" if dims is None else _dims_text(dims)


def _dims_text(dims: list[Dim]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


@dataclasses.dataclass(frozen=True)
class DimRoles:
    """The symbolic dims that are sequence lengths and those that are batch sizes."""

    sequence: frozenset[str]
    batch: frozenset[str]

    @classmethod
    def of(cls, model: ir.Model) -> DimRoles:
        inputs = [v for v in model.graph.inputs if not v.is_initializer()]
        named_batch, named_sequence = set(), set()
        for value in inputs:
            for dim in dims_of(value) or []:
                if isinstance(dim, str):
                    if looks_like_batch(dim):
                        named_batch.add(dim)
                    elif looks_like_sequence(dim):
                        named_sequence.add(dim)
        sequence = named_sequence | _attention_squares(model.graph.all_nodes(), named_batch)
        batch = set(named_batch)
        for value in inputs:
            for dim in dims_of(value) or []:
                if isinstance(dim, str) and dim not in sequence and not _is_product(dim):
                    batch.add(dim)
                    break
        return cls(frozenset(sequence), frozenset(batch - sequence))

    def role(self, dim: Dim) -> str:
        """'sequence', 'batch', 'flattened' (a product with a sequence or batch factor), 'static' or 'unknown'."""
        if isinstance(dim, int):
            return "static"
        if dim is None:
            return "unknown"
        if dim in self.sequence:
            return "sequence"
        if dim in self.batch:
            return "batch"
        if _is_product(dim) and any(f in self.sequence or f in self.batch for f in _factors(dim)):
            return "flattened"
        return "unknown"


def _is_product(dim: str) -> bool:
    return "*" in dim


def _factors(dim: str) -> list[str]:
    return [f.strip() for f in dim.split("*")]


def _attention_squares(nodes: Iterable[ir.Node], batch: set[str]) -> set[str]:
    """Dims n of MatMul(activation, activation) outputs shaped (..., n, n): attention scores."""
    found = set()
    for node in nodes:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
            continue
        if is_constant(node.inputs[0]) or is_constant(node.inputs[1]):
            continue
        dims = dims_of(node.outputs[0]) or []
        if len(dims) >= 2 and isinstance(dims[-1], str) and dims[-1] == dims[-2] and dims[-1] not in batch:
            found.add(dims[-1])
    return found


@dataclasses.dataclass(frozen=True)
class TokenAxis:
    """Where a layer's tokens are: quantize ``source`` (x itself, or the tensor x was flattened
    from) along ``axis`` of ``source``; ``how`` says why, for the report."""

    source: ir.Value
    axis: int
    how: str
    view: int = 0  # > 0: x is re-viewed as (source's first `view` dims, [-1,] features); `source` only gives those dims
    features: int = 0

    @property
    def flattened(self) -> bool:
        return self.how.startswith("flattened")


def decide(x: ir.Value, roles: DimRoles, override: int | None = None, features: int | None = None) -> TokenAxis | str:
    """The token axis of activation ``x`` (``features`` on its last axis), or why there is none."""
    dims = dims_of(x)
    if dims is None:
        return "activation rank is unknown (shape inference could not tell it): pass --token-axis"
    if len(dims) < 2:
        return f"activation has rank {len(dims)}: no token axis"
    if override is not None:
        axis = override + len(dims) if override < 0 else override
        if not 0 <= axis < len(dims) - 1:
            return f"token axis {override} is out of range for a rank-{len(dims)} activation (the last axis holds the features)"
        return TokenAxis(x, axis, "given")
    found = _direct(dims, roles)
    if isinstance(found, int):
        return TokenAxis(x, found, "inferred")
    source = _flattened_from(x)
    if source is None or len(dims) != 2 or roles.role(dims[0]) == "batch":
        return found  # (batch, d) rows are samples however they were made
    inner = dims_of(source) or []
    d = dims[-1] if isinstance(dims[-1], int) else features
    if d is not None and inner[-1] == d:
        inner_axis = _direct(inner, roles)
        if isinstance(inner_axis, int):
            return TokenAxis(source, inner_axis, f"flattened from {shape_text(source)}, quantized per sequence there")
        return f"tokens and samples are flattened into one axis {shape_text(x)}, and the tensor before the flattening has no clear token axis: {inner_axis}"
    # the features merge trailing axes of the source, e.g. (s, b*h, hd) -> (s*b, h*hd): view the rows
    # as (s, rows/s) when the source's leading axis is the sequence, (b, s) when it is (batch, seq, ...)
    kinds = [roles.role(dim) for dim in inner]
    trailing = inner[2:]
    if d is not None and kinds[0] == "sequence":
        return TokenAxis(source, 0, f"flattened from {shape_text(source)}, viewed as (tokens, rows/tokens, {d})", view=1, features=d)
    if d is not None and kinds[:2] == ["batch", "sequence"] and all(isinstance(t, int) for t in trailing) \
            and math.prod(t for t in trailing if isinstance(t, int)) == d:
        return TokenAxis(source, 1, f"flattened from {shape_text(source)}, viewed as (batch, tokens, {d})", view=2, features=d)
    return f"tokens and samples are flattened into one axis {shape_text(x)} from {shape_text(source)}, whose axes cannot be told apart"


def _direct(dims: list[Dim], roles: DimRoles) -> int | str:
    """The token axis read from ``dims`` alone, or why not."""
    rank = len(dims)
    axes = range(rank - 1)
    kinds = [roles.role(dims[i]) for i in axes]
    shape = _dims_text(dims)
    sequence = [i for i in axes if kinds[i] == "sequence"]
    if len(sequence) == 1:
        return sequence[0]
    if len(sequence) > 1:
        return f"several axes of {shape} have a sequence length: pass --token-axis"
    if "flattened" in kinds:
        return f"tokens and samples are flattened into one axis {shape} and the flattening Reshape cannot be traced"
    if rank == 2:
        if kinds[0] == "batch":
            return f"the rows of {shape} are samples (a pooled or per-sample activation): no token axis"
        return f"rank-2 activation {shape} with no token axis found (its rows may be samples): pass --token-axis 0 if they are the tokens of one sequence"
    candidates = [i for i in axes if kinds[i] != "batch" and dims[i] != 1]
    if len(candidates) == 1:
        return candidates[0]
    if rank - 2 in candidates and all(kinds[i] == "static" for i in candidates if i != rank - 2):
        return rank - 2  # static leading axes: a fixed batch (and heads); the convention puts tokens on -2
    return f"no axis of {shape} is known to hold the tokens: pass --token-axis"


def _flattened_from(x: ir.Value) -> ir.Value | None:
    """The rank >= 3 tensor that ``x`` (rank 2) was flattened from by a Reshape or Flatten."""
    producer = x.producer()
    if producer is None or producer.op_type not in FLATTENING_OPS or producer.domain not in ("", "ai.onnx"):
        return None
    source = producer.inputs[0]
    if source is None:
        return None
    inner, outer = dims_of(source), dims_of(x)
    if inner is None or outer is None or len(inner) < 3 or len(outer) != 2:
        return None
    if producer.op_type == "Flatten":
        axis = producer.attributes["axis"].as_int() if "axis" in producer.attributes else 1
        if axis % len(inner) != len(inner) - 1:
            return None
    return source
