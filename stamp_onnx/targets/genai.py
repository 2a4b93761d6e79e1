"""onnxruntime-genai folders: rewrite the decoder of one, and run one (generate, score, time).

A genai folder holds ``genai_config.json``, the decoder it names (``model.decoder.filename``,
with its external data if any) and the tokenizer files. ``quantize_folder`` rewrites the
decoder into a new folder with every other file copied; the rewrite acts on the tokens of each
call, so a prompt chunk is transformed and quantized as one sequence and a decode step of one
token is the prefix token, kept at ``hp_bits``. The folder runs in stock onnxruntime-genai
(``onnxruntime_genai.Model(folder)``: the ai.stamp ops as their function bodies); :func:`load`
also registers the native kernels, when built, through the config's
``session_options.custom_ops_library`` (overlaid at load time: the folder stays portable).

Running needs the optional package ``onnxruntime-genai`` (the extra ``genai``); nothing here
imports PyTorch.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from stamp_onnx.config import StampConfig
from stamp_onnx.errors import ConfigError, MissingExtraError, ModelLoadError, first_line
from stamp_onnx.graph import runtime
from stamp_onnx.passes.report import RewriteReport
from stamp_onnx.pipeline import quantize_file

logger = logging.getLogger(__name__)

CONFIG_FILE = "genai_config.json"
GENAI_PACKAGE = "onnxruntime-genai"


@dataclasses.dataclass(frozen=True)
class GenaiFolder:
    """A folder onnxruntime-genai can load: its config and the decoder file it names."""

    path: Path
    config: dict[str, Any]

    @property
    def decoder(self) -> dict[str, Any]:
        return dict(self.config["model"]["decoder"])

    @property
    def model_path(self) -> Path:
        return self.path / str(self.decoder["filename"])


def is_genai_folder(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


def read_folder(path: str | Path) -> GenaiFolder:
    """The folder at ``path``; ModelLoadError naming what is missing."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelLoadError(f"{folder} is not a folder; pass an onnxruntime-genai model folder "
                             f"(stamp-onnx export MODEL --kv-cache -o DIR writes one)")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise ModelLoadError(f"{folder} has no {CONFIG_FILE}: not an onnxruntime-genai model folder "
                             f"(stamp-onnx export MODEL --kv-cache -o DIR writes one)")
    try:
        config = json.loads(config_path.read_text())
        filename = config["model"]["decoder"]["filename"]
    except (ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(f"{config_path} is not a valid genai config (no model.decoder.filename: {first_line(err)})") from err
    result = GenaiFolder(folder, config)
    if not result.model_path.is_file():
        raise ModelLoadError(f"{folder}: the decoder {filename} named in {CONFIG_FILE} is missing")
    return result


def quantize_folder(
    in_dir: str | Path,
    out_dir: str | Path,
    config: StampConfig,
    *,
    inline: bool = False,
    calibration_feeds: dict[str, np.ndarray] | None = None,
    target: str = "onnx",
) -> RewriteReport:
    """Write ``out_dir``: ``in_dir`` with its decoder rewritten (atomically; the input untouched)."""
    source = read_folder(in_dir)
    out = Path(out_dir)
    if out.resolve() == source.path.resolve():
        raise ConfigError(f"output {out} is the input folder; choose a different -o folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"output {out} exists and is not an empty folder; choose a new folder for a genai model")
    if not out.parent.is_dir():
        raise ConfigError(f"output folder {out.parent} does not exist; create it first")
    model_name = source.model_path.name
    skip = {model_name, f"{model_name}.data"}
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        work = Path(tmp) / "genai"
        work.mkdir()
        report = quantize_file(source.model_path, work / model_name, config, inline=inline,
                               calibration_feeds=calibration_feeds, target=target)
        for item in source.path.iterdir():
            if item.is_file() and item.name not in skip:
                shutil.copy2(item, work / item.name)
        genai = json.loads(json.dumps(source.config))
        # a library the input named belongs to the input's runtime; load() registers ours
        genai["model"]["decoder"].get("session_options", {}).pop("custom_ops_library", None)
        (work / CONFIG_FILE).write_text(json.dumps(genai, indent=4) + "\n")
        if out.exists():
            out.rmdir()
        shutil.move(str(work), out)
    logger.info("wrote the genai folder %s", out)
    return report


# --- running -------------------------------------------------------------------------------


def require_genai() -> Any:
    """The onnxruntime_genai module, or MissingExtraError in one line."""
    if importlib.util.find_spec("onnxruntime_genai") is None:
        raise MissingExtraError(f"running a genai folder needs {GENAI_PACKAGE}: pip install '.[genai]' "
                                f"(or pip install --no-deps {GENAI_PACKAGE})")
    import onnxruntime_genai

    return onnxruntime_genai


def load(path: str | Path, *, native: bool = True) -> Any:
    """``onnxruntime_genai.Model`` of the folder, with the native kernels registered when
    ``native`` and they are built (else the ai.stamp ops run as their function bodies).

    onnxruntime-genai accepts a custom-op library only from inside the working directory (or the
    model folder), so the working directory is the library's folder while the model loads.
    """
    og = require_genai()
    folder = read_folder(path)
    library = runtime.native_library() if native else None
    previous = Path.cwd()
    try:
        config = og.Config(str(folder.path.resolve()))
        if library is not None:
            options = {"custom_ops_library": str(library.resolve())}
            config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
            os.chdir(library.resolve().parent)
        return og.Model(config)
    except Exception as err:  # onnxruntime-genai raises RuntimeError with the runtime's message
        raise ModelLoadError(f"onnxruntime-genai cannot load {folder.path}: {first_line(err)}") from err
    finally:
        os.chdir(previous)


@dataclasses.dataclass(frozen=True)
class Generation:
    """Greedy tokens after a prompt, and the time the prompt (prefill) and the new tokens took."""

    prompt_tokens: int
    tokens: list[int]
    prefill_seconds: float
    decode_seconds: float

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else math.inf

    @property
    def decode_tokens_per_second(self) -> float:
        """New tokens after the first (which the prefill's logits give) per second of decoding."""
        steps = len(self.tokens) - 1
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds > 0 else math.nan


def _generator(model: Any, max_length: int) -> Any:
    og = require_genai()
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=max_length, do_sample=False)
    return og.Generator(model, params)


def generate(model: Any, prompt: list[int], max_new_tokens: int, *, eos: tuple[int, ...] = ()) -> Generation:
    """Greedy decoding of up to ``max_new_tokens`` after ``prompt`` (token ids) through the KV cache.

    The prefill is one call on the whole prompt, each further token one call on that token
    (``append_tokens``); the next token is the argmax of the last logits. Stops after a token in
    ``eos`` (empty: always ``max_new_tokens`` tokens, for comparisons).
    """
    if not prompt:
        raise ConfigError("the prompt is empty; pass at least one token")
    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be positive, got {max_new_tokens}")
    generator = _generator(model, len(prompt) + max_new_tokens)
    start = time.perf_counter()
    generator.append_tokens(np.asarray(prompt, dtype=np.int32))
    tokens = [_argmax(generator)]
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    while len(tokens) < max_new_tokens and tokens[-1] not in eos:
        generator.append_tokens(np.asarray(tokens[-1:], dtype=np.int32))
        tokens.append(_argmax(generator))
    return Generation(len(prompt), tokens, prefill, time.perf_counter() - start)


def _last_logits(generator: Any) -> np.ndarray:
    logits = np.asarray(generator.get_output("logits"))
    return logits.reshape(-1, logits.shape[-1])[-1]


def _argmax(generator: Any) -> int:
    return int(np.argmax(_last_logits(generator)))


def eos_ids(folder: GenaiFolder) -> tuple[int, ...]:
    """The end-of-sequence ids of the folder's config (one id or a list)."""
    value = folder.config["model"].get("eos_token_id")
    values = value if isinstance(value, list) else [] if value is None else [value]
    return tuple(int(v) for v in values)


def continuation_nll(model: Any, prompt: list[int], continuation: list[int]) -> np.ndarray:
    """Negative log-likelihood of each continuation token, teacher-forced through the KV cache.

    The prompt is one prefill call; then every continuation token is appended alone, so the
    quantizer of a rewritten model sees the prompt as one sequence and each later token by
    itself: nothing of the continuation is in a chunk before it is scored.
    """
    if not prompt or not continuation:
        raise ConfigError("prompt and continuation must each hold at least one token")
    generator = _generator(model, len(prompt) + len(continuation))
    generator.append_tokens(np.asarray(prompt, dtype=np.int32))
    nll = np.empty(len(continuation))
    for i, token in enumerate(continuation):
        last = _last_logits(generator).astype(np.float64)
        top = last.max()
        nll[i] = top + math.log(np.exp(last - top).sum()) - last[token]
        if i + 1 < len(continuation):
            generator.append_tokens(np.asarray([token], dtype=np.int32))
    return nll


def first_divergence(reference: list[int], tokens: list[int]) -> int:
    """How many leading tokens two greedy sequences share."""
    for i, (a, b) in enumerate(zip(reference, tokens, strict=False)):
        if a != b:
            return i
    return min(len(reference), len(tokens))
