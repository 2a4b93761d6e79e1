"""Tests for stamp_onnx.targets.htp_runtime: the QNN graph JSON analysis (always), and sessions on the HTP
simulator (only where onnxruntime-qnn is installed: the optional extra `htp`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from stamp_onnx.core.quant import sqnr_db
from stamp_onnx.errors import ConfigError
from stamp_onnx.targets import htp_rules, htp_runtime, htp_units
from stamp_onnx.targets.htp_plan import BlockPlan

needs_qnn = pytest.mark.skipif(not htp_runtime.available(), reason="onnxruntime-qnn is not installed (optional extra `htp`)")

F32, U16, U8, S8 = 0x0232, 0x0416, 0x0408, 0x0308  # QNN_DATATYPE_* as the dump writes them
APP_WRITE, APP_READ, NATIVE, STATIC = 0, 1, 3, 4


def _dump(tmp_path: Path, tensors: dict[str, tuple[int, int, list[int]]], nodes: dict[str, tuple[str, list[str], list[str]]]) -> Path:
    graph = {
        "tensors": {n: {"data_type": t, "type": k, "dims": dims} for n, (t, k, dims) in tensors.items()},
        "nodes": {n: {"type": op, "input_names": i, "output_names": o} for n, (op, i, o) in nodes.items()},
    }
    (tmp_path / "QNNExecutionProvider_graph_1.json").write_text(json.dumps({"graph": graph}))
    (tmp_path / "QNNExecutionProvider_graph_1_tensor_log.json").write_text("{}")  # not a graph
    return tmp_path


def test_report_of_an_integer_graph(tmp_path: Path) -> None:
    dump = _dump(tmp_path, {
        "x": (F32, APP_WRITE, [1, 4, 8]), "xq": (U16, NATIVE, [1, 4, 8]), "w": (S8, STATIC, [8, 2]),
        "y": (U8, NATIVE, [4, 2]), "y2": (U8, NATIVE, [1, 4, 2]), "out": (F32, APP_READ, [1, 4, 2]),
    }, {
        "q": ("Quantize", ["x"], ["xq"]), "fc": ("FullyConnected", ["xq", "w"], ["y"]),
        "r": ("Reshape", ["y"], ["y2"]), "dq": ("Dequantize", ["y2"], ["out"]),
    })
    report = htp_runtime.integer_report(dump)
    assert report.integer_only and report.graphs == 1
    assert report.op_counts == {"Dequantize": 1, "FullyConnected": 1, "Quantize": 1, "Reshape": 1}
    assert report.activation_bytes == {"float_32": 4 * (32 + 8), "ufixed_point_16": 64, "ufixed_point_8": 16}
    assert report.reshape_bytes == {"ufixed_point_8": 8}
    assert "integer-only on the HTP: yes" in htp_runtime.format_report(report)


def test_report_finds_float_compute(tmp_path: Path) -> None:
    dump = _dump(tmp_path, {
        "x": (F32, APP_WRITE, [4]), "h": (F32, NATIVE, [4]), "hq": (U16, NATIVE, [4]), "out": (F32, APP_READ, [4]),
        "o2": (F32, NATIVE, [4]),
    }, {
        "mul": ("ElementWiseMultiply", ["x", "x"], ["h"]),  # float compute on the NPU
        "q": ("Quantize", ["h"], ["hq"]),  # quantizing an inner float value is float too
        "dq": ("Dequantize", ["hq"], ["o2"]),  # dequantizing to an inner value as well
        "dq2": ("Dequantize", ["hq"], ["out"]),  # but into a graph output is the edge
    })
    report = htp_runtime.integer_report(dump)
    assert not report.integer_only
    assert [op for op, _, _ in report.float_ops] == ["ElementWiseMultiply", "Quantize", "Dequantize"]
    assert "float compute: ElementWiseMultiply mul" in htp_runtime.format_report(report)


def test_report_needs_a_dump(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no QNN graph JSON"):
        htp_runtime.integer_report(tmp_path)


def test_bad_arch_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="htp_arch"):
        htp_runtime.htp_session("model.onnx", htp_arch="99")


def _layer(tmp_path: Path, transform: str, tokens: int, **kwargs: object) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    d, n = 32, 48
    x = np.cumsum(rng.standard_normal((5, tokens, d)), axis=1) / 8
    x[:, 0] *= 4
    x = x.astype(np.float32)
    w = (rng.standard_normal((d, n)) / 6).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    model = htp_units.layer_model(BlockPlan(transform, tokens, 3, 1, 16), w, b, x, **kwargs)  # type: ignore[arg-type]
    path = tmp_path / f"{transform}.onnx"
    onnx.save(model, path)
    return path, x[:1], x[:1] @ w + b


@needs_qnn
@pytest.mark.parametrize(("transform", "tokens"), [("haar", 64), ("haar2d", 65), ("none", 64)])
def test_unit_runs_integer_only_on_the_htp(tmp_path: Path, transform: str, tokens: int) -> None:
    path, x, want = _layer(tmp_path, transform, tokens)
    dump = tmp_path / "dump"
    htp = htp_runtime.htp_session(path, dump_dir=dump).run(None, {"x": x})[0]
    cpu = htp_runtime.cpu_reference_session(path).run(None, {"x": x})[0]
    report = htp_runtime.integer_report(dump)
    assert report.integer_only, report.float_ops
    assert report.activation_bytes.get("ufixed_point_8", 0) > 0  # the lp group really is 8-bit
    assert abs(sqnr_db(want, htp) - sqnr_db(want, cpu)) < 0.5
    assert sqnr_db(cpu, htp) > 35


@needs_qnn
def test_check_model_flags_float_ops(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.ones((8, 4), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.save(model, tmp_path / "float.onnx")
    report = htp_runtime.check_model(tmp_path / "float.onnx")
    assert not report.integer_only
    assert report.float_ops[0][0] == "FullyConnected"
    path, _, _ = _layer(tmp_path, "haar", 64)
    assert htp_runtime.check_model(path, dump_dir=tmp_path / "d").integer_only


@needs_qnn
@pytest.mark.parametrize("spec", ["haar", "none", "haar-lp16", "haar-hp8"])
def test_spliced_model_runs_integer_only_on_the_htp(tmp_path: Path, spec: str) -> None:
    import models

    from stamp_onnx.config import StampConfig
    from stamp_onnx.targets.htp_model import HtpOptions, quantize_for_htp

    source = models.save(models.mlp_model(), tmp_path / "mlp.onnx")
    rng = np.random.default_rng(1)
    x = (np.cumsum(rng.standard_normal((4, 32, models.D_IN)), axis=1) / 8).astype(np.float32)
    transform, _, bits = spec.partition("-")
    options = HtpOptions(seq_len=32, lp_bits=16 if bits == "lp16" else 8, hp_bits=8 if bits == "hp8" else 16)
    out = tmp_path / "mlp.htp.onnx"
    quantize_for_htp(source, out, {"x": x}, StampConfig(transform=transform, hp_tokens=16), options)
    assert htp_rules.rule_violations(onnx.load(out)) == []
    report = htp_runtime.check_model(out, feeds={"x": x[:1]})
    assert report.integer_only, report.float_ops
