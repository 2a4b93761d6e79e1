"""Compare a float ONNX model with its rewrite, with nothing but numpy and onnxruntime.

For a model from any exporter: no PyTorch, no built-in model. Both files run in onnxruntime on
the same inputs (the user's, or generated ones that fit the declared input types and shapes);
each output is compared (SQNR with :func:`stamp_onnx.core.quant.sqnr_db`'s formula, through
:class:`stamp_onnx.evaluation.metrics.RunningDiff`, cosine, max |diff|), and the rewritten model is checked
for batch independence: a per-token quantizer must never let one sample change another's output.

Generated inputs, per graph input: the batch axis (:func:`batch_axis`) gets ``batch`` rows,
other symbolic or unknown dims ``seq_len``, static dims stay. Integer inputs are token ids in
``[0, V)`` with V the rows of the constant table of a Gather that reads them (through Cast,
Unsqueeze, Reshape, ...); names holding ``mask`` get ones, ``position`` an arange,
``token_type`` zeros; with no table found, small non-negative ints and a note. Float inputs are
random walks along every axis but the batch and the last (features), normalised per sample:
real activations are correlated along the tokens, white noise is not. Bool inputs are True.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from stamp_onnx.core.naming import looks_like_batch, looks_like_sequence
from stamp_onnx.errors import ConfigError, ModelLoadError, ValidationError, first_line
from stamp_onnx.evaluation.metrics import RunningDiff, json_finite
from stamp_onnx.graph import runtime
from stamp_onnx.graph.model_io import load_arrays, load_model

Dim = int | str | None  # static size, symbolic name, unknown
_IMAGE_SIDE = re.compile(r"height|width", re.IGNORECASE)
_PASS_THROUGH = {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity"}  # keep the ids' values
_TABLE_SOURCES = {"DequantizeLinear", "Cast", "Identity"}  # a constant table through these is still constant
_FLOAT_TYPES = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE}
_INT_TYPES = {getattr(ir.DataType, t) for t in ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")}
SMALL_INTS = 4  # integer inputs with no table found: values in [0, SMALL_INTS)
_Ran = tuple[ort.InferenceSession, dict[str, np.ndarray]]  # a session and its outputs on the feeds


@dataclasses.dataclass(frozen=True)
class InputInfo:
    """One graph input as fed to both models: where its values came from."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    source: str


@dataclasses.dataclass(frozen=True)
class OutputDiff:
    """One output of the rewritten model against the float model's, over the whole batch."""

    name: str
    shape: tuple[int, ...]
    sqnr_db: float
    cosine: float
    max_abs: float


