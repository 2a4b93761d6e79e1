"""`stamp-onnx compare`: a float ONNX file against its rewrite, no PyTorch, tiny models built here."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import models
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from stamp_onnx.cli.commands import main
from stamp_onnx.config import StampConfig
from stamp_onnx.core import quant
from stamp_onnx.errors import ConfigError, ModelLoadError, ValidationError
from stamp_onnx.evaluation.compare import batch_axis, compare_files, generate_inputs
from stamp_onnx.graph import runtime
from stamp_onnx.pipeline import quantize_file

VOCAB, POSITIONS = 37, 20


def linear_model(*, d_out: int = 8, out_name: str = "y", in_name: str = "x", elem: int = TensorProto.FLOAT,
                 mix: bool = False, unary: str = "", scale: float = 0.25) -> onnx.ModelProto:
    """x (batch, seq, 16) -> MatMul W -> y (batch, seq, d_out); ``mix`` subtracts the mean over the
    batch axis from y, so every sample's output depends on every other sample; ``unary`` is an op
    applied to y at the end (Sqrt: NaN where y < 0)."""
    w = (np.random.default_rng(3).standard_normal((16, d_out)) * scale).astype(helper.tensor_dtype_to_np_dtype(elem))
    nodes = [helper.make_node("MatMul", [in_name, "w"], ["z" if mix or unary else out_name], name="fc")]
    inits = [numpy_helper.from_array(w, "w")]
    if mix:
        nodes += [helper.make_node("ReduceMean", ["z", "axes"], ["mean"], keepdims=1),
                  helper.make_node("Sub", ["z", "mean"], [out_name])]
        inits.append(numpy_helper.from_array(np.array([0], np.int64), "axes"))
    elif unary:
        nodes.append(helper.make_node(unary, ["z"], [out_name]))
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info(in_name, elem, ["batch", "seq", 16])],
                              [helper.make_tensor_value_info(out_name, elem, ["batch", "seq", d_out])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def embedding_model() -> onnx.ModelProto:
    """input_ids -> Cast -> Gather(table of VOCAB rows), position_ids -> Gather(POSITIONS rows),
    times attention_mask, -> MatMul: ids out of range make onnxruntime fail."""
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids32"], to=TensorProto.INT32),
        helper.make_node("Gather", ["table", "ids32"], ["tok"], name="embed"),
        helper.make_node("Gather", ["positions", "position_ids"], ["pos"], name="embed_positions"),
        helper.make_node("Add", ["tok", "pos"], ["emb"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "last"], ["mask3"]),
        helper.make_node("Mul", ["emb", "mask3"], ["h"]),
        helper.make_node("MatMul", ["h", "w"], ["y"], name="fc"),
    ]
    inits = [
        numpy_helper.from_array(rng.standard_normal((VOCAB, 16)).astype(np.float32), "table"),
        numpy_helper.from_array(rng.standard_normal((POSITIONS, 16)).astype(np.float32), "positions"),
        numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([-1], np.int64), "last"),
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch_size", "sequence_length"])
              for n in ("input_ids", "attention_mask", "position_ids")]
    graph = helper.make_graph(nodes, "embed", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch_size", "sequence_length", 8])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


@pytest.fixture
def linear_path(tmp_path: Path) -> Path:
    return models.save(linear_model(), tmp_path / "linear.onnx")


@pytest.fixture
def stamp_path(linear_path: Path, tmp_path: Path) -> Path:
    out = tmp_path / "linear.stamp.onnx"
    quantize_file(linear_path, out, StampConfig(hp_tokens=4))
    return out


def test_identical_files_are_exact(linear_path: Path) -> None:
    report = compare_files(linear_path, linear_path, batch=3, seq_len=5)
    assert report.ok and report.batch_independent is True
    [out] = report.outputs
    assert (out.name, out.shape, out.sqnr_db, out.cosine, out.max_abs) == ("y", (3, 5, 8), np.inf, 1.0, 0.0)
    assert report.inputs[0].shape == (3, 5, 16) and report.inputs[0].dtype == "float32"
    assert report.to_dict()["outputs"][0]["sqnr_db"] == "inf"


def test_a_rewrite_is_close_and_batch_independent(linear_path: Path, stamp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = compare_files(linear_path, stamp_path, batch=3, seq_len=32)
    [out] = report.outputs
    assert 15 < out.sqnr_db < 60 and 0.99 < out.cosine < 1 and out.max_abs > 0
    assert report.ok and report.batch_independent is True
    assert "the other samples of y compared" in report.batch_reason
    bodies = compare_files(linear_path, stamp_path, batch=3, seq_len=32, native=False)
    assert bodies.kernels == runtime.FUNCTION_BODIES and bodies.outputs == report.outputs  # Haar + QDQ bodies are bit-exact
    assert main(["compare", str(linear_path), str(stamp_path), "--json", "--seq-len", "32"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["batch_independent"] is True and data["outputs"][0]["shape"] == [2, 32, 8]
    assert main(["compare", str(linear_path), str(stamp_path)]) == 0
    text = capsys.readouterr().out
    assert "batch independence: ok" in text and text.rstrip().endswith("ok")


def test_min_sqnr_is_a_failure(linear_path: Path, stamp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = compare_files(linear_path, stamp_path, seq_len=32, min_sqnr=200)
    assert not report.ok and report.failures[0].startswith("output 'y': SQNR") and "below --min-sqnr 200" in report.failures[0]
    assert main(["compare", str(linear_path), str(stamp_path), "--min-sqnr", "200"]) == 1
    captured = capsys.readouterr()
    assert "FAIL: output 'y': SQNR" in captured.out and captured.err.count("\n") == 1
    assert compare_files(linear_path, stamp_path, seq_len=32, min_sqnr=5).ok


def test_a_model_that_mixes_samples_fails(linear_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mixing = models.save(linear_model(mix=True), tmp_path / "mixing.onnx")
    report = compare_files(linear_path, mixing, batch=3)
    assert report.batch_independent is False and not report.ok
    assert any("output 'y' changed in samples that were not changed" in f for f in report.failures)
    assert main(["compare", str(linear_path), str(mixing)]) == 1
    captured = capsys.readouterr()
    assert "batch independence: FAILED" in captured.out and "mixes samples" in captured.err
    # when the float model mixes too, the axis is not a batch axis: not checked, not a failure
    both = compare_files(mixing, mixing)
    assert both.batch_independent is None and both.ok and "float model's outputs change too" in both.batch_reason


def test_one_sample_skips_the_batch_check(linear_path: Path, stamp_path: Path) -> None:
    report = compare_files(linear_path, stamp_path, batch=1)
    assert report.ok and report.batch_independent is None and "batch of 1" in report.batch_reason


def test_generated_ids_stay_in_the_table(tmp_path: Path) -> None:
    path = models.save(embedding_model(), tmp_path / "embed.onnx")
    feeds = generate_inputs(path, batch=64, seq_len=32)
    assert feeds["input_ids"].shape == (64, 32) and feeds["input_ids"].dtype == np.int64
    assert feeds["input_ids"].min() == 0 and feeds["input_ids"].max() == VOCAB - 1
    np.testing.assert_array_equal(feeds["attention_mask"], 1)
    np.testing.assert_array_equal(feeds["position_ids"][1], np.arange(32) % POSITIONS)
    report = compare_files(path, path, seq_len=32)  # onnxruntime's Gather fails on an id out of range
    assert report.ok and report.batch_independent is True and "sample 0, then sample 1, of input_ids changed" in report.batch_reason
    sources = {i.name: i.source for i in report.inputs}
    assert sources["input_ids"] == f"token ids in [0, {VOCAB}) (rows of Gather 'embed')"
    assert any("positions wrapped at the 20 rows" in n for n in report.notes)


def test_generated_floats_are_smooth_along_the_tokens(linear_path: Path) -> None:
    x = generate_inputs(linear_path, batch=2, seq_len=64)["x"]
    assert x.shape == (2, 64, 16)
    np.testing.assert_allclose(x.mean(axis=(1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=(1, 2)), 1, atol=1e-5)
    step = np.abs(np.diff(x, axis=1)).mean()
    assert step < 0.5 * np.abs(x[:, :, None] - x[:, None]).mean()  # neighbours are closer than random pairs


def test_inputs_file(linear_path: Path, stamp_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = np.random.default_rng(1).standard_normal((4, 24, 16))  # float64: cast to the model's float32
    np.savez(tmp_path / "in.npz", x=x)
    assert main(["compare", str(linear_path), str(stamp_path), "--inputs", str(tmp_path / "in.npz")]) == 0
    out = capsys.readouterr().out
    assert "(4, 24, 16)  float32  given" in out and "the other samples of y compared: bit-identical" in out
    report = compare_files(linear_path, stamp_path, inputs={"x": x.astype(np.float32)})
    assert report.outputs[0].shape == (4, 24, 8) and report.batch_independent is True


def test_batch_axis() -> None:
    assert batch_axis(["batch", "seq", 16]) == 0
    assert batch_axis(["seq", "batch_size", 16]) == 1  # a batch name wins wherever it is
    assert batch_axis(["N", 3, 224, 224]) == 0 and batch_axis(["s0", 64]) == 0 and batch_axis([None, 8]) == 0
    assert batch_axis(["sequence_length", 16]) is None and batch_axis(["tokens", 16]) is None
    assert batch_axis([4, 16]) is None and batch_axis([4, 16], (4, 16)) == 0  # a static batch only for given arrays
    assert batch_axis([1, 16], (1, 16)) is None and batch_axis([]) is None


def test_outputs_that_differ_are_failures(linear_path: Path, tmp_path: Path) -> None:
    renamed = models.save(linear_model(out_name="out"), tmp_path / "renamed.onnx")
    report = compare_files(linear_path, renamed)
    assert report.failures[:2] == [f"output 'y' of {linear_path} is missing from {renamed}",
                                   f"output 'out' of {renamed} is not an output of {linear_path}"]
    narrow = models.save(linear_model(d_out=4), tmp_path / "narrow.onnx")
    report = compare_files(linear_path, narrow)
    assert report.failures == [f"output 'y' has shape (2, 16, 8) in {linear_path} but (2, 16, 4) in {narrow}"]


def test_nan_where_the_float_model_is_finite_is_a_failure(linear_path: Path, tmp_path: Path) -> None:
    rooted = models.save(linear_model(unary="Sqrt"), tmp_path / "sqrt.onnx")
    report = compare_files(linear_path, rooted)
    nans = int(np.sum(generate_inputs(linear_path)["x"] @ numpy_helper.to_array(linear_model().graph.initializer[0]) < 0))
    assert nans > 0 and f"output 'y': {nans} values are nan or inf in {rooted} where {linear_path} is finite" in report.failures


def test_an_all_zero_reference_gives_minus_inf(linear_path: Path, tmp_path: Path) -> None:
    zero = models.save(linear_model(scale=0.0), tmp_path / "zero.onnx")
    report = compare_files(zero, linear_path)
    assert report.outputs[0].sqnr_db == -np.inf and report.outputs[0].max_abs > 0
    with np.errstate(divide="ignore"):
        assert quant.sqnr_db(np.zeros(3), np.ones(3)) == -np.inf  # the formula compare reuses says the same


def test_a_non_numeric_output_is_compared_for_equality(tmp_path: Path) -> None:
    graph = helper.make_graph([helper.make_node("Cast", ["x"], ["t"], to=TensorProto.STRING)], "strings",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("t", TensorProto.STRING, ["batch", 3])])
    path = models.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), tmp_path / "s.onnx")
    report = compare_files(path, path)
    assert report.ok and report.outputs == [] and "output 't' is not numeric (object)" in report.notes[0]


def _not_onnx(folder: Path) -> Path:
    path = folder / "notes.onnx"
    path.write_text("not a model\n")
    return path


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: models.save(linear_model(in_name="h"), d / "other.onnx"), "takes inputs ['x'] but"),
    (lambda d: models.save(linear_model(elem=TensorProto.DOUBLE), d / "other.onnx"), "input 'x' is FLOAT of rank 3 in"),
    (_not_onnx, "is not a readable ONNX model"),
])
def test_bad_model_pairs(linear_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], make, message: str) -> None:
    other = make(tmp_path)
    assert main(["compare", str(linear_path), str(other)]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("stamp-onnx: error:")


@pytest.mark.parametrize(("arrays", "message"), [
    ({}, "missing ['x']"),
    ({"x": np.zeros((2, 4, 16), np.float32), "y": np.zeros(2)}, "unknown ['y']"),
    ({"x": np.zeros((2, 4, 16), np.int64)}, "input 'x' is int64; the model takes float32"),
    ({"x": np.zeros((2, 4, 15), np.float32)}, "input 'x' has shape (2, 4, 15); the model takes (batch, seq, 16)"),
    ({"x": np.zeros((4, 16), np.float32)}, "input 'x' has shape (4, 16)"),
])
def test_bad_inputs_file(linear_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], arrays: dict, message: str) -> None:
    np.savez(tmp_path / "in.npz", **arrays)
    assert main(["compare", str(linear_path), str(linear_path), "--inputs", str(tmp_path / "in.npz")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    with pytest.raises(ConfigError, match=re.escape(message)):
        compare_files(linear_path, linear_path, inputs=arrays)


def test_bad_flags_and_files(linear_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.npz").write_text("no zip")
    for argv, code, message in [
        (["--inputs", str(tmp_path / "none.npz")], 2, "does not exist"),
        (["--inputs", str(tmp_path / "bad.npz")], 2, "is not a readable .npz"),
        (["--inputs", str(tmp_path / "bad.npz"), "--batch", "4"], 2, "with --inputs the arrays set the shapes"),
        (["--batch", "0"], 2, "must be positive"),
    ]:
        assert main(["compare", str(linear_path), str(linear_path), *argv]) == code, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, argv
    with pytest.raises(ModelLoadError, match="no such file"):
        compare_files(tmp_path / "missing.onnx", linear_path)


def test_an_input_type_compare_cannot_make(tmp_path: Path) -> None:
    graph = helper.make_graph([helper.make_node("Identity", ["s"], ["t"])], "strings",
                              [helper.make_tensor_value_info("s", TensorProto.STRING, ["batch"])],
                              [helper.make_tensor_value_info("t", TensorProto.STRING, ["batch"])])
    path = models.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), tmp_path / "s.onnx")
    with pytest.raises(ValidationError, match="input 's' is STRING of rank 1: compare takes float"):
        compare_files(path, path)


def test_unknown_dims(tmp_path: Path) -> None:
    """Dims with neither a size nor a name: the first is the batch, the others get seq_len."""
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "unknown",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])])
    path = models.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), tmp_path / "unknown.onnx")
    report = compare_files(path, path, batch=3, seq_len=7)
    assert report.inputs[0].shape == (3, 7)
    assert report.ok and report.batch_independent is True and "the other samples of y compared" in report.batch_reason


def test_runs_without_torch(linear_path: Path, stamp_path: Path) -> None:
    code = ("import sys; sys.modules['torch'] = None  # any import of torch now fails\n"
            "import stamp_onnx.graph.runtime\n"
            "from stamp_onnx.cli.commands import main\n"
            "sys.exit(main(['-q', 'compare', sys.argv[1], sys.argv[2]]))")
    done = subprocess.run([sys.executable, "-c", code, str(linear_path), str(stamp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "batch independence: ok" in done.stdout
