"""Command line: export, quantize, inspect, validate, compare, eval, generate, demo.

Every user error (StampError) becomes one line on stderr and a non-zero exit (2 for usage and
config errors, 1 otherwise); ``--debug`` shows the traceback instead. ``quantize`` and ``inspect``
need no PyTorch; the commands that run PyTorch models say in one line (exit 1) when the
``models`` extra is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from stamp_onnx.cli import htp
from stamp_onnx.config import (
    ALLOWED_BITS,
    BIT_ALLOCATIONS,
    FEATURE_TRANSFORMS,
    MAX_LEVELS,
    TRANSFORMS,
    WEIGHT_BITS,
    WEIGHT_METHODS,
    StampConfig,
)
from stamp_onnx.errors import ConfigError, MissingExtraError, StampError, ValidationError
from stamp_onnx.zoo import CALIBRATION_SAMPLES, DEFAULT_MODEL, DEFAULT_WINDOWS

if TYPE_CHECKING:
    from stamp_onnx.passes.report import RewriteReport

logger = logging.getLogger("stamp_onnx")
INTEGER_WEIGHT_BITS = 8  # --target integer's default --weight-bits: int8 per-channel weight codes
# These commands run PyTorch models: they need the `models` extra (pyproject.toml), these modules.
NEEDS_MODELS_EXTRA = ("export", "validate", "eval", "demo")
MODELS_EXTRA = ("torch", "transformers", "safetensors", "tokenizers", "gguf", "accelerate", "tqdm", "scipy", "skimage",
                "PIL", "matplotlib")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (and exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="stamp-onnx", description="STaMP activation quantization for ONNX models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("export", help="export a PyTorch model to ONNX (dynamo exporter)")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"built-in name or transformers dir (default {DEFAULT_MODEL})")
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("--kv-cache", action="store_true",
                   help="causal LMs: write a folder for onnxruntime-genai (decoder with past_key_values/present, "
                   "genai_config.json, tokenizer files); -o is the new folder")
    p.add_argument("--calibration-data", type=Path, metavar="FILE.npz",
                   help="also write calibration inputs from the model's own data (for quantize --calibration)")
    p.add_argument("--calibration-samples", type=int, help=f"samples in --calibration-data (default {CALIBRATION_SAMPLES})")
    p.add_argument("--calibration-seq-len", type=int,
                   help="tokens per text sample in --calibration-data (default 256); the windows are held out from "
                   f"an evaluation of --windows {DEFAULT_WINDOWS} at that length")

    p = sub.add_parser("quantize", help="rewrite every linear layer of an ONNX model (or a genai folder) with STaMP")
    p.add_argument("input", type=Path, help="an .onnx file, or an onnxruntime-genai folder (then -o is a new folder)")
    p.add_argument("-o", "--output", required=True, type=Path)
    _add_config_flags(p)
    p.add_argument("--inline", action="store_true",
                   help="lower the ai.stamp ops into standard ONNX ops (QDQ pairs in the main graph)")
    p.add_argument("--calibration", type=Path, metavar="FILE.npz",
                   help="calibration inputs (arrays named after the model inputs, one sample per row), for smoothquant and gptq")
    p.add_argument("--json", action="store_true", help="print the rewrite report as JSON")
    p.add_argument("--strict", action="store_true", help="exit 1 when any linear layer is left alone (the output is still written)")
    htp.add_quantize_flags(p)
    htp.add_check_parser(sub)

    p = sub.add_parser("inspect", help="show what a rewritten model holds, per layer")
    p.add_argument("model", type=Path)
    p.add_argument("--seq-len", type=int, default=512, help="sequence length for average bits (default 512)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("validate", help="compare a rewritten model against PyTorch (float and STaMP reference)")
    p.add_argument("model", help="built-in name or transformers dir the ONNX file was exported from")
    p.add_argument("rewritten", type=Path)
    p.add_argument("--float-onnx", type=Path, help="the float export (exported afresh if omitted)")
    _add_eval_flags(p)
    _add_ep_flags(p, "REWRITTEN is a --target htp model: its quality on the CPU provider (graph optimizations off, "
                  "every sample) and on the HTP (the first --htp-samples), against the float export, at the file's "
                  "fixed shape (--seq-len is read from the file)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser(
        "compare", help="run a float ONNX file and its rewrite on the same inputs, compare the outputs (no PyTorch)",
        description="Run both files in onnxruntime on the same inputs (given, or generated from the declared input types "
        "and shapes) and print per output: SQNR, cosine, max |diff|; then check that changing sample 0 of the batch "
        "leaves every other sample's outputs bit-identical. Exit 1 when a check fails.",
    )
    p.add_argument("float_model", type=Path, metavar="FLOAT.onnx", help="the float model")
    p.add_argument("rewritten", type=Path, metavar="REWRITTEN.onnx", help="its rewrite (e.g. by stamp-onnx quantize)")
    p.add_argument("--inputs", type=Path, metavar="FILE.npz", help="arrays named after the model inputs (default: generated)")
    p.add_argument("--batch", type=int, metavar="B", help="generated inputs: samples on the batch axis (default 2)")
    p.add_argument("--seq-len", type=int, metavar="S", help="generated inputs: size of the other symbolic dims (default 16)")
    p.add_argument("--min-sqnr", type=float, metavar="DB", help="fail when an output's SQNR is below DB")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated inputs (default 0)")
    p.add_argument("--no-native", dest="native", action="store_false",
                   help="run the ai.stamp ops as their ONNX function bodies even when the native kernels are built")
    p.add_argument("--ep", choices=("cpu", "htp"), default="cpu",
                   help="htp: REWRITTEN is a --target htp model: run it on the CPU provider (graph optimizations off, "
                   "the QDQ file's own arithmetic) and on the HTP, and report both against float (default cpu)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser("eval", help="rewrite a model with several configs, validate each, tabulate")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help=f"built-in name, transformers dir, or a float ONNX file from `export` (default {DEFAULT_MODEL})")
    p.add_argument(
        "--configs", nargs="+", metavar="SPEC",
        help="transform[,key=value...], e.g. haar,prefix_tokens=1 or none,hp_tokens=0 (default: haar none; "
        "with --ep htp also 'baseline', onnxruntime's QNN quantizer alone: default baseline haar none)",
    )
    p.add_argument("--out-dir", type=Path, default=Path("out"), help="cache of the float export and rewrites")
    p.add_argument("--markdown", type=Path, help="also write the table as Markdown to this file")
    p.add_argument("--report", type=Path, metavar="DIR", help="also write report.md with plots (PNG) and report.json to DIR")
    p.add_argument("--fresh", action="store_true", help="recompute evaluations saved in --out-dir by earlier runs")
    _add_eval_flags(p)
    _add_ep_flags(p, "quantize each config with --target htp (calibrated on samples held out from the evaluation) "
                  "and evaluate it on the CPU provider (graph optimizations off, every sample) and on the HTP "
                  "(the first --htp-samples)")
    p.add_argument("--fold-input", action="append", default=[], metavar="NAME",
                   help="--ep htp: make this input a constant, as quantize --target htp --fold-input does")

    p = sub.add_parser("generate", help="generate text with an onnxruntime-genai folder (greedy), print tokens per second")
    p.add_argument("model", type=Path, metavar="DIR", help="a folder with genai_config.json (export --kv-cache, quantize)")
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate at most (default 32)")
    p.add_argument("--no-native", dest="native", action="store_false",
                   help="run the ai.stamp ops as their function bodies even when the folder names the native kernels")

    p = sub.add_parser("demo", help=f"export {DEFAULT_MODEL}, rewrite it (STaMP and the per-token baseline), validate")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--out-dir", type=Path, default=Path("out"))
    _add_eval_flags(p)
    for command in sub.choices.values():  # also after the subcommand; SUPPRESS keeps the top-level value
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        command.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only warnings and results")
    return parser


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    d = StampConfig()
    p.add_argument("--transform", help=f"{'|'.join(TRANSFORMS)} (default {d.transform})")
    p.add_argument("--levels", help=f"Haar levels, 0-{MAX_LEVELS}, or auto: per sequence length, the fewest levels whose low band "
                   f"(LL band for haar2d) fits in the hp tokens after the prefix (default {d.levels})")
    p.add_argument("--prefix-tokens", type=int, help=f"first tokens kept out of the transform, at hp bits (default {d.prefix_tokens})")
    p.add_argument("--grid-width", type=int, help="haar2d: width of the token grid after the prefix tokens (default 0: square)")
    p.add_argument("--hp-tokens", type=int, help=f"transformed tokens at high precision (default {d.hp_tokens})")
    bits = ",".join(map(str, ALLOWED_BITS))
    p.add_argument("--hp-bits", type=int, help=f"bits of the first K tokens: {bits} (default {d.hp_bits})")
    p.add_argument("--lp-bits", type=int, help=f"bits of the other tokens: {bits} (default {d.lp_bits})")
    p.add_argument("--bit-allocation", help=f"{'|'.join(BIT_ALLOCATIONS)}: two tiers (K tokens at hp bits, the rest at lp bits), "
                   "or per-layer widths from 2 to hp bits chosen from each transformed token's energy on --calibration "
                   f"data (default {d.bit_allocation})")
    p.add_argument("--avg-bits", type=float, help="--bit-allocation energy: each layer's average activation bits at the "
                   "calibration length (e.g. 4.5)")
    p.add_argument("--weight-bits", type=int,
                   help=f"symmetric weight quantization: {','.join(map(str, WEIGHT_BITS[1:]))} (default 0: float weights; "
                   f"{INTEGER_WEIGHT_BITS} with --target integer)")
    p.add_argument("--weight-block", type=int,
                   help="weight scales per block of this many input features (default 0: per output channel)")
    p.add_argument("--weight-granularity", metavar="channel|N",
                   help="the same as --weight-block: 'channel' (one scale per output channel) or a block size N")
    p.add_argument("--weight-method", help=f"{'|'.join(WEIGHT_METHODS)}: how weight codes are chosen; gptq needs "
                   "--calibration (default rtn)")
    p.add_argument("--feature-transform", help=f"{'|'.join(FEATURE_TRANSFORMS)}: rotate (hadamard) or rescale (smoothquant) "
                   "activations along the features, folded into the weights (default none)")
    p.add_argument("--alpha", dest="smooth_alpha", type=float,
                   help=f"smoothquant migration strength in [0, 1] (default {d.smooth_alpha})")
    p.add_argument("--include", help="regex: rewrite only layers whose name matches")
    p.add_argument("--exclude", help="regex: leave layers whose name matches")
    p.add_argument("--token-axis", type=int,
                   help="the axis of every layer's activation that holds the tokens of one sequence (default: inferred "
                   "per layer from the shapes; a per-layer list goes in --config as token_axes: [[regex, axis], ...])")
    p.add_argument("--config", type=Path, help="JSON file with any of the keys above (flags win)")


def _add_ep_flags(p: argparse.ArgumentParser, htp_help: str) -> None:
    p.add_argument("--ep", choices=("cpu", "htp"), default="cpu", help=f"htp: {htp_help} (default cpu)")
    p.add_argument("--htp-samples", type=int, default=1, metavar="N",
                   help="--ep htp: samples run on the HTP simulator, which is slow (default 1)")


def _add_eval_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seq-len", type=int, help="tokens per evaluation window (default 256)")
    p.add_argument("--windows", type=int, default=DEFAULT_WINDOWS, help=f"number of text windows (default {DEFAULT_WINDOWS})")
    p.add_argument("--no-native", dest="native", action="store_false",
                   help="run the ai.stamp ops as their ONNX function bodies even when the native kernels are built")


def config_from_args(args: argparse.Namespace) -> StampConfig:
    base = StampConfig.from_file(args.config) if args.config else StampConfig()
    if args.weight_granularity is not None:
        if args.weight_block is not None:
            raise ConfigError("--weight-granularity and --weight-block set the same thing; pass one of them")
        text = args.weight_granularity.strip().lower()
        if text != "channel" and not text.isdigit():
            raise ConfigError(f"--weight-granularity {args.weight_granularity!r} is not 'channel' or a block size")
        args.weight_block = 0 if text == "channel" else int(text)
    # every field a flag can set has one, with the field's name as its dest (_add_config_flags)
    changes = {key: getattr(args, key) for key in StampConfig.text_fields() if getattr(args, key) is not None}
    if getattr(args, "target", None) == "integer" and "weight_bits" not in changes and not base.weight_bits:
        changes["weight_bits"] = INTEGER_WEIGHT_BITS  # the integer GEMM needs weight codes
    return base.replace(**changes)


def _require_models_extra(command: str) -> None:
    missing = [name for name in MODELS_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        named = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise MissingExtraError(f"`{command}` needs the models extra ({named} not installed): "
                                "pip install '.[models]' in the stamp-onnx source folder")


def _check_eval_flags(args: argparse.Namespace) -> None:
    if getattr(args, "ep", "cpu") == "htp" and getattr(args, "htp_samples", 0) < 0:
        raise ConfigError(f"--htp-samples must be 0 or more, got {args.htp_samples}")
    if args.seq_len is None:
        args.seq_len = 256
    if args.seq_len < 1 or args.windows < 1:
        raise ConfigError(f"--seq-len ({args.seq_len}) and --windows ({args.windows}) must be positive")


def cmd_export(args: argparse.Namespace) -> int:
    from stamp_onnx.zoo.export import export_onnx
    from stamp_onnx.zoo.models import load_model

    if args.calibration_data is None and (args.calibration_samples is not None or args.calibration_seq_len is not None):
        raise ConfigError("--calibration-samples and --calibration-seq-len describe --calibration-data; pass it too")
    if args.kv_cache:
        if args.calibration_data is not None:
            raise ConfigError("--calibration-data writes inputs of the export without a KV cache; drop it with --kv-cache")
        from stamp_onnx.zoo.genai_export import export_genai

        export_genai(load_model(args.model), args.output)
        print(f"wrote {args.output}: model.onnx (KV cache), genai_config.json, tokenizer files")
        return 0
    loaded = load_model(args.model)
    if args.calibration_data is not None:
        from stamp_onnx.graph.calibration import save_feeds
        from stamp_onnx.zoo.models import calibration_samples

        if not args.calibration_data.parent.is_dir():
            raise ConfigError(f"folder of --calibration-data {args.calibration_data} does not exist; create it first")
        n = CALIBRATION_SAMPLES if args.calibration_samples is None else args.calibration_samples
        seq_len = 256 if args.calibration_seq_len is None else args.calibration_seq_len
        samples = calibration_samples(loaded, n, seq_len, held_out=DEFAULT_WINDOWS)
        save_feeds(args.calibration_data, samples.feeds)
        logger.info("wrote %d calibration samples (%s) to %s", len(samples), samples.description, args.calibration_data)
    export_onnx(loaded, args.output)  # logs the path and time
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from stamp_onnx.pipeline import quantize_file

    config = config_from_args(args)
    if args.target == "htp":
        return htp.quantize(args, config)
    htp_only = [flag for flag, given in (("--seq-len", args.seq_len is not None), ("--fold-input", bool(args.fold_input)),
                                         ("--baseline", args.baseline)) if given]
    if htp_only:
        raise ConfigError(f"{', '.join(htp_only)} only apply to --target htp")
    feeds = None
    if args.calibration is not None:
        from stamp_onnx.graph.calibration import load_feeds

        feeds = load_feeds(args.calibration)
    from stamp_onnx.targets.genai import is_genai_folder, quantize_folder

    if is_genai_folder(args.input):
        report = quantize_folder(args.input, args.output, config, inline=args.inline, calibration_feeds=feeds,
                                 target=args.target)
    else:
        report = quantize_file(args.input, args.output, config, inline=args.inline, calibration_feeds=feeds,
                               target=args.target)
    skipped = report.skipped_linear
    if args.json:
        print(json.dumps({"config": json.loads(config.to_json()), **report.to_dict()}, indent=2))
    else:
        _print_quantize_report(args, config, report)
    if args.strict and skipped:
        print(f"stamp-onnx: error: --strict: {len(skipped)} linear layers were not rewritten: "
              f"{report.skip_summary(linear_only=True)}", file=sys.stderr)
        return 1
    return 0


def _print_quantize_report(args: argparse.Namespace, config: StampConfig, report: RewriteReport) -> None:
    from stamp_onnx.graph.contract import configured_weight_format as weight_format

    skipped = report.skipped_linear
    print(f"rewrote {len(report.rewritten)} linear layers of {args.input} -> {args.output}; skipped {len(skipped)}")
    print(f"  {config.label()}; weights {weight_format(config)}")
    axes: dict[str, int] = {}
    for record in report.rewritten:
        traced = " from " in record.activation_shape
        key = f"axis {record.token_axis} of {record.activation_shape.split(' from ')[-1]}" + (" (before a flattening Reshape)" if traced else "")
        axes[key] = axes.get(key, 0) + 1
    print("  tokens on " + "; ".join(f"{key}: {n} layers" for key, n in axes.items()))
    if report.opset_from != report.opset_to:
        print(f"  opset converted {report.opset_from} -> {report.opset_to}")
    if skipped:
        print(f"  skipped linear layers: {report.skip_summary(linear_only=True)}")
    products = len(report.skipped) - len(skipped)
    if products:
        print(f"  left alone: {products} MatMuls of two activations (attention), not linear layers")
    for note in report.notes:
        print(f"  note: {note}")


def cmd_inspect(args: argparse.Namespace) -> int:
    from stamp_onnx.evaluation.inspection import summarize
    from stamp_onnx.graph.model_io import load_model

    if args.seq_len < 1:
        raise ConfigError(f"--seq-len must be positive, got {args.seq_len}")
    summary = summarize(load_model(args.model), seq_len=args.seq_len)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.to_text())
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from stamp_onnx.evaluation.validate import validate

    if args.ep == "htp":
        return _validate_htp(args)
    _check_eval_flags(args)
    report = validate(
        args.model, args.rewritten, float_onnx_path=args.float_onnx, seq_len=args.seq_len, n_windows=args.windows,
        native=args.native,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.to_table())
    report.check()
    return 0


def _validate_htp(args: argparse.Namespace) -> int:
    from stamp_onnx.evaluation.htp_eval import markdown_table, validate_htp

    if args.seq_len is not None:
        raise ConfigError("validate --ep htp reads the sequence length from the file's fixed shape; drop --seq-len")
    if args.windows < 1 or args.htp_samples < 0:
        raise ConfigError(f"--windows ({args.windows}) must be positive and --htp-samples ({args.htp_samples}) 0 or more")
    result = validate_htp(args.model, args.rewritten, float_onnx_path=args.float_onnx, n_windows=args.windows,
                          htp_samples=args.htp_samples)
    print(json.dumps(result.to_dict(), indent=2) if args.json else markdown_table([result]))
    if result.integer_only is False:
        raise ValidationError(f"{args.rewritten} does not run integer-only on the HTP: float ops "
                              + "; ".join(result.float_ops))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from stamp_onnx.evaluation.compare import compare_files, load_inputs

    if args.inputs is not None and (args.batch is not None or args.seq_len is not None):
        raise ConfigError("--batch and --seq-len shape generated inputs; with --inputs the arrays set the shapes")
    report = compare_files(
        args.float_model, args.rewritten, inputs=None if args.inputs is None else load_inputs(args.inputs),
        batch=2 if args.batch is None else args.batch, seq_len=16 if args.seq_len is None else args.seq_len,
        native=args.native, seed=args.seed, min_sqnr=args.min_sqnr, ep=args.ep,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.to_text())
    report.check()
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from stamp_onnx.evaluation.evaluate import (
        evaluate_configs,
        markdown_table,
        parse_config_spec,
        text_table,
    )

    _check_eval_flags(args)
    if args.markdown is not None and not args.markdown.parent.is_dir():
        raise ConfigError(f"folder of --markdown {args.markdown} does not exist; create it first")
    if args.ep == "htp":
        return _eval_htp(args)
    if args.fold_input:
        raise ConfigError("--fold-input applies to --ep htp only")
    configs = [parse_config_spec(spec) for spec in args.configs or ["haar", "none"]]
    start = time.perf_counter()
    reports = evaluate_configs(
        args.model, args.out_dir, configs, seq_len=args.seq_len, n_windows=args.windows, fresh=args.fresh,
        native=args.native,
    )
    print(text_table(reports))
    table = markdown_table(reports, time.perf_counter() - start)
    if args.markdown is not None:
        args.markdown.write_text(table + "\n")
    if args.report is not None:
        from stamp_onnx.evaluation.report import write_report

        command = "stamp-onnx " + " ".join(shlex.quote(a) for a in args.argv)
        path = write_report(reports, args.report, title=f"STaMP evaluation: {reports[0].model}",
                            table_markdown=table, command=command)
        print(f"report: {path}")
    return 0


def _eval_htp(args: argparse.Namespace) -> int:
    from stamp_onnx.evaluation.htp_eval import evaluate_htp_configs, markdown_table

    if args.report is not None or args.fresh:
        raise ConfigError("--report and --fresh do not apply to --ep htp (each config is quantized afresh)")
    start = time.perf_counter()
    results = evaluate_htp_configs(args.model, args.out_dir, args.configs or ["baseline", "haar", "none"],
                                   seq_len=args.seq_len, n_windows=args.windows, htp_samples=args.htp_samples,
                                   fold_inputs=args.fold_input)
    table = markdown_table(results) + f"\n\n{time.perf_counter() - start:.0f} s"
    print(table)
    if args.markdown is not None:
        args.markdown.write_text(table + "\n")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from stamp_onnx.targets import genai

    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
    folder = genai.read_folder(args.model)
    model = genai.load(folder.path, native=args.native)
    tokenizer = genai.require_genai().Tokenizer(model)
    prompt = [int(t) for t in tokenizer.encode(args.prompt)]
    result = genai.generate(model, prompt, args.max_new_tokens, eos=genai.eos_ids(folder))
    print(args.prompt + tokenizer.decode(result.tokens))
    print(f"prefill: {result.prompt_tokens} tokens, {result.prefill_tokens_per_second:.1f} tokens/s; "
          f"decode: {len(result.tokens)} tokens, {result.decode_tokens_per_second:.1f} tokens/s", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from stamp_onnx.cli.demo import run_demo

    _check_eval_flags(args)
    print(run_demo(args.model, args.out_dir, seq_len=args.seq_len, n_windows=args.windows, native=args.native))
    return 0


COMMANDS = {
    "export": cmd_export,
    "quantize": cmd_quantize,
    "inspect": cmd_inspect,
    "validate": cmd_validate,
    "compare": cmd_compare,
    "htp-check": htp.check,
    "eval": cmd_eval,
    "generate": cmd_generate,
    "demo": cmd_demo,
}


def _configure_logging(*, quiet: bool, debug: bool) -> None:
    """Our own loggers at INFO (progress), everything else (onnx-ir, onnxscript, torch) at ERROR:
    their warnings about a broken input model would bury the one-line error (--debug shows all)."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s" if debug else "%(message)s",
    )
    for name in ("stamp_onnx", "passes"):
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # usage errors (2) and --help (0)
        return int(stop.code or 0)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    _configure_logging(quiet=args.quiet, debug=args.debug)
    try:
        if args.command in NEEDS_MODELS_EXTRA:
            _require_models_extra(args.command)
        return COMMANDS[args.command](args)
    except StampError as err:
        if args.debug:
            raise
        print(f"stamp-onnx: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("stamp-onnx: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
