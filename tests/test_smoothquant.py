"""SmoothQuant: scales, calibration, the pass (folding and online division), ORT vs the reference, the CLI."""

from __future__ import annotations

import collections
from pathlib import Path

import backends
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch_models import tiny_llama, tiny_llama_onnx, tiny_vit, tiny_vit_onnx

from stamp_onnx.cli.commands import main
from stamp_onnx.config import StampConfig
from stamp_onnx.core import smoothing
from stamp_onnx.errors import ConfigError, RewriteError
from stamp_onnx.evaluation.inspection import summarize
from stamp_onnx.evaluation.layer_check import per_layer_diffs
from stamp_onnx.evaluation.validate import validate
from stamp_onnx.graph import contract
from stamp_onnx.graph.calibration import calibrate, load_feeds, save_feeds
from stamp_onnx.graph.model_io import load_model
from stamp_onnx.pipeline import quantize_file
from stamp_onnx.zoo.models import calibration_samples, linear_layer_names, sample_inputs

SMOOTH = StampConfig(hp_tokens=8, feature_transform="smoothquant")


def _calibration(loaded_fn=tiny_llama) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    return calibration_samples(loaded_fn(), 4, 24, held_out=2).feeds


def _rewrite(config: StampConfig, tmp_path: Path, source: Path | None = None, feeds: dict | None = None) -> Path:  # type: ignore[type-arg]
    out = tmp_path / "q.onnx"
    quantize_file(source or tiny_llama_onnx(), out, config, calibration_feeds=_calibration() if feeds is None else feeds)
    return out


def _outputs(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in wanted})[0]


def test_scales_follow_the_formula() -> None:
    act = np.array([4.0, 0.25, 0.0, 9.0])
    w = np.array([1.0, 4.0, 2.0, 0.0])
    got = smoothing.smooth_scales(act, w, 0.5)
    floor = smoothing.FLOOR
    expected = np.sqrt([4.0, 0.25, floor, 9.0]) / np.sqrt([1.0, 4.0, 2.0, floor])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(smoothing.smooth_scales(act[:2], w[:2], 1.0), act[:2], rtol=1e-6)  # alpha 1: all into W
    np.testing.assert_allclose(smoothing.smooth_scales(act[:2], w[:2], 0.0), 1 / w[:2], rtol=1e-6)
    assert got.dtype == np.float32
    with pytest.raises(ValueError, match=r"\(d,\)"):
        smoothing.smooth_scales(act, w[:3], 0.5)


def test_scale_record_round_trips() -> None:
    s = np.random.default_rng(0).random(13).astype(np.float32)
    np.testing.assert_array_equal(contract.decode_scale(contract.encode_scale(s)), s)
    for bad in ("not base64!", "", "AAA="):
        with pytest.raises(ValueError, match=contract.SCALE_KEY):
            contract.decode_scale(bad)


def test_calibration_measures_each_channel_max(tmp_path: Path) -> None:
    """ORT's per-channel max |x| of every linear input == the same statistic from PyTorch hooks."""
    feeds = _calibration()
    model = load_model(tiny_llama_onnx())
    inputs = {node.name: node.inputs[0].name for node in model.graph if node.op_type == "MatMul"}
    stats = calibrate(tiny_llama_onnx(), feeds, [name for name in inputs.values() if name])
    assert stats.samples == 4 and stats.tokens == 4 * 24
    seen: dict[str, torch.Tensor] = {}
    module = tiny_llama().module
    handles = [
        sub.register_forward_pre_hook(lambda _, args, name=name: seen.__setitem__(
            name, torch.maximum(seen.get(name, torch.zeros(0)), args[0].abs().flatten(0, -2).amax(0))
            if name in seen else args[0].abs().flatten(0, -2).amax(0)))
        for name, sub in module.named_modules() if name in linear_layer_names(module)
    ]
    with torch.no_grad():
        module(input_ids=torch.from_numpy(feeds["input_ids"]))
    for handle in handles:
        handle.remove()
    # q_proj's input is the first attention norm's output
    x = next(n.inputs[0].name for n in model.graph if n.op_type == "MatMul" and "q_proj" in str(n.metadata_props))
    np.testing.assert_allclose(stats.amax[x], seen["model.layers.0.self_attn.q_proj"].numpy(), rtol=1e-5)
    assert len(stats.amax) == len({v for v in inputs.values() if v in stats.amax})


