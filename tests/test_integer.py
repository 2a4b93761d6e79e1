"""--target integer: the integer codes, their ops (bodies and kernels), onnxruntime's integer GEMM
with a per-token scale, and whole rewritten models against their fake-quant twins.

The oracle is the fake-quant quantizer (quant.qdq, itself held to oracles.literal_qdq_token): the
integer codes must give exactly its integer products (q - zp) . w, and an integer model the
fake-quant model's outputs up to float rounding.
"""

from __future__ import annotations

from pathlib import Path

import backends
import models
import numpy as np
import onnx
import onnxruntime as ort
import oracles
import pytest
from onnx import TensorProto, helper, numpy_helper

from stamp_onnx.config import StampConfig
from stamp_onnx.core import quant, weights
from stamp_onnx.errors import ConfigError
from stamp_onnx.evaluation.inspection import summarize
from stamp_onnx.graph import ops, runtime
from stamp_onnx.graph.contract import INTEGER_GEMM, read_layers
from stamp_onnx.graph.model_io import load_model
from stamp_onnx.pipeline import quantize_file

D = oracles.FEATURES


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(oracles.stable_seed(name))


def _tokens(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random tokens with the cases a zero point cares about: all positive, all negative, constant, zero."""
    x = (rng.standard_normal(shape) * rng.uniform(0.1, 10, (*shape[:-1], 1))).astype(np.float32)
    x[..., 1, :] = np.abs(x[..., 1, :])
    x[..., 2, :] = -np.abs(x[..., 2, :])
    x[..., 3, :] = 0
    x[..., 4, :] = 1.5
    return x


def _integer_product(x: np.ndarray, bits: int, w_codes: np.ndarray) -> np.ndarray:
    """(q - zp) @ w in int64, q and zp read off the fake-quant quantizer's output."""
    scale, _ = quant.qparams(x, bits)
    steps = np.round(quant.qdq(x, bits) / scale).astype(np.int64)  # q - zp, exact: |q - zp| < 2^8
    return steps @ w_codes.astype(np.int64)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 7, 8])
def test_codes_give_the_fake_quant_integer_products(bits: int) -> None:
    rng = _rng(f"codes{bits}")
    x = _tokens(rng, (2, 9, D))
    hard = oracles.hard_tokens(bits)
    w_codes = rng.integers(-127, 128, (D, 5)).astype(np.int8)
    for tokens in (x, hard[None]):
        extra = weights.zero_point_rows(w_codes) if bits == 8 else np.zeros((0, 5), np.int8)
        codes, scale = quant.integer_codes_group(tokens, bits, extra.shape[0])
        assert codes.shape == (*tokens.shape[:-1], D + extra.shape[0]) and codes.dtype == np.uint8
        np.testing.assert_array_equal(scale, quant.qparams(tokens, bits)[0])
        acc = (codes.astype(np.int64) - quant.CODE_ZERO_POINT) @ np.concatenate([w_codes, extra]).astype(np.int64)
        np.testing.assert_array_equal(acc, _integer_product(tokens, bits, w_codes))


def test_zero_point_rows_are_the_fewest_int8_rows_summing_to_minus_the_column_sums() -> None:
    q = np.full((600, 3), 127, np.int8)
    q[:, 1] = -127
    q[:, 2] = 0
    q[0, 2] = 5
    rows = weights.zero_point_rows(q)
    assert rows.shape == (600, 3)  # 600 * 127 / 127
    np.testing.assert_array_equal(rows.astype(np.int64).sum(axis=0), -q.astype(np.int64).sum(axis=0))
    assert np.abs(rows.astype(np.int64)).max() <= 127
    assert weights.zero_point_rows(np.zeros((4, 2), np.int8)).shape == (0, 2)
    assert weights.zero_point_rows(np.array([[100], [100], [-73]], np.int8)).shape == (1, 1)  # 127
    assert weights.zero_point_rows(np.array([[100], [100], [-72]], np.int8)).shape == (2, 1)  # 128


SPECS = [
    ops.TokenQuantizeSpec(ops.TokenQDQSpec(3, 8, 4), 2),
    ops.TokenQuantizeSpec(ops.TokenQDQSpec(0, 8, 8), 3),
    ops.TokenQuantizeSpec(ops.TokenQDQSpec(4, 7, 2), 0),
    ops.TokenQuantizeSpec(ops.TokenQDQSpec(4, 8, 4), 1, ops.SequenceTransformSpec("haar", 3, False, 1)),
    ops.TokenQuantizeSpec(ops.TokenQDQSpec(4, 8, 3), 2, ops.SequenceTransformSpec("haar2d", 1, False, 1, 3)),
    ops.TokenQuantizeSpec(ops.TokenQDQSpec(2, 5, 4), 0, ops.SequenceTransformSpec("haar", 2)),
    ops.TokenQuantizeSpec(ops.TokenQDQSpec(1, 8, 2, ((2, 6), (3, 4))), 1, ops.SequenceTransformSpec("haar", 2, False, 1)),
    ops.TokenQuantizeSpec(ops.TokenQDQSpec(2, 7, 3, ((1, 5),)), 0),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: f"{ops.op_type(spec)}-{spec.overload}")
