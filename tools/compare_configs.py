"""Rewrite one model with several configs and tabulate the validation (Markdown).

Example (the table in docs/results.md)::

    .venv/bin/python tools/compare_configs.py smollm2-135m --seq-len 512 --windows 8 \\
        --transforms haar dct wht none

Each row is one config at the same bit budget (first K transformed tokens at 8 bits, the rest
at 4), run through the product path: export -> quantize -> onnxruntime, and compared with
PyTorch float and with the PyTorch STaMP reference.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

from stamp_onnx.config import TRANSFORMS, StampConfig
from stamp_onnx.demo import evaluate_configs
from stamp_onnx.validate import ValidationReport, layer_check_summary


def markdown(reports: list[ValidationReport], seconds: float) -> str:
    first = reports[0]
    ppl = {p.variant: p for p in first.perplexities}
    lines = [
        f"{first.model}: {first.description}; {first.n_windows} windows x {first.seq_len} tokens of {first.data}",
        "",
        "| variant | avg bits | SQNR torch (dB) | SQNR ONNX (dB) | ppl torch | ppl ONNX | leak-free ppl torch / ONNX | per-layer check ONNX vs torch |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    if ppl:
        f = ppl["float torch"]
        lines.append(f"| float | 32 | | | {f.all_positions:.2f} | {ppl['float ONNX'].all_positions:.2f} | "
                     f"{f.leak_free:.2f} / {ppl['float ONNX'].leak_free:.2f} | |")
    for r in reports:
        c = r.config
        rows = {row.name: row for row in r.rows}
        p = {x.variant: x for x in r.perplexities}
        name = c.transform + (f" L={c.levels}" if c.transform == "haar" else "") + f", K={c.hp_tokens}, {c.hp_bits}/{c.lp_bits}"
        cells = [
            name,
            f"{c.average_bits(r.seq_len):.2f}",
            f"{rows['STaMP torch reference vs float torch'].sqnr_db:.2f}",
            f"{rows['STaMP ONNX vs float torch'].sqnr_db:.2f}",
        ]
        if p:
            t, o = p["STaMP torch reference"], p["STaMP ONNX"]
            cells += [f"{t.all_positions:.2f}", f"{o.all_positions:.2f}", f"{_f(t.leak_free)} / {_f(o.leak_free)}"]
        else:
            cells += ["", "", ""]
        cells.append(layer_check_summary(r))
        lines.append("| " + " | ".join(cells) + " |")
    if ppl:
        lines.append("")
        lines.append(f"leak-free targets: {first.targets_leak_free} of {first.targets_all} for the first row's transform "
                     "(block ends for Haar; none for DCT/WHT over a whole window; all for none)")
    lines.append(f"wall time: {seconds:.0f} s")
    return "\n".join(lines)


def _f(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", default="smollm2-135m")
    parser.add_argument("--transforms", nargs="+", default=["haar", "none"], choices=TRANSFORMS)
    parser.add_argument("--hp-tokens", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--out-dir", type=Path, default=Path("out"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("stamp_onnx").setLevel(logging.INFO)
    start = time.perf_counter()
    configs = [StampConfig(transform=t, hp_tokens=args.hp_tokens) for t in args.transforms]
    reports = evaluate_configs(args.model, args.out_dir, configs, seq_len=args.seq_len, n_windows=args.windows)
    print(markdown(reports, time.perf_counter() - start))


if __name__ == "__main__":
    main()
