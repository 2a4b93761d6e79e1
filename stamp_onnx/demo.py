"""`stamp-onnx demo`: export the default model, rewrite it twice, validate both, print a table.

The two rewrites use the same bit budget (first K tokens at 8 bits, the rest at 4): STaMP with
the default Haar transform, and ``--transform none`` (the per-token baseline). The float export
is cached in the output folder; the rewrites are redone each run (they take seconds).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from stamp_onnx.config import StampConfig
from stamp_onnx.export import export_onnx
from stamp_onnx.models import load_model
from stamp_onnx.pipeline import quantize_file
from stamp_onnx.validate import ValidationReport, layer_check_summary, validate

logger = logging.getLogger(__name__)

DEMO_CONFIGS = (StampConfig(), StampConfig(transform="none"))


def run_demo(model: str, out_dir: Path, *, seq_len: int, n_windows: int) -> str:
    """Run the whole product path on ``model``; return the summary and the full reports."""
    reports = evaluate_configs(model, out_dir, DEMO_CONFIGS, seq_len=seq_len, n_windows=n_windows)
    return "\n\n".join([summary_table(reports), *(r.to_table() for r in reports)])


def evaluate_configs(
    model: str, out_dir: Path, configs: Sequence[StampConfig], *, seq_len: int, n_windows: int
) -> list[ValidationReport]:
    """Export ``model`` once (cached in ``out_dir``), rewrite it with each config, validate each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = load_model(model)
    float_path = out_dir / f"{loaded.name}.onnx"
    if float_path.exists():
        logger.info("reusing the float export %s (delete it to export again)", float_path)
    else:
        logger.info("exporting %s to %s", loaded.name, float_path)
        export_onnx(loaded, float_path)
    reports = []
    for i, config in enumerate(configs):
        path = out_dir / f"{loaded.name}.{i}.{config.transform}.onnx"
        report = quantize_file(float_path, path, config)
        logger.info("%s: rewrote %d linear layers", path, len(report.rewritten))
        reports.append(validate(loaded, path, float_onnx_path=float_path, seq_len=seq_len, n_windows=n_windows))
    return reports


def summary_table(reports: list[ValidationReport]) -> str:
    """One row per variant: bits, SQNR vs float (torch and ONNX) and perplexity if an LM."""
    first = reports[0]
    lines = [
        f"{first.model}: {first.n_windows} windows x {first.seq_len} tokens of {first.data}",
        f"{'variant':<34} {'avg bits':>8} {'SQNR torch':>10} {'SQNR ONNX':>9} {'ppl torch':>9} {'ppl ONNX':>9}   layer check",
    ]
    ppl = {p.variant: p.all_positions for p in first.perplexities}
    if ppl:
        lines.append(f"{'float (torch / ONNX)':<34} {32:>8} {'':>10} {'':>9} {ppl['float torch']:>9.2f} {ppl['float ONNX']:>9.2f}")
    for report in reports:
        c = report.config
        rows = {row.name: row for row in report.rows}
        ppl = {p.variant: p.all_positions for p in report.perplexities}
        name = f"{c.transform}" + (f" L={c.levels}" if c.transform == "haar" else "") + f", K={c.hp_tokens} {c.hp_bits}/{c.lp_bits} bits"
        lines.append(
            f"{name:<34} {c.average_bits(report.seq_len):>8.2f} "
            f"{rows['STaMP torch reference vs float torch'].sqnr_db:>10.2f} "
            f"{rows['STaMP ONNX vs float torch'].sqnr_db:>9.2f} "
            f"{ppl.get('STaMP torch reference', float('nan')):>9.2f} {ppl.get('STaMP ONNX', float('nan')):>9.2f} "
            f"  {layer_check_summary(report)}"
        )
    lines.append("SQNR: dB of the final output vs float PyTorch; layer check: every rewritten layer, ONNX vs "
                 "PyTorch reference stage by stage on the same inputs (quantized codes bit for bit)")
    return "\n".join(lines)
