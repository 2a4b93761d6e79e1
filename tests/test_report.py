"""The eval report: Markdown with its table and figure links, valid PNGs, re-plottable JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from torch_models import tiny_llama, tiny_llama_onnx

from stamp_onnx.config import StampConfig
from stamp_onnx.errors import ValidationError
from stamp_onnx.evaluation.layer_check import LayerDiff, per_layer_diffs
from stamp_onnx.evaluation.report import write_report
from stamp_onnx.evaluation.validate import Comparison, Perplexity, ValidationReport
from stamp_onnx.pipeline import quantize_file
from stamp_onnx.zoo.models import sample_inputs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ("fig_energy.png", "fig_layer_sqnr.png", "fig_bits.png", "fig_quality.png")
TABLE = "| variant | avg bits |\n| --- | ---: |\n| haar L=3, K=8, 8/4 | 4.50 |"
SEQ = 32


def _diffs(config: StampConfig, n_layers: int, rng: np.random.Generator) -> list[LayerDiff]:
    """Synthetic layers: energy decaying along transformed tokens (flat without a transform)."""
    decay = 0.0 if config.transform == "none" else 0.25
    diffs = []
    for i in range(n_layers):
        energy = np.exp(-decay * np.arange(SEQ)) * rng.uniform(0.5, 1.5, SEQ)
        share = energy / energy.sum()
        diffs.append(LayerDiff(
            layer=f"model.layers.{i // 7}.proj{i % 7}", transform_rel=1e-7, qdq_mismatches=0,
            qdq_elements=SEQ * 16, output_rel=1e-7, sqnr_db=float(rng.uniform(60, 120)),
            float_sqnr_db=float(rng.uniform(10, 30)), hp_energy=float(share[: config.hp_tokens].sum()),
            token_energy=tuple(share.tolist()),
        ))
    return diffs


def _report(config: StampConfig, *, n_layers: int, causal: bool, seed: int) -> ValidationReport:
    rng = np.random.default_rng(seed)
    ppl = [Perplexity("float torch", 9.0, 9.1), Perplexity("float ONNX", 9.0, 9.1),
           Perplexity("STaMP torch reference", 40.0, 42.0),
           Perplexity("STaMP ONNX", 41.0 + 20 * seed, math.nan if seed == 1 else 30.0 + seed)]
    return ValidationReport(
        model="tiny", description="synthetic", onnx_path=f"tiny.{seed}.onnx", config=config, data="none",
        n_windows=2, seq_len=SEQ, layers_rewritten=n_layers, layers_hooked=n_layers,
        rows=[Comparison("float ONNX vs float torch", 1e-6, 1e-7, 120.0, criterion="rel <= 0.0001", passed=True),
              Comparison("STaMP ONNX vs float torch", 0.5, 0.1, float(rng.uniform(5, 15)))],
        perplexities=ppl if causal else [], layer_diffs=_diffs(config, n_layers, rng),
        notes=["shared note", f"synthetic note {seed}"],
    )


CONFIGS = (StampConfig(hp_tokens=8), StampConfig(transform="dct", hp_tokens=8),
           StampConfig(transform="none", hp_tokens=8, lp_bits=8))


@pytest.mark.parametrize(("causal", "n_layers"), [(False, 5), (True, 45)])
def test_report_files(causal: bool, n_layers: int, tmp_path: Path) -> None:
    """Few layers draw grouped bars, many draw lines; causal reports plot perplexity."""
    reports = [_report(c, n_layers=n_layers, causal=causal, seed=i) for i, c in enumerate(CONFIGS)]
    md = write_report(reports, tmp_path / "rep", title="Tiny eval", table_markdown=TABLE,
                      command="stamp-onnx eval tiny --report rep")
    assert md == tmp_path / "rep" / "report.md"
    text = md.read_text()
    assert text.startswith("# Tiny eval") and TABLE in text and "stamp-onnx eval tiny --report rep" in text
    for name in FIGURES:
        assert (md.parent / name).read_bytes()[:8] == PNG_MAGIC
        assert f"]({name})" in text
    assert ("Perplexity" in text) == causal and ("Output SQNR" in text) != causal
    assert text.count("shared note") == 1 and "- dct, P=1, K=8, 8/4: synthetic note 1" in text
    data = json.loads((md.parent / "report.json").read_text())
    assert [r["config"]["transform"] for r in data["reports"]] == ["haar", "dct", "none"]
    assert len(data["reports"][0]["layer_diffs"][0]["token_energy"]) == SEQ
    if causal:  # NaN is written as a string, so the file is strict JSON
        assert data["reports"][1]["perplexities"][3]["leak_free"] == "nan"


def test_report_without_per_layer_data(tmp_path: Path) -> None:
    """No per-layer check: the two per-layer figures are left out and the Markdown says so."""
    report = _report(StampConfig(), n_layers=0, causal=False, seed=0)
    text = write_report([report], tmp_path, title="t", table_markdown=TABLE).read_text()
    assert "fig_energy.png" not in text and "fig_layer_sqnr.png" not in text
    assert text.count("_Not drawn:") == 2
    assert "](fig_bits.png)" in text and "](fig_quality.png)" in text
    assert not (tmp_path / "fig_energy.png").exists()


def test_no_reports_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no reports"):
        write_report([], tmp_path, title="t", table_markdown=TABLE)


@pytest.mark.parametrize("config", [StampConfig(hp_tokens=4), StampConfig(transform="dct", hp_tokens=6, prefix_tokens=1),
                                    StampConfig(transform="none", hp_tokens=4)])
def test_token_energy_sums_to_one_and_matches_hp_energy(config: StampConfig, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    quantize_file(tiny_llama_onnx(), out, config)
    diffs = per_layer_diffs(out, tiny_llama().module, config, sample_inputs(tiny_llama(), 2, 24, seed=11))
    assert diffs
    for d in diffs:
        assert len(d.token_energy) == 24 and all(type(v) is float and v >= 0 for v in d.token_energy)
        assert math.isclose(sum(d.token_energy), 1.0, abs_tol=1e-9)
        assert math.isclose(sum(d.token_energy[: config.hp_tokens]), d.hp_energy, abs_tol=1e-12)
    if config.transform != "none":  # the transform concentrates energy in its first tokens
        assert np.mean([d.hp_energy for d in diffs]) > config.hp_tokens / 24


def test_speech_reports_plot_word_error_rates(tmp_path: Path) -> None:
    reports = [_report(config, n_layers=3, causal=False, seed=i) for i, config in enumerate(CONFIGS)]
    for i, report in enumerate(reports):
        report.word_error_rates = {"float ONNX": 0.05, "STaMP ONNX": 0.1 * (i + 1)}
    md = write_report(reports, tmp_path, title="speech", table_markdown="| t |").read_text()
    assert "## Word error rate of the rewritten ONNX encoder" in md
    assert (tmp_path / "fig_quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
