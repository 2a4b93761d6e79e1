"""ONNX export of the tiny Llama: dynamic shapes, numerics vs PyTorch, layer names, errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from torch_models import tiny_llama, tiny_llama_onnx

from stamp_onnx.core.naming import layer_name_from_metadata
from stamp_onnx.errors import ConfigError, ExportError
from stamp_onnx.graph.contract import SOURCE_KEY
from stamp_onnx.zoo.export import TRACE_SEQ_LEN, export_onnx, matmul_layer_names
from stamp_onnx.zoo.models import BUILTIN_MODELS, linear_layer_names, load_model, sample_inputs


def torch_logits(feeds: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return tiny_llama().module(**{k: torch.from_numpy(v) for k, v in feeds.items()})[0].numpy()


@pytest.mark.parametrize(("batch", "seq_len"), [(1, 7), (3, 45)])
def test_dynamic_batch_and_sequence_match_torch(batch: int, seq_len: int) -> None:
    assert seq_len != TRACE_SEQ_LEN
    session = ort.InferenceSession(str(tiny_llama_onnx()), providers=["CPUExecutionProvider"])
    feeds = sample_inputs(tiny_llama(), batch, seq_len, seed=seq_len)
    got = session.run(None, feeds)[0]
    ref = torch_logits(feeds)
    assert got.shape == (batch, seq_len, 256)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * float(np.abs(ref).max()))


def test_graph_interface() -> None:
    proto = onnx.load(str(tiny_llama_onnx()))
    onnx.checker.check_model(proto, full_check=True)
    (inp,) = proto.graph.input
    (out,) = proto.graph.output
    assert inp.name == "input_ids" and inp.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [d.dim_param for d in inp.type.tensor_type.shape.dim] == ["batch", "sequence"]
    assert out.name == "logits"
    assert {p.key: p.value for p in proto.metadata_props}[SOURCE_KEY] == "tiny-llama"


def test_linear_matmuls_are_named_after_torch_modules() -> None:
    model = ir.load(tiny_llama_onnx())
    linears = linear_layer_names(tiny_llama().module)
    constant_weight = []
    for node in model.graph:
        if node.op_type != "MatMul":
            continue
        weight = node.inputs[1]
        producer = weight.producer() if weight is not None else None
        if weight is not None and (weight.is_initializer() or (producer is not None and producer.op_type == "Transpose"
                                                               and producer.inputs[0].is_initializer())):
            constant_weight.append(layer_name_from_metadata(node.metadata_props, "?"))
    assert sorted(constant_weight) == sorted(linears)  # one MatMul per nn.Linear, same names
    attention = [n for n in matmul_layer_names(model) if n not in linears]
    assert len(attention) == 4 and all(n.endswith("self_attn") for n in attention)  # QK^T and PV, 2 layers


def test_unknown_model_names_the_builtins(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no-such-model") as err:
        load_model("no-such-model")
    assert all(name in str(err.value) for name in BUILTIN_MODELS)
    with pytest.raises(ExportError, match=r"no config\.json"):
        load_model(tmp_path)


def test_export_into_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="does not exist"):
        export_onnx(tiny_llama(), tmp_path / "missing" / "m.onnx")


@pytest.mark.skipif(os.environ.get("STAMP_SLOW") != "1", reason="loads and exports SmolLM2 (minutes); STAMP_SLOW=1 "
                    "(fast: GGUF loading in test_gguf.py, the Llama export in test_dynamic_batch_and_sequence_match_torch)")
def test_smollm2_export_names_and_numerics(tmp_path: Path) -> None:
    loaded = load_model("smollm2-135m")
    path = export_onnx(loaded, tmp_path / "smollm2.onnx")
    names = set(matmul_layer_names(ir.load(path)))
    assert set(linear_layer_names(loaded.module)) <= names
    feeds = sample_inputs(loaded, 1, 40, seed=0)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    with torch.no_grad():
        ref = loaded.module(input_ids=torch.from_numpy(feeds["input_ids"])).logits.numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * float(np.abs(ref).max()))


def test_sample_inputs_shapes_and_limits() -> None:
    feeds = sample_inputs(tiny_llama(), 3, 20, seed=1)
    assert list(feeds) == ["input_ids"] and feeds["input_ids"].shape == (3, 20)
    assert feeds["input_ids"].dtype == np.int64 and feeds["input_ids"].max() < 256
    assert not np.array_equal(feeds["input_ids"], sample_inputs(tiny_llama(), 3, 20, seed=2)["input_ids"])
    with pytest.raises(ConfigError, match="seq_len=513"):
        sample_inputs(tiny_llama(), 1, 513, seed=0)


def test_local_folders_load_as_causal_lm_or_encoder(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    tiny_llama().module.save_pretrained(tmp_path / "llama")
    loaded = load_model(tmp_path / "llama")
    assert loaded.kind == "causal-lm" and loaded.tokenizer is None and loaded.input_names == ("input_ids",)
    feeds = sample_inputs(loaded, 1, 12, seed=0)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(input_ids=torch.from_numpy(feeds["input_ids"])).logits,
                                   torch.from_numpy(torch_logits(feeds)))
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(tmp_path / "bert")
    encoder = load_model(tmp_path / "bert")
    assert encoder.kind == "encoder" and encoder.input_names == ("input_ids", "attention_mask")
    assert "pooler" not in dict(encoder.module.named_modules())
