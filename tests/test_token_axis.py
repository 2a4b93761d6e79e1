"""Token-axis inference: every layout of a linear layer's activation is quantized per sequence.

Each model is built with onnx.helper; each rewrite must keep batch independence: changing
sample 0 of a batch leaves every other sample's outputs bit-identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from stamp_onnx.cli.commands import main
from stamp_onnx.config import StampConfig
from stamp_onnx.errors import RewriteError
from stamp_onnx.pipeline import quantize_file

D, N = 16, 8
CONFIG = StampConfig(hp_tokens=4, levels=2, weight_bits=8)


def _weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((D, N)).astype(np.float32) / 4, rng.standard_normal(N).astype(np.float32)


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           inits: list[onnx.TensorProto], opset: int = 21) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits), opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _linear(x_dims: list[int | str], *, out_dims: list[int | str] | None = None) -> onnx.ModelProto:
    """x -> MatMul(W) -> Add(b) -> y."""
    w, b = _weights()
    return _model(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"), helper.make_node("Add", ["h", "b"], ["y"], name="bias")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_dims or [*x_dims[:-1], N])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )


def _rewrite(tmp_path: Path, model: onnx.ModelProto, config: StampConfig = CONFIG) -> tuple[Path, Path, object]:
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    return src, out, quantize_file(src, out, config)


def _smooth(shape: tuple[int, ...], token_axis: int, seed: int) -> np.ndarray:
    """Random values correlated along the token axis (as real activations are)."""
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.standard_normal(shape), axis=token_axis).astype(np.float32) / 3


def assert_batch_independent(path: Path, x: np.ndarray, batch_axis: int, out_batch_axis: int | None = None) -> None:
    session = ort.InferenceSession(str(path))
    name = session.get_inputs()[0].name
    before = session.run(None, {name: x})
    changed = x.copy()
    index: list[slice | int] = [slice(None)] * x.ndim
    index[batch_axis] = 0
    changed[tuple(index)] = np.random.default_rng(99).standard_normal(changed[tuple(index)].shape) * 5
    after = session.run(None, {name: changed})
    for a, b in zip(before, after, strict=True):
        axis = batch_axis if out_batch_axis is None else out_batch_axis
        rest: list[slice] = [slice(None)] * a.ndim
        rest[axis] = slice(1, None)
        np.testing.assert_array_equal(a[tuple(rest)], b[tuple(rest)])
        first: list[slice | int] = [slice(None)] * a.ndim
        first[axis] = 0
        assert not np.array_equal(a[tuple(first)], b[tuple(first)]), "sample 0 must change (the check must be able to fail)"


def test_batch_then_sequence_is_axis_1(tmp_path: Path) -> None:
    _, out, report = _rewrite(tmp_path, _linear(["batch", "seq", D]))
    assert [(r.token_axis, r.activation_shape) for r in report.rewritten] == [(1, "(batch, seq, 16)")]
    assert_batch_independent(out, _smooth((3, 20, D), 1, 0), 0)


def test_seq_first_is_transposed_around_the_layer(tmp_path: Path) -> None:
    _src, out, report = _rewrite(tmp_path, _linear(["seq_len", "batch_size", D]))
    assert [r.token_axis for r in report.rewritten] == [0]
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("Transpose") == 2
    x = _smooth((20, 3, D), 0, 1)
    assert_batch_independent(out, x, 1)
    # per sample, the seq-first rewrite equals the batch-first one on the transposed input
    (tmp_path / "bf").mkdir()
    _, out_bf, _ = _rewrite(tmp_path / "bf", _linear(["batch_size", "seq_len", D]))
    y_sf = ort.InferenceSession(str(out)).run(None, {"x": x})[0]
    y_bf = ort.InferenceSession(str(out_bf)).run(None, {"x": np.ascontiguousarray(x.transpose(1, 0, 2))})[0]
    np.testing.assert_allclose(y_sf.transpose(1, 0, 2), y_bf, rtol=0, atol=1e-5)


def test_attention_squares_name_the_sequence(tmp_path: Path) -> None:
    """Unnamed dims: the dim an activation x activation MatMul is square in is the sequence."""
    w, _ = _weights()
    for dims, axis, batch_axis in ((["d0", "d1", D], 1, 0), (["d0", "d1", D], 0, 1)):
        perm = [0, 2, 1] if axis == 1 else [1, 2, 0]
        nodes = [
            helper.make_node("MatMul", ["x", "w"], ["y"], name="fc"),
            helper.make_node("Transpose", ["x"], ["xt"], perm=perm, name="xt"),
            helper.make_node("Transpose", ["x"], ["xb"], perm=[0, 1, 2] if axis == 1 else [1, 0, 2], name="xb"),
            helper.make_node("MatMul", ["xb", "xt"], ["scores"], name="scores"),
        ]
        seq = dims[axis]
        model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*dims[:2], N]),
                        helper.make_tensor_value_info("scores", TensorProto.FLOAT, [dims[batch_axis], seq, seq])],
                       [numpy_helper.from_array(w, "w")])
        sub = tmp_path / f"a{axis}"
        sub.mkdir()
        _, out, report = _rewrite(sub, model)
        assert [r.token_axis for r in report.rewritten] == [axis]
        shape = (3, 20, D) if axis == 1 else (20, 3, D)
        session = ort.InferenceSession(str(out))
        x = _smooth(shape, axis, 2)
        changed = x.copy()
        changed[(slice(None),) * batch_axis + (0,)] += 1.0
        y0, y1 = (session.run(["y"], {"x": v})[0] for v in (x, changed))
        rest = (slice(None),) * batch_axis + (slice(1, None),)
        np.testing.assert_array_equal(y0[rest], y1[rest])


def test_flattened_gemm_is_traced_to_the_sequence(tmp_path: Path) -> None:
    """GPT-2's Conv1D as legacy exports write it: Reshape(-1, d) -> Gemm(transB) -> Reshape back."""
    w, b = _weights()
    nodes = [
        helper.make_node("Shape", ["x"], ["shape3"], end=2),
        helper.make_node("Concat", ["shape3", "n"], ["back"], axis=0),
        helper.make_node("Reshape", ["x", "flat"], ["x2"], name="flatten"),
        helper.make_node("Gemm", ["x2", "wt", "b"], ["y2"], transB=1, name="conv1d"),
        helper.make_node("Reshape", ["y2", "back"], ["y"], name="unflatten"),
    ]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", D])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", N])],
                   [numpy_helper.from_array(np.ascontiguousarray(w.T), "wt"), numpy_helper.from_array(b, "b"),
                    numpy_helper.from_array(np.array([-1, D], np.int64), "flat"), numpy_helper.from_array(np.array([N], np.int64), "n")])
    src, out, report = _rewrite(tmp_path, model)
    assert [(r.token_axis, r.activation_shape) for r in report.rewritten] == [(1, "(batch*seq, 16) from (batch, seq, 16)")]
    x = _smooth((3, 20, D), 1, 3)
    assert_batch_independent(out, x, 0)
    y_float = ort.InferenceSession(str(src)).run(None, {"x": x})[0]
    y = ort.InferenceSession(str(out)).run(None, {"x": x})[0]
    assert np.abs(y - y_float).max() < 0.1 * np.abs(y_float).max()