@dataclasses.dataclass(frozen=True)
class CompareReport:
    float_path: str
    rewritten_path: str
    kernels: str  # what ran the ai.stamp ops: runtime.NATIVE or runtime.FUNCTION_BODIES
    inputs: list[InputInfo]
    outputs: list[OutputDiff]
    batch_independent: bool | None  # None: not checked, see batch_reason
    batch_reason: str  # what the check changed and compared, or why it could not run
    failures: list[str]  # one line each
    notes: list[str] = dataclasses.field(default_factory=list)
    ep: str = "cpu"  # "htp": `outputs` are the CPU provider's (ORT_DISABLE_ALL), `ep_outputs` the HTP's
    ep_outputs: list[OutputDiff] = dataclasses.field(default_factory=list)  # the HTP's outputs vs float

    @property
    def ok(self) -> bool:
        return not self.failures

    def check(self) -> None:
        """Raise ValidationError listing the failures (nothing when ok)."""
        if self.failures:
            raise ValidationError(f"{self.rewritten_path}: " + "; ".join(self.failures))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; inf and nan as the strings 'inf', '-inf', 'nan' (as validate writes them)."""
        return json_finite({**dataclasses.asdict(self), "ok": self.ok})

    def to_text(self) -> str:
        kernels = "native kernels" if self.kernels == runtime.NATIVE else self.kernels
        lines = [f"float      {self.float_path}", f"rewritten  {self.rewritten_path} (ai.stamp ops: {kernels})", "inputs"]
        width = max([len(i.name) for i in self.inputs] + [len(o.name) for o in self.outputs] + [6])
        shapes = max([len(_shape(i.shape)) for i in self.inputs] + [len(_shape(o.shape)) for o in self.outputs] + [5])
        for i in self.inputs:
            lines.append(f"  {i.name:<{width}}  {_shape(i.shape):<{shapes}}  {i.dtype:<8} {i.source}")
        lines.append(f"  {'output':<{width}}  {'shape':<{shapes}} {'SQNR dB':>8} {'cosine':>8} {'max |diff|':>11}")
        for o in self.outputs:
            lines.append(f"  {o.name:<{width}}  {_shape(o.shape):<{shapes}} {o.sqnr_db:>8.2f} {o.cosine:>8.4f} {o.max_abs:>11.4g}")
        if self.ep == "htp":
            lines.append("  on the HTP (vs float), and its gap to the CPU provider on the same file:")
            cpu = {o.name: o for o in self.outputs}
            for o in self.ep_outputs:
                gap = o.sqnr_db - cpu[o.name].sqnr_db if o.name in cpu else math.nan
                lines.append(f"  {o.name:<{width}}  {_shape(o.shape):<{shapes}} {o.sqnr_db:>8.2f} {o.cosine:>8.4f} "
                             f"{o.max_abs:>11.4g}  HTP - CPU {gap:+.2f} dB")
        verdict = {True: "ok", False: "FAILED", None: "not checked"}[self.batch_independent]
        lines.append(f"batch independence: {verdict} ({self.batch_reason})")
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"FAIL: {f}" for f in self.failures]
        lines.append("ok" if self.ok else f"FAILED ({len(self.failures)} check{'s' if len(self.failures) > 1 else ''})")
        return "\n".join(lines)


def batch_axis(dims: Sequence[Dim], shape: Sequence[int] | None = None) -> int | None:
    """The batch axis of a graph input or output declared with ``dims``, or None.

    1. the first dim whose symbolic name looks like a batch ('batch', 'batch_size', 'N', 'B', ...);
    2. else axis 0 when it is symbolic or unknown and its name does not look like a sequence or
       an image side ('seq', 'sequence_length', 'tokens', 'time', 'height', ...);
    3. else axis 0 when static and ``shape`` (the actual array) has that many rows, more than one:
       a static batch is only trusted for arrays the user gave.
    """
    for axis, dim in enumerate(dims):
        if isinstance(dim, str) and looks_like_batch(dim):
            return axis
    if not dims:
        return None
    first = dims[0]
    if first is None or (isinstance(first, str) and not looks_like_sequence(first) and not _IMAGE_SIDE.search(first)):
        return 0
    if isinstance(first, int) and shape is not None and len(shape) > 0 and shape[0] == first > 1:
        return 0
    return None


def compare_files(
    float_path: str | Path,
    rewritten_path: str | Path,
    *,
    inputs: dict[str, np.ndarray] | None = None,
    batch: int = 2,
    seq_len: int = 16,
    native: bool = True,
    seed: int = 0,
    min_sqnr: float | None = None,
    ep: str = "cpu",
) -> CompareReport:
    """Run both files in onnxruntime on ``inputs`` (or generated ones) and compare every output.

    ``batch`` and ``seq_len`` shape the generated inputs only. The rewritten model runs with the
    native ai.stamp kernels when built and ``native`` (else the function bodies), the float model
    in a plain CPU session. ``min_sqnr``: an output below it (dB) is a failure.

    ``ep="htp"``: the rewritten file is a static QDQ model for the HTP (``quantize --target htp``):
    it runs in the CPU provider with graph optimizations off (the QDQ file's own arithmetic; the
    default levels fuse QDQ units into kernels that round otherwise) and on the HTP with CPU
    fallback disabled, and the report gives both against float. Inputs it folded to constants
    (``--fold-input``) are fed to the float model only; shape the generated inputs with the HTP
    model's fixed ``batch`` and ``seq_len``.
    """
    if ep not in ("cpu", "htp"):
        raise ConfigError(f"ep={ep!r} is not allowed; choose cpu or htp")
    if batch < 1 or seq_len < 1:
        raise ConfigError(f"batch ({batch}) and seq_len ({seq_len}) must be positive")
    specs, out_dims, rewritten_inputs = _read_graphs(float_path, rewritten_path, folded=ep == "htp")
    notes: list[str] = []
    rng = np.random.default_rng(seed)
    if inputs is None:
        feeds, infos, axes = _generate(specs, batch, seq_len, rng, notes)
    else:
        feeds, infos, axes = _given(specs, inputs)
    float_session = _session(float_path, native=False)
    rewritten_session = _session(rewritten_path, native=native, reference=ep == "htp")
    given = inputs is not None
    reference = _run(float_session, feeds, float_path, given)
    rewritten_feeds = {name: value for name, value in feeds.items() if name in rewritten_inputs}
    approx = _run(rewritten_session, rewritten_feeds, rewritten_path, given)
    ep_outputs = []
    if ep == "htp":
        from stamp_onnx.targets import htp_runtime

        if not htp_runtime.available():
            raise ConfigError("--ep htp needs onnxruntime-qnn: pip install --no-deps onnxruntime-qnn==2.7.0")
        on_htp = _run(htp_runtime.htp_session(rewritten_path), rewritten_feeds, rewritten_path, given)
        ep_outputs = [_diff(name, reference[name], on_htp[name]) for name in reference
                      if name in on_htp and on_htp[name].shape == reference[name].shape]

    failures: list[str] = []
    diffs: list[OutputDiff] = []
    for name in reference:
        if name not in approx:
            failures.append(f"output {name!r} of {float_path} is missing from {rewritten_path}")
            continue
        ref, got = reference[name], approx[name]
        if ref.shape != got.shape:
            failures.append(f"output {name!r} has shape {ref.shape} in {float_path} but {got.shape} in {rewritten_path}")
            continue
        if ref.dtype.kind not in "biuf" or got.dtype.kind not in "biuf":
            notes.append(f"output {name!r} is not numeric ({ref.dtype}): only compared for equality")
            if not np.array_equal(ref, got):
                failures.append(f"output {name!r} ({ref.dtype}) differs between {float_path} and {rewritten_path}")
            continue
        diffs.append(_diff(name, ref, got))
        bad = int(np.sum(~np.isfinite(got.astype(np.float64)) & np.isfinite(ref.astype(np.float64))))
        if bad:
            failures.append(f"output {name!r}: {bad} values are nan or inf in {rewritten_path} where {float_path} is finite")
        if min_sqnr is not None and not diffs[-1].sqnr_db >= min_sqnr:
            failures.append(f"output {name!r}: SQNR {diffs[-1].sqnr_db:.2f} dB is below --min-sqnr {min_sqnr:g}")
    failures += [f"output {name!r} of {rewritten_path} is not an output of {float_path}" for name in approx if name not in reference]

    static = any(axis is not None and isinstance(spec.dims[axis], int) for spec, axis in zip(specs, axes, strict=True))
    independent, reason, batch_failures = _batch_check(
        specs, feeds, axes, out_dims, static, rng, (rewritten_session, approx), (float_session, reference),
    )
    return CompareReport(
        float_path=str(float_path), rewritten_path=str(rewritten_path), kernels=runtime.kernels(native),
        inputs=infos, outputs=diffs, batch_independent=independent, batch_reason=reason,
        failures=failures + batch_failures, notes=notes, ep=ep, ep_outputs=ep_outputs,
    )


def generate_inputs(model_path: str | Path, *, batch: int = 2, seq_len: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """The inputs :func:`compare_files` would generate for the model at ``model_path``."""
    graph = load_model(model_path).graph
    feeds, _, _ = _generate([_spec(v) for v in _graph_inputs(graph)], batch, seq_len, np.random.default_rng(seed), [])
    return feeds


def load_inputs(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, by name (ConfigError when it cannot be read)."""
    return load_arrays(path, "inputs file", "write one with numpy.savez(path, name=array, ...)")


