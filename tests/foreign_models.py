"""Models as other exporters and tools write them, each with what a correct rewrite must do.

The issue "Bring your own ONNX model": ``quantize`` assumed tokens on axis -2 of every
linear layer's activation. These builders make small random models (seeds fixed) in the
layouts that break that: seq-first (S, B, d) activations, rows that are samples (pooled
(B, d)), flattened (B*S, d) or (S*B, d) rows before a Gemm, layers inside If branches,
IR 3 files, float16, weights behind Identity, com.microsoft fused ops, already quantized
models. PyTorch models go through the legacy exporter (``dynamo=False``), as most files in
the wild were written; the rest is built with onnx.helper.

Token axes are given in the layout of the activation the layer reads, before any flattening:
a Gemm reading ``x.view(-1, d)`` of x (B, S, d) has token axis 1; one reading the (S*B, d)
rows of ``nn.MultiheadAttention``'s out_proj (a flattening of (S, B, d)) has token axis 0.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

D = 16  # feature width of the small models
ROWS_ARE_SAMPLES = r"sample|batch|no token axis"  # what a skip reason for (B, d) rows must say
# The legacy exporter bakes the traced sequence length into nn.MultiheadAttention's Reshapes
# (the axis stays named "seq" but only this length runs), so every model is traced at the
# length the tests run.
EXPORT_SEQ = 16


@dataclasses.dataclass(frozen=True)
class Rewrite:
    """``count`` layers whose name matches ``pattern`` are rewritten with tokens on ``axis``."""

    pattern: str
    count: int
    axis: int


@dataclasses.dataclass(frozen=True)
class Skip:
    """``count`` layers whose name matches ``pattern`` are skipped with a reason matching ``reason``."""

    pattern: str
    count: int
    reason: str


@dataclasses.dataclass(frozen=True)
class Expected:
    """What a correct rewrite of one model does.

    ``layers``: MatMul/Gemm with a constant weight anywhere in the model (subgraphs
    included). ``error``: a regex the one-line StampError must match when nothing can be
    rewritten (then ``layers_spec`` is empty). ``batch_axes``: the batch axis of every input
    and output (None: the value has no batch axis and is not varied).
    """

    layers: int
    layers_spec: tuple[Rewrite | Skip, ...] = ()
    error: str | None = None
    batch_axes: dict[str, int | None] = dataclasses.field(default_factory=dict)
    # fused com.microsoft nodes that hold linear layers: the report must name them
    fused_ops: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ForeignModel:
    name: str
    path: Path
    expected: Expected
    feeds: Callable[[int, int, int], list[dict[str, np.ndarray]]]  # (batch, seq, seed) -> feed dicts


def matches(pattern: str, name: str) -> bool:
    return re.search(pattern, name) is not None


# ---------------------------------------------------------------------------------- feeds


def _float_feeds(name: str, layout: str, dtype: type = np.float32) -> Callable[[int, int, int], list[dict[str, np.ndarray]]]:
    """One float input shaped by ``layout``: 'bsd' (B, S, D), 'sbd' (S, B, D)."""

    def feeds(batch: int, seq: int, seed: int) -> list[dict[str, np.ndarray]]:
        rng = np.random.default_rng(seed)
        shape = (batch, seq, D) if layout == "bsd" else (seq, batch, D)
        return [{name: rng.standard_normal(shape).astype(dtype)}]

    return feeds


def _bert_feeds(batch: int, seq: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{
        "input_ids": rng.integers(0, BERT_VOCAB, (batch, seq)).astype(np.int64),
        "attention_mask": np.ones((batch, seq), np.int64),
        "token_type_ids": np.zeros((batch, seq), np.int64),
    }]


# ---------------------------------------------------------------------- legacy torch exports


def _export(module: object, args: tuple[object, ...], path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, str]], opset: int = 17) -> Path:
    import torch

    assert isinstance(module, torch.nn.Module)
    module.eval()
    # Gradients stay enabled: under no_grad, eval-mode attention modules take PyTorch's fused
    # fast path (aten::_native_multi_head_attention), which the legacy exporter cannot write.
    with torch.enable_grad():
        torch.onnx.export(module, args, str(path), dynamo=False, input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=opset)
    return path


def _reinit(module: object, seed: int) -> None:
    """Distinct random parameters for every module (deep-copied layers start identical)."""
    import torch

    assert isinstance(module, torch.nn.Module)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def seq_first_encoder(folder: Path) -> ForeignModel:
    """nn.TransformerEncoder, batch_first=False: src (S, B, d).

    Runs at EXPORT_SEQ tokens only (see there). Legacy export per layer: the packed in_proj as MatMul on (S, B, d) (tokens axis 0),
    out_proj as Gemm on the (S*B, d) rows (a flattening of (S, B, d): axis 0), linear1/linear2
    as MatMul on (S, B, d) (axis 0).
    """
    import torch
    from torch import nn

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(D, 2, 2 * D, dropout=0.0, batch_first=False)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    _reinit(model, 1)
    path = _export(model, (torch.randn(EXPORT_SEQ, 2, D),), folder / "seq_first_encoder.onnx", ["src"], ["out"],
                   {"src": {0: "seq", 1: "batch"}, "out": {0: "seq", 1: "batch"}})
    spec = (
        Rewrite(r"self_attn/MatMul$", 2, 0),   # in_proj
        Rewrite(r"self_attn/Gemm$", 2, 0),     # out_proj on (S*B, d) rows from (S, B*H, hd): viewed as (S, B, d)
        Rewrite(r"linear[12]/MatMul$", 4, 0),
    )
    return ForeignModel("seq_first_encoder", path, Expected(8, spec, batch_axes={"src": 1, "out": 1}),
                        _float_feeds("src", "sbd"))


def gpt2_like(folder: Path) -> ForeignModel:
    """A GPT-2 block with Conv1D layers: x.view(-1, d) @ W + b, viewed back.

    The legacy exporter writes Reshape -> Gemm -> Reshape: each Gemm reads (B*S, d) rows, a
    flattening of (B, S, d): tokens axis 1.
    """
    import torch
    from torch import nn

    class Conv1D(nn.Module):
        def __init__(self, nf: int, nx: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(nx, nf) * 0.2)
            self.bias = nn.Parameter(torch.randn(nf) * 0.1)
            self.nf = nf

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            size_out = (*x.size()[:-1], self.nf)
            x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
            return x.view(size_out)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(D), nn.LayerNorm(D)
            self.c_attn, self.c_proj = Conv1D(3 * D, D), Conv1D(D, D)
            self.c_fc, self.mlp_proj = Conv1D(4 * D, D), Conv1D(D, 4 * D)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, s, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(D, dim=2)
            heads = [t.view(b, s, 2, D // 2).transpose(1, 2) for t in (q, k, v)]
            scores = heads[0] @ heads[1].transpose(-1, -2) / (D // 2) ** 0.5
            mask = torch.ones(s, s, dtype=torch.bool).tril()
            att = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ heads[2]
            x = x + self.c_proj(att.transpose(1, 2).reshape(b, s, D))
            return x + self.mlp_proj(torch.nn.functional.gelu(self.c_fc(self.ln_2(x))))

    torch.manual_seed(2)
    path = _export(Block(), (torch.randn(2, EXPORT_SEQ, D),), folder / "gpt2_like.onnx", ["x"], ["y"],
                   {"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}})
    spec = (Rewrite(r"c_attn/Gemm$", 1, 1), Rewrite(r"c_proj/Gemm$", 1, 1),
            Rewrite(r"c_fc/Gemm$", 1, 1), Rewrite(r"mlp_proj/Gemm$", 1, 1))
    return ForeignModel("gpt2_like", path, Expected(4, spec, batch_axes={"x": 0, "y": 0}), _float_feeds("x", "bsd"))


def bert_classifier(folder: Path) -> ForeignModel:
    """Token layers on (B, S, d), then the first token pooled to (B, d), a tanh pooler and a
    classifier (both Gemm on (B, d): rows are samples, must be skipped)."""
    import torch
    from torch import nn

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(D, 2 * D), nn.Linear(2 * D, D)
            self.pooler, self.classifier = nn.Linear(D, D), nn.Linear(D, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x + self.fc2(torch.nn.functional.gelu(self.fc1(x)))
            return self.classifier(torch.tanh(self.pooler(h[:, 0])))

    torch.manual_seed(3)
    model = Classifier()
    _reinit(model, 3)
    path = _export(model, (torch.randn(2, EXPORT_SEQ, D),), folder / "bert_classifier.onnx", ["x"], ["logits"],
                   {"x": {0: "batch", 1: "seq"}, "logits": {0: "batch"}})
    spec = (Rewrite(r"fc[12]/MatMul$", 2, 1), Skip(r"pooler/Gemm$", 1, ROWS_ARE_SAMPLES),
            Skip(r"classifier/Gemm$", 1, ROWS_ARE_SAMPLES))
    return ForeignModel("bert_classifier", path, Expected(4, spec, batch_axes={"x": 0, "logits": 0}),
                        _float_feeds("x", "bsd"))


def multihead_attention(folder: Path) -> ForeignModel:
    """nn.MultiheadAttention(batch_first=True) as self-attention on x (B, S, d).

    Runs at EXPORT_SEQ tokens only. The module transposes to (S, B, d) first: in_proj is a MatMul on (S, B, d) (axis 0) and
    out_proj a Gemm on the (S*B, d) rows, a flattening of (S, B, d) (axis 0).
    """
    import torch
    from torch import nn

    class SelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(D, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, x, x, need_weights=False)[0]

    torch.manual_seed(4)
    model = SelfAttention()
    _reinit(model, 4)
    path = _export(model, (torch.randn(2, EXPORT_SEQ, D),), folder / "multihead_attention.onnx", ["x"], ["y"],
                   {"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}})
    spec = (Rewrite(r"attn/MatMul$", 1, 0), Rewrite(r"attn/Gemm$", 1, 0))
    return ForeignModel("multihead_attention", path, Expected(2, spec, batch_axes={"x": 0, "y": 0}),
                        _float_feeds("x", "bsd"))


def identity_shared(folder: Path) -> ForeignModel:
    """Two identical deep-copied Linear layers: the legacy exporter stores one weight and
    feeds the second MatMul through ``Identity(initializer)``; both must be rewritten."""
    import copy

    import torch
    from torch import nn

    torch.manual_seed(5)
    first = nn.Linear(D, D)
    model = nn.Sequential(first, nn.ReLU(), copy.deepcopy(first))
    path = _export(model, (torch.randn(2, EXPORT_SEQ, D),), folder / "identity_shared.onnx", ["x"], ["y"],
                   {"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}})
    graph = onnx.load(str(path)).graph
    producers = {out: node for node in graph.node for out in node.output}
    assert any(producers.get(node.input[1], helper.make_node("Relu", [], [])).op_type == "Identity"
               for node in graph.node if node.op_type == "MatMul"), "the exporter no longer writes Identity weights"
    spec = (Rewrite(r"MatMul", 2, 1),)
    return ForeignModel("identity_shared", path, Expected(2, spec, batch_axes={"x": 0, "y": 0}), _float_feeds("x", "bsd"))


# ------------------------------------------------------------------------- onnx.helper models


def _model(graph: onnx.GraphProto, opset: int, ir_version: int, extra: tuple[tuple[str, int], ...] = ()) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    *(helper.make_opsetid(d, v) for d, v in extra)])
    model.ir_version = ir_version
    return model


def _weights(seed: int, *shapes: tuple[int, ...], dtype: type = np.float32) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(shape) * 0.3).astype(dtype) for shape in shapes]


def gemm_in_if(folder: Path) -> ForeignModel:
    """x (B, S, d); If(use_gemm): then Reshape(-1, d) -> Gemm(transB=1, bias) -> Reshape back
    (the legacy flattened pattern), else MatMul on (B, S, d). Both tokens axis 1."""
    w_gemm, b_gemm, w_mm = _weights(6, (D, D), (D,), (D, D))
    inits = [numpy_helper.from_array(w_gemm, "w_gemm"), numpy_helper.from_array(b_gemm, "b_gemm"),
             numpy_helper.from_array(w_mm, "w_mm"), numpy_helper.from_array(np.array([-1, D], np.int64), "flat"),
             numpy_helper.from_array(np.array([0, 0, D], np.int64), "unflat")]
    out = helper.make_tensor_value_info
    then_branch = helper.make_graph(
        [helper.make_node("Reshape", ["x", "flat"], ["rows"], name="flatten"),
         helper.make_node("Gemm", ["rows", "w_gemm", "b_gemm"], ["rows_out"], transB=1, name="then_gemm"),
         helper.make_node("Reshape", ["rows_out", "shape_x"], ["y_then"], name="unflatten")],
        "then", [], [out("y_then", TensorProto.FLOAT, ["batch", "seq", D])])
    else_branch = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w_mm"], ["y_else"], name="else_matmul")],
        "else", [], [out("y_else", TensorProto.FLOAT, ["batch", "seq", D])])
    graph = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["shape_x"], name="shape"),
         helper.make_node("If", ["use_gemm"], ["y"], then_branch=then_branch, else_branch=else_branch, name="branch")],
        "gemm_in_if",
        [out("x", TensorProto.FLOAT, ["batch", "seq", D]), out("use_gemm", TensorProto.BOOL, [])],
        [out("y", TensorProto.FLOAT, ["batch", "seq", D])], inits)
    path = _save(_model(graph, 17, 8), folder / "gemm_in_if.onnx")
    base = _float_feeds("x", "bsd")

    def feeds(batch: int, seq: int, seed: int) -> list[dict[str, np.ndarray]]:
        x = base(batch, seq, seed)[0]
        return [{**x, "use_gemm": np.array(flag)} for flag in (True, False)]

    spec = (Rewrite(r"then_gemm", 1, 1), Rewrite(r"else_matmul", 1, 1))
    return ForeignModel("gemm_in_if", path, Expected(2, spec, batch_axes={"x": 0, "use_gemm": None, "y": 0}), feeds)


def _mlp_nodes() -> list[onnx.NodeProto]:
    """x -> MatMul w1 -> Add b1 -> Relu -> MatMul w2 -> y."""
    return [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            helper.make_node("Add", ["h", "b1"], ["hb"], name="fc1_bias"),
            helper.make_node("Relu", ["hb"], ["a"], name="act"),
            helper.make_node("MatMul", ["a", "w2"], ["y"], name="fc2")]


def ir3_inputs(folder: Path) -> ForeignModel:
    """IR version 3, opset 8: every initializer is also listed as a graph input (as IR < 4
    required). x (B, S, d) -> MatMul w1 -> Add b1 -> Relu -> MatMul w2: both rewritten, axis 1."""
    w1, b1, w2 = _weights(7, (D, 2 * D), (2 * D,), (2 * D, D))
    tensors = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "w2")]
    info = helper.make_tensor_value_info
    graph = helper.make_graph(
        _mlp_nodes(),
        "ir3",
        [info("x", TensorProto.FLOAT, ["batch", "seq", D]),
         *(info(t.name, TensorProto.FLOAT, list(t.dims)) for t in tensors)],
        [info("y", TensorProto.FLOAT, ["batch", "seq", D])], tensors)
    path = _save(_model(graph, 8, 3), folder / "ir3_inputs.onnx")
    spec = (Rewrite(r"fc[12]", 2, 1),)
    return ForeignModel("ir3_inputs", path, Expected(2, spec, batch_axes={"x": 0, "y": 0}), _float_feeds("x", "bsd"))


def float16_mlp(folder: Path) -> ForeignModel:
    """A float16 model: x (B, S, d) fp16 -> MatMul -> Add -> Relu -> MatMul, fp16 weights.
    Both layers rewritten (tokens axis 1); inputs and outputs stay float16."""
    w1, b1, w2 = _weights(8, (D, 2 * D), (2 * D,), (2 * D, D), dtype=np.float16)
    info = helper.make_tensor_value_info
    graph = helper.make_graph(
        _mlp_nodes(),
        "fp16",
        [info("x", TensorProto.FLOAT16, ["batch", "seq", D])],
        [info("y", TensorProto.FLOAT16, ["batch", "seq", D])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "w2")])
    path = _save(_model(graph, 17, 8), folder / "float16_mlp.onnx")
    spec = (Rewrite(r"fc[12]", 2, 1),)
    return ForeignModel("float16_mlp", path, Expected(2, spec, batch_axes={"x": 0, "y": 0}),
                        _float_feeds("x", "bsd", np.float16))


def fused_attention_only(folder: Path) -> ForeignModel:
    """Only a com.microsoft Attention node (its QKV weight inside): nothing stamp-onnx can
    rewrite; the error must say the linear layers are inside fused com.microsoft ops."""
    w, b = _weights(9, (D, 3 * D), (3 * D,))
    info = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Attention", ["x", "w", "b"], ["y"], domain="com.microsoft", num_heads=2, name="attention")],
        "fused", [info("x", TensorProto.FLOAT, ["batch", "seq", D])], [info("y", TensorProto.FLOAT, ["batch", "seq", D])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    path = _save(_model(graph, 17, 8, (("com.microsoft", 1),)), folder / "fused_attention_only.onnx")
    return ForeignModel("fused_attention_only", path,
                        Expected(0, error=r"(?i)fused|com\.microsoft", batch_axes={"x": 0, "y": 0}), _float_feeds("x", "bsd"))


# ----------------------------------------------------- BERT exports and onnxruntime's tools

BERT_VOCAB, BERT_HIDDEN, BERT_HEADS = 64, 32, 2
BERT_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
BERT_AXES = {"input_ids": 0, "attention_mask": 0, "token_type_ids": 0, "last_hidden_state": 0, "pooler_output": 0}


def _bert(folder: Path) -> Path:
    """A 2-layer transformers BertModel (hidden 32) through the legacy exporter; the float
    source of the optimizer and quantizer models."""
    path = folder / "bert.onnx"
    if path.exists():
        return path
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=BERT_VOCAB, hidden_size=BERT_HIDDEN, num_hidden_layers=2,
                        num_attention_heads=BERT_HEADS, intermediate_size=2 * BERT_HIDDEN,
                        max_position_embeddings=32, attn_implementation="eager")
    torch.manual_seed(10)
    bert = BertModel(config, add_pooling_layer=True)

    class Outputs(torch.nn.Module):  # keyword arguments: newer BertModel.forward orders them differently
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state, out.pooler_output

    feeds = _bert_feeds(2, 8, 0)[0]
    dynamic = {name: {0: "batch", 1: "seq"} for name in [*BERT_INPUTS, "last_hidden_state"]}
    dynamic["pooler_output"] = {0: "batch"}
    return _export(Outputs(), tuple(torch.from_numpy(feeds[n]) for n in BERT_INPUTS), path, BERT_INPUTS,
                   ["last_hidden_state", "pooler_output"], dynamic)


def bert_optimized(folder: Path) -> ForeignModel:
    """onnxruntime's transformer optimizer on the BERT export: q/k/v fused into com.microsoft
    Attention, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu; the attention
    output and FFN MatMuls (6) stay plain on (B, S, d): rewritten, axis 1; the pooler Gemm on
    (B, d) skipped; the report must name the Attention nodes as fused layers left alone."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(_bert(folder)), model_type="bert", num_heads=BERT_HEADS, hidden_size=BERT_HIDDEN)
    path = folder / "bert_optimized.onnx"
    optimized.save_model_to_file(str(path))
    ops = {node.op_type for node in onnx.load(str(path)).graph.node if node.domain == "com.microsoft"}
    assert "Attention" in ops, f"the optimizer fused no Attention (got {sorted(ops)})"
    spec = (Rewrite(r"attention/output/dense/MatMul$", 2, 1), Rewrite(r"intermediate/dense/MatMul$", 2, 1),
            Rewrite(r"layer\.\d/output/dense/MatMul$", 2, 1), Skip(r"pooler/dense/Gemm$", 1, ROWS_ARE_SAMPLES))
    return ForeignModel("bert_optimized", path, Expected(7, spec, batch_axes=BERT_AXES, fused_ops=("Attention",)),
                        _bert_feeds)


