"""GGUF checkpoints load into the right float32 PyTorch model: the path of SmolLM2 and Gemma-3.

The two real LMs ship as quantized GGUF files (SmolLM2: Q4_1, llama architecture; Gemma-3-270m:
Q4_K_M, gemma3) and load through models._from_pretrained(..., gguf_file=...); loading them
takes minutes, so their own tests are opt-in (test_export.py, test_gemma.py with STAMP_SLOW=1).
Here a tiny random model of each architecture is written as a GGUF file the way llama.cpp's
converter writes one (q/k rows permuted for llama, norm weights + 1 for gemma, the MLP in
Q4_1, no output tensor when the embedding is tied) and loaded by the same call: the class,
the tied LM head, the tokenizer and every weight (Q4_1 ones as gguf de-quantizes them) must
come back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch

from stamp_onnx.zoo.models import _from_pretrained

Q4_1 = gguf.GGMLQuantizationType.Q4_1
VOCAB = 256


def _tiny(arch: str) -> Any:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if arch == "llama":
        model: Any = LlamaForCausalLM(LlamaConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True))
    else:
        model = Gemma3ForCausalLM(Gemma3TextConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, head_dim=32, max_position_embeddings=512, sliding_window=16))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # not all ones, so that a norm convention that is off shows
                p.normal_(0, 0.1)
    return model.eval()


def _tokens() -> tuple[list[str], list[int]]:
    """A SentencePiece-style vocabulary of VOCAB pieces: control tokens, word pieces, byte fallbacks."""
    pieces = ["<pad>", "<eos>", "<bos>", "<unk>"] + ["\u2581" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    pieces += list("abcdefghijklmnopqrstuvwxyz.,")
    pieces += [f"<0x{i:02X}>" for i in range(VOCAB - len(pieces))]
    types = [3, 3, 3, 2] + [1] * (len(pieces) - 4)
    return pieces, types


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's row order of a llama q/k projection (rotary pairs interleaved per head)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model: Any, arch: str, path: Path) -> None:
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(cfg.vocab_size)
    if arch == "llama":
        writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    else:
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
        writer.add_sliding_window(cfg.sliding_window)
    pieces, types = _tokens()
    writer.add_tokenizer_model("llama")
    writer.add_token_list(pieces)
    writer.add_token_scores([-float(i) for i in range(len(pieces))])
    writer.add_token_types(types)
    writer.add_pad_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_bos_token_id(2)
    writer.add_unk_token_id(3)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA if arch == "llama" else gguf.MODEL_ARCH.GEMMA3,
                                     cfg.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to the embedding: the converters write no output tensor
        w = tensor.numpy().astype(np.float32)
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            w = _permute(w, cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads)
        if arch == "gemma3" and name.endswith("norm.weight"):
            w = w + 1  # gemma's RMSNorm scales by 1 + w; GGUF stores 1 + w
        gguf_name = names.get_name(name, try_suffixes=(".weight",))
        assert gguf_name is not None, name
        if ".mlp." in name:
            writer.add_tensor(gguf_name, gguf.quants.quantize(w, Q4_1), raw_dtype=Q4_1)
        else:
            writer.add_tensor(gguf_name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize(("arch", "cls"), [("llama", "LlamaForCausalLM"), ("gemma3", "Gemma3ForCausalLM")])
def test_a_gguf_checkpoint_loads_as_written(arch: str, cls: str, tmp_path: Path) -> None:
    model = _tiny(arch)
    write_gguf(model, arch, tmp_path / "tiny.gguf")
    loaded = _from_pretrained("tiny", tmp_path, kind="causal-lm", gguf_file="tiny.gguf")
    module: Any = loaded.module
    assert type(module).__name__ == cls and loaded.kind == "causal-lm" and loaded.vocab_size == VOCAB
    assert all(p.dtype == torch.float32 for p in module.parameters())
    assert module.config.tie_word_embeddings and module.lm_head.weight is module.get_input_embeddings().weight
    got = module.state_dict()
    for name, tensor in model.state_dict().items():
        want = tensor.numpy()
        if ".mlp." in name:
            want = gguf.quants.dequantize(gguf.quants.quantize(want.astype(np.float32), Q4_1), Q4_1)
            np.testing.assert_array_equal(got[name].numpy(), want, err_msg=name)
        elif arch == "gemma3" and name.endswith("norm.weight"):
            np.testing.assert_allclose(got[name].numpy(), want, rtol=0, atol=1e-7, err_msg=name)  # (w + 1) - 1
        else:
            np.testing.assert_array_equal(got[name].numpy(), want, err_msg=name)
    assert loaded.tokenizer is not None
    ids = loaded.tokenizer("cab.", add_special_tokens=False)["input_ids"]  # the GGUF's vocabulary is the tokenizer's
    assert [_tokens()[0][i] for i in ids] == ["c", "a", "b", "."] and loaded.tokenizer.decode(ids) == "cab."
    with torch.no_grad():
        logits = module(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), VOCAB) and torch.isfinite(logits).all()