# --- the inputs ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Spec:
    name: str
    dtype: ir.DataType
    dims: tuple[Dim, ...]
    kind: str  # float | ids | ints | mask | positions | zeros | bool
    high: int = 0  # ids, ints, positions: values in [0, high) (positions: 0 is no bound)
    source: str = ""


def _dims(value: ir.Value) -> tuple[Dim, ...]:
    """Declared dims (onnx.checker, run on load, refuses a graph input or output without a shape)."""
    if value.shape is None:
        raise ValidationError(f"{value.name!r} declares no shape; re-export the model with its input and output shapes")
    return tuple(d if isinstance(d, int) else d.value for d in value.shape)


def _graph_inputs(graph: ir.Graph) -> list[ir.Value]:
    return [v for v in graph.inputs if v.name not in graph.initializers]  # an initializer is only a default


def _read_graphs(float_path: str | Path, rewritten_path: str | Path, *, folded: bool = False
                 ) -> tuple[list[_Spec], dict[str, tuple[Dim, ...]], set[str]]:
    """What to feed each input, the declared dims of the rewritten model's outputs, and its input
    names (``folded``: the rewrite may have made some float inputs constants). The graphs (and
    any inline weights) are freed on return."""
    float_graph, rewritten_graph = load_model(float_path).graph, load_model(rewritten_path).graph
    specs = _input_specs(float_graph, rewritten_graph, float_path, rewritten_path, folded=folded)
    names = {str(v.name) for v in _graph_inputs(rewritten_graph)}
    return specs, {str(v.name): _dims(v) for v in rewritten_graph.outputs}, names


