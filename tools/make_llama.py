"""Write a synthetic LLaMA-shaped float32 ONNX model of a chosen size, weights in external data.

The graph is a decoder stack as LLaMA lays it out: token embedding (Gather), then per layer
RMSNorm -> q/k/v projections -> multi-head causal attention -> o projection -> residual,
RMSNorm -> SiLU-gated MLP (gate, up, down) -> residual; a final RMSNorm and the LM head.
Rotary embeddings are left out: they add no linear layer and no weight. The weights are
random (fixed seed), written one tensor at a time to ``<name>.data`` next to the model, so
making a 3 GB model never holds more than one tensor in memory.

The number of layers is chosen to reach ``--size-gb`` of weights (1 GB = 1e9 bytes):

    .venv/bin/python tools/make_llama.py out/llama-1g.onnx --size-gb 1
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

OPSET = 18


@dataclasses.dataclass(frozen=True)
class LlamaShape:
    hidden: int = 1024
    intermediate: int = 2816
    heads: int = 16
    vocab: int = 8192
    layers: int = 4

    def layer_params(self) -> int:
        return 4 * self.hidden * self.hidden + 3 * self.hidden * self.intermediate + 2 * self.hidden

    def params(self) -> int:
        return self.layers * self.layer_params() + 2 * self.vocab * self.hidden + self.hidden

    def with_size(self, size_bytes: float) -> LlamaShape:
        """The same widths with as many layers as fit ``size_bytes`` of float32 weights (>= 1)."""
        fixed = 4 * (2 * self.vocab * self.hidden + self.hidden)
        layers = max(1, round((size_bytes - fixed) / (4 * self.layer_params())))
        return dataclasses.replace(self, layers=layers)


class _Builder:
    """Collects nodes and streams initializers into one external data file."""

    def __init__(self, data_path: Path, rng: np.random.Generator) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._data = data_path.open("wb")
        self._location = data_path.name
        self._rng = rng
        self._count = 0

    def close(self) -> None:
        self._data.close()

    def weight(self, name: str, shape: tuple[int, ...], scale: float) -> str:
        return self._store(name, self._rng.standard_normal(shape, dtype=np.float32) * np.float32(scale))

    def ones(self, name: str, size: int) -> str:
        return self._store(name, np.ones(size, dtype=np.float32))

    def _store(self, name: str, array: np.ndarray) -> str:
        offset = self._data.tell()
        self._data.write(array.tobytes())
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=array.shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self._location), ("offset", offset), ("length", array.nbytes)):
            tensor.external_data.add(key=key, value=str(value))
        self.initializers.append(tensor)
        return name

    def const(self, name: str, values: list[int] | list[float], dtype: int) -> str:
        self.initializers.append(helper.make_tensor(name, dtype, (len(values),), values))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attrs: object) -> str:
        self._count += 1
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=f"{op_type}_{self._count}", **attrs))
        return name


def _rms_norm(b: _Builder, x: str, weight: str, prefix: str) -> str:
    square = b.op("Mul", [x, x], f"{prefix}.sq")
    mean = b.op("ReduceMean", [square, "axes_last"], f"{prefix}.mean", keepdims=1)
    rms = b.op("Sqrt", [b.op("Add", [mean, "eps"], f"{prefix}.var")], f"{prefix}.rms")
    return b.op("Mul", [b.op("Div", [x, rms], f"{prefix}.unit"), weight], f"{prefix}.out")


def _attention(b: _Builder, x: str, shape: LlamaShape, prefix: str) -> str:
    d = shape.hidden
    std = d**-0.5

    def heads_first(name: str) -> str:  # (B, S, d) -> (B, H, S, d/H)
        proj = b.op("MatMul", [x, b.weight(f"{prefix}.{name}_proj.weight", (d, d), std)], f"{prefix}.{name}")
        split = b.op("Reshape", [proj, "heads_shape"], f"{prefix}.{name}.split")
        return b.op("Transpose", [split], f"{prefix}.{name}.heads", perm=[0, 2, 1, 3])

    q, k, v = heads_first("q"), heads_first("k"), heads_first("v")
    k_t = b.op("Transpose", [k], f"{prefix}.k.t", perm=[0, 1, 3, 2])
    scores = b.op("Mul", [b.op("MatMul", [q, k_t], f"{prefix}.qk"), "attn_scale"], f"{prefix}.scores")
    probs = b.op("Softmax", [b.op("Add", [scores, "causal_mask"], f"{prefix}.masked")], f"{prefix}.probs", axis=-1)
    context = b.op("Transpose", [b.op("MatMul", [probs, v], f"{prefix}.ctx")], f"{prefix}.ctx.t", perm=[0, 2, 1, 3])
    merged = b.op("Reshape", [context, "hidden_shape"], f"{prefix}.ctx.merged")
    return b.op("MatMul", [merged, b.weight(f"{prefix}.o_proj.weight", (d, d), std)], f"{prefix}.o")


def _mlp(b: _Builder, x: str, shape: LlamaShape, prefix: str) -> str:
    d, ff = shape.hidden, shape.intermediate
    gate = b.op("MatMul", [x, b.weight(f"{prefix}.gate_proj.weight", (d, ff), d**-0.5)], f"{prefix}.gate")
    silu = b.op("Mul", [gate, b.op("Sigmoid", [gate], f"{prefix}.sig")], f"{prefix}.silu")
    up = b.op("MatMul", [x, b.weight(f"{prefix}.up_proj.weight", (d, ff), d**-0.5)], f"{prefix}.up")
    hidden = b.op("Mul", [silu, up], f"{prefix}.act")
    return b.op("MatMul", [hidden, b.weight(f"{prefix}.down_proj.weight", (ff, d), ff**-0.5)], f"{prefix}.down")


def build(path: Path, shape: LlamaShape, seed: int = 0) -> Path:
    """Write the model to ``path`` and its weights to ``path.name + '.data'``; return the data path."""
    data_path = path.with_name(path.name + ".data")
    b = _Builder(data_path, np.random.default_rng(seed))
    try:
        b.const("axes_last", [-1], TensorProto.INT64)
        b.const("eps", [1e-5], TensorProto.FLOAT)
        b.const("attn_scale", [(shape.hidden // shape.heads) ** -0.5], TensorProto.FLOAT)
        b.const("heads_shape", [0, 0, shape.heads, shape.hidden // shape.heads], TensorProto.INT64)
        b.const("hidden_shape", [0, 0, shape.hidden], TensorProto.INT64)
        b.const("neg_inf", [-1e9], TensorProto.FLOAT)
        # Causal mask from the sequence length: -1e9 above the diagonal, 0 elsewhere.
        seq = b.op("Gather", [b.op("Shape", ["input_ids"], "ids_shape"), "one"], "seq_len", axis=0)
        b.const("one", [1], TensorProto.INT64)
        square = b.op("Concat", [seq, seq], "mask_shape", axis=0)
        filled = b.op("Expand", ["neg_inf", square], "mask_full")
        b.op("Trilu", [filled, "one_scalar"], "causal_mask", upper=1)
        b.initializers.append(helper.make_tensor("one_scalar", TensorProto.INT64, (), [1]))

        x = b.op("Gather", [b.weight("embed_tokens.weight", (shape.vocab, shape.hidden), 1.0), "input_ids"], "embeds")
        for i in range(shape.layers):
            prefix = f"layers.{i}"
            normed = _rms_norm(b, x, b.ones(f"{prefix}.input_layernorm.weight", shape.hidden), f"{prefix}.ln1")
            x = b.op("Add", [x, _attention(b, normed, shape, f"{prefix}.attn")], f"{prefix}.res1")
            normed = _rms_norm(b, x, b.ones(f"{prefix}.post_attention_layernorm.weight", shape.hidden), f"{prefix}.ln2")
            x = b.op("Add", [x, _mlp(b, normed, shape, f"{prefix}.mlp")], f"{prefix}.res2")
        normed = _rms_norm(b, x, b.ones("norm.weight", shape.hidden), "final_norm")
        lm_head = b.weight("lm_head.weight", (shape.hidden, shape.vocab), shape.hidden**-0.5)
        b.op("MatMul", [normed, lm_head], "logits")
    finally:
        b.close()
    graph = helper.make_graph(
        b.nodes,
        "synthetic_llama",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", shape.vocab])],
        b.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="make_llama")
    model.ir_version = 10
    model.metadata_props.add(key="synthetic_llama", value=str(dataclasses.asdict(shape)))
    onnx.save(model, str(path))
    return data_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--size-gb", type=float, default=0.3, help="float32 weight bytes to reach, in 1e9 (default 0.3)")
    parser.add_argument("--hidden", type=int, default=LlamaShape.hidden)
    parser.add_argument("--intermediate", type=int, default=LlamaShape.intermediate)
    parser.add_argument("--heads", type=int, default=LlamaShape.heads)
    parser.add_argument("--vocab", type=int, default=LlamaShape.vocab)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.size_gb <= 0 or args.hidden % args.heads:
        parser.error("--size-gb must be positive and --hidden a multiple of --heads")
    shape = LlamaShape(args.hidden, args.intermediate, args.heads, args.vocab).with_size(args.size_gb * 1e9)
    data = build(args.output, shape, args.seed)
    print(f"{args.output}: {shape.layers} layers, {shape.params() / 1e6:.1f} M parameters, "
          f"{data.stat().st_size / 1e9:.3f} GB in {data.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