def test_calibration_windows_are_held_out_from_the_evaluation() -> None:
    from stamp_onnx.zoo.data import window_starts

    evaluation = set(window_starts(1000, 4, 10))
    held = window_starts(1000, 8, 10, avoid=4)
    assert len(held) == 8 and not evaluation & set(held)
    assert window_starts(1000, 4, 10) == window_starts(1000, 4, 10, avoid=0)
    with pytest.raises(ValueError, match="held out"):
        window_starts(100, 8, 10, avoid=4)


@pytest.mark.parametrize("transform", ["haar", "dct", "wht", "none"])
def test_without_quantization_smoothquant_is_the_float_model(transform: str, tmp_path: Path) -> None:
    feeds = sample_inputs(tiny_llama(), 2, 37, seed=5)
    float_out = _outputs(tiny_llama_onnx(), feeds)
    config = StampConfig(transform=transform, hp_bits=16, lp_bits=16, hp_tokens=8, feature_transform="smoothquant", smooth_alpha=0.8)
    got = _outputs(_rewrite(config, tmp_path), feeds)
    assert np.abs(got - float_out).max() <= 2e-3 * np.abs(float_out).max()


def test_folding_and_online_division(tmp_path: Path) -> None:
    """q/k/v and gate/up: s folded into the RMSNorm weight; o_proj and down_proj: one Div each."""
    path = _rewrite(SMOOTH.replace(weight_bits=4), tmp_path)
    summary = summarize(load_model(path))
    where = {layer.name.rsplit(".", 1)[-1]: layer.feature_transform for layer in summary.layers}
    assert where["q_proj"] == where["gate_proj"] == "smoothquant (folded)"
    assert where["o_proj"] == where["down_proj"] == "smoothquant (online)"
    proto = onnx.load(str(path))
    divides = [n for n in proto.graph.node if n.op_type == "Div" and n.name.endswith("/SmoothDivide")]
    assert len(divides) == 2 * 2  # o and down per block; lm_head reads the final norm: folded
    assert where["lm_head"] == "smoothquant (folded)"
    scales = collections.defaultdict(set)
    for node in proto.graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        if contract.SCALE_KEY in props:
            scales[node.input[0]].add(props[contract.SCALE_KEY])
    assert all(len(s) == 1 for s in scales.values())  # layers reading one activation share s
    names = {t.name for t in proto.graph.initializer}
    assert not any(name.endswith("input_layernorm.weight") for name in names)  # replaced by the folded copy
    onnx.checker.check_model(proto, full_check=True)


def test_layer_norm_is_folded_in_a_vit(backend: str, tmp_path: Path) -> None:
    feeds = calibration_samples(tiny_vit(), 3, 0, held_out=0).feeds
    config = StampConfig(transform="haar2d", levels=1, hp_tokens=4, feature_transform="smoothquant")
    path = _rewrite(config, tmp_path, tiny_vit_onnx(), feeds)
    where = {layer.name: layer.feature_transform for layer in summarize(load_model(path)).layers}
    assert where["encoder.layer.0.attention.q_proj"] == where["encoder.layer.0.mlp.fc1"] == "smoothquant (folded)"
    assert where["encoder.layer.0.mlp.fc2"] == "smoothquant (online)"
    diffs = per_layer_diffs(path, tiny_vit().module, config, sample_inputs(tiny_vit(), 2, 0, seed=4),
                            native=backend == backends.NATIVE)
    assert diffs and all(d.qdq_mismatches == 0 for d in diffs)
    assert max(d.output_rel for d in diffs) < 1e-4


