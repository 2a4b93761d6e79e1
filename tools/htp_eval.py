"""Measure a model quantized for the HTP: output SQNR vs float, HTP vs CPU agreement, integer-only
status and activation bytes, for the A16W8 QNN baseline and STaMP configs.

    .venv/bin/stamp-onnx export minilm -o out/minilm.onnx --calibration-data out/calib.npz --calibration-seq-len 128
    .venv/bin/python tools/htp_eval.py out/minilm.onnx --calibration out/calib.npz --seq-len 128 \
        --fold-input attention_mask --out-dir out/htp --configs baseline haar none

Evaluation inputs (``--eval FILE.npz``; default: the built-in model's evaluation windows, which
the calibration windows of ``export --calibration-data`` avoid, written by ``--eval-model NAME``)
run on the CPU provider at ORT_DISABLE_ALL (the QDQ arithmetic as written); the HTP simulator
(seconds per inference) runs only ``--htp-samples`` of them. A config is ``baseline`` or a
transform with ``key=value`` overrides of the StampConfig / HtpOptions, e.g. ``haar,hp_tokens=32``,
``none``, ``haar,lp_bits=16``, ``haar,weight_bits=4``.

``--perplexity`` (causal LMs: the first output is the logits, the inputs have ``input_ids``) adds
the next-token perplexity of every run, over all targets and over the leak-free ones only (the
positions whose outputs see no later token through the config's transform).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from stamp_onnx.config import StampConfig
from stamp_onnx.core.quant import sqnr_db
from stamp_onnx.evaluation.metrics import RunningNLL, leak_free_mask
from stamp_onnx.graph.calibration import load_feeds
from stamp_onnx.targets import htp_model, htp_runtime


def parse_config(spec: str, seq_len: int, fold: tuple[str, ...]) -> tuple[StampConfig, htp_model.HtpOptions]:
    head, *pairs = spec.split(",")
    values = {k: json.loads(v) if v[:1].isdigit() or v[:1] == "-" else v for k, v in (p.split("=", 1) for p in pairs)}
    option_keys = {f.name for f in dataclasses.fields(htp_model.HtpOptions)}
    opts = {k: values.pop(k) for k in list(values) if k in option_keys}
    options = htp_model.HtpOptions(seq_len=seq_len, fold_inputs=fold, baseline=head == "baseline", **opts)
    config = StampConfig(transform="haar" if head == "baseline" else head, **values)
    return config, options


def run_cpu(path: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    session = htp_runtime.cpu_reference_session(path)
    return np.concatenate([session.run(None, f)[0] for f in feeds])


def perplexities(logits: np.ndarray, feeds: list[dict[str, np.ndarray]], config: StampConfig) -> dict[str, float]:
    """Perplexity of ``logits`` (one row per feed) over all targets and the leak-free ones."""
    ids = np.concatenate([f["input_ids"] for f in feeds[: len(logits)]])
    nll = RunningNLL()
    nll.update(logits, ids, leak_free_mask(ids.shape[1], config))
    return {"all": round(nll.perplexity(leak_free=False), 3), "leak_free": round(nll.perplexity(leak_free=True), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--calibration", required=True)
    ap.add_argument("--eval", help="evaluation inputs (.npz); default: --eval-model's evaluation windows")
    ap.add_argument("--eval-model", default="minilm")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--seq-len", type=int, required=True)
    ap.add_argument("--fold-input", action="append", default=[])
    ap.add_argument("--configs", nargs="+", default=["baseline", "haar", "none"])
    ap.add_argument("--htp-samples", type=int, default=1)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--perplexity", action="store_true", help="causal LM: perplexity from the logits (output 0)")
    args = ap.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    calib = load_feeds(args.calibration)
    if args.eval:
        evals = load_feeds(args.eval)
    else:
        from stamp_onnx.zoo.models import evaluation_samples, load_model

        evals = evaluation_samples(load_model(args.eval_model), args.windows, args.seq_len, 0).feeds
        np.savez(out / "eval.npz", **evals)
    fold = tuple(args.fold_input)
    first_options = htp_model.HtpOptions(seq_len=args.seq_len, fold_inputs=fold)
    float_path = out / "float.onnx"
    htp_model.prepare_float(args.model, float_path, first_options, calib)
    feeds = list(htp_model.model_feeds(float_path, evals))
    reference = run_cpu(float_path, feeds)
    if args.perplexity:
        float_ppl = perplexities(reference, feeds, StampConfig(transform="none"))["all"]
        print(json.dumps({"float_perplexity": float_ppl,
                          "float_perplexity_first": perplexities(reference[:1], feeds, StampConfig(transform="none"))["all"]}),
              flush=True)
    rows = []
    for spec in args.configs:
        config, options = parse_config(spec, args.seq_len, fold)
        path = out / (spec.replace(",", "_").replace("=", "-") + ".onnx")
        t0 = time.time()
        report = htp_model.quantize_for_htp(args.model, path, calib, config, options)
        t_quant = time.time() - t0
        cpu = run_cpu(path, feeds)
        row = {"config": spec, "quantize_s": round(t_quant, 1), "layers": len(report["layers"]),
               "hp_tokens": sorted({layer["hp_tokens"] for layer in report["layers"]}),
               "sqnr_cpu_vs_float_db": round(sqnr_db(reference, cpu), 2),
               "sqnr_per_sample_db": [round(sqnr_db(reference[i], cpu[i]), 2) for i in range(len(cpu))]}
        if args.perplexity:
            row["perplexity_cpu"] = perplexities(cpu, feeds, config)
        if htp_runtime.available() and args.htp_samples:
            dump = out / (path.stem + ".qnn_json")
            shutil.rmtree(dump, ignore_errors=True)
            t0 = time.time()
            session = htp_runtime.htp_session(path, dump_dir=dump)
            htp = np.concatenate([session.run(None, f)[0] for f in feeds[: args.htp_samples]])
            n = len(htp)
            integer = htp_runtime.integer_report(dump)
            row |= {"htp_s": round(time.time() - t0, 1),
                    "sqnr_htp_vs_float_db": round(sqnr_db(reference[:n], htp), 2),
                    "sqnr_cpu_same_samples_db": round(sqnr_db(reference[:n], cpu[:n]), 2),
                    "sqnr_htp_vs_cpu_db": round(sqnr_db(cpu[:n], htp), 2),
                    "integer_only": integer.integer_only, "float_ops": integer.float_ops[:5],
                    "qnn_ops": integer.op_counts, "activation_bytes": integer.activation_bytes,
                    "reshape_bytes": integer.reshape_bytes}
            if args.perplexity:
                row |= {"perplexity_htp": perplexities(htp, feeds, config),
                        "perplexity_cpu_same_samples": perplexities(cpu[:n], feeds, config)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