def _input_specs(float_graph: ir.Graph, rewritten_graph: ir.Graph, float_path: object, rewritten_path: object,
                 *, folded: bool = False) -> list[_Spec]:
    """What to feed each input of the float graph, after checking the rewrite takes the same inputs."""
    ours, theirs = _graph_inputs(float_graph), {str(v.name): v for v in _graph_inputs(rewritten_graph)}
    if folded:
        ours = [v for v in ours if str(v.name) in theirs] + [v for v in ours if str(v.name) not in theirs]
    if (folded and not set(theirs) <= {str(v.name) for v in ours}) or (
            not folded and sorted(str(v.name) for v in ours) != sorted(theirs)):
        raise ValidationError(f"{float_path} takes inputs {sorted(str(v.name) for v in ours)} but {rewritten_path} takes "
                              f"{sorted(theirs)}: compare a model with its own rewrite")
    specs = []
    for value in ours:
        other = theirs.get(str(value.name), value)  # a folded input: fed to the float model only
        if value.dtype != other.dtype or (value.shape is not None and other.shape is not None
                                          and len(value.shape) != len(other.shape)):
            raise ValidationError(f"input {value.name!r} is {_type(value)} in {float_path} but {_type(other)} in "
                                  f"{rewritten_path}: compare a model with its own rewrite")
        specs.append(_spec(value))
    return specs


def _spec(value: ir.Value) -> _Spec:
    name, dtype, dims = str(value.name), value.dtype, _dims(value)
    lower = name.lower()
    if dtype is None or not (dtype == ir.DataType.BOOL or dtype in _FLOAT_TYPES or dtype in _INT_TYPES):
        raise ValidationError(f"input {name!r} is {_type(value)}: compare takes float (16, 32, 64 bits), integer and "
                              "bool inputs only")
    if dtype == ir.DataType.BOOL:
        return _Spec(name, dtype, dims, "bool", source="True")
    if "mask" in lower:
        return _Spec(name, dtype, dims, "mask", source="ones (a mask)")
    if dtype in _FLOAT_TYPES:
        return _Spec(name, dtype, dims, "float", source="smooth random (random walk, normalised per sample)")
    if "token_type" in lower:
        return _Spec(name, dtype, dims, "zeros", source="zeros (token types)")
    table = _vocabulary(value)
    if "position" in lower:
        bound = "" if table is None else f" modulo the {table[0]} rows of {table[1]}"
        return _Spec(name, dtype, dims, "positions", table[0] if table else 0, f"arange (positions){bound}")
    if table is not None:
        return _Spec(name, dtype, dims, "ids", table[0], f"token ids in [0, {table[0]}) (rows of {table[1]})")
    return _Spec(name, dtype, dims, "ints", SMALL_INTS, f"ints in [0, {SMALL_INTS}): no Gather table reads it")


