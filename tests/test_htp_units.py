"""Tests for the static integer STaMP units (stamp_onnx.targets: htp_plan, htp_units, htp_rules) and the whole-model splice.

The block form is held to the transform oracle (stamp_onnx.transforms) row by row, the float unit
to x W + b, the quantized unit to float within its bits, and every unit node to the HTP's rules.
None of this needs onnxruntime-qnn: the CPU provider at ORT_DISABLE_ALL runs the QDQ as written.
"""

from __future__ import annotations

import math

import models
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from stamp_onnx.config import StampConfig
from stamp_onnx.core import transforms
from stamp_onnx.core.quant import sqnr_db
from stamp_onnx.errors import ConfigError, ModelLoadError
from stamp_onnx.targets import htp_plan, htp_rules, htp_units
from stamp_onnx.targets.htp_model import HtpOptions, quantize_for_htp
from stamp_onnx.targets.htp_plan import BlockPlan, Encoding, calibrate_unit

PLANS = [
    BlockPlan("haar", 128, 3, 1, 64),  # MiniLM: 15 blocks + a tail of 7
    BlockPlan("haar", 128, 3, 0, 64),  # exact blocks
    BlockPlan("haar", 19, 3, 1, 5),
    BlockPlan("haar", 13, 3, 2, 13),  # everything at hp
    BlockPlan("haar", 128, 3, 1, 1),  # only the prefix at hp
    BlockPlan("haar", 5, 3, 1, 2),  # only a tail
    BlockPlan("haar", 40, 2, 1, 10),
    BlockPlan("haar", 33, 1, 0, 16),
    BlockPlan("haar2d", 257, 3, 1, 64),  # DINOv2: CLS + 16 x 16, 8 x 8 blocks
    BlockPlan("haar2d", 129, 2, 1, 20, grid_width=16),
    BlockPlan("none", 20, 3, 0, 7),
    BlockPlan("none", 20, 3, 0, 0),
]
IDS = [f"{p.transform}-s{p.tokens}-L{p.levels}-p{p.prefix}-k{p.hp_tokens}" for p in PLANS]


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"x": row[None]})[0] for row in x])


def _smooth(rng: np.random.Generator, n: int, s: int, d: int) -> np.ndarray:
    """Token-correlated activations (a random walk along the tokens) with a loud first token."""
    x = np.cumsum(rng.standard_normal((n, s, d)), axis=1) / 8 + 0.3 * rng.standard_normal((n, s, d))
    x[:, 0] *= 6
    return x.astype(np.float32)


@pytest.mark.parametrize("plan", PLANS, ids=IDS)
def test_block_form_is_the_reference_transform_regrouped(plan: BlockPlan) -> None:
    reference = transforms.matrix(plan.tokens, plan.transform, plan.levels, plan.prefix, plan.grid_width)
    unit = plan.unit_matrix()
    position = []
    for row in unit:
        hits = np.flatnonzero(np.abs(reference - row).max(axis=1) < 1e-12)
        assert len(hits) == 1
        position.append(int(hits[0]))
    assert sorted(position) == list(range(plan.tokens))
    # the hp group is exactly the first hp_count tokens of the reference order
    assert set(position[: plan.hp_count]) == set(range(plan.hp_count))
    x = np.random.default_rng(plan.tokens).standard_normal((2, plan.tokens, 5)).astype(np.float32)
    hp, lp = htp_plan.block_forward(plan, x)
    ref = transforms.forward(x, plan.transform, plan.levels, plan.prefix, plan.grid_width)
    np.testing.assert_allclose(np.concatenate([hp, lp], axis=1), ref[:, position], atol=1e-5)


