"""Evaluate several configs on one model through the product path, and tabulate them.

For each config: export once (cached in ``out_dir``), rewrite, run in onnxruntime on real text
and compare with PyTorch (:func:`stamp_onnx.evaluation.validate.validate`). Configs are written as compact
specs, a transform followed by overrides of :class:`StampConfig` fields::

    haar                          the defaults (3 levels, K=64 at 8 bits, rest 4)
    haar,prefix_tokens=1          keep the first token (attention sink) out of the transform
    none,hp_tokens=0              every token at 4 bits, no transform (plain per-token A4)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from stamp_onnx.config import BitAllocation, FeatureTransform, StampConfig, WeightMethod
from stamp_onnx.errors import ConfigError
from stamp_onnx.evaluation.validate import (
    ONNX_VS_FLOAT,
    TORCH_VS_FLOAT,
    Perplexity,
    ValidationReport,
    layer_check_summary,
    mean_hp_energy,
    mean_layer_sqnr,
    validate,
)
from stamp_onnx.graph import runtime
from stamp_onnx.graph.contract import SOURCE_KEY
from stamp_onnx.graph.model_io import read_header
from stamp_onnx.pipeline import quantize_file
from stamp_onnx.zoo import CALIBRATION_SAMPLES
from stamp_onnx.zoo.export import export_onnx
from stamp_onnx.zoo.models import BUILTIN_MODELS, calibration_samples, load_model

logger = logging.getLogger(__name__)



def parse_config_spec(spec: str) -> StampConfig:
    """'haar,prefix_tokens=1' -> StampConfig(transform='haar', prefix_tokens=1)."""
    head, *overrides = [part.strip() for part in spec.split(",")]
    fields = StampConfig.text_fields()
    changes: dict[str, object] = {"transform": head}
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise ConfigError(
                f"config spec {spec!r}: {item!r} is not key=value with a key among {', '.join(sorted(fields))}"
            )
        kind = fields[key]
        changes[key] = value if kind is str else spec_number(spec, key, value, kind)
    return StampConfig().replace(**changes)


def evaluate_configs(
    model: str,
    out_dir: Path,
    configs: Sequence[StampConfig],
    *,
    seq_len: int,
    n_windows: int,
    fresh: bool = False,
    native: bool = True,
) -> list[ValidationReport]:
    """Export ``model`` once, rewrite it with each config, validate each; everything cached in ``out_dir``.

    ``model`` is a built-in name, a transformers folder, or an ONNX file written by
    ``stamp-onnx export`` (used as the float model; its metadata names the built-in model that
    supplies the data and the PyTorch reference).

    Each config's report is saved next to its rewritten model as it completes, so a run that
    stops (or a later run with some of the same configs) resumes where it was: a saved report
    is reused when its model, config, data size and float export are unchanged. ``fresh``
    recomputes everything but the float export (delete that file to export again). ``native``
    runs the ai.stamp ops with the native kernels when built; what ran them is part of the key.
    Configs that need calibration (smoothquant, gptq) calibrate on :data:`CALIBRATION_SAMPLES` samples
    of the model's data held out from the evaluation windows (:func:`calibration_samples`).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if model.endswith(".onnx"):
        float_path = Path(model)
        loaded = load_model(_source_model(float_path))
    else:
        loaded = load_model(model)
        float_path = out_dir / f"{loaded.name}.onnx"
    if float_path.exists():
        logger.info("reusing the float export %s (delete it to export again)", float_path)
    else:
        logger.info("exporting %s to %s", loaded.name, float_path)
        export_onnx(loaded, float_path)
    calibration = None
    if any(config.needs_calibration for config in configs):
        calibration = calibration_samples(loaded, CALIBRATION_SAMPLES, seq_len, held_out=n_windows)
    reports = []
    for config in tqdm(configs, desc="configs", unit="config", disable=None):
        feeds = calibration.feeds if calibration is not None and config.needs_calibration else None
        key = _cache_key(loaded.name, config, float_path, seq_len=seq_len, n_windows=n_windows,
                         kernels=runtime.kernels(native),
                         calibration=calibration.description if feeds is not None and calibration else None)
        stem = f"{loaded.name}.{config.transform}.{hashlib.sha256(key.encode()).hexdigest()[:10]}"
        saved = out_dir / f"{stem}.report.json"
        if not fresh and (report := _load_saved(saved, key)) is not None:
            logger.info("reusing the saved evaluation %s (%s)", saved, config.label())
            reports.append(report)
            continue
        path = out_dir / f"{stem}.onnx"
        quantize_file(float_path, path, config, calibration_feeds=feeds)
        report = validate(loaded, path, float_onnx_path=float_path, seq_len=seq_len, n_windows=n_windows, native=native)
        _save(saved, key, report)
        reports.append(report)
    return reports


