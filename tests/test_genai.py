"""onnxruntime-genai folders on the tiny random LLaMA: export with a KV cache, quantize, generate.

The float folder must give PyTorch's logits at every step of a teacher-forced continuation
(prefill, then one token per call through the cache) and PyTorch's greedy tokens; the rewritten
folder must run in onnxruntime-genai with the native kernels and with the function bodies, the
same tokens either way. Skipped in one line where onnxruntime-genai is not installed (the
optional extra ``genai``).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from stamp_onnx.cli.commands import main
from stamp_onnx.config import StampConfig
from stamp_onnx.errors import ConfigError, ModelLoadError
from stamp_onnx.evaluation import genai_eval
from stamp_onnx.graph import runtime
from stamp_onnx.graph.contract import read_model
from stamp_onnx.targets import genai
from stamp_onnx.zoo.genai_export import build_with_model_builder, export_genai
from stamp_onnx.zoo.models import load_model

pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnxruntime_genai") is None,
                                reason="onnxruntime-genai is not installed (optional extra `genai`)")

PROMPT_LEN, CONTINUATION_LEN = 19, 9
README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    return load_model("tiny-llama").module


def readme_commands() -> list[list[str]]:
    """The README's genai commands, on the tiny LLaMA instead of SmolLM2."""
    section = README.split("## Generating text", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "README's generation section has no sh block"
    return [["tiny-llama" if a == "smollm2-135m" else a for a in shlex.split(line, comments=True)[1:]]
            for line in block.group(1).splitlines() if line.startswith("stamp-onnx ")]


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's export command, run in a fresh folder."""
    export = readme_commands()[0]
    assert export[:3] == ["export", "tiny-llama", "--kv-cache"]
    root = tmp_path_factory.mktemp("genai")
    out = root / export[export.index("-o") + 1]
    assert main(["-q", *export[:-1], str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def stamp_dir(float_dir: Path) -> Path:
    out = float_dir.parent / "tiny-stamp"
    genai.quantize_folder(float_dir, out, StampConfig(hp_tokens=4, levels=2))
    return out


@pytest.fixture(scope="module")
def builder_dir(float_dir: Path) -> Path:
    """The tiny LLaMA through onnxruntime-genai's own model builder (fp32, CPU): a foreign file."""
    return build_with_model_builder(load_model("tiny-llama"), float_dir.parent / "tiny-builder")


def test_readme_commands(float_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's quantize and generate commands, as written, after its export (the fixture)."""
    monkeypatch.chdir(float_dir.parent)
    commands = readme_commands()
    assert [c[0] for c in commands] == ["export", "quantize", "generate"]
    for argv in commands[1:]:
        assert main(["-q", *argv]) == 0, argv
    out = capsys.readouterr()
    assert "\nThe capital of France is" in out.out and "decode:" in out.err


def token_ids(seed: int, n: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(3, 256, size=n)]


def torch_nll(module: torch.nn.Module, prompt: list[int], continuation: list[int]) -> np.ndarray:
    with torch.no_grad():
        logits = module(input_ids=torch.tensor([prompt + continuation])).logits[0].double()
    logp = torch.log_softmax(logits[len(prompt) - 1:-1], dim=-1)
    return -logp[torch.arange(len(continuation)), torch.tensor(continuation)].numpy()


def torch_greedy(module: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(module(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_folder_layout(float_dir: Path) -> None:
    folder = genai.read_folder(float_dir)
    assert sorted(p.name for p in float_dir.iterdir()) == ["genai_config.json", "model.onnx", "tokenizer.json",
                                                          "tokenizer_config.json"]
    decoder = folder.decoder
    assert decoder["inputs"]["past_key_names"] == "past_key_values.%d.key"
    assert decoder["outputs"]["present_value_names"] == "present.%d.value"
    assert decoder["inputs"]["position_ids"] == "position_ids"
    assert (decoder["num_hidden_layers"], decoder["num_key_value_heads"], decoder["head_size"]) == (2, 2, 16)
    assert not list(float_dir.parent.glob(f".{float_dir.name}.*")), "the temporary build folder was left behind"


@pytest.mark.parametrize("seed", [0, 1])
def test_float_folder_matches_pytorch_step_by_step(float_dir: Path, tiny: torch.nn.Module, seed: int) -> None:
    model = genai.load(float_dir)
    prompt, continuation = token_ids(seed, PROMPT_LEN), token_ids(seed + 100, CONTINUATION_LEN)
    nll = genai.continuation_nll(model, prompt, continuation)
    np.testing.assert_allclose(nll, torch_nll(tiny, prompt, continuation), atol=2e-5)
    assert genai.generate(model, prompt, 8).tokens == torch_greedy(tiny, prompt, 8)


def test_rewritten_folder(float_dir: Path, stamp_dir: Path) -> None:
    assert read_model(stamp_dir / "model.onnx").config.hp_tokens == 4
    assert len(read_model(stamp_dir / "model.onnx").layers) == 15
    assert (stamp_dir / "tokenizer.json").read_bytes() == (float_dir / "tokenizer.json").read_bytes()
    assert "custom_ops_library" not in genai.read_folder(stamp_dir).decoder["session_options"]
    prompt, continuation = token_ids(5, PROMPT_LEN), token_ids(6, CONTINUATION_LEN)
    stamp_nll = genai.continuation_nll(genai.load(stamp_dir), prompt, continuation)
    float_nll = genai.continuation_nll(genai.load(float_dir), prompt, continuation)
    assert np.all(np.isfinite(stamp_nll))
    assert not np.array_equal(stamp_nll, float_nll)  # quantized: not the float model
    # the native kernels (when built) and the function bodies are bit-exact for the Haar and the QDQ
    bodies = genai.continuation_nll(genai.load(stamp_dir, native=False), prompt, continuation)
    np.testing.assert_array_equal(bodies, stamp_nll)


def test_load_registers_the_native_library(stamp_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """load() hands the library to onnxruntime-genai: a file that is no library makes the load fail."""
    monkeypatch.setattr(runtime, "native_library", lambda: stamp_dir / "tokenizer.json")
    with pytest.raises(ModelLoadError, match="Failed to load library"):
        genai.load(stamp_dir)
    assert genai.load(stamp_dir, native=False) is not None


def test_generate_cli(stamp_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "generate", str(stamp_dir), "--prompt", "hello", "--max-new-tokens", "5"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("hello")
    assert "prefill: 5 tokens" in captured.err and "tokens/s" in captured.err


def test_bad_inputs(float_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", str(tmp_path), "--prompt", "x"]) == 1
    assert "has no genai_config.json" in capsys.readouterr().err
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("x")
    assert main(["-q", "quantize", str(float_dir), "-o", str(occupied)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied"]
    with pytest.raises(ConfigError, match="causal language models"):
        export_genai(load_model("tiny-vit"), tmp_path / "vit")
    assert not (tmp_path / "vit").exists()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "genai_config.json").write_text(json.dumps({"model": {"decoder": {"filename": "model.onnx"}}}))
    with pytest.raises(ModelLoadError, match=r"model\.onnx named in genai_config\.json is missing"):
        genai.read_folder(broken)


def test_model_builder_folder(builder_dir: Path, tiny: torch.nn.Module) -> None:
    """The builder's graph (GroupQueryAttention, SimplifiedLayerNormalization in the ONNX domain, packed
    q/k/v) is the same model: same logits as PyTorch; quantize rewrites its linear layers and it runs."""
    prompt, continuation = token_ids(7, PROMPT_LEN), token_ids(8, CONTINUATION_LEN)
    reference = torch_nll(tiny, prompt, continuation)
    np.testing.assert_allclose(genai.continuation_nll(genai.load(builder_dir), prompt, continuation), reference, atol=1e-4)
    out = builder_dir.parent / "tiny-builder-stamp"
    report = genai.quantize_folder(builder_dir, out, StampConfig(hp_tokens=4, levels=2, hp_bits=16, lp_bits=16))
    # per layer: packed q/k/v, o_proj, gate, up, down; then lm_head
    assert len(report.rewritten) == 2 * 5 + 1
    assert {item.reason for item in report.skipped_linear} <= {"not rewritten: fused op com.microsoft.GroupQueryAttention"}
    # at 16 bits everywhere the rewrite is nearly lossless: the graph around the layers is intact
    nll = genai.continuation_nll(genai.load(out), prompt, continuation)
    np.testing.assert_allclose(nll, reference, atol=2e-3)


def test_quality_metric(float_dir: Path, stamp_dir: Path, tiny: torch.nn.Module) -> None:
    windows = np.array([token_ids(seed, PROMPT_LEN + CONTINUATION_LEN) for seed in (11, 12)])
    pairs = genai_eval.split_windows(windows, PROMPT_LEN)
    rows = genai_eval.evaluate_quality({"float": float_dir, "stamp": stamp_dir}, pairs, generate=6)
    reference = np.concatenate([torch_nll(tiny, prompt, rest) for prompt, rest in pairs])
    assert rows[0].label == "float" and rows[0].agreement is None
    assert rows[0].perplexity == pytest.approx(float(np.exp(reference.mean())), rel=1e-4)
    assert rows[1].label == "stamp" and 0 <= (rows[1].agreement or 0) <= 6
    assert rows[1].perplexity != rows[0].perplexity
    assert "| stamp |" in genai_eval.quality_table(rows)
    with pytest.raises(ConfigError, match="continuation"):
        genai_eval.split_windows(windows, PROMPT_LEN + CONTINUATION_LEN)


def test_first_divergence() -> None:
    assert genai.first_divergence([1, 2, 3], [1, 2, 4]) == 2
    assert genai.first_divergence([1, 2, 3], [1, 2, 3]) == 3
    assert genai.first_divergence([5], [4, 5]) == 0


def test_speed_rows(float_dir: Path, stamp_dir: Path) -> None:
    rows = genai_eval.measure_speed({"float": float_dir, "stamp": stamp_dir}, token_ids(3, 12), new_tokens=4, rounds=2)
    assert [r.label for r in rows] == ["float", "stamp"]
    assert all(r.prefill_tokens_per_second > 0 and r.decode_tokens_per_second > 0 for r in rows)
    assert "| stamp |" in genai_eval.speed_table(rows)


def test_generate_without_the_package(float_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime_genai" else find_spec(name, *a))
    assert main(["generate", str(float_dir), "--prompt", "x"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs onnxruntime-genai" in err


def test_sliding_window_decoder_matches_pytorch(tmp_path: Path) -> None:
    """Gemma-3's attention (a sliding-window layer, window 4, and a global one) exported with a
    KV cache: each layer keeps its whole past, the mask applies the window; prefill then one
    token per call in onnxruntime gives PyTorch's logits on the whole sequence."""
    import onnxruntime as ort
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from stamp_onnx.zoo.genai_export import export_kv_decoder, past_names
    from stamp_onnx.zoo.models import LoadedModel

    config = Gemma3TextConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=4,
                              layer_types=["sliding_attention", "full_attention"], max_position_embeddings=512,
                              attn_implementation="eager", use_cache=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = Gemma3ForCausalLM(config).eval()
    loaded = LoadedModel(name="tiny-gemma3", kind="causal-lm", module=module, tokenizer=None, max_length=512,
                         vocab_size=256, input_names=("input_ids",))
    session = ort.InferenceSession(str(export_kv_decoder(loaded, tmp_path / "gemma.onnx")))
    ids = token_ids(21, 16)
    with torch.no_grad():
        reference = module(input_ids=torch.tensor([ids])).logits[0].numpy()
    prompt = 9
    cache = [np.zeros((1, 2, 0, 16), np.float32)] * 4
    logits = []
    for start, stop in [(0, prompt), *((t, t + 1) for t in range(prompt, len(ids)))]:
        feeds = {"input_ids": np.array([ids[start:stop]]), "attention_mask": np.ones((1, stop), np.int64),
                 "position_ids": np.arange(start, stop)[None], **dict(zip(past_names(2), cache, strict=True))}
        first, *cache = session.run(None, feeds)
        logits.append(first[0])
    assert cache[0].shape == (1, 2, len(ids), 16)
    np.testing.assert_allclose(np.concatenate(logits), reference, atol=1e-5)
