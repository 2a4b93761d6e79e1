"""When a missing native library skips its tests and when it fails them (tests/backends.py)."""

from __future__ import annotations

from pathlib import Path

import backends
import pytest

from stamp_onnx.graph import runtime


@pytest.mark.parametrize(("status", "expected", "says"), [
    ("unavailable: no C++ compiler (g++)", False, "cannot be built on this machine (no C++ compiler (g++))"),
    ("unavailable: ONNX Runtime headers could not be fetched", False, "headers could not be fetched"),
    ("failed: compile error with g++ (see build/native.log)", True, "build failed: compile error"),
    ("built", True, "library is gone"),
    (None, True, "has not recorded why"),
])
def test_the_build_status_decides(status: str | None, expected: bool, says: str, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(runtime.ENV_VAR, raising=False)
    path = tmp_path / "native.status"
    if status is not None:
        path.write_text(status + "\n")
    monkeypatch.setattr(backends, "STATUS", path)
    got_expected, why = backends.native_absence()
    assert got_expected == expected and says in why and "\n" not in why


def test_the_environment_overrides_the_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "STATUS", tmp_path / "absent")
    monkeypatch.setenv(runtime.ENV_VAR, "")
    assert backends.native_absence() == (False, f"native kernels disabled ({runtime.ENV_VAR} is empty)")
    monkeypatch.setenv(runtime.ENV_VAR, str(tmp_path / "nope.so"))
    expected, why = backends.native_absence()
    assert expected and "is not a file" in why