@pytest.mark.parametrize(("transform", "bits", "block", "alpha"), [("haar", 4, 0, 0.5), ("dct", 8, 16, 0.7), ("none", 4, 0, 0.3)])
def test_onnx_matches_the_reference_layer_by_layer(backend: str, transform: str, bits: int, block: int, alpha: float,
                                                   tmp_path: Path) -> None:
    config = SMOOTH.replace(transform=transform, weight_bits=bits, weight_block=block, smooth_alpha=alpha)
    out = _rewrite(config, tmp_path)
    diffs = per_layer_diffs(out, tiny_llama().module, config, sample_inputs(tiny_llama(), 2, 37, seed=9),
                            native=backend == backends.NATIVE)
    assert len(diffs) == 15 and all(d.qdq_mismatches == 0 for d in diffs)
    assert max(d.transform_rel for d in diffs) < 1e-5
    assert max(d.output_rel for d in diffs) < 1e-4
    assert min(d.float_sqnr_db for d in diffs) > 5  # the float layer is reproduced, not something else


def test_validate_uses_the_recorded_scales(tmp_path: Path) -> None:
    out = _rewrite(SMOOTH.replace(weight_bits=8), tmp_path)
    report = validate(tiny_llama(), out, float_onnx_path=tiny_llama_onnx(), seq_len=24, n_windows=2)
    report.check()
    torch_row = report.comparison("STaMP torch reference vs float torch")
    assert torch_row.sqnr_db > 10


def test_the_reference_needs_the_scales() -> None:
    from stamp_onnx.errors import ValidationError
    from stamp_onnx.evaluation.reference import stamp_reference

    with pytest.raises(ValidationError, match="no scale"), stamp_reference(tiny_llama().module, SMOOTH):
        pass


def test_config_and_pipeline_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="only applies to feature_transform smoothquant"):
        StampConfig(smooth_alpha=0.3)
    for alpha in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(ConfigError, match="smooth_alpha"):
            StampConfig(feature_transform="smoothquant", smooth_alpha=alpha)
    assert StampConfig.from_json(SMOOTH.replace(smooth_alpha=0.75).to_json()).smooth_alpha == 0.75
    with pytest.raises(ConfigError, match="needs calibration data"):
        quantize_file(tiny_llama_onnx(), tmp_path / "a.onnx", SMOOTH)
    with pytest.raises(ConfigError, match="only used by --feature-transform smoothquant"):
        quantize_file(tiny_llama_onnx(), tmp_path / "a.onnx", StampConfig(), calibration_feeds=_calibration())
    with pytest.raises(ConfigError, match="do not match the model inputs"):
        quantize_file(tiny_llama_onnx(), tmp_path / "a.onnx", SMOOTH, calibration_feeds={"pixels": np.zeros((1, 3))})
    with pytest.raises(ConfigError, match="rank"):
        quantize_file(tiny_llama_onnx(), tmp_path / "a.onnx", SMOOTH, calibration_feeds={"input_ids": np.zeros(5, np.int64)})
    with pytest.raises(ConfigError, match="float32"):
        quantize_file(tiny_llama_onnx(), tmp_path / "a.onnx", SMOOTH, calibration_feeds={"input_ids": np.zeros((1, 5), np.float32)})
    assert not (tmp_path / "a.onnx").exists()


def test_missing_statistics_are_an_error() -> None:
    from stamp_onnx.graph.calibration import Calibration
    from stamp_onnx.pipeline import rewrite

    with pytest.raises(RewriteError, match="no calibration statistics"):
        rewrite(load_model(tiny_llama_onnx()), SMOOTH, calibration=Calibration({}, 0, 0))
    with pytest.raises(RewriteError, match="needs calibration statistics"):
        rewrite(load_model(tiny_llama_onnx()), SMOOTH)


