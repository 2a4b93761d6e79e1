"""The HTP (NPU) target on the command line: ``quantize --target htp`` and ``htp-check``.

``quantize --target htp`` takes the STaMP flags it can honour on the HTP (transform haar,
haar2d or none, levels, prefix tokens, grid width, K, include/exclude) with the HTP's defaults
(``--hp-bits 16 --lp-bits 8 --weight-bits 8``) and the HTP's own flags; anything the HTP
cannot run (feature transforms, GPTQ, weight blocks, ``--inline``, a token axis other than -2)
is refused in one line before any work.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stamp_onnx.config import StampConfig
from stamp_onnx.errors import ConfigError
from stamp_onnx.targets.htp_plan import CALIBRATORS

HP_BITS, LP_BITS, WEIGHT_BITS = 16, 8, 8  # the HTP's activation types and its int8 weights


def add_quantize_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--target htp (Qualcomm HTP through onnxruntime-qnn)")
    g.add_argument("--target", choices=("onnx", "integer", "htp"), default="onnx",
                   help="onnx: ai.stamp fake-quant ops for any onnxruntime (default); integer: each layer's GEMM on "
                   "uint8 x int8 codes through onnxruntime's CPU MatMulIntegerToFloat (default --weight-bits 8); "
                   "htp: a fixed-shape static QDQ model that runs "
                   f"integer-only on the HTP (defaults --hp-bits {HP_BITS} --lp-bits {LP_BITS} --weight-bits {WEIGHT_BITS})")
    g.add_argument("--seq-len", type=int, metavar="S", help="htp: the fixed sequence length (token count) of the model")
    g.add_argument("--batch", type=int, default=1, metavar="B", help="htp: the fixed batch size (default 1)")
    g.add_argument("--fold-input", action="append", default=[], metavar="NAME",
                   help="htp: make this input a constant (its value must be the same in every calibration sample, "
                   "e.g. an all-ones attention_mask, whose mask builder has no HTP op)")
    g.add_argument("--calibrator", choices=CALIBRATORS, default="minmax",
                   help="htp: how the STaMP groups' ranges are set: minmax (default); percentile (clipped to "
                   "--percentile on each side, and onnxruntime's Percentile calibrator for the rest of the graph); "
                   "mse (the 8-bit group's clipping with the least squared error; the rest min/max)")
    g.add_argument("--percentile", type=float, metavar="P",
                   help="htp, --calibrator percentile: the percentile (default 99.999)")
    g.add_argument("--baseline", action="store_true",
                   help="htp: onnxruntime's QNN quantizer alone (A16W8, no STaMP units), for comparison")


def add_check_parser(sub: argparse._SubParsersAction) -> None:
    from stamp_onnx.targets.htp_runtime import HTP_ARCHS

    p = sub.add_parser("htp-check", help="run a model on the HTP with CPU fallback disabled; list every float op")
    p.add_argument("model", type=Path)
    p.add_argument("--dump-dir", type=Path, help="keep the QNN graph JSON here")
    p.add_argument("--htp-arch", default="75", choices=HTP_ARCHS, help="HTP version (default 75)")
    p.add_argument("--json", action="store_true")


def quantize(args: argparse.Namespace, config: StampConfig) -> int:
    """``quantize --target htp``: ``config`` comes from the common flags, without the HTP's bit defaults."""
    from stamp_onnx.graph.calibration import load_feeds
    from stamp_onnx.targets import htp_model, htp_runtime

    refused = [flag for flag, given in (
        ("--inline", args.inline), ("--strict", args.strict),
        ("--feature-transform", config.feature_transform != "none"), ("--weight-method", config.weight_method != "rtn"),
        ("--weight-block", bool(config.weight_block)), ("--token-axis", config.token_axis not in (None, -2)),
    ) if given]
    if refused:
        raise ConfigError(f"--target htp does not take {', '.join(refused)}: the HTP runs static per-tensor QDQ with "
                          "int8/int4 per-channel weights; drop them")
    if config.transform not in ("haar", "haar2d", "none"):
        raise ConfigError(f"--target htp takes --transform haar, haar2d or none, not {config.transform}")
    if args.seq_len is None:
        raise ConfigError("--target htp needs --seq-len S: the HTP runs fixed shapes")
    if args.percentile is not None and args.calibrator != "percentile":
        raise ConfigError("--percentile applies to --calibrator percentile; add it or drop --percentile")
    if args.calibration is None:
        raise ConfigError("--target htp needs --calibration FILE.npz: every encoding is static, calibrated on it "
                          "(`stamp-onnx export MODEL --calibration-data FILE.npz` writes one)")
    if not htp_runtime.available():
        raise ConfigError("--target htp needs onnxruntime-qnn for the QNN quantizer: pip install --no-deps onnxruntime-qnn==2.7.0")
    hp_bits = HP_BITS if args.hp_bits is None else args.hp_bits
    lp_bits = LP_BITS if args.lp_bits is None else args.lp_bits
    weight_bits = WEIGHT_BITS if args.weight_bits is None else args.weight_bits
    options = htp_model.HtpOptions(seq_len=args.seq_len, batch=args.batch, hp_bits=hp_bits, lp_bits=lp_bits,
                                   weight_bits=weight_bits, calibrator=args.calibrator,
                                   percentile=99.999 if args.percentile is None else args.percentile,
                                   fold_inputs=tuple(args.fold_input), baseline=args.baseline)
    config = config.replace(hp_bits=hp_bits, lp_bits=lp_bits, weight_bits=0)
    report = htp_model.quantize_for_htp(args.input, args.output, load_feeds(args.calibration), config, options)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    what = "onnxruntime's QNN quantizer alone (A16W8)" if args.baseline else f"{len(report['layers'])} STaMP units"
    print(f"wrote {args.output} for the HTP: {what}; skipped {len(report['skipped'])}")
    print(f"  fixed shape batch {args.batch} x {args.seq_len} tokens; activations {hp_bits}/{lp_bits} bits, "
          f"weights int{weight_bits} per channel; check it with: stamp-onnx htp-check {args.output}")
    for line in report["skipped"]:
        print(f"  skipped {line}")
    return 0


def check(args: argparse.Namespace) -> int:
    from stamp_onnx.targets import htp_runtime

    if not htp_runtime.available():
        raise ConfigError("htp-check needs onnxruntime-qnn: pip install --no-deps onnxruntime-qnn==2.7.0")
    report = htp_runtime.check_model(args.model, dump_dir=args.dump_dir, htp_arch=args.htp_arch)
    print(json.dumps(report.to_dict(), indent=2) if args.json else htp_runtime.format_report(report))
    return 0 if report.integer_only else 1
