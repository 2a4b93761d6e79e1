"""Shared fixtures: the small ONNX models of tests/models.py saved to a temporary folder."""

from __future__ import annotations

from pathlib import Path

import models
import pytest


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    return models.save(models.mlp_model(), tmp_path / "mlp.onnx")


@pytest.fixture
def mlp17_path(tmp_path: Path) -> Path:
    return models.save(models.mlp_model(opset=17), tmp_path / "mlp17.onnx")