def test_cli_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "t.onnx"
    source.write_bytes(tiny_llama_onnx().read_bytes())
    before = source.read_bytes()
    calib = tmp_path / "cal.npz"
    save_feeds(calib, _calibration())
    assert set(load_feeds(calib)) == {"input_ids"}
    out = tmp_path / "q.onnx"
    assert main(["-q", "quantize", str(source), "-o", str(out), "--feature-transform", "smoothquant", "--alpha", "0.6",
                 "--calibration", str(calib), "--hp-tokens", "8"]) == 0
    assert "smoothquant a=0.6" in capsys.readouterr().out
    assert main(["-q", "inspect", str(out)]) == 0
    assert "smoothquant (folded)" in capsys.readouterr().out
    assert main(["-q", "quantize", str(source), "-o", str(tmp_path / "b.onnx"), "--feature-transform", "smoothquant"]) == 2
    assert "needs calibration data" in capsys.readouterr().err
    assert main(["-q", "quantize", str(source), "-o", str(tmp_path / "b.onnx"), "--alpha", "0.6"]) == 2
    assert "only applies to feature_transform smoothquant" in capsys.readouterr().err
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert main(["-q", "quantize", str(source), "-o", str(tmp_path / "b.onnx"), "--feature-transform", "smoothquant",
                 "--calibration", str(tmp_path / "bad.npz")]) == 2
    err = capsys.readouterr().err
    assert "not a readable .npz" in err and err.count("\n") == 1
    assert source.read_bytes() == before and not (tmp_path / "b.onnx").exists()


def test_export_writes_calibration_data(tmp_path: Path) -> None:
    calib = tmp_path / "cal"
    assert main(["-q", "export", "tiny-llama", "-o", str(tmp_path / "t.onnx"), "--calibration-data", str(calib),
                 "--calibration-samples", "3", "--calibration-seq-len", "16"]) == 0
    feeds = load_feeds(calib)  # written to the exact name given
    assert feeds["input_ids"].shape == (3, 16) and feeds["input_ids"].dtype == np.int64


def test_export_calibration_flags_need_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.onnx"
    assert main(["-q", "export", "tiny-llama", "-o", str(out), "--calibration-samples", "3"]) == 2
    assert "pass it too" in capsys.readouterr().err and not out.exists()
    assert main(["-q", "export", "tiny-llama", "-o", str(out), "--calibration-data", str(tmp_path / "c.npz"),
                 "--calibration-samples", "0"]) == 2
    assert "calibration samples=0" in capsys.readouterr().err


def test_image_calibration_comes_after_the_evaluated_samples() -> None:
    vit = tiny_vit()
    evaluated = vit.samples(3, 0).feeds["pixel_values"]  # type: ignore[misc]
    calibration = calibration_samples(vit, 2, 0, held_out=3)
    assert calibration.feeds["pixel_values"].shape[0] == 2 and "samples 3-4" in calibration.description
    assert not any(np.array_equal(c, e) for c in calibration.feeds["pixel_values"] for e in evaluated)


@pytest.mark.parametrize("feature", ["hadamard", "smoothquant"])
def test_without_quantization_a_vit_with_a_2d_haar_is_the_float_model(feature: str, tmp_path: Path) -> None:
    """16-bit activations: the 2-D Haar with either feature transform reproduces the float ViT."""
    feeds = sample_inputs(tiny_vit(), 2, 0, seed=6)
    float_out = _outputs(tiny_vit_onnx(), feeds)
    config = StampConfig(transform="haar2d", levels=2, hp_tokens=4, hp_bits=16, lp_bits=16, feature_transform=feature)
    calibration = calibration_samples(tiny_vit(), 3, 0, held_out=2).feeds if feature == "smoothquant" else None
    out = tmp_path / "v.onnx"
    quantize_file(tiny_vit_onnx(), out, config, calibration_feeds=calibration)
    got = _outputs(out, feeds)
    assert np.abs(got - float_out).max() <= 2e-3 * np.abs(float_out).max()