def test_quantize_ops_match_the_reference(spec: ops.TokenQuantizeSpec, backend: str) -> None:
    """Same codes and scales, bit for bit (for the transforms whose float ops are identical in every
    backend: Haar and 2-D Haar; the others are held to a bound in test_ops/test_native)."""
    rng = _rng(f"ops{spec.overload}{backend}")
    sess = backends.session(spec, backend)
    for shape in ((2, 10, D), (1, 1, D), (3, 0, D)):
        x = _tokens(rng, (shape[0], max(shape[1], 5), D))[:, : shape[1]]
        codes, scale = sess.run(None, {"x": x})
        ref_codes, ref_scale = spec.reference(x)
        assert codes.dtype == np.uint8 and scale.shape == (*x.shape[:-1], 1)
        np.testing.assert_array_equal(codes, ref_codes)
        np.testing.assert_array_equal(scale, ref_scale)


def test_quantize_ops_on_hard_tokens(backend: str) -> None:
    for bits in (2, 3, 4, 5, 6, 7, 8):
        spec = ops.TokenQuantizeSpec(ops.TokenQDQSpec(0, 8, bits), 2)
        x = oracles.hard_tokens(bits)[None]
        codes, scale = backends.session(spec, backend).run(None, {"x": x})
        ref_codes, ref_scale = spec.reference(x)
        np.testing.assert_array_equal(codes, ref_codes)
        np.testing.assert_array_equal(scale, ref_scale)


def _gemm_model(s: int, k: int, n: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node(INTEGER_GEMM, ["a", "b", "a_scale", "b_scale", "a_zero_point"], ["y"], domain="com.microsoft")],
        "gemm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, ["batch", "seq", k]),
         helper.make_tensor_value_info("b", TensorProto.INT8, [k, n]),
         helper.make_tensor_value_info("a_scale", TensorProto.FLOAT, ["batch", "seq", 1]),
         helper.make_tensor_value_info("b_scale", TensorProto.FLOAT, [n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", n])],
        [numpy_helper.from_array(np.array(quant.CODE_ZERO_POINT, np.uint8), "a_zero_point")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])


def test_onnxruntime_takes_a_per_token_scale_in_matmul_integer_to_float() -> None:
    """Pins what the integer target relies on beyond MatMulIntegerToFloat's documented schema (a
    scalar or per-column a_scale): a per-token a_scale of shape (batch, seq, 1), uint8 codes around a
    scalar zero point, int8 weights with per-column scales, on the CPU provider. An onnxruntime that
    refuses it, or broadcasts it differently, fails here."""
    rng = _rng("ort-per-token-scale")
    s, k, n = 37, 200, 48  # shapes that take the blocked kernels, not one tile
    sess = ort.InferenceSession(_gemm_model(s, k, n).SerializeToString(), providers=["CPUExecutionProvider"])
    a = rng.integers(0, 256, (2, s, k)).astype(np.uint8)
    b = rng.integers(-127, 128, (k, n)).astype(np.int8)
    a_scale = rng.uniform(0.01, 2, (2, s, 1)).astype(np.float32)
    b_scale = rng.uniform(0.001, 0.1, n).astype(np.float32)
    (y,) = sess.run(None, {"a": a, "b": b, "a_scale": a_scale, "b_scale": b_scale})
    expected = quant.integer_matmul(a, a_scale, b, b_scale)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    # every token's own scale: scaling one token's scale scales that token's output row only
    a_scale[1, 5] *= 4
    (y2,) = sess.run(None, {"a": a, "b": b, "a_scale": a_scale, "b_scale": b_scale})
    np.testing.assert_allclose(y2[1, 5], 4 * y[1, 5], rtol=1e-6)
    np.testing.assert_array_equal(np.delete(y2[1], 5, axis=0), np.delete(y[1], 5, axis=0))


def _linear_model(gemm: bool) -> onnx.ModelProto:
    """One linear layer: x (b, s, 16) MatMul W (16, 24), or x (s, 16) Gemm(W^T, c, transB=1)."""
    if gemm:
        return models.gemm_model()
    w = _rng("linear-weight").standard_normal((D, 24)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 24])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


CONFIGS = {
    "a8-none": StampConfig(transform="none", hp_tokens=0, lp_bits=8, weight_bits=8),
    "stamp-8/4-w8": StampConfig(hp_tokens=4, weight_bits=8),
    "stamp-8/4-w4": StampConfig(hp_tokens=4, weight_bits=4),
    "haar2d-8/3": StampConfig(transform="haar2d", hp_tokens=4, lp_bits=3, weight_bits=8, grid_width=3),
    "dct-6/4": StampConfig(transform="dct", hp_tokens=4, hp_bits=6, weight_bits=8),
}


