"""Deployment-shaped quality and speed of onnxruntime-genai folders (float and rewritten).

Quality, with no leakage by construction: each text window is split into a prompt and a
continuation; the prompt is one prefill call (the rewritten model transforms and quantizes it
as one sequence), then the continuation is teacher-forced one token per call through the KV
cache, so no continuation token is ever quantized together with a later one, and every one is
scored from the logits before it is fed. The metric is the perplexity of the continuation
tokens. Greedy agreement: from each prompt, both the float and the rewritten folder generate
greedily; the score is how many tokens they share before the first difference (capped at the
number generated), averaged over prompts.

Speed: prefill tokens per second (the prompt in one call) and decode tokens per second (one
token per call), median over repeats, the folders taking turns so that a shared machine's
drifts hit all of them.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from stamp_onnx.errors import ConfigError
from stamp_onnx.targets import genai


@dataclasses.dataclass(frozen=True)
class Quality:
    label: str
    perplexity: float
    agreement: float | None  # mean tokens before the first divergence from float (None for float)
    generated: int


def split_windows(windows: np.ndarray, prompt_len: int) -> list[tuple[list[int], list[int]]]:
    """(prompt, continuation) token lists of each window: the first ``prompt_len`` tokens, the rest."""
    if not 1 <= prompt_len < windows.shape[1]:
        raise ConfigError(f"prompt length {prompt_len} must leave a continuation in windows of {windows.shape[1]} tokens")
    return [([int(t) for t in row[:prompt_len]], [int(t) for t in row[prompt_len:]]) for row in windows]


def perplexity(model: Any, pairs: list[tuple[list[int], list[int]]]) -> float:
    """exp of the mean NLL of every continuation token (teacher-forced through the cache)."""
    nll = np.concatenate([genai.continuation_nll(model, prompt, rest) for prompt, rest in pairs])
    return float(math.exp(nll.mean()))


def greedy(model: Any, prompts: list[list[int]], n: int) -> list[list[int]]:
    """``n`` greedy tokens after each prompt (no stop at end-of-sequence)."""
    return [genai.generate(model, prompt, n).tokens for prompt in prompts]


def evaluate_quality(folders: dict[str, Path], pairs: list[tuple[list[int], list[int]]], *, generate: int,
                     native: bool = True, float_label: str = "float") -> list[Quality]:
    """Perplexity and greedy agreement of each folder; ``float_label`` names the reference folder."""
    if float_label not in folders:
        raise ConfigError(f"the folders must include the float reference {float_label!r}")
    prompts = [prompt for prompt, _ in pairs]
    reference = greedy(genai.load(folders[float_label], native=native), prompts, generate)
    rows = []
    for label, path in folders.items():
        model = genai.load(path, native=native)
        ppl = perplexity(model, pairs)
        agreement = None
        if label != float_label:
            tokens = greedy(model, prompts, generate)
            agreement = statistics.fmean(genai.first_divergence(a, b) for a, b in zip(reference, tokens, strict=True))
        rows.append(Quality(label, ppl, agreement, generate))
        del model
    return rows


@dataclasses.dataclass(frozen=True)
class Speed:
    label: str
    prefill_tokens_per_second: float
    decode_tokens_per_second: float


def measure_speed(folders: dict[str, Path], prompt: list[int], *, new_tokens: int, rounds: int,
                  native: bool = True) -> list[Speed]:
    """Median prefill and decode tokens per second of each folder over ``rounds`` turns.

    In each round every folder is loaded alone (one loaded model's idle onnxruntime threads would
    take cores from the one being timed), warmed up with one short run, then timed once.
    """
    prefill: dict[str, list[float]] = {label: [] for label in folders}
    decode: dict[str, list[float]] = {label: [] for label in folders}
    for _ in range(rounds):
        for label, path in folders.items():
            model = genai.load(path, native=native)
            genai.generate(model, prompt, 2)
            result = genai.generate(model, prompt, new_tokens)
            prefill[label].append(result.prefill_tokens_per_second)
            decode[label].append(result.decode_tokens_per_second)
            del model
    return [Speed(label, statistics.median(prefill[label]), statistics.median(decode[label])) for label in folders]


def quality_table(rows: list[Quality]) -> str:
    lines = ["| model | continuation perplexity | greedy tokens before divergence |", "| --- | ---: | ---: |"]
    for row in rows:
        agreement = "" if row.agreement is None else f"{row.agreement:.1f} / {row.generated}"
        lines.append(f"| {row.label} | {row.perplexity:.2f} | {agreement} |")
    return "\n".join(lines)


def speed_table(rows: list[Speed]) -> str:
    lines = ["| model | prefill tokens/s | decode tokens/s |", "| --- | ---: | ---: |"]
    lines += [f"| {r.label} | {r.prefill_tokens_per_second:.0f} | {r.decode_tokens_per_second:.1f} |" for r in rows]
    return "\n".join(lines)