def _vocabulary(value: ir.Value) -> tuple[int, str] | None:
    """(rows, description) of the smallest constant table a Gather indexes with ``value``."""
    found: list[tuple[int, str]] = []
    stack, seen = [value], {id(value)}
    while stack:
        for use in stack.pop().uses():
            node = use.node
            if node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type in _PASS_THROUGH and use.idx == 0:
                fresh = [o for o in node.outputs if id(o) not in seen]
                seen.update(id(o) for o in fresh)
                stack.extend(fresh)
            elif node.op_type == "Gather" and use.idx == 1 and node.inputs[0] is not None:
                attr = node.attributes.get("axis")
                rows = _table_rows(node.inputs[0], 0 if attr is None else attr.as_int())
                if rows is not None:
                    found.append((rows, f"Gather {node.name or node.inputs[0].name!r}"))
    return min(found) if found else None


def _table_rows(value: ir.Value, axis: int) -> int | None:
    """Size along ``axis`` of a constant table (an initializer or Constant, maybe dequantized)."""
    while value.const_value is None:
        node = value.producer()
        if node is None:
            return None
        if node.op_type == "Constant" and "value" in node.attributes:
            shape = node.attributes["value"].as_tensor().shape
            break
        if node.op_type not in _TABLE_SOURCES or not node.inputs or node.inputs[0] is None:
            return None
        value = node.inputs[0]
    else:
        shape = value.const_value.shape
    dim = shape[axis] if -len(shape) <= axis < len(shape) else None
    return dim if isinstance(dim, int) and dim > 0 else None


def _generate(
    specs: list[_Spec], batch: int, seq_len: int, rng: np.random.Generator, notes: list[str]
) -> tuple[dict[str, np.ndarray], list[InputInfo], list[int | None]]:
    feeds, infos, axes = {}, [], []
    for spec in specs:
        axis = batch_axis(spec.dims)
        shape = tuple(batch if i == axis else d if isinstance(d, int) else seq_len for i, d in enumerate(spec.dims))
        feeds[spec.name] = _values(spec, shape, axis, rng)
        infos.append(InputInfo(spec.name, shape, _np_dtype(spec).name, spec.source))
        axes.append(axis)
        if spec.kind == "ints":
            notes.append(f"input {spec.name!r}: no Gather table bounds it, so it got ints in [0, {SMALL_INTS}); "
                         "pass real values with --inputs FILE.npz if that is not valid")
        if spec.kind == "positions" and 0 < spec.high < max(shape, default=0):
            notes.append(f"input {spec.name!r}: positions wrapped at the {spec.high} rows of the table; lower --seq-len")
    return feeds, infos, axes


def _given(specs: list[_Spec], arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[InputInfo], list[int | None]]:
    """The user's arrays checked against the declared inputs (ConfigError naming the first misfit)."""
    names = [s.name for s in specs]
    missing, unknown = [n for n in names if n not in arrays], sorted(set(arrays) - set(names))
    if missing or unknown:
        raise ConfigError(f"the inputs ({', '.join(sorted(arrays)) or 'none'}) do not match the model inputs ({', '.join(names)}): "
                          f"missing {missing or 'none'}, unknown {unknown or 'none'}")
    feeds, infos, axes = {}, [], []
    for spec in specs:
        value, dtype = np.asarray(arrays[spec.name]), _np_dtype(spec)
        kinds = {"f": "f", "i": "iu", "u": "iu", "b": "b"}[dtype.kind]  # ints are not floats, whatever numpy casts
        if value.dtype.kind not in kinds or not np.can_cast(value.dtype, dtype, casting="same_kind"):
            raise ConfigError(f"input {spec.name!r} is {value.dtype}; the model takes {dtype.name}")
        dims = spec.dims
        if len(dims) != value.ndim or any(isinstance(d, int) and d != n for d, n in zip(dims, value.shape, strict=True)):
            raise ConfigError(f"input {spec.name!r} has shape {value.shape}; the model takes {_shape(dims)}")
        feeds[spec.name] = np.ascontiguousarray(value, dtype=dtype)
        infos.append(InputInfo(spec.name, value.shape, dtype.name, "given"))
        axes.append(batch_axis(dims, value.shape))
    return feeds, infos, axes