def _source_model(path: Path) -> str:
    """The built-in model an exported float ONNX file came from (its export metadata)."""
    proto = read_header(path, ConfigError)
    source = {p.key: p.value for p in proto.metadata_props}.get(SOURCE_KEY)
    if source not in BUILTIN_MODELS:
        raise ConfigError(
            f"{path} does not name a built-in model in its {SOURCE_KEY!r} metadata (found {source!r}); "
            "evaluation needs the PyTorch model and its data: pass the model name or transformers folder instead"
        )
    return str(source)


def _cache_key(
    name: str, config: StampConfig, float_path: Path, *, seq_len: int, n_windows: int, kernels: str,
    calibration: str | None = None,
) -> str:
    stat = float_path.stat()
    fields = json.loads(config.to_json())
    # fields added later are left out where they do not apply, so earlier saved results stay valid
    if config.feature_transform != FeatureTransform.SMOOTHQUANT:
        fields.pop("smooth_alpha")
    if config.weight_method == WeightMethod.RTN:
        fields.pop("weight_method")
    if config.bit_allocation == BitAllocation.TIERS:
        fields.pop("bit_allocation")
        fields.pop("avg_bits")
    key = {"model": name, "config": fields, "seq_len": seq_len, "n_windows": n_windows,
           "float_onnx": [stat.st_size, stat.st_mtime_ns], "kernels": kernels}
    if calibration is not None:
        key["calibration"] = calibration
    return json.dumps(key, sort_keys=True)


def _load_saved(path: Path, key: str) -> ValidationReport | None:
    try:
        data = json.loads(path.read_text())
        return ValidationReport.from_dict(data["report"]) if data.get("key") == key else None
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, ConfigError) as err:  # an older or damaged file: recompute
        logger.info("ignoring the saved evaluation %s: %s", path, err)
        return None


def _save(path: Path, key: str, report: ValidationReport) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "report": report.to_dict()}))
    tmp.replace(path)


@dataclasses.dataclass(frozen=True)
class _Row:
    """What both tables show of one report."""

    label: str
    average_bits: float
    sqnr_torch: float
    sqnr_onnx: float
    cosine_torch: float
    cosine_onnx: float
    ppl_torch: Perplexity | None
    ppl_onnx: Perplexity | None
    wer_torch: float
    wer_onnx: float
    layer_db: float
    energy: float
    check: str


def _row(report: ValidationReport) -> _Row:
    ppl = {p.variant: p for p in report.perplexities}
    wer = report.word_error_rates
    torch_row, onnx_row = report.comparison(TORCH_VS_FLOAT), report.comparison(ONNX_VS_FLOAT)
    return _Row(
        label=report.config.label(),
        average_bits=report.config.average_bits(report.seq_len),
        sqnr_torch=torch_row.sqnr_db,
        sqnr_onnx=onnx_row.sqnr_db,
        cosine_torch=torch_row.cosine,
        cosine_onnx=onnx_row.cosine,
        ppl_torch=ppl.get("STaMP torch reference"),
        ppl_onnx=ppl.get("STaMP ONNX"),
        wer_torch=wer.get("STaMP torch reference", math.nan),
        wer_onnx=wer.get("STaMP ONNX", math.nan),
        layer_db=mean_layer_sqnr(report.layer_diffs),
        energy=mean_hp_energy(report.layer_diffs),
        check=layer_check_summary(report),
    )


def _heading(first: ValidationReport) -> str:
    return f"{first.model}: {first.n_windows} samples x {first.seq_len} tokens of {first.data}"