def test_rows_that_are_samples_are_skipped(tmp_path: Path) -> None:
    """A classifier head on a pooled (batch, d) input: no token axis; the token layer is rewritten."""
    w, _b = _weights()
    head = np.random.default_rng(5).standard_normal((N, 3)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="encoder"),
        helper.make_node("ReduceMean", ["h", "axes"], ["pooled"], keepdims=0, name="pool"),
        helper.make_node("MatMul", ["pooled", "head"], ["logits"], name="classifier"),
    ]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", D])],
                   [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
                   [numpy_helper.from_array(w, "w"), numpy_helper.from_array(head, "head"),
                    numpy_helper.from_array(np.array([1], np.int64), "axes")])
    _, out, report = _rewrite(tmp_path, model)
    assert [r.name for r in report.rewritten] == ["encoder"]
    assert [(s.name, "samples" in s.reason) for s in report.skipped] == [("classifier", True)]
    assert_batch_independent(out, _smooth((4, 20, D), 1, 4), 0)
    # the user can insist (a rank-2 input whose rows are one sequence's tokens)
    (tmp_path / "given").mkdir()
    _, _, given = _rewrite(tmp_path / "given", model, CONFIG.replace(token_axes=(("classifier", 0),)))
    assert sorted(r.name for r in given.rewritten) == ["classifier", "encoder"]