@pytest.mark.parametrize(
    ("plan", "want"),
    [
        (BlockPlan("haar", 128, 3, 1, 64), (65, 4, 4)),  # bands of 127 tokens: 16, 16, 32, 63
        (BlockPlan("haar", 128, 3, 1, 16), (17, 1, 1)),  # nearest boundary below
        (BlockPlan("haar", 128, 3, 1, 41), (33, 2, 2)),
        (BlockPlan("haar", 128, 3, 1, 49), (65, 4, 4)),  # a tie (32 or 64 from 48) goes up
        (BlockPlan("haar", 128, 3, 1, 128), (128, 8, 7)),
        (BlockPlan("haar2d", 257, 3, 1, 64), (65, 16, 0)),  # 4 blocks x 4 x 4 rows
        (BlockPlan("none", 128, 3, 1, 64), (64, 0, 0)),  # none: exactly K, no prefix
    ],
)
def test_hp_tokens_round_to_a_band_boundary(plan: BlockPlan, want: tuple[int, int, int]) -> None:
    assert (plan.hp_count, plan.rows, plan.tail_rows) == want


@pytest.mark.parametrize("plan", [p for p in PLANS if p.tokens <= 257], ids=[i for p, i in zip(PLANS, IDS, strict=True) if p.tokens <= 257])
@pytest.mark.parametrize("bias", [True, False])
def test_float_unit_is_the_linear_layer(plan: BlockPlan, bias: bool) -> None:
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 5)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32) if bias else None
    x = rng.standard_normal((2, plan.tokens, 6)).astype(np.float32)
    model = htp_units.layer_model(plan, w, b, None, batch=1)
    onnx.checker.check_model(model, full_check=True)
    np.testing.assert_allclose(_run(model, x), x @ w + (0 if b is None else b), atol=2e-5)


def test_quantized_unit_keeps_the_htp_rules_and_its_precision() -> None:
    rng = np.random.default_rng(4)
    s, d, n = 64, 32, 24
    test = _smooth(rng, 2, s, d)
    calib = np.concatenate([_smooth(rng, 6, s, d), test])  # no clipping: the test is of the rounding
    w = (rng.standard_normal((d, n)) / 4).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    codes, scales = htp_units.quantize_weight_columns(w)
    want = test @ (codes * scales) + b  # the int8 weight's own error is not the units' business
    plan = BlockPlan("haar", s, 3, 1, 16)
    results = {}
    for label, kwargs in {"16/8": {}, "16/16": {"lp_bits": 16}, "8/8": {"hp_bits": 8},
                          "none": {}, "a16": {"baseline": True}}.items():
        model = htp_units.layer_model(BlockPlan("none", s, 3, 0, 17) if label == "none" else plan, w, b, calib, **kwargs)
        onnx.checker.check_model(model, full_check=True)
        assert htp_rules.rule_violations(model) == []
        results[label] = sqnr_db(want, _run(model, test))
    assert results["a16"] > 70 and results["16/16"] > 70  # the transform's int8 matrices cost little
    assert results["16/8"] > results["8/8"] + 10  # the hp group's 16 bits matter
    assert results["16/8"] > results["none"] + 4  # the transform beats keeping the first tokens
    types = {onnx.numpy_helper.to_array(i).dtype.name for i in htp_units.layer_model(plan, w, b, calib).graph.initializer
             if "zero_point" in i.name}
    assert {"uint8", "uint16", "int8"} <= types


def test_rule_checker_catches_a_broken_unit() -> None:
    rng = np.random.default_rng(5)
    plan = BlockPlan("haar", 16, 3, 0, 8)
    model = htp_units.layer_model(plan, rng.standard_normal((4, 3)).astype(np.float32), None, _smooth(rng, 2, 16, 4))
    transpose = next(n for n in model.graph.node if n.op_type == "Transpose")
    q = next(n for n in model.graph.node if transpose.output[0] in n.input)
    scale = next(i for i in model.graph.initializer if i.name == q.input[1])
    scale.CopyFrom(onnx.numpy_helper.from_array(np.array(0.5, np.float32), scale.name))
    assert any("changes the encoding" in p for p in htp_rules.rule_violations(model))


def test_inverse_haar_fits_the_int8_grid() -> None:
    f = transforms.matrix(8, "haar", 3)
    codes, scales = htp_units.int8_columns(f.T)  # forward weight: one magnitude per column
    np.testing.assert_allclose(codes * scales, f.T, atol=1e-7)
    codes, scales = htp_units.int8_columns(f)  # inverse weight: 1/sqrt(8), 1/2, 1/sqrt(2) in a column
    error = np.abs(codes * scales - f).max()
    naive = np.abs(f).max(axis=0) / 127  # max/127 puts 1/sqrt(8) at 63.5: half a step off
    assert error < 2.5e-4 and error < np.abs(np.round(f / naive) * naive - f).max() / 10


