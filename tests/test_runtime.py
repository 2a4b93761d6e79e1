"""stamp_onnx.graph.runtime without the native library: the function bodies run everything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stamp_onnx.errors import ConfigError
from stamp_onnx.graph import ops, runtime
from stamp_onnx.graph.op_models import single_op_model


def test_disabled_by_environment_falls_back_to_the_function_bodies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runtime.ENV_VAR, "")
    assert runtime.native_library() is None
    assert runtime.kernels() == runtime.FUNCTION_BODIES
    spec = ops.TokenQDQSpec(4, 8, 4)
    x = np.random.default_rng(0).standard_normal((1, 9, 8)).astype(np.float32)
    session = runtime.session(single_op_model(spec).SerializeToString(), native=True)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], spec.reference(x))


def test_a_library_that_does_not_load_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "libbroken.so"
    broken.write_bytes(b"not a shared library")
    monkeypatch.setenv(runtime.ENV_VAR, str(broken))
    assert runtime.native_library() == broken
    with pytest.raises(ConfigError, match="does not load in this onnxruntime"):
        runtime.session_options(native=True)
    runtime.session_options(native=False)  # plain options never touch the library