def text_table(reports: list[ValidationReport]) -> str:
    """One row per config: bits, SQNR vs float (torch and ONNX), perplexity or cosine, the layer check."""
    first = reports[0]
    lm = bool(first.perplexities)
    quality = f"{'ppl torch':>9} {'ppl ONNX':>9}" if lm else f"{'cos torch':>9} {'cos ONNX':>9}"
    lines = [
        _heading(first),
        f"{'variant':<34} {'avg bits':>8} {'SQNR torch':>10} {'SQNR ONNX':>9} {quality} {'layer dB':>9}  layer check",
    ]
    ppl = {p.variant: p.all_positions for p in first.perplexities}
    if ppl:
        lines.append(f"{'float (torch / ONNX)':<34} {32:>8} {'':>10} {'':>9} {ppl['float torch']:>9.2f} {ppl['float ONNX']:>9.2f}")
    rows = [_row(report) for report in reports]
    for row in rows:
        pair = (_all(row.ppl_torch), _all(row.ppl_onnx)) if lm else (row.cosine_torch, row.cosine_onnx)
        lines.append(
            f"{row.label:<34} {row.average_bits:>8.2f} {row.sqnr_torch:>10.2f} {row.sqnr_onnx:>9.2f} "
            f"{pair[0]:>9.{2 if lm else 4}f} {pair[1]:>9.{2 if lm else 4}f} {row.layer_db:>9.2f}  {row.check}"
        )
    if first.word_error_rates:
        lines.append("word error rate vs the spoken text (float torch / float ONNX): "
                     f"{first.word_error_rates['float torch']:.3f} / {first.word_error_rates['float ONNX']:.3f}; "
                     "STaMP torch / ONNX: " + "; ".join(f"{r.label} {r.wer_torch:.3f} / {r.wer_onnx:.3f}" for r in rows))
    lines.append("SQNR: dB of the final output vs float PyTorch; cos: mean cosine similarity of the output vectors; "
                 "layer dB: mean over rewritten layers of each layer's SQNR vs its float output on the same input (batch 1); "
                 "layer check: every rewritten layer, ONNX vs PyTorch reference stage by stage on the same inputs "
                 "(quantized codes bit for bit)")
    return "\n".join(lines)


def markdown_table(reports: list[ValidationReport], seconds: float) -> str:
    """The same comparison as Markdown, with leak-free perplexities (LMs), WER (speech) and the wall time."""
    first = reports[0]
    lm, speech = bool(first.perplexities), bool(first.word_error_rates)
    columns = ["variant", "avg bits", "SQNR torch (dB)", "SQNR ONNX (dB)"]
    columns += (["ppl torch", "ppl ONNX", "leak-free ppl torch / ONNX (targets)"] if lm
                else ["cosine torch", "cosine ONNX"])
    columns += ["WER torch", "WER ONNX"] if speech else []
    columns += ["mean layer SQNR (dB)", "energy in first K", "per-layer check ONNX vs torch"]
    lines = [
        f"{first.model}: {first.description}; {first.n_windows} samples x {first.seq_len} tokens of {first.data}",
        "",
        "| " + " | ".join(columns) + " |",
        "| --- |" + " ---: |" * (len(columns) - 1),
    ]
    if lm or speech:
        cells = ["float", "32", "", ""]
        if lm:
            ppl = {p.variant: p for p in first.perplexities}
            f, o = ppl["float torch"], ppl["float ONNX"]
            cells += [f"{f.all_positions:.2f}", f"{o.all_positions:.2f}", f"{_f(f.leak_free)} / {_f(o.leak_free)}"]
        else:
            cells += ["", ""]
        if speech:
            cells += [f"{first.word_error_rates['float torch']:.3f}", f"{first.word_error_rates['float ONNX']:.3f}"]
        lines.append("| " + " | ".join([*cells, "", "", ""]) + " |")
    for report in reports:
        row = _row(report)
        cells = [row.label, f"{row.average_bits:.2f}", f"{row.sqnr_torch:.2f}", f"{row.sqnr_onnx:.2f}"]
        if lm and row.ppl_torch is not None and row.ppl_onnx is not None:
            t, o = row.ppl_torch, row.ppl_onnx
            cells += [f"{t.all_positions:.2f}", f"{o.all_positions:.2f}",
                      f"{_f(t.leak_free)} / {_f(o.leak_free)} ({report.targets_leak_free})"]
        elif lm:
            cells += ["", "", ""]
        else:
            cells += [f"{row.cosine_torch:.4f}", f"{row.cosine_onnx:.4f}"]
        if speech:
            cells += [f"{row.wer_torch:.3f}", f"{row.wer_onnx:.3f}"]
        cells += [_f(row.layer_db), "" if math.isnan(row.energy) else f"{100 * row.energy:.1f}%", row.check]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"wall time: {seconds:.0f} s"]
    return "\n".join(lines)


def _all(ppl: Perplexity | None) -> float:
    return math.nan if ppl is None else ppl.all_positions


def _f(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def spec_number(spec: str, key: str, value: str, kind: type[int] | type[float]) -> int | float:
    """``value`` of ``key`` in a config spec as ``kind``; a one-line ConfigError naming the spec if it is not."""
    try:
        return kind(value)
    except ValueError as err:
        raise ConfigError(f"config spec {spec!r}: {key}={value!r} is not {'an integer' if kind is int else 'a number'}") from err