def _values(spec: _Spec, shape: tuple[int, ...], axis: int | None, rng: np.random.Generator) -> np.ndarray:
    dtype = _np_dtype(spec)
    if spec.kind in ("bool", "mask"):
        return np.ones(shape, dtype)
    if spec.kind == "zeros":
        return np.zeros(shape, dtype)
    if spec.kind == "positions":
        positions = np.arange(shape[-1] if shape else 1)
        return np.broadcast_to(positions % spec.high if spec.high else positions, shape).astype(dtype)
    if spec.kind in ("ids", "ints"):
        return rng.integers(0, spec.high, shape).astype(dtype)
    x = rng.standard_normal(shape)
    for walk in range(len(shape) - 1):  # every axis but the batch and the last (features)
        if walk != axis:
            x = np.cumsum(x, axis=walk)
    if x.size:
        per_sample = tuple(a for a in range(x.ndim) if a != axis)
        x = x - x.mean(axis=per_sample, keepdims=True)
        std = x.std(axis=per_sample, keepdims=True)
        x = x / np.where(std > 0, std, 1.0)
    return x.astype(dtype)


def _np_dtype(spec: _Spec) -> np.dtype:
    return np.dtype(spec.dtype.numpy())


# --- running and comparing ---------------------------------------------------------------------


def _session(path: str | Path, *, native: bool, reference: bool = False) -> ort.InferenceSession:
    try:
        if reference:  # a static QDQ file's own arithmetic
            from stamp_onnx.targets.htp_runtime import cpu_reference_session

            return cpu_reference_session(path)
        return runtime.session(path, native=native)
    except ConfigError:
        raise
    except Exception as err:  # onnxruntime raises its own kinds
        raise ModelLoadError(f"onnxruntime cannot load {path} ({first_line(err)})") from err


def _run(session: ort.InferenceSession, feeds: dict[str, np.ndarray], path: object, given: bool) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    try:
        values = session.run(names, feeds)
    except Exception as err:  # onnxruntime raises its own kinds
        hint = "check the arrays of --inputs" if given else "pass real inputs with --inputs FILE.npz"
        raise ValidationError(f"{path} does not run on the {'given' if given else 'generated'} inputs "
                              f"({first_line(err)}); {hint}") from err
    return {name: np.asarray(v) for name, v in zip(names, values, strict=True)}


def _diff(name: str, ref: np.ndarray, got: np.ndarray) -> OutputDiff:
    diff = RunningDiff()
    diff.update(np.atleast_1d(ref), np.atleast_1d(got))  # cosine over the last axis needs one
    return OutputDiff(name, tuple(ref.shape), diff.sqnr_db(), diff.cosine(), diff.max_abs)