def _run(path: Path, x: np.ndarray, native: bool) -> np.ndarray:
    """Run ``path`` with the project's session options (the fake-quant twin's int8 weight
    DequantizeLinear + MatMul, which onnxruntime fuses into MatMulNBits, computes in fp32)."""
    sess = runtime.session(path, native)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("gemm", [False, True], ids=["matmul", "gemm-transB-bias"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_integer_layer_equals_its_fake_quant_twin(tmp_path: Path, name: str, gemm: bool, backend: str) -> None:
    """One layer, fresh random input: the same codes, so the outputs agree to float rounding."""
    config = CONFIGS[name]
    src = tmp_path / "float.onnx"
    onnx.save(_linear_model(gemm), src)
    quantize_file(src, tmp_path / "fq.onnx", config)
    quantize_file(src, tmp_path / "int.onnx", config, target="integer")
    rng = _rng(f"layer{name}{gemm}{backend}")
    x = _tokens(rng, (10, D) if gemm else (2, 10, D))  # 10 = 1 prefix + a 3 x 3 grid
    native = backend == backends.NATIVE
    fake, integer = _run(tmp_path / "fq.onnx", x, native), _run(tmp_path / "int.onnx", x, native)
    # the fake-quant MatMul sums float products, the integer one exact integers: float rounding only
    bound = 1e-5 * np.abs(fake).max() + 1e-6
    np.testing.assert_allclose(integer, fake, rtol=0, atol=bound)
    model = load_model(tmp_path / "int.onnx")
    assert all(layer.integer for layer in read_layers(model))
    assert not any(node.op_type in ("MatMul", "Gemm", "DequantizeLinear") for node in model.graph)


def test_integer_mlp_structure_and_inspect(tmp_path: Path) -> None:
    src = tmp_path / "mlp.onnx"
    onnx.save(models.mlp_model(), src)
    report = quantize_file(src, tmp_path / "int.onnx", StampConfig(weight_bits=8), target="integer")
    assert [r.weight_format for r in report.rewritten] == ["int8 per channel, integer GEMM"] * 2
    model = load_model(tmp_path / "int.onnx")
    summary = summarize(model)
    assert [layer.gemm for layer in summary.layers] == ["integer", "integer"]
    assert "2 integer GEMMs" in summary.to_text()
    counts = summary.op_counts
    assert counts[f"com.microsoft::{INTEGER_GEMM}"] == 2 and counts[f"{ops.DOMAIN}::{ops.TRANSFORM_QUANTIZE}"] == 2
    assert counts["MatMul"] == 1  # the product of two activations stays float
    assert not [key for key in model.functions if key[1] in ops.QUANTIZERS]  # no fake-quant body left behind
    fake = load_model(quantize_file(src, tmp_path / "fq.onnx", StampConfig(weight_bits=8)) and tmp_path / "fq.onnx")
    assert [layer.gemm for layer in summarize(fake).layers] == ["float", "float"]


@pytest.mark.parametrize(("config", "inline", "refused"), [
    (StampConfig(weight_bits=8, weight_block=8), False, "--weight-block 8"),
    (StampConfig(), False, "--weight-bits 0"),
    (StampConfig(hp_bits=16, weight_bits=8), False, "activation bits 16/4"),
    (StampConfig(weight_bits=8), True, "--inline"),
])
def test_integer_target_refuses_what_it_cannot_run(tmp_path: Path, config: StampConfig, inline: bool, refused: str) -> None:
    src = tmp_path / "mlp.onnx"
    onnx.save(models.mlp_model(), src)
    with pytest.raises(ConfigError, match=f"--target integer does not take {refused}"):
        quantize_file(src, tmp_path / "out.onnx", config, inline=inline, target="integer")
    assert not (tmp_path / "out.onnx").exists()


def test_cli_target_integer_defaults_to_int8_weights_and_inspect_says_so(
        tmp_path: Path, mlp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stamp_onnx.cli import main

    out = tmp_path / "int.onnx"
    assert main(["-q", "quantize", str(mlp_path), "-o", str(out), "--target", "integer", "--transform", "none",
                 "--hp-tokens", "0", "--lp-bits", "8"]) == 0
    assert "weights int8 per channel" in capsys.readouterr().out
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2 integer GEMMs (uint8 x int8), 0 float GEMMs" in text
    assert text.count("integer  int8 per channel") == 2
    assert main(["-q", "quantize", str(mlp_path), "-o", str(tmp_path / "w4.onnx"), "--target", "integer",
                 "--weight-bits", "4"]) == 0
    assert "weights int4 per channel" in capsys.readouterr().out
    assert main(["-q", "quantize", str(mlp_path), "-o", str(tmp_path / "bad.onnx"), "--target", "integer", "--inline"]) == 2
    assert "--target integer does not take --inline" in capsys.readouterr().err
    assert not (tmp_path / "bad.onnx").exists()
    assert main(["-q", "quantize", str(mlp_path), "-o", str(tmp_path / "bad.onnx"), "--target", "integer",
                 "--weight-block", "8"]) == 2
    assert "--target integer does not take --weight-block 8" in capsys.readouterr().err