def test_encoding_follows_onnxruntime() -> None:
    enc = Encoding.from_range(0.5, 2.0, 16)  # 0 is always representable
    assert enc.zero_point == 0 and math.isclose(enc.scale, 2.0 / 65535, rel_tol=1e-6)
    enc = Encoding.from_range(-1.0, 3.0, 8)
    assert enc.zero_point == 64
    assert Encoding.from_range(0.0, 0.0, 8).scale > 0
    with pytest.raises(ConfigError, match="8 or 16"):
        Encoding.from_range(0, 1, 4)


def test_plans_refuse_what_the_htp_cannot_take() -> None:
    with pytest.raises(ConfigError, match="no HTP unit"):
        BlockPlan("dct", 16)
    with pytest.raises(ConfigError, match="divisible"):
        BlockPlan("haar2d", 1 + 12 * 12, 3, 1, 16)


def _mlp_feeds(seed: int, n: int, s: int = 32) -> dict[str, np.ndarray]:
    return {"x": _smooth(np.random.default_rng(seed), n, s, models.D_IN)}


@pytest.mark.parametrize("transform", ["haar", "none"])
def test_whole_model_splice(tmp_path, transform: str) -> None:
    source = models.save(models.mlp_model(), tmp_path / "mlp.onnx")
    before = source.read_bytes()
    test = _mlp_feeds(7, 2)
    calib = {"x": np.concatenate([_mlp_feeds(6, 6)["x"], test["x"]])}  # the test is of the rounding, not of clipping
    options = HtpOptions(seq_len=32)
    out = tmp_path / "mlp.htp.onnx"
    report = quantize_for_htp(source, out, calib, StampConfig(transform=transform, hp_tokens=16), options)
    base = tmp_path / "mlp.a16.onnx"
    quantize_for_htp(source, base, calib, StampConfig(), HtpOptions(seq_len=32, baseline=True))
    assert source.read_bytes() == before
    assert [layer["layer"] for layer in report["layers"]] == ["fc1", "fc2"]  # not the x x^T product
    model = onnx.load(out)
    assert htp_rules.rule_violations(model) == []
    assert not any(n.domain for n in model.graph.node)
    options_cpu = ort.SessionOptions()
    options_cpu.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    float_session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    for path, floor in ((out, 35.0), (base, 38.0)):  # int8 weights alone allow ~42 dB here
        session = ort.InferenceSession(str(path), options_cpu, providers=["CPUExecutionProvider"])
        assert [tuple(i.shape) for i in session.get_inputs()] == [(1, 32, models.D_IN)]
        for row in test["x"]:
            want = float_session.run(["y"], {"x": row[None]})[0]
            got = session.run(["y"], {"x": row[None]})[0]
            assert sqnr_db(want, got) > floor


def test_whole_model_at_batch_two_keeps_samples_apart(tmp_path) -> None:
    source = models.save(models.mlp_model(), tmp_path / "mlp.onnx")
    x = _mlp_feeds(8, 6)["x"]
    out = tmp_path / "mlp.b2.onnx"
    quantize_for_htp(source, out, {"x": x}, StampConfig(hp_tokens=16), HtpOptions(seq_len=32, batch=2))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    first = session.run(["y"], {"x": x[:2]})[0]
    other = session.run(["y"], {"x": np.stack([x[0], x[3]])})[0]
    np.testing.assert_array_equal(first[0], other[0])  # sample 0 does not see sample 1
    want = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(["y"], {"x": x[:2]})[0]
    assert sqnr_db(want, first) > 30