def bert_dynamic_quantized(folder: Path) -> ForeignModel:
    """``quantize_dynamic`` output: every linear layer is a MatMulInteger fed by
    DynamicQuantizeLinear; nothing to rewrite, and the error must say it is already quantized."""
    from onnxruntime.quantization import quantize_dynamic

    path = folder / "bert_dynamic_quantized.onnx"
    quantize_dynamic(str(_bert(folder)), str(path))
    return ForeignModel("bert_dynamic_quantized", path,
                        Expected(0, error=r"(?i)already quantized|MatMulInteger", batch_axes=BERT_AXES), _bert_feeds)


def bert_qdq(folder: Path) -> ForeignModel:
    """``quantize_static`` in QDQ format: every weight is DequantizeLinear(int8); the error
    must say the model is already quantized (QDQ)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.samples = iter(_bert_feeds(1, 8, seed) for seed in range(2))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.samples, None)
            return None if batch is None else batch[0]

    path = folder / "bert_qdq.onnx"
    quantize_static(str(_bert(folder)), str(path), Reader(), quant_format=QuantFormat.QDQ)
    return ForeignModel("bert_qdq", path,
                        Expected(0, error=r"(?i)already quantized|QDQ|DequantizeLinear", batch_axes=BERT_AXES), _bert_feeds)


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


BUILDERS: dict[str, Callable[[Path], ForeignModel]] = {
    "seq_first_encoder": seq_first_encoder,
    "gpt2_like": gpt2_like,
    "bert_classifier": bert_classifier,
    "multihead_attention": multihead_attention,
    "gemm_in_if": gemm_in_if,
    "ir3_inputs": ir3_inputs,
    "float16_mlp": float16_mlp,
    "identity_shared": identity_shared,
    "fused_attention_only": fused_attention_only,
    "bert_optimized": bert_optimized,
    "bert_dynamic_quantized": bert_dynamic_quantized,
    "bert_qdq": bert_qdq,
}


def build_all(folder: Path) -> dict[str, ForeignModel]:
    """Every model, written into ``folder``."""
    return {name: build(folder) for name, build in BUILDERS.items()}
