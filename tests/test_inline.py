"""`quantize --inline`: only standard ops in the main graph, QDQ pairs visible, same numerics."""

from __future__ import annotations

import collections
from pathlib import Path

import models
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from torch_models import tiny_llama, tiny_llama_onnx

from stamp_onnx.cli.commands import main
from stamp_onnx.config import StampConfig
from stamp_onnx.graph import ops
from stamp_onnx.pipeline import quantize_file
from stamp_onnx.zoo.models import calibration_samples, sample_inputs


def _run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in wanted})


@pytest.mark.parametrize("transform", ["haar", "dct", "wht", "none"])
def test_inlined_model_has_only_standard_ops_and_the_same_outputs(transform: str, tmp_path: Path) -> None:
    config = StampConfig(transform=transform, hp_tokens=8)
    functions, inlined = tmp_path / "functions.onnx", tmp_path / "inlined.onnx"
    report = quantize_file(tiny_llama_onnx(), functions, config)
    quantize_file(tiny_llama_onnx(), inlined, config, inline=True)

    proto = onnx.load(str(inlined))
    onnx.checker.check_model(proto, full_check=True)
    assert not proto.functions
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"}
    assert all(node.domain in ("", "ai.onnx") for node in proto.graph.node)
    names = [node.name for node in proto.graph.node]
    assert len(names) == len(set(names))
    counts = collections.Counter(node.op_type for node in proto.graph.node)
    layers = len(report.rewritten)
    # two groups per layer (the first K tokens at 8 bits, the rest at 4), one pair each
    assert counts["QuantizeLinear"] == counts["DequantizeLinear"] == 2 * layers
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear":
            assert {p.key for p in node.metadata_props} >= {"stamp_onnx.layer", "stamp_onnx.pass"}

    feeds = sample_inputs(tiny_llama(), 2, 37, seed=3)
    for a, b in zip(_run(functions, feeds), _run(inlined, feeds), strict=True):
        np.testing.assert_array_equal(a, b)


def test_cli_inline_flag(mlp_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "q.onnx"
    assert main(["quantize", str(mlp_path), "-o", str(out), "--inline"]) == 0
    assert "rewrote 2 linear layers" in capsys.readouterr().out
    proto = onnx.load(str(out))
    assert not proto.functions and not any(node.domain == ops.DOMAIN for node in proto.graph.node)
    x = np.random.default_rng(0).standard_normal((1, 9, models.D_IN)).astype(np.float32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert np.isfinite(session.run(None, {"x": x})[0]).all()


@pytest.mark.parametrize(("feature", "method"), [("hadamard", "rtn"), ("smoothquant", "gptq")])
def test_inlined_feature_transforms_and_weights(feature: str, method: str, tmp_path: Path) -> None:
    """FeatureRotation is inlined too; SmoothQuant's Div and GPTQ's DequantizeLinear are standard ops already."""
    config = StampConfig(hp_tokens=8, weight_bits=4, weight_method=method, feature_transform=feature)
    feeds = calibration_samples(tiny_llama(), 3, 20, held_out=2).feeds if config.needs_calibration else None
    functions, inlined = tmp_path / "functions.onnx", tmp_path / "inlined.onnx"
    quantize_file(tiny_llama_onnx(), functions, config, calibration_feeds=feeds)
    quantize_file(tiny_llama_onnx(), inlined, config, inline=True, calibration_feeds=feeds)
    proto = onnx.load(str(inlined))
    assert not proto.functions and all(node.domain in ("", "ai.onnx") for node in proto.graph.node)
    sample = sample_inputs(tiny_llama(), 2, 29, seed=4)
    for a, b in zip(_run(functions, sample), _run(inlined, sample), strict=True):
        np.testing.assert_array_equal(a, b)
