"""RTN vs GPTQ weights, one layer at a time: output SQNR on held-out data, float and STaMP inputs.

For each named layer of a built-in model's float ONNX export, the layer's input is read on the
calibration windows (for GPTQ's H = sum x^T x) and on the evaluation windows (held out from
them); the layer's output y = x W is compared with x' W_hat for W_hat from round-to-nearest
and from GPTQ, with x' the float input or its STaMP-quantized version L^-1 Q(L x) (default
config). This isolates the weight method from error building up through the network.

    .venv/bin/python tools/gptq_layers.py model.layers.0.self_attn.o_proj model.layers.2.mlp.down_proj
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import torch

from stamp_onnx.config import StampConfig
from stamp_onnx.core import gptq, quant, weights
from stamp_onnx.evaluation.reference import stamp_activation
from stamp_onnx.graph import runtime
from stamp_onnx.graph.model_io import load_model as load_onnx
from stamp_onnx.passes.layer_weights import read_weight
from stamp_onnx.passes.linear_layers import find_linear_layers
from stamp_onnx.zoo import DEFAULT_MODEL
from stamp_onnx.zoo.export import export_onnx
from stamp_onnx.zoo.models import calibration_samples, evaluation_samples, load_model


def layer_inputs(path: Path, names: list[str], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float model's values ``names`` on ``feeds``, one sample per run, stacked: (n, ..., d)."""
    proto = onnx.load(str(path))
    proto.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    session = runtime.session(proto.SerializeToString(), native=False)
    wanted = {i.name for i in session.get_inputs()}
    rows = len(next(iter(feeds.values())))
    values = [session.run(names, {k: v[i : i + 1] for k, v in feeds.items() if k in wanted}) for i in range(rows)]
    return {name: np.concatenate([v[j] for v in values]) for j, name in enumerate(names)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("layers", nargs="+", help="layer names as `inspect` prints them")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--block", type=int, default=0)
    parser.add_argument("--windows", type=int, default=8, help="calibration and evaluation windows (default 8 each)")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--out-dir", type=Path, default=Path("out"))
    args = parser.parse_args(argv)
    loaded = load_model(args.model)
    path = args.out_dir / f"{loaded.name}.onnx"
    if not path.exists():
        export_onnx(loaded, path)
    found = {layer.name: layer.node for layer in find_linear_layers(load_onnx(path).graph)[0]}
    missing = [name for name in args.layers if name not in found]
    if missing:
        parser.error(f"no linear layer {missing[0]!r} in {path}")
    inputs = [found[layer].inputs[0] for layer in args.layers]
    names = [str(x.name) for x in inputs if x is not None]  # a linear layer always has its input
    calibration = layer_inputs(path, names, calibration_samples(loaded, args.windows, args.seq_len, held_out=args.windows).feeds)
    held_out = layer_inputs(path, names, evaluation_samples(loaded, args.windows, args.seq_len, seed=0).feeds)
    config = StampConfig()
    print(f"| layer | weights | SQNR dB, float input | SQNR dB, STaMP input ({config.hp_tokens} tokens at {config.hp_bits} bits) |")
    print("| --- | --- | ---: | ---: |")
    for layer, name in zip(args.layers, names, strict=True):
        w = read_weight(found[layer])
        x = held_out[name]
        x_stamp = stamp_activation(torch.from_numpy(x), config).numpy()
        reference = x.reshape(-1, w.shape[0]) @ w
        q, scale = gptq.gptq_quantize(w, gptq.hessian(calibration[name]), args.bits, args.block)
        candidates = {
            "RTN": weights.fake_quantize_weight(w, args.bits, args.block),
            "GPTQ": q.astype(np.float32) * weights.expand_scales(scale, w.shape[0], args.block),
        }
        for label, w_hat in candidates.items():
            cells = [quant.sqnr_db(reference, inputs.reshape(-1, w.shape[0]) @ w_hat) for inputs in (x, x_stamp)]
            print(f"| {layer} | {label} W{args.bits} | {cells[0]:.2f} | {cells[1]:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
