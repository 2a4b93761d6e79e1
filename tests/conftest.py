"""Shared fixtures: the small ONNX models of tests/models.py saved to a temporary folder, and the backends."""

from __future__ import annotations

from pathlib import Path

import backends
import models
import pytest

from stamp_onnx.graph import runtime


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    return models.save(models.mlp_model(), tmp_path / "mlp.onnx")


@pytest.fixture
def mlp17_path(tmp_path: Path) -> Path:
    return models.save(models.mlp_model(opset=17), tmp_path / "mlp17.onnx")


@pytest.fixture(scope="session")
def native_kernels() -> Path:
    """The native library; a skip where this machine cannot build it, a failure where it could (tests/backends.py)."""
    library = runtime.native_library()
    if library is not None:
        return library
    expected, why = backends.native_absence()
    if expected:
        pytest.fail(why, pytrace=False)
    pytest.skip(why)


@pytest.fixture(params=backends.BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each runtime backend of the ai.stamp ops in turn: the function bodies, then the native kernels."""
    if request.param == backends.NATIVE:
        request.getfixturevalue("native_kernels")
    return str(request.param)
