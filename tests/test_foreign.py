"""Models from other exporters (tests/foreign_models.py) through ``quantize_file`` with the defaults.

Each model either rewrites with the expected outcome (which layers, which token axis in the
activation's own layout, which skipped and why) or fails with one line saying why nothing can
be rewritten. A rewritten model must run in onnxruntime (``compare_files``) and keep the samples of a
batch independent: changing sample 0, or the last sample, of every input leaves every other
sample's outputs bit for bit the same (a transform or a high-precision group running across
the batch breaks that).
"""

from __future__ import annotations

import re
from pathlib import Path

import foreign_models
import numpy as np
import onnx
import pytest
from foreign_models import ForeignModel, Rewrite, Skip, matches

from stamp_onnx.config import StampConfig
from stamp_onnx.errors import StampError
from stamp_onnx.evaluation.compare import compare_files
from stamp_onnx.graph import runtime
from stamp_onnx.passes.report import RewriteReport
from stamp_onnx.pipeline import quantize_file

BATCH, SEQ = 3, foreign_models.EXPORT_SEQ
NAMES = list(foreign_models.BUILDERS)
REWRITABLE = [name for name in NAMES if name not in ("fused_attention_only", "bert_dynamic_quantized", "bert_qdq")]
FUSED = ["bert_optimized"]  # rewritable, with com.microsoft fused ops that hold linear layers


@pytest.fixture(scope="session")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ForeignModel]:
    return foreign_models.build_all(tmp_path_factory.mktemp("foreign"))


@pytest.fixture(scope="session")
def outcomes(tmp_path_factory: pytest.TempPathFactory, foreign: dict[str, ForeignModel]) -> dict[str, tuple[Path, RewriteReport | StampError]]:
    """Each model's rewrite with the default config: (output path, report or the error raised)."""
    folder = tmp_path_factory.mktemp("rewritten")
    results: dict[str, tuple[Path, RewriteReport | StampError]] = {}
    for name, model in foreign.items():
        out = folder / f"{name}.stamp.onnx"
        try:
            results[name] = (out, quantize_file(model.path, out, StampConfig()))
        except StampError as err:
            results[name] = (out, err)
    return results


def _report(outcomes: dict[str, tuple[Path, RewriteReport | StampError]], name: str) -> tuple[Path, RewriteReport]:
    out, result = outcomes[name]
    if isinstance(result, StampError):
        pytest.fail(f"{name}: quantize_file raised {type(result).__name__}: {result}")
    return out, result


def test_builders_are_consistent(foreign: dict[str, ForeignModel]) -> None:
    """The expectations add up and every expected layer exists in the file (guards the corpus itself)."""
    for name, model in foreign.items():
        expected = model.expected
        assert (expected.error is None) == (name in REWRITABLE), name
        assert bool(expected.fused_ops) == (name in FUSED), name
        assert sum(spec.count for spec in expected.layers_spec) == (0 if expected.error else expected.layers), name
        nodes = _linear_nodes(onnx.load(str(model.path)).graph)
        for spec in expected.layers_spec:
            found = [n for n in nodes if matches(spec.pattern, n)]
            assert len(found) == spec.count, f"{name}: {spec.pattern!r} matches {found}"
        graph = onnx.load(str(model.path)).graph
        declared = [v.name for v in [*graph.input, *graph.output] if v.name not in {t.name for t in graph.initializer}]
        assert sorted(declared) == sorted(expected.batch_axes), name


@pytest.mark.parametrize("name", REWRITABLE)
def test_expected_layers_rewritten_and_skipped(name: str, outcomes: dict[str, tuple[Path, RewriteReport | StampError]], foreign: dict[str, ForeignModel]) -> None:
    _, report = _report(outcomes, name)
    specs = foreign[name].expected.layers_spec
    rewrites = [s for s in specs if isinstance(s, Rewrite)]
    for record in report.rewritten:
        assert any(_layer_matches(s.pattern, record.name, record.node) for s in rewrites), (
            f"{name}: rewrote {record.name!r}, which must be left alone; skipped: {report.skip_summary()}")
    for spec in rewrites:
        got = [r.name for r in report.rewritten if _layer_matches(spec.pattern, r.name, r.node)]
        assert len(got) == spec.count, f"{name}: expected {spec.count} rewritten layers like {spec.pattern!r}, got {got}; skipped: {report.skip_summary()}"
    for spec in (s for s in specs if isinstance(s, Skip)):
        got = [s for s in report.skipped if _layer_matches(spec.pattern, s.name, s.node)]
        assert len(got) == spec.count, f"{name}: expected {spec.count} skipped layers like {spec.pattern!r}, got {got}"
        for item in got:
            assert re.search(spec.reason, item.reason), f"{name}: {item.name} skipped for {item.reason!r}, expected {spec.reason!r}"


@pytest.mark.parametrize("name", REWRITABLE)
def test_token_axis(name: str, outcomes: dict[str, tuple[Path, RewriteReport | StampError]], foreign: dict[str, ForeignModel]) -> None:
    """LayerRecord.token_axis: the token axis in the layout of the activation the layer reads."""
    _, report = _report(outcomes, name)
    wrong = []
    for spec in (s for s in foreign[name].expected.layers_spec if isinstance(s, Rewrite)):
        records = [r for r in report.rewritten if _layer_matches(spec.pattern, r.name, r.node)]
        if len(records) != spec.count:
            wrong.append(f"{spec.pattern!r}: {len(records)} of {spec.count} layers rewritten")
        for record in records:
            axis = getattr(record, "token_axis", "<LayerRecord has no token_axis>")
            if axis != spec.axis:
                wrong.append(f"{record.name}: {axis} (expected {spec.axis})")
    assert not wrong, f"{name}: wrong token axes: {wrong}"


