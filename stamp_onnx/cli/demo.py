"""`stamp-onnx demo`: export the default model, rewrite it twice, validate both, print a table.

The two rewrites use the same bit budget (first K tokens at 8 bits, the rest at 4): STaMP with
the default Haar transform, and ``--transform none`` (the per-token baseline). The float export
is cached in the output folder; the rewrites are redone each run (they take seconds).
"""

from __future__ import annotations

from pathlib import Path

from stamp_onnx.config import StampConfig
from stamp_onnx.evaluation.evaluate import evaluate_configs, text_table

DEMO_CONFIGS = (StampConfig(), StampConfig(transform="none"))


def run_demo(model: str, out_dir: Path, *, seq_len: int, n_windows: int, native: bool = True) -> str:
    """Run the whole product path on ``model``; return the summary and the full reports."""
    reports = evaluate_configs(model, out_dir, DEMO_CONFIGS, seq_len=seq_len, n_windows=n_windows, native=native)
    return "\n\n".join([text_table(reports), *(r.to_table() for r in reports)])
