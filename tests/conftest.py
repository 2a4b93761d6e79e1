from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import models  # noqa: E402


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    return models.save(models.mlp_model(), tmp_path / "mlp.onnx")


@pytest.fixture
def mlp17_path(tmp_path: Path) -> Path:
    return models.save(models.mlp_model(opset=17), tmp_path / "mlp17.onnx")
