"""`eval --ep htp` and `validate --ep htp`, the RMSNorm fusion of the HTP target, and the nodes the
HTP refuses, named before any output is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as oh
from torch_models import tiny_llama_onnx

from stamp_onnx.cli import main
from stamp_onnx.config import StampConfig
from stamp_onnx.core.quant import sqnr_db
from stamp_onnx.targets import htp_model, htp_runtime

needs_htp = pytest.mark.skipif(not htp_runtime.available(), reason="onnxruntime-qnn is not installed (optional extra `htp`)")

S, D, N = 32, 64, 48


def _rms_norm_model() -> onnx.ModelProto:
    """x (1, S, D) -> RMSNorm as exported (Pow, ReduceMean, Add, Sqrt, Reciprocal, Mul, Mul) -> x W."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a, n) for a, n in (
        ((rng.standard_normal((D, N)) / 8).astype(np.float32), "W"), (np.array(2.0, np.float32), "two"),
        (np.array(1e-5, np.float32), "eps"), (rng.uniform(0.5, 1.5, D).astype(np.float32), "gamma"),
        (np.array([-1], np.int64), "axes"))]
    nodes = [oh.make_node("Pow", ["x", "two"], ["sq"]), oh.make_node("ReduceMean", ["sq", "axes"], ["ms"], keepdims=1),
             oh.make_node("Add", ["ms", "eps"], ["mse"]), oh.make_node("Sqrt", ["mse"], ["rms"]),
             oh.make_node("Reciprocal", ["rms"], ["inv"]), oh.make_node("Mul", ["x", "inv"], ["xn"]),
             oh.make_node("Mul", ["gamma", "xn"], ["normed"]), oh.make_node("MatMul", ["normed", "W"], ["y"])]
    graph = oh.make_graph(nodes, "rms", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, S, D])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, S, N])], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)], ir_version=10)


def _massive(n: int, seed: int) -> np.ndarray:
    """Ordinary tokens of a few units and one token with LLM-like massive activations (2e4)."""
    x = np.random.default_rng(seed).standard_normal((n, S, D)).astype(np.float32) * 2
    x[:, 0, 3], x[:, 0, 7], x[:, 5, 3] = 20000.0, -9000.0, 3000.0
    return x


@needs_htp
def test_rms_norm_is_fused_and_keeps_ordinary_tokens(tmp_path: Path) -> None:
    # decomposed, Pow's u16 step is ~1e4 and the ordinary tokens' squares round to 0: 9 dB here
    source = tmp_path / "rms.onnx"
    onnx.save(_rms_norm_model(), source)
    out = tmp_path / "rms.htp.onnx"
    htp_model.quantize_for_htp(source, out, {"x": _massive(8, 1)}, StampConfig(),
                               htp_model.HtpOptions(seq_len=S, baseline=True))
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "RMSNormalization" in ops and "Pow" not in ops, ops
    import onnxruntime as ort

    x = _massive(2, 2)
    ref = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"x": x[:1]})[0]
    got = htp_runtime.cpu_reference_session(out).run(None, {"x": x[:1]})[0]
    assert sqnr_db(ref[:, 6:], got[:, 6:]) > 18.0  # the ordinary tokens after the massive ones
    report = htp_runtime.check_model(out)
    assert report.integer_only and report.op_counts.get("RmsNorm") == 1, report.op_counts


