"""`quantize --target htp` and `htp-check` as a standalone command line, until the CLI (stamp_onnx/cli/commands.py) wires them.

    .venv/bin/python tools/htp_cli.py quantize out/minilm.onnx -o out/minilm.htp.onnx \
        --calibration out/calib.npz --seq-len 128 --fold-input attention_mask
    .venv/bin/python tools/htp_cli.py check out/minilm.htp.onnx --dump-dir out/qnn_json

The flags are those `stamp-onnx quantize` has (transform, levels, prefix tokens, hp tokens, bits,
include/exclude) with the HTP's defaults (--hp-bits 16, --lp-bits 8), plus the HTP's own:
--seq-len (fixed shape), --fold-input NAME (an input that is the same in every calibration
sample, e.g. an all-ones attention_mask, becomes a constant), --weight-bits 8|4,
--percentile (of the two groups' calibration ranges), --baseline (onnxruntime's QNN
quantizer alone, A16W8). `check` exits 1 when any op runs in float on the HTP.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from stamp_onnx.config import StampConfig
from stamp_onnx.errors import StampError, first_line
from stamp_onnx.graph.calibration import load_feeds
from stamp_onnx.targets import htp_model, htp_runtime


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="htp_cli", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quantize", help="a fixed-shape static QDQ model for the HTP")
    q.add_argument("input")
    q.add_argument("-o", "--output", required=True)
    q.add_argument("--calibration", required=True, help="calibration inputs (.npz, one sample per row)")
    q.add_argument("--seq-len", type=int, required=True)
    q.add_argument("--transform", default="haar", choices=("haar", "haar2d", "none"))
    q.add_argument("--levels", type=int, default=3)
    q.add_argument("--prefix-tokens", type=int, default=1)
    q.add_argument("--grid-width", type=int, default=0)
    q.add_argument("--hp-tokens", type=int, default=64)
    q.add_argument("--hp-bits", type=int, default=htp_model.HP_BITS, choices=(8, 16))
    q.add_argument("--lp-bits", type=int, default=htp_model.LP_BITS, choices=(8, 16))
    q.add_argument("--weight-bits", type=int, default=8, choices=(4, 8))
    q.add_argument("--percentile", type=float, default=100.0)
    q.add_argument("--include")
    q.add_argument("--exclude")
    q.add_argument("--fold-input", action="append", default=[])
    q.add_argument("--baseline", action="store_true", help="onnxruntime's QNN quantizer alone (A16W8)")
    c = sub.add_parser("check", help="run a model on the HTP with CPU fallback disabled; exit 1 on float ops")
    c.add_argument("model")
    c.add_argument("--dump-dir", help="keep the QNN graph JSON here")
    c.add_argument("--htp-arch", default="75", choices=htp_runtime.HTP_ARCHS)
    c.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        if args.command == "check":
            report = htp_runtime.check_model(args.model, dump_dir=args.dump_dir, htp_arch=args.htp_arch)
            print(json.dumps(report.to_dict()) if args.json else htp_runtime.format_report(report))
            return 0 if report.integer_only else 1
        config = StampConfig(transform=args.transform, levels=args.levels, prefix_tokens=args.prefix_tokens,
                             grid_width=args.grid_width, hp_tokens=args.hp_tokens, hp_bits=args.hp_bits,
                             lp_bits=args.lp_bits, include=args.include, exclude=args.exclude)
        options = htp_model.HtpOptions(seq_len=args.seq_len, hp_bits=args.hp_bits, lp_bits=args.lp_bits,
                                       weight_bits=args.weight_bits, percentile=args.percentile,
                                       fold_inputs=tuple(args.fold_input), baseline=args.baseline)
        report = htp_model.quantize_for_htp(args.input, args.output, load_feeds(args.calibration), config, options)
        print(f"wrote {args.output}: {len(report['layers'])} STaMP units; skipped {len(report['skipped'])}")
        for line in report["skipped"]:
            print(f"  skipped {line}")
        return 0
    except StampError as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