def _batch_check(
    specs: list[_Spec], feeds: dict[str, np.ndarray], axes: list[int | None], out_dims: dict[str, tuple[Dim, ...]],
    static: bool, rng: np.random.Generator, rewritten: _Ran, float_model: _Ran,
) -> tuple[bool | None, str, list[str]]:
    """Change sample 0 of every batched input, then the last sample; every other sample's outputs
    must stay bit-identical each time.

    When the rewritten model fails, the float model gets the same test: if it fails too, the
    axis taken is not a batch axis of this model (not a fault of the rewrite), and the check
    says so instead of failing.
    """
    session, outputs = rewritten
    batched = {s.name: a for s, a in zip(specs, axes, strict=True) if a is not None}
    sizes = {feeds[name].shape[axis] for name, axis in batched.items()}
    if not batched:
        return None, "no input has a batch axis (a dim named like 'batch', or a symbolic first dim)", []
    if len(sizes) > 1:
        return None, f"the batched inputs disagree on the batch size ({sorted(sizes)})", []
    size = sizes.pop()
    if size < 2:
        return None, f"batch of {size}: it takes 2 samples or more", []
    checked: dict[str, int] = {}
    for name, value in outputs.items():
        axis = batch_axis(out_dims.get(name, ()), value.shape if static else None)
        if axis is not None and axis < value.ndim and value.shape[axis] == size:
            checked[name] = axis
    if not checked:
        return None, f"no output has a batch axis of size {size}", []
    names: list[str] = []
    mixed: dict[str, float] = {}
    float_mixed = False
    for sample in (0, size - 1):  # the first and the last: a transform that keeps row 0 out (a prefix token) hides from sample 0
        changed_feeds = dict(feeds)
        for spec in specs:
            axis = batched.get(spec.name)
            if axis is None:
                continue
            new = _other_sample(spec, feeds[spec.name], axis, sample, rng)
            if not np.array_equal(new, feeds[spec.name]):
                changed_feeds[spec.name] = new
                if spec.name not in names:
                    names.append(spec.name)
        if len(changed_feeds) == len(feeds) and all(changed_feeds[k] is feeds[k] for k in feeds):
            continue
        found = _mixed(session, changed_feeds, outputs, checked, sample)
        if found:
            mixed.update(found)
            float_session, reference = float_model
            float_mixed = float_mixed or bool(
                _mixed(float_session, changed_feeds, reference, {k: v for k, v in checked.items() if k in reference}, sample))
    if not names:
        return None, "no sample of any input could be changed (masks, positions, token types and bools are kept)", []
    what = (f"sample 0, then sample {size - 1}, of {', '.join(names)} changed; the other samples of "
            f"{', '.join(checked)} compared")
    if not mixed:
        return True, what + ": bit-identical", []
    if float_mixed:
        return None, what + ": the float model's outputs change too, so the axis taken is not a batch axis", []
    return False, what, [f"batch independence: output {name!r} changed in samples that were not changed "
                         f"(max |diff| {diff:.3g}): the rewritten model mixes samples"
                         for name, diff in mixed.items()]


def _other_sample(spec: _Spec, value: np.ndarray, axis: int, sample: int, rng: np.random.Generator) -> np.ndarray:
    """``value`` with one sample replaced by other values of the same kind (masks etc. kept)."""
    first = np.take(value, [sample], axis=axis)
    other: np.ndarray
    if spec.kind == "float":
        other = _values(spec, first.shape, axis, rng).astype(np.float64)
        other = other * float(np.std(first)) + float(np.mean(first)) if first.size and np.std(first) > 0 else other
    elif spec.kind == "ids":
        other = rng.integers(0, spec.high, first.shape)
    elif spec.kind == "ints":
        other = rng.permutation(first.ravel()).reshape(first.shape)  # the given values, shuffled: still valid ones
    else:
        return value
    out = value.copy()
    index: list[Any] = [slice(None)] * value.ndim
    index[axis] = sample
    out[tuple(index)] = np.take(other.astype(value.dtype), 0, axis=axis)
    return out


def _mixed(
    session: ort.InferenceSession, changed: dict[str, np.ndarray], before: dict[str, np.ndarray], checked: dict[str, int],
    sample: int,
) -> dict[str, float]:
    """Outputs whose samples other than ``sample`` differ from ``before`` when run on ``changed``: max |diff| of each."""
    names = [o.name for o in session.get_outputs()]
    after = dict(zip(names, session.run(names, changed), strict=True))
    mixed = {}
    for name, axis in checked.items():
        old, new = np.delete(before[name], sample, axis=axis), np.delete(np.asarray(after[name]), sample, axis=axis)
        nan_aware = old.dtype.kind in "fc" and new.dtype.kind in "fc"
        if old.shape != new.shape or not np.array_equal(old, new, equal_nan=nan_aware):
            both = old.shape == new.shape and old.size and old.dtype.kind in "biuf" and new.dtype.kind in "biuf"
            mixed[name] = float(np.nanmax(np.abs(old.astype(np.float64) - new.astype(np.float64)))) if both else math.nan
    return mixed


def _type(value: ir.Value) -> str:
    return f"{value.dtype.name if value.dtype is not None else 'untyped'} of rank {len(value.shape) if value.shape is not None else '?'}"


def _shape(dims: Sequence[Dim]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


