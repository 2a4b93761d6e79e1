"""Export a causal LM with a KV cache into a folder that onnxruntime-genai runs.

The decoder is this project's own dynamo export (linear layers stay MatMuls named after their
modules, so ``quantize`` rewrites them), called once per chunk of tokens:

    inputs   input_ids (batch, sequence_length), attention_mask (batch, total_sequence_length),
             position_ids (batch, sequence_length),
             past_key_values.{i}.key / .value (batch, kv_heads, past_sequence_length, head_size)
    outputs  logits (batch, sequence_length, vocab),
             present.{i}.key / .value (batch, kv_heads, past_sequence_length + sequence_length, head_size)

which is the layout onnxruntime-genai feeds (a prompt is one call with an empty past; each
generated token is one call with sequence_length 1). ``genai_config.json`` and the tokenizer
files are written by onnxruntime-genai's own model builder (``config_only``) from the model's
transformers config and tokenizer, then the one input the builder's own graphs do without,
``position_ids``, is added to the config.

The whole cache is kept for every layer, including a sliding-window layer's: the causal mask
built from the model's config limits what such a layer attends to, so the results are the
model's, with a cache that grows past the window.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stamp_onnx.errors import ConfigError, ExportError, first_line
from stamp_onnx.graph.contract import SOURCE_KEY
from stamp_onnx.zoo.export import TRACE_BATCH, check_layer_names
from stamp_onnx.zoo.models import LoadedModel, linear_layer_names

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
CONFIG_FILE = "genai_config.json"
TRACE_SEQ = 5  # tokens of the traced chunk and the traced past: any sizes >= 2 that differ
TRACE_PAST = 3


def past_names(layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


def present_names(layers: int) -> list[str]:
    return [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


def cache_shape(config: Any) -> tuple[int, int]:
    """(kv_heads, head_size) of one layer's cache."""
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_size = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return kv_heads, head_size


@contextlib.contextmanager
def _cached_forward(module: Any) -> Iterator[None]:
    """Give ``module`` (for as long as the block runs) a forward over flat cache tensors.

    The module itself is exported, not a wrapper, so that the exporter's name scopes are the
    module's ``named_modules()`` names, as in the export without a cache.
    """
    from transformers import DynamicCache

    config: Any = module.config
    layers = int(config.num_hidden_layers)
    cls_forward = type(module).forward
    cache_kwarg = "cache" if "cache" in inspect.signature(cls_forward).parameters else "past_key_values"

    def forward(self: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                past: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        # No config: every layer a full DynamicLayer (a sliding layer's mask still limits it).
        cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(layers)])
        out = cls_forward(self, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=True, **{cache_kwarg: cache})
        presents: list[torch.Tensor] = []
        for layer in cache.layers:
            cached: Any = layer
            presents += [cached.keys, cached.values]
        return (out.logits, *presents)

    had_config_cache = config.use_cache
    module.forward = types.MethodType(forward, module)
    config.use_cache = True
    try:
        yield
    finally:
        del module.forward
        config.use_cache = had_config_cache


def trace_inputs(loaded: LoadedModel, batch: int = TRACE_BATCH, seq: int = TRACE_SEQ,
                 past: int = TRACE_PAST, seed: int = 0) -> dict[str, Any]:
    """Keyword inputs of the cached forward: ``seq`` new tokens after ``past`` cached ones."""
    config: Any = loaded.module.config
    kv_heads, head_size = cache_shape(config)
    rng = np.random.default_rng(seed)
    ids = torch.from_numpy(rng.integers(0, loaded.vocab_size, size=(batch, seq), dtype=np.int64))
    cache = [torch.from_numpy(rng.standard_normal((batch, kv_heads, past, head_size), dtype=np.float32))
             for _ in range(2 * int(config.num_hidden_layers))]
    positions = torch.arange(past, past + seq, dtype=torch.int64).expand(batch, seq).contiguous()
    return {"input_ids": ids, "attention_mask": torch.ones(batch, past + seq, dtype=torch.int64),
            "position_ids": positions, "past": cache}