def test_static_token_counts(tmp_path: Path) -> None:
    """A ViT-like (batch, 257, d) and fixed-shape (1, 12, d) inputs: the token axis is the one left."""
    _, out, report = _rewrite(tmp_path, _linear(["batch", 12, D]))
    assert [r.token_axis for r in report.rewritten] == [1]
    assert_batch_independent(out, _smooth((3, 12, D), 1, 5), 0)
    (tmp_path / "fixed").mkdir()
    _, _, fixed = _rewrite(tmp_path / "fixed", _linear([1, 12, D]))
    assert [r.token_axis for r in fixed.rewritten] == [1]


def test_negative_and_unnamed_dims_read_as_symbolic(tmp_path: Path) -> None:
    model = _linear(["a", "b", D])
    for value in (*model.graph.input, *model.graph.output):
        for dim in value.type.tensor_type.shape.dim[:2]:
            dim.Clear()
            dim.dim_value = -1
    _src, out, report = _rewrite(tmp_path, model)
    assert [r.token_axis for r in report.rewritten] == [1]
    assert_batch_independent(out, _smooth((3, 20, D), 1, 6), 0)


def test_token_axis_override_and_its_range(tmp_path: Path) -> None:
    _, _, report = _rewrite(tmp_path, _linear(["seq", "batch", D]), CONFIG.replace(token_axis=1))
    assert [(r.token_axis, r.activation_shape) for r in report.rewritten] == [(1, "(seq, batch, 16)")]
    (tmp_path / "bad").mkdir()
    with pytest.raises(RewriteError, match="token axis 2 is out of range for a rank-3 activation"):
        _rewrite(tmp_path / "bad", _linear(["batch", "seq", D]), CONFIG.replace(token_axis=2))


def test_loop_body_is_listed_with_its_reason(tmp_path: Path) -> None:
    w, _ = _weights()
    body = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["step"], name="in_loop"), helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("step", TensorProto.FLOAT, ["batch", "seq", N])],
    )
    model = _model([helper.make_node("Loop", ["trips", ""], ["steps"], body=body, name="loop")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", D])],
                   [helper.make_tensor_value_info("steps", TensorProto.FLOAT, ["trips", "batch", "seq", N])],
                   [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(2, np.int64), "trips")])
    with pytest.raises(RewriteError, match="inside a Loop body"):
        _rewrite(tmp_path, model)


def test_strict_and_per_layer_axes_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w, _b = _weights()
    head = np.ones((N, 2), np.float32)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["h"], name="encoder"),
                    helper.make_node("ReduceMax", ["h", "axes"], ["pooled"], keepdims=0, name="pool"),
                    helper.make_node("MatMul", ["pooled", "head"], ["y"], name="head")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", D])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
                   [numpy_helper.from_array(w, "w"), numpy_helper.from_array(head, "head"),
                    numpy_helper.from_array(np.array([1], np.int64), "axes")])
    src, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(model, src)
    assert main(["-q", "quantize", str(src), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "rewrote 1 linear layers" in text and "skipped 1" in text and "samples" in text
    assert main(["-q", "quantize", str(src), "-o", str(out), "--strict"]) == 1
    assert "--strict: 1 linear layers were not rewritten" in capsys.readouterr().err
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"token_axes": [["^head$", 0]]}))
    assert main(["-q", "quantize", str(src), "-o", str(out), "--strict", "--config", str(config)]) == 0
    capsys.readouterr()
    assert main(["-q", "inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "token axis 0 (given)" in text and "token axis 1 (inferred)" in text
