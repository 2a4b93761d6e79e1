"""An LLM in onnxruntime-genai: float vs rewritten configs, quality and speed (docs/results.md).

Builds what is missing in ``--out-dir`` (the float folder of ``export --kv-cache``, one
rewritten folder per config; with ``--builder`` the model builder's fp32 folder, its STaMP
rewrite and its int4 folder), then:

1. checks that the float folder's greedy tokens equal PyTorch's (transformers ``generate``,
   greedy, with its own cache) on each prompt;
2. quality: continuation perplexity, teacher-forced one token per call after a prefilled
   prompt, and greedy agreement with float (stamp_onnx.evaluation.genai_eval);
3. speed: prefill and decode tokens per second, folders taking turns, medians.

Prompts are evenly spaced text windows of the model's corpus (the same windows on every run).

    .venv/bin/python tools/genai_bench.py smollm2-135m --out-dir out/genai --skip speed
    .venv/bin/python tools/genai_bench.py smollm2-135m --out-dir out/genai --skip check speed --configs --builder
    .venv/bin/python tools/genai_bench.py smollm2-135m --out-dir out/genai --skip check quality --builder
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from stamp_onnx.cli.commands import main as cli
from stamp_onnx.evaluation import genai_eval
from stamp_onnx.targets import genai
from stamp_onnx.zoo.genai_export import build_with_model_builder, export_genai
from stamp_onnx.zoo.models import evaluation_samples, load_model

A8 = ["--transform", "none", "--hp-tokens", "0", "--lp-bits", "8"]
HADAMARD = ["--feature-transform", "hadamard"]
CONFIGS: dict[str, list[str]] = {
    "stamp": [], "none": ["--transform", "none"], "a8": A8,
    "stamp-h": HADAMARD, "none-h": ["--transform", "none", *HADAMARD], "a8-h": [*A8, *HADAMARD],
}
LABELS = {
    "float": "float (fp32)", "stamp": "STaMP Haar (8/4 bits, K=64, P=1)", "none": "`none` (first 64 tokens 8 bits, rest 4)",
    "a8": "per-token A8", "stamp-h": "STaMP Haar + Hadamard", "none-h": "`none` + Hadamard", "a8-h": "per-token A8 + Hadamard",
    "builder-fp32": "model builder fp32 (GroupQueryAttention)", "builder-fp32-stamp": "model builder fp32, STaMP Haar",
    "builder-int4": "model builder int4 (MatMulNBits)",
}


def folders(model: str, out_dir: Path, configs: list[str], *, builder: bool) -> dict[str, Path]:
    loaded = None
    base = out_dir / model.replace("/", "_")
    paths = {"float": base}
    if not base.exists():
        loaded = load_model(model)
        export_genai(loaded, base)
    for name in configs:
        path = Path(f"{base}-{name}")
        if not path.exists() and cli(["-q", "quantize", str(base), "-o", str(path), *CONFIGS[name]]) != 0:
            raise SystemExit(f"quantize {name} failed")
        paths[name] = path
    if builder:  # onnxruntime-genai's own graphs: fp32, its STaMP rewrite, and int4
        for precision in ("fp32", "int4"):
            path = Path(f"{base}-builder-{precision}")
            if not path.exists():
                loaded = loaded or load_model(model)
                build_with_model_builder(loaded, path, precision=precision)
            paths[f"builder-{precision}"] = path
        path = Path(f"{base}-builder-fp32-stamp")
        if not path.exists() and cli(["-q", "quantize", str(paths["builder-fp32"]), "-o", str(path)]) != 0:
            raise SystemExit("quantize builder-fp32 failed")
        paths["builder-fp32-stamp"] = path
    return paths


def torch_check(model: str, float_dir: Path, pairs: list[tuple[list[int], list[int]]], n: int) -> list[int]:
    """Per prompt: how many of ``n`` greedy tokens of the float folder equal PyTorch's before a difference."""
    module = load_model(model).module
    og_model = genai.load(float_dir)
    agree = []
    for prompt, _ in pairs:
        with torch.no_grad():
            out = module.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                  use_cache=True)
        reference = [int(t) for t in out[0, len(prompt):]]
        agree.append(genai.first_divergence(reference, genai.generate(og_model, prompt, n).tokens))
    return agree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="smollm2-135m")
    parser.add_argument("--out-dir", type=Path, default=Path("out/genai"))
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--builder", action="store_true",
                        help="also the model builder's folders: fp32, its STaMP rewrite, int4")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--continuation", type=int, default=64)
    parser.add_argument("--generate", type=int, default=32, help="greedy tokens for the agreement and the PyTorch check")
    parser.add_argument("--rounds", type=int, default=3, help="speed: turns of every folder")
    parser.add_argument("--speed-tokens", type=int, default=32)
    parser.add_argument("--skip", nargs="*", default=[], choices=["check", "quality", "speed"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    paths = folders(args.model, args.out_dir, args.configs, builder=args.builder)
    windows = evaluation_samples(load_model(args.model), args.prompts, args.prompt_len + args.continuation, 0)
    pairs = genai_eval.split_windows(windows.feeds["input_ids"], args.prompt_len)
    print(f"{args.model}: {len(pairs)} windows of {windows.description}, prompt {args.prompt_len} + continuation "
          f"{args.continuation} tokens")
    if "check" not in args.skip:
        agree = torch_check(args.model, paths["float"], pairs, args.generate)
        print(f"float genai greedy vs PyTorch greedy, {args.generate} tokens per prompt: tokens before the first "
              f"difference {agree} ({sum(a == args.generate for a in agree)}/{len(agree)} identical)")
    if "quality" not in args.skip:
        start = time.perf_counter()
        rows = genai_eval.evaluate_quality(paths, pairs, generate=args.generate)
        rows = [genai_eval.Quality(LABELS[r.label], r.perplexity, r.agreement, r.generated) for r in rows]
        print(genai_eval.quality_table(rows))
        print(f"({time.perf_counter() - start:.0f} s)")
    if "speed" not in args.skip:
        speed = genai_eval.measure_speed(paths, pairs[0][0], new_tokens=args.speed_tokens, rounds=args.rounds)
        print(genai_eval.speed_table([genai_eval.Speed(LABELS[s.label], s.prefill_tokens_per_second,
                                                       s.decode_tokens_per_second) for s in speed]))
        print(f"(prompt {len(pairs[0][0])} tokens, {args.speed_tokens} new tokens, median of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
