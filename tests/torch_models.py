"""The tiny random Llama and its ONNX export, built once per test session (no conftest needed)."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from stamp_onnx.zoo.export import export_onnx
from stamp_onnx.zoo.models import LoadedModel, load_model

_TMP = tempfile.TemporaryDirectory(prefix="stamp-onnx-tests-")  # removed at interpreter exit


@functools.cache
def tiny_llama() -> LoadedModel:
    return load_model("tiny-llama")


@functools.cache
def tiny_llama_onnx() -> Path:
    return export_onnx(tiny_llama(), Path(_TMP.name) / "tiny-llama.onnx")


@functools.cache
def tiny_vit() -> LoadedModel:
    return load_model("tiny-vit")


@functools.cache
def tiny_vit_onnx() -> Path:
    return export_onnx(tiny_vit(), Path(_TMP.name) / "tiny-vit.onnx")
