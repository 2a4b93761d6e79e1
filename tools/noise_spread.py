"""How far does a STaMP perplexity move by chance? PyTorch reference under tiny input noise.

The rewritten ONNX model and the PyTorch reference agree stage by stage (codes bit for bit), but
their unquantized float ops differ by ~1e-7, which flips a few 4-bit roundings; end to end they
are two draws of the rounding noise. This tool measures the spread of those draws on the
reference itself: every nn.Linear input is multiplied by (1 + eps * N(0, 1)) before STaMP, with
eps the size of the measured ONNX-vs-PyTorch transform differences (~5e-7), one seed per draw.

    .venv/bin/python tools/noise_spread.py smollm2-135m --transform wht --draws 4
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from stamp_onnx.config import TRANSFORMS, StampConfig
from stamp_onnx.evaluation.reference import stamp_reference
from stamp_onnx.zoo import DEFAULT_MODEL
from stamp_onnx.zoo.data import load_corpus, text_windows
from stamp_onnx.zoo.models import LoadedModel, load_model


def perplexity(loaded: LoadedModel, ids: np.ndarray, config: StampConfig, eps: float, seed: int) -> float:
    generator = torch.Generator().manual_seed(seed)

    def jitter(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = args[0]
        return (x * (1 + eps * torch.randn(x.shape, generator=generator)), *args[1:])

    linears = [m for m in loaded.module.modules() if isinstance(m, torch.nn.Linear)]
    hooks = [m.register_forward_pre_hook(jitter) for m in linears] if eps else []
    nll, count = 0.0, 0
    try:
        with torch.no_grad(), stamp_reference(loaded.module, config):  # registered after the jitter
            for window in ids:
                tokens = torch.from_numpy(window[None])
                logp = torch.log_softmax(loaded.module(input_ids=tokens)[0][0, :-1].double(), -1)
                nll -= float(logp.gather(1, tokens[0, 1:, None]).sum())
                count += len(window) - 1
    finally:
        for hook in hooks:
            hook.remove()
    return math.exp(nll / count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    parser.add_argument("--transform", default="haar", choices=TRANSFORMS)
    parser.add_argument("--eps", type=float, default=5e-7)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--windows", type=int, default=8)
    args = parser.parse_args()
    loaded = load_model(args.model)
    if loaded.tokenizer is None:
        parser.error(f"{args.model} has no tokenizer: perplexity on text needs one")
    ids = text_windows(loaded.tokenizer, args.windows, args.seq_len, corpus=load_corpus())
    config = StampConfig(transform=args.transform)
    base = perplexity(loaded, ids, config, 0.0, 0)
    draws = [perplexity(loaded, ids, config, args.eps, seed) for seed in range(args.draws)]
    print(f"{args.model} {args.transform}: unperturbed {base:.2f}; eps={args.eps:g} draws "
          + ", ".join(f"{d:.2f}" for d in draws) + f" (range {min(draws):.2f}-{max(draws):.2f})")


if __name__ == "__main__":
    main()
