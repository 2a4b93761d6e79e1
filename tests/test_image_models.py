"""The image path on the tiny random ViT: export with a dynamic batch, haar2d end to end,
encoder tables (cosine instead of perplexity), transcripts and word error rates, eval --report."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from torch_models import tiny_vit, tiny_vit_onnx

from stamp_onnx.cli.commands import main
from stamp_onnx.config import StampConfig
from stamp_onnx.evaluation.evaluate import markdown_table, text_table
from stamp_onnx.evaluation.metrics import RunningDiff
from stamp_onnx.evaluation.validate import VARIANTS, validate
from stamp_onnx.pipeline import quantize_file
from stamp_onnx.zoo.models import Samples, sample_inputs

TOKENS = 17  # 1 CLS + 4 x 4 patches


def test_export_keeps_only_the_batch_dynamic() -> None:
    graph = onnx.load(str(tiny_vit_onnx()), load_external_data=False).graph
    (x,) = graph.input
    dims = [d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim]
    assert x.name == "pixel_values" and dims[1:] == [3, 16, 16] and isinstance(dims[0], str)
    assert [o.name for o in graph.output] == ["last_hidden_state"]
    assert sample_inputs(tiny_vit(), 3, 999, seed=1)["pixel_values"].shape == (3, 3, 16, 16)


@pytest.mark.parametrize("config", [
    StampConfig(transform="haar2d", prefix_tokens=1, hp_tokens=5),
    StampConfig(transform="haar2d", prefix_tokens=1, grid_width=4, levels=1, hp_tokens=5, lp_bits=3),
    StampConfig(transform="none", hp_tokens=5),
], ids=["haar2d", "haar2d-w4-L1", "none"])
def test_haar2d_on_the_patch_grid_validates(config: StampConfig, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    quantize_file(tiny_vit_onnx(), out, config)
    report = validate(tiny_vit(), out, float_onnx_path=tiny_vit_onnx(), batch=2, n_windows=4)
    assert report.ok, report.to_table()
    assert report.seq_len == TOKENS and not report.perplexities
    assert sum(d.qdq_mismatches for d in report.layer_diffs) == 0 and len(report.layer_diffs) == 12
    onnx_row = next(r for r in report.rows if r.name == "STaMP ONNX vs float torch")
    assert 0.9 < onnx_row.cosine < 1.0
    assert all(len(d.token_energy) == TOKENS for d in report.layer_diffs)


def test_2d_haar_holds_more_energy_than_1d_on_smooth_images(tmp_path: Path) -> None:
    shares = {}
    for transform in ("haar2d", "haar"):
        config = StampConfig(transform=transform, prefix_tokens=1, levels=2, hp_tokens=5)
        out = tmp_path / f"{transform}.onnx"
        quantize_file(tiny_vit_onnx(), out, config)
        report = validate(tiny_vit(), out, float_onnx_path=tiny_vit_onnx(), n_windows=2)
        shares[transform] = float(np.mean([d.hp_energy for d in report.layer_diffs[:4]]))  # layer 0: patch inputs
    assert shares["haar2d"] > shares["haar"], shares


def test_encoder_tables_show_cosine_not_perplexity(tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    quantize_file(tiny_vit_onnx(), out, StampConfig(transform="haar2d", prefix_tokens=1, hp_tokens=5))
    report = validate(tiny_vit(), out, float_onnx_path=tiny_vit_onnx(), n_windows=2)
    assert "cos ONNX" in text_table([report]) and "ppl" not in text_table([report])
    table = markdown_table([report], 1.0)
    assert "| cosine torch | cosine ONNX |" in table and "haar2d L=3, P=1, K=5, 8/4 | 5.18 |" in table


def test_transcripts_and_word_error_rates(tmp_path: Path) -> None:
    """A model with a transcriber: every variant is decoded, scored against what was said."""
    base = tiny_vit()
    assert base.samples is not None
    base_samples = base.samples

    def samples(n: int, seed: int) -> Samples:
        return dataclasses.replace(base_samples(n, seed), texts=("one two three",) * n)

    def transcribe(hidden: np.ndarray) -> list[str]:
        return ["one two four" if h[0, 0] > 0 else "one two three" for h in hidden]

    speaking = dataclasses.replace(base, samples=samples, transcribe=transcribe)
    out = tmp_path / "q.onnx"
    quantize_file(tiny_vit_onnx(), out, StampConfig(transform="none", hp_tokens=5))
    report = validate(speaking, out, float_onnx_path=tiny_vit_onnx(), n_windows=3)
    assert set(report.word_error_rates) == set(VARIANTS)
    float_texts = report.transcripts["float torch"]
    wrong = sum(t == "one two four" for t in float_texts)
    assert report.word_error_rates["float torch"] == pytest.approx(wrong / 9)
    assert "WER ONNX" in markdown_table([report], 1.0) and "word error rate" in report.to_table()


def test_cosine_of_running_diff() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2, 5, 8))
    diff = RunningDiff()
    diff.update(ref, ref)
    assert diff.cosine() == pytest.approx(1.0)
    other = RunningDiff()
    other.update(ref, -ref)
    other.update(ref, 2 * ref)
    assert other.cosine() == pytest.approx(0.0)  # -1 for 10 vectors, +1 for 10
    assert np.isnan(RunningDiff().cosine())


def test_eval_report_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["-q", "eval", "tiny-vit", "--windows", "2", "--out-dir", str(tmp_path),
            "--configs", "haar2d,prefix_tokens=1,hp_tokens=5", "none,hp_tokens=5", "--report", str(tmp_path / "r")]
    assert main(argv) == 0
    assert "report:" in capsys.readouterr().out
    text = (tmp_path / "r" / "report.md").read_text()
    assert "haar2d L=3, P=1, K=5, 8/4" in text and "eval tiny-vit" in text
    for name in ("fig_energy.png", "fig_layer_sqnr.png", "fig_bits.png", "fig_quality.png"):
        assert (tmp_path / "r" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluations_are_saved_and_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stamp_onnx.evaluation import evaluate

    configs = [StampConfig(transform="haar2d", prefix_tokens=1, hp_tokens=5), StampConfig(transform="none", hp_tokens=5)]
    first = evaluate.evaluate_configs("tiny-vit", tmp_path, configs, seq_len=17, n_windows=2)
    assert len(list(tmp_path.glob("*.report.json"))) == 2

    def no_validation(*args: object, **kwargs: object) -> None:
        raise AssertionError("a saved evaluation was recomputed")

    monkeypatch.setattr(evaluate, "validate", no_validation)
    again = evaluate.evaluate_configs("tiny-vit", tmp_path, configs, seq_len=17, n_windows=2)
    assert [r.to_dict() for r in again] == [r.to_dict() for r in first]
    assert text_table(again) == text_table(first)
    with pytest.raises(AssertionError, match="recomputed"):  # other data size, or --fresh: recomputed
        evaluate.evaluate_configs("tiny-vit", tmp_path, configs, seq_len=17, n_windows=3)
    with pytest.raises(AssertionError, match="recomputed"):
        evaluate.evaluate_configs("tiny-vit", tmp_path, configs, seq_len=17, n_windows=2, fresh=True)


def test_eval_takes_an_exported_onnx_file(tmp_path: Path) -> None:
    """The float export itself can be evaluated: its metadata names the model behind it."""
    from stamp_onnx.errors import ConfigError
    from stamp_onnx.evaluation import evaluate

    configs = [StampConfig(transform="haar2d", hp_tokens=5)]
    [report] = evaluate.evaluate_configs(str(tiny_vit_onnx()), tmp_path, configs, seq_len=17, n_windows=2)
    assert report.model == "tiny-vit" and report.ok
    assert not (tmp_path / "tiny-vit.onnx").exists()  # the given file is the float model
    foreign = tmp_path / "foreign.onnx"
    proto = onnx.load(str(tiny_vit_onnx()))
    del proto.metadata_props[:]
    onnx.save(proto, str(foreign))
    with pytest.raises(ConfigError, match="does not name a built-in model"):
        evaluate.evaluate_configs(str(foreign), tmp_path, configs, seq_len=17, n_windows=2)
    with pytest.raises(ConfigError, match="no such file"):
        evaluate.evaluate_configs(str(tmp_path / "missing.onnx"), tmp_path, configs, seq_len=17, n_windows=2)