def test_whole_model_errors(tmp_path) -> None:
    source = models.save(models.mlp_model(), tmp_path / "mlp.onnx")
    calib = _mlp_feeds(6, 2)
    with pytest.raises(ConfigError, match="is the input file"):
        quantize_for_htp(source, source, calib, StampConfig(), HtpOptions(seq_len=32))
    with pytest.raises(ConfigError, match="no input of that name"):
        quantize_for_htp(source, tmp_path / "o.onnx", calib, StampConfig(), HtpOptions(seq_len=32, fold_inputs=("mask",)))
    with pytest.raises(ConfigError, match="no array for the model input"):
        quantize_for_htp(source, tmp_path / "o.onnx", {"y": calib["x"]}, StampConfig(), HtpOptions(seq_len=32))
    with pytest.raises(ConfigError, match="does not exist"):
        quantize_for_htp(source, tmp_path / "no" / "o.onnx", calib, StampConfig(), HtpOptions(seq_len=32))
    with pytest.raises(ModelLoadError, match="no such file"):
        quantize_for_htp(tmp_path / "none.onnx", tmp_path / "o.onnx", calib, StampConfig(), HtpOptions(seq_len=32))
    assert not (tmp_path / "o.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.onnx"]


def test_folded_causal_mask_is_floored_before_calibration(tmp_path) -> None:
    """A causal mask folded from float32's lowest would make the QNN quantizer's u16 step ~5e33."""
    from onnx import TensorProto, helper

    from stamp_onnx.targets.htp_model import MASK_FLOOR, prepare_float

    s = 8
    mask = np.triu(np.full((s, s), np.finfo(np.float32).min, dtype=np.float32), 1)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "mask"], ["scores"]), helper.make_node("Softmax", ["scores"], ["y"])],
        "masked", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", s, s])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", s, s])],
        [onnx.numpy_helper.from_array(mask, "mask")])
    source = tmp_path / "masked.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), source)
    out = tmp_path / "prepared.onnx"
    prepare_float(source, out, HtpOptions(seq_len=s), {"x": np.zeros((1, s, s), np.float32)})
    floored = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(out).graph.initializer}["mask"]
    np.testing.assert_array_equal(floored, np.where(mask < 0, np.float32(MASK_FLOOR), np.float32(0)))
    x = np.random.default_rng(0).normal(size=(1, s, s)).astype(np.float32)
    want = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, atol=1e-30)


def test_mse_range_clips_outliers_and_keeps_uniform_data() -> None:
    from stamp_onnx.targets.htp_plan import mse_range, range_encoding

    def error(values: np.ndarray, span: tuple[float, float], bits: int) -> float:
        scale, zero = range_encoding(*span, bits)
        codes = np.clip(np.round(values / scale) + zero, 0, (1 << bits) - 1)
        return float(np.mean(((codes - zero) * scale - values) ** 2))

    rng = np.random.default_rng(0)
    gauss = rng.standard_normal(100_000)  # at 4 bits the best clip is near 2.5 sigma, min/max near 4.4
    lo, hi = mse_range(gauss, 4)
    assert 2.0 < hi < 3.5 and error(gauss, (lo, hi), 4) < 0.7 * error(gauss, (gauss.min(), gauss.max()), 4)
    few = rng.standard_normal(100_000)
    few[:5] = 200.0  # five huge values: clipping them costs more than the coarser step
    assert mse_range(few, 8)[1] > 190.0
    flat = rng.uniform(-1.0, 1.0, 100_000)  # no outliers: clipping only hurts
    lo, hi = mse_range(flat, 8)
    assert hi > 0.95 and lo < -0.95


def test_calibrator_is_checked_and_reaches_the_groups() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_t(1.5, (4, 32, 16))  # long-tailed activations
    plan = BlockPlan("none", 32, 3, 1, 16, 0)
    w = rng.standard_normal((16, 8))
    minmax = calibrate_unit(plan, x, w)
    mse = calibrate_unit(plan, x, w, calibrator="mse")
    assert mse.lp == htp_plan.mse_range(x[:, 16:], 8) and mse.hp == minmax.hp  # the 16-bit group keeps min/max
    assert calibrate_unit(plan, x, w, calibrator="mse", lp_bits=16).lp == minmax.lp
    with pytest.raises(ConfigError, match="calibrator 'entropy' is not known"):
        calibrate_unit(plan, x, w, calibrator="entropy")
    with pytest.raises(ConfigError, match="calibrator 'x' is not known"):
        HtpOptions(seq_len=32, calibrator="x")