@pytest.mark.parametrize("name", FUSED)
def test_fused_ops_are_reported(name: str, outcomes: dict[str, tuple[Path, RewriteReport | StampError]], foreign: dict[str, ForeignModel]) -> None:
    """Fused com.microsoft nodes holding linear layers (Attention) are named in the report as left alone."""
    fused = foreign[name].expected.fused_ops
    _, report = _report(outcomes, name)
    graph = onnx.load(str(foreign[name].path)).graph
    for node in (n for n in graph.node if n.domain == "com.microsoft" and n.op_type in fused):
        found = [s for s in report.skipped if s.node == node.name]
        assert found and all(re.search(r"(?i)fused|com\.microsoft", s.reason) for s in found), (
            f"{name}: fused {node.op_type} {node.name!r} not reported (skipped: {report.skip_summary()})")


@pytest.mark.parametrize("name", [n for n in NAMES if n not in REWRITABLE])
def test_nothing_to_rewrite_says_why(name: str, outcomes: dict[str, tuple[Path, RewriteReport | StampError]], foreign: dict[str, ForeignModel]) -> None:
    out, result = outcomes[name]
    assert isinstance(result, StampError), f"{name}: rewritten ({len(result.rewritten)} layers) but nothing should be"
    message = str(result)
    assert "\n" not in message.strip(), f"{name}: the error is not one line: {message!r}"
    pattern = foreign[name].expected.error
    reason = message.replace(str(foreign[name].path), "<model>")  # the file name holds words like "fused", "qdq"
    assert pattern is not None and re.search(pattern, reason), f"{name}: the error does not say why: {message!r}"
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*")), f"{name}: partial output left"


@pytest.mark.parametrize("name", REWRITABLE)
def test_runs_and_keeps_samples_independent(name: str, outcomes: dict[str, tuple[Path, RewriteReport | StampError]], foreign: dict[str, ForeignModel]) -> None:
    out, _ = _report(outcomes, name)
    model = foreign[name]
    for feeds in model.feeds(BATCH, SEQ, 0):
        report = compare_files(model.path, out, inputs=feeds)
        assert report.ok, f"{name}: {'; '.join(report.failures)}"
        assert report.batch_independent is True, f"{name}: batch independence not checked: {report.batch_reason}"
    # compare_files changes sample 0 only, which misses a transform across the batch that keeps
    # row 0 out as the prefix token (the default P=1): the last sample is changed here too.
    # Control: the float model passes, so a failure is the rewrite's.
    assert not _last_sample_leaks(model.path, model), f"{name}: the float model itself mixes samples"
    leaks = _last_sample_leaks(out, model)
    assert not leaks, f"{name}: the rewritten model mixes the samples of a batch: {'; '.join(leaks)}"


# ------------------------------------------------------------------------------- helpers


def _layer_matches(pattern: str, name: str, node: str) -> bool:
    return matches(pattern, name) or matches(pattern, node)


def _linear_nodes(graph: onnx.GraphProto, outer: frozenset[str] = frozenset()) -> list[str]:
    """Names of MatMul/Gemm nodes with a constant weight (initializer or Identity of one), subgraphs included."""
    constants = outer | {t.name for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    names = []
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                names += _linear_nodes(sub, constants)
        if node.op_type in ("MatMul", "Gemm") and node.domain in ("", "ai.onnx"):
            weight = node.input[1]
            while weight in producers and producers[weight].op_type in ("Identity", "Transpose"):
                weight = producers[weight].input[0]
            if weight in constants or (weight in producers and producers[weight].op_type == "Constant"):
                names.append(node.name)
    return names


def _last_sample_leaks(path: Path, model: ForeignModel) -> list[str]:
    """Outputs of samples 0..B-2 that change when only the last sample of every batched input changes."""
    session = runtime.session(path)
    names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(1)
    leaks = []
    for feeds in model.feeds(BATCH, SEQ, 0):
        changed = dict(feeds)
        for name, value in feeds.items():
            axis = model.expected.batch_axes.get(name)
            if axis is None:
                continue
            index = tuple([slice(None)] * axis + [BATCH - 1])
            value = value.copy()
            if np.issubdtype(value.dtype, np.floating):
                value[index] = (rng.standard_normal(value[index].shape) * 3).astype(value.dtype)
            elif value.max() > value.min():  # ids: other ids in the same range; masks of ones stay
                value[index] = rng.integers(value.min(), value.max() + 1, value[index].shape).astype(value.dtype)
            changed[name] = value
        for name, a, b in zip(names, session.run(names, feeds), session.run(names, changed), strict=True):
            axis = model.expected.batch_axes[name]
            assert axis is not None and a.shape[axis] == BATCH, f"{name}: output shape {a.shape}"
            rest_a, rest_b = np.take(a, range(BATCH - 1), axis), np.take(b, range(BATCH - 1), axis)
            if not np.array_equal(rest_a, rest_b):
                diff = np.abs(rest_a.astype(np.float64) - rest_b.astype(np.float64)).max()
                leaks.append(f"changing sample {BATCH - 1} changed output {name!r} of the others (max |diff| {diff:.3g})")
    return leaks