def export_kv_decoder(loaded: LoadedModel, out_path: str | Path) -> Path:
    """Export ``loaded`` (a causal LM) with a KV cache to ``out_path`` (one .onnx file)."""
    if loaded.kind != "causal-lm":
        raise ConfigError(f"--kv-cache is for causal language models; {loaded.name} is an {loaded.kind}")
    out = Path(out_path)
    config: Any = loaded.module.config
    layers = int(config.num_hidden_layers)
    kwargs = trace_inputs(loaded)
    batch = torch.export.Dim("batch", min=1, max=4096)
    sequence = torch.export.Dim("sequence_length", min=1, max=loaded.max_length)
    past = torch.export.Dim("past_sequence_length", min=0, max=loaded.max_length)
    total = torch.export.Dim("total_sequence_length", min=1, max=2 * loaded.max_length)
    dynamic_shapes = {
        "input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: total},
        "position_ids": {0: batch, 1: sequence}, "past": [{0: batch, 2: past} for _ in range(2 * layers)],
    }
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    start = time.perf_counter()
    try:
        with torch.no_grad(), warnings.catch_warnings(), _cached_forward(loaded.module):
            warnings.filterwarnings("ignore", category=UserWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            program = torch.onnx.export(
                loaded.module, (), kwargs=kwargs, dynamo=True,
                input_names=["input_ids", "attention_mask", "position_ids", *past_names(layers)],
                output_names=["logits", *present_names(layers)],
                dynamic_shapes=dynamic_shapes, optimize=True, verbose=False,
            )
        if program is None:
            raise ExportError(f"torch.onnx.export returned no program for {loaded.name}")
        program.model.metadata_props[SOURCE_KEY] = loaded.name
        check_layer_names(program.model, linear_layer_names(loaded.module))
        program.save(out, external_data=None)
    except (ExportError, ConfigError):
        raise
    except Exception as err:
        raise ExportError(f"exporting {loaded.name} with a KV cache failed: {first_line(err)}") from err
    logger.info("exported %s with a KV cache to %s in %.1f s", loaded.name, out, time.perf_counter() - start)
    return out


def byte_tokenizer() -> Any:
    """A byte-level tokenizer over ids 0-255 (no merges), for models shipped without one.

    onnxruntime-genai's folder needs tokenizer files; a random test model (``tiny-llama``, 256
    ids) gets this one, which maps each byte of a text to one id. Its text is meaningless.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = bytes_to_unicode()
    tokenizer = Tokenizer(models.BPE(vocab={chars[b]: b for b in range(256)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=chars[1], eos_token=chars[2])


def write_transformers_files(loaded: LoadedModel, directory: Path) -> None:
    """The config, generation config and tokenizer of ``loaded`` as a transformers folder (no weights)."""
    module: Any = loaded.module
    config = module.config
    if not getattr(config, "architectures", None):
        config.architectures = [type(module).__name__]
    config.save_pretrained(directory)
    # A model read from a GGUF file records it; its weights here are the de-quantized fp32 ones.
    path = directory / "config.json"
    saved = json.loads(path.read_text())
    if saved.pop("quantization_config", None) is not None:
        path.write_text(json.dumps(saved, indent=2) + "\n")
    if getattr(module, "generation_config", None) is not None:
        module.generation_config.save_pretrained(directory)
    tokenizer = loaded.tokenizer
    if tokenizer is None:
        if loaded.vocab_size < 256:
            raise ExportError(f"{loaded.name} has no tokenizer and fewer than 256 ids: onnxruntime-genai needs one")
        logger.info("%s has no tokenizer: writing a byte-level one (ids 0-255)", loaded.name)
        tokenizer = byte_tokenizer()
    tokenizer.save_pretrained(directory)


def run_model_builder(hf_dir: Path, out_dir: Path, *, precision: str = "fp32", config_only: bool = False) -> None:
    """onnxruntime-genai's model builder on the transformers folder ``hf_dir`` (CPU), into ``out_dir``.

    ``config_only``: genai_config.json and the tokenizer files, no model.
    """
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out_dir),
               "-p", precision, "-e", "cpu", "-c", str(hf_dir / "cache")]
    if config_only:
        command += ["--extra_options", "config_only=true"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not (out_dir / CONFIG_FILE).is_file():
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        what = "write genai_config.json for" if config_only else "convert"
        raise ExportError(f"onnxruntime-genai's model builder could not {what} this model: "
                          f"{lines[-1] if lines else 'no output'}")


def build_with_model_builder(loaded: LoadedModel, out_dir: str | Path, *, precision: str = "fp32") -> Path:
    """``out_dir``: ``loaded`` converted by onnxruntime-genai's own model builder (its graphs, its
    GroupQueryAttention), from the fp32 weights of the loaded model; a foreign model for ``quantize``
    and the int4 reference of the speed table."""
    from safetensors.torch import save_model

    out = _new_folder(loaded, out_dir)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        work, hf_dir = Path(tmp) / "genai", Path(tmp) / "hf"
        hf_dir.mkdir()
        write_transformers_files(loaded, hf_dir)
        save_model(loaded.module, str(hf_dir / "model.safetensors"))
        run_model_builder(hf_dir, work, precision=precision)
        _move_into(work, out)
    return out


def _new_folder(loaded: LoadedModel, out_dir: str | Path) -> Path:
    """``out_dir`` checked: a causal LM, a folder that does not exist yet (or is empty), its parent present."""
    if importlib.util.find_spec("onnxruntime_genai") is None:
        raise ExportError("--kv-cache writes genai_config.json with onnxruntime-genai's model builder: "
                          "pip install onnxruntime-genai")
    if loaded.kind != "causal-lm":
        raise ConfigError(f"--kv-cache is for causal language models; {loaded.name} is an {loaded.kind}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"output {out} exists and is not an empty folder; choose a new folder for --kv-cache")
    if not out.parent.is_dir():
        raise ConfigError(f"output folder {out.parent} does not exist; create it first")
    return out


def _move_into(work: Path, out: Path) -> None:
    if out.exists():
        out.rmdir()
    shutil.move(str(work), out)


def export_genai(loaded: LoadedModel, out_dir: str | Path) -> Path:
    """Write ``out_dir``: the KV-cache decoder, genai_config.json and the tokenizer files.

    Built in a temporary folder beside ``out_dir`` and renamed into place, so a failure leaves
    nothing behind. ``out_dir`` must not exist yet (or be an empty folder).
    """
    out = _new_folder(loaded, out_dir)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        work, hf_dir = Path(tmp) / "genai", Path(tmp) / "hf"
        work.mkdir()
        hf_dir.mkdir()
        write_transformers_files(loaded, hf_dir)
        run_model_builder(hf_dir, work, config_only=True)
        export_kv_decoder(loaded, work / MODEL_FILE)
        path = work / CONFIG_FILE
        genai = json.loads(path.read_text())
        decoder = genai["model"]["decoder"]
        decoder["filename"] = MODEL_FILE
        decoder["inputs"]["position_ids"] = "position_ids"
        # our decoder keeps every layer's whole cache (the mask applies the window)
        decoder.pop("sliding_window", None)
        path.write_text(json.dumps(genai, indent=4) + "\n")
        _move_into(work, out)
    logger.info("wrote the onnxruntime-genai folder %s", out)
    return out

