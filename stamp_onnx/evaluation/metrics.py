"""Running metrics for validation: output differences, SQNR and causal-aware perplexity.

Everything accumulates batch by batch, so no model output has to be held in memory whole
(SmolLM2 logits are 25 MB per 128-token window). :class:`RunningDiff` sums the energies of
:func:`stamp_onnx.core.quant.sqnr_db`'s formula, in float64, over all batches. Only the perplexity
needs torch, and imports it when used: ``compare`` runs on numpy and onnxruntime alone.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from stamp_onnx.config import StampConfig, Transform
from stamp_onnx.core import transforms
from stamp_onnx.errors import ValidationError


def leak_free_mask(seq_len: int, config: StampConfig) -> np.ndarray:
    """bool (seq_len,): True where no output at positions <= t depends on tokens after t.

    x_hat = L^T Q(L x) makes x_hat[u] depend on x[j] when some transformed token i has
    L[i, u] != 0 and L[i, j] != 0; position t is leak-free when every u <= t depends on
    nothing after t. Haar with L levels: the ends of aligned 2^L-token blocks.
    """
    if config.transform == Transform.NONE or seq_len < 2:
        return np.ones(seq_len, dtype=bool)
    levels = transforms.resolve_levels(config.levels, seq_len, config.hp_tokens, config.prefix_tokens, config.transform,
                                       config.grid_width)
    m = transforms.matrix(seq_len, config.transform, levels, config.prefix_tokens, config.grid_width)
    support = (np.abs(m) > 1e-12).astype(np.float32)
    depends = (support.T @ support) > 0  # depends[u, j]
    last = np.where(depends, np.arange(seq_len)[None, :], -1).max(axis=1)
    return np.maximum.accumulate(last) <= np.arange(seq_len)


class RunningDiff:
    """Running max |ref - x|, max |ref|, the energies behind quant.sqnr_db (float64), and the
    cosine similarity of every output vector (last axis: a token's hidden state or logits)."""

    def __init__(self) -> None:
        self.max_abs = self.ref_max = self.signal = self.noise = 0.0
        self.cosine_sum = 0.0
        self.vectors = 0

    def update(self, reference: np.ndarray, approx: np.ndarray) -> None:
        if reference.shape != approx.shape:
            raise ValidationError(f"output shapes differ: {reference.shape} vs {approx.shape}")
        ref = reference.astype(np.float64)
        err = ref - approx.astype(np.float64)
        self.max_abs = max(self.max_abs, float(np.abs(err).max(initial=0.0)))
        self.ref_max = max(self.ref_max, float(np.abs(ref).max(initial=0.0)))
        self.signal += float(np.sum(ref * ref))
        self.noise += float(np.sum(err * err))
        got = approx.astype(np.float64)
        norms = np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1)
        dots = np.sum(ref * got, axis=-1)
        self.cosine_sum += float(np.sum(np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 1.0)))
        self.vectors += int(dots.size)

    def cosine(self) -> float:
        """Mean cosine similarity of the output vectors (1.0 for identical outputs)."""
        return self.cosine_sum / self.vectors if self.vectors else math.nan

    def sqnr_db(self) -> float:
        if self.noise == 0.0:
            return math.inf
        return -math.inf if self.signal == 0.0 else 10.0 * math.log10(self.signal / self.noise)



class RunningNLL:
    """Summed next-token negative log-likelihood, over all targets and leak-free ones."""

    def __init__(self) -> None:
        self.sum_all = self.sum_leak_free = 0.0
        self.count_all = self.count_leak_free = 0

    def update(self, logits: np.ndarray, input_ids: np.ndarray, mask: np.ndarray) -> None:
        import torch

        logp = torch.log_softmax(torch.from_numpy(logits[:, :-1]).double(), dim=-1)
        targets = torch.from_numpy(input_ids[:, 1:]).unsqueeze(-1)
        nll = -logp.gather(-1, targets).squeeze(-1).numpy()  # (b, s-1): position t predicts t+1
        keep = mask[:-1]
        self.sum_all += float(nll.sum())
        self.count_all += nll.size
        self.sum_leak_free += float(nll[:, keep].sum())
        self.count_leak_free += int(keep.sum()) * nll.shape[0]

    def perplexity(self, *, leak_free: bool) -> float:
        total, count = (self.sum_leak_free, self.count_leak_free) if leak_free else (self.sum_all, self.count_all)
        return math.exp(total / count) if count else math.nan


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word edit distance, reference words), after lower-casing and dropping punctuation."""
    ref, hyp = _words(reference), _words(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, start=1):
        current = [i]
        for j, other in enumerate(hyp, start=1):
            substitute = previous[j - 1] + (word != other)
            current.append(min(previous[j] + 1, current[j - 1] + 1, substitute))
        previous = current
    return previous[-1], len(ref)


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Word errors over all pairs / reference words (an empty reference counts as one word).

    ``word_error_rate(["The cat sat."], ["the cat sat on"]) == 1 / 3``.
    """
    if len(references) != len(hypotheses):
        raise ValidationError(f"{len(references)} reference texts but {len(hypotheses)} transcripts")
    pairs = [word_errors(r, h) for r, h in zip(references, hypotheses, strict=True)]
    return sum(e for e, _ in pairs) / max(sum(n for _, n in pairs), 1)


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9]+", " ", text.lower().replace("'", "")).split()


def json_finite(value: Any) -> Any:
    """JSON has no inf/nan: write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_finite(v) for v in value]
    return value