def _refused_model(tmp_path: Path) -> Path:
    """x W, plus NonZero(x) as a second output: the HTP has no NonZero."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((D, N)).astype(np.float32), "W")
    nodes = [oh.make_node("MatMul", ["x", "W"], ["y"], name="linear0"), oh.make_node("NonZero", ["x"], ["nz"], name="nonzero0")]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, S, D])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, S, N]),
                           oh.make_tensor_value_info("nz", TensorProto.INT64, [3, None])], [w])
    path = tmp_path / "refused.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)], ir_version=10), path)
    return path


@needs_htp
def test_nodes_the_htp_cannot_run_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _refused_model(tmp_path)
    assert htp_runtime.refused_nodes(source) == [("nonzero0", "NonZero")]
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).standard_normal((2, S, D)).astype(np.float32))
    out = tmp_path / "out.onnx"
    assert main(["-q", "quantize", str(source), "-o", str(out), "--target", "htp", "--seq-len", str(S),
                 "--calibration", str(tmp_path / "calib.npz"), "--baseline"]) != 0
    err = capsys.readouterr().err
    assert "the HTP cannot run" in err and "nonzero0 (NonZero)" in err and err.count("\n") == 1, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "refused.onnx"]
    assert main(["-q", "htp-check", str(source)]) == 2
    err = capsys.readouterr().err
    assert "nonzero0 (NonZero)" in err and err.count("\n") == 1, err


@needs_htp
def test_eval_and_validate_on_the_htp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(tiny_llama_onnx(), tmp_path / "tiny-llama.onnx")  # eval reuses a float export in --out-dir
    table = tmp_path / "htp.md"
    assert main(["-q", "eval", "tiny-llama", "--ep", "htp", "--seq-len", "32", "--windows", "2", "--out-dir",
                 str(tmp_path), "--configs", "baseline", "haar,hp_tokens=16", "--markdown", str(table)]) == 0
    rows = [line.split(" | ") for line in table.read_text().splitlines() if line.startswith("| A16W8") or line.startswith("| haar")]
    assert len(rows) == 2 and all(" yes " in f" {row[7]} " for row in rows), rows
    assert [row[1] for row in rows] == ["all", "17"]  # K = 16 rounds to the band boundary 17 with the prefix token
    assert [row[-2] for row in rows] == ["1.00", "0.77"]  # (17 x 2 + 15 x 1) / (32 x 2) bytes per feature
    capsys.readouterr()
    spliced = tmp_path / "tiny-llama.htp.haar_hp_tokens-16.onnx"
    assert main(["-q", "validate", "tiny-llama", str(spliced), "--ep", "htp", "--windows", "2", "--htp-samples", "2",
                 "--float-onnx", str(tmp_path / "tiny-llama.onnx"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["integer_only"] is True and result["htp_samples"] == 2 and result["samples"] == 2
    assert {"float", "CPU", "HTP, first 2", "CPU, first 2"} == set(result["perplexity"])
    assert result["sqnr_htp_vs_cpu_db"] > 25.0, result
    assert abs(result["perplexity"]["CPU"] / result["perplexity"]["float"] - 1) < 0.05, result["perplexity"]
    assert result["perplexity_leak_free"]["float"] != result["perplexity"]["float"]  # Haar blocks leak: fewer targets


@pytest.mark.parametrize(("argv", "message"), [
    (["eval", "tiny-llama", "--ep", "htp", "--configs", "dct"], "the HTP takes the transforms haar, haar2d and none"),
    (["eval", "tiny-llama", "--ep", "htp", "--configs", "baseline,levels=2"], "the baseline takes only"),
    (["eval", "tiny-llama", "--ep", "htp", "--configs", "haar,percentile=high"], "percentile='high' is not a number"),
    (["eval", "tiny-llama", "--ep", "htp", "--configs", "haar,lp_bits=8.5"], "lp_bits='8.5' is not an integer"),
    (["eval", "tiny-llama", "--ep", "htp", "--report", "r"], "--report and --fresh do not apply to --ep htp"),
    (["eval", "tiny-llama", "--fold-input", "attention_mask"], "--fold-input applies to --ep htp only"),
    (["validate", "tiny-llama", "x.onnx", "--ep", "htp", "--seq-len", "32"], "reads the sequence length from the file"),
])
def test_bad_htp_evaluations_are_one_line(argv: list[str], message: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", *argv, *(["--out-dir", str(tmp_path)] if argv[0] == "eval" else [])]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_validate_htp_needs_an_htp_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "validate", "tiny-llama", str(tiny_llama_onnx()), "--ep", "htp", "--windows", "1"]) != 0
    err = capsys.readouterr().err
    assert "it was not written by quantize --target htp" in err and err.count("\n") == 1, err
