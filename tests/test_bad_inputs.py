"""Bad input models: a clear one-line error, exit code 1, nothing written, the input untouched.

Covers what a downloaded model can get wrong: truncation, an opset that cannot be converted,
external data that is missing, too short, or stored outside the model's folder (a relative
path that climbs out, an absolute path, a symlink out). Valid external data still works.
An output path that cannot be written is refused the same way (exit code 2), before the
model is read.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import models
import onnx
import pytest

import stamp_onnx.pipeline
from stamp_onnx.cli.commands import main


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _external(folder: Path) -> Path:
    """The test MLP with every initializer in one external file, ``mlp.data``."""
    path = folder / "mlp.onnx"
    onnx.save_model(models.mlp_model(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="mlp.data", size_threshold=0)
    return path


def _relocated(folder: Path, location: str) -> Path:
    path = _external(folder)
    proto = onnx.load(str(path), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(proto, str(path))
    return path


def _truncated(folder: Path) -> Path:
    path = models.save(models.mlp_model(), folder / "mlp.onnx")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _opset_one(folder: Path) -> Path:
    proto = models.mlp_model()
    proto.opset_import[0].version = 1
    return models.save(proto, folder / "mlp.onnx")


def _unknown_op(folder: Path) -> Path:
    proto = models.mlp_model()
    proto.graph.node[-1].op_type = "NotAnOnnxOp"
    return models.save(proto, folder / "mlp.onnx")


def _dangling_input(folder: Path) -> Path:
    proto = models.mlp_model()
    proto.graph.node[-1].input[0] = "produced_by_nothing"
    return models.save(proto, folder / "mlp.onnx")


def _missing_data(folder: Path) -> Path:
    path = _external(folder)
    (folder / "mlp.data").unlink()
    return path


def _short_data(folder: Path) -> Path:
    path = _external(folder)
    data = folder / "mlp.data"
    data.write_bytes(data.read_bytes()[:-16])
    return path


def _symlink_out(folder: Path) -> Path:
    outside = folder.parent / "outside"
    outside.mkdir()
    path = _external(folder)
    os.replace(folder / "mlp.data", outside / "mlp.data")
    (folder / "mlp.data").symlink_to(outside / "mlp.data")
    return path


CASES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("truncated", _truncated, "is not a readable ONNX model"),
    ("opset 1", _opset_one, "re-export with opset >= 21"),
    ("unknown op (fails onnx.checker)", _unknown_op, "fails onnx.checker (No Op registered for NotAnOnnxOp"),
    ("dangling input (fails onnx.checker)", _dangling_input, "fails onnx.checker (Nodes in a graph must be topologically sorted"),
    ("external data missing", _missing_data, "external data file 'mlp.data' of tensor"),
    ("external data too short", _short_data, "is too short for tensor"),
    ("location climbs out", lambda d: _relocated(d, "../mlp.data"), "outside the model's folder"),
    ("absolute location", lambda d: _relocated(d, "/etc/passwd"), "outside the model's folder"),
    ("symlink out", _symlink_out, "outside the model's folder"),
]


@pytest.mark.parametrize(("make", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_model_is_one_clean_line(
    make: Callable[[Path], Path], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    src = make(folder)
    before = _digests(folder)
    out = tmp_path / "out.onnx"
    assert main(["-q", "quantize", str(src), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert err.startswith("stamp-onnx: error: ") and "Traceback" not in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    assert _digests(folder) == before


def _read_only(folder: Path) -> Path:
    folder.chmod(0o555)
    return folder / "q.onnx"


def _fifo(folder: Path) -> Path:
    os.mkfifo(folder / "q.onnx")
    return folder / "q.onnx"


def _data_folder(folder: Path) -> Path:
    (folder / "q.onnx.data").mkdir()
    return folder / "q.onnx"


def _parent_is_a_file(folder: Path) -> Path:
    (folder / "file").write_text("")
    return folder / "file" / "q.onnx"


UNWRITABLE = [
    pytest.param(lambda d: Path("/proc/stamp-onnx-test.onnx"), "cannot write /proc/stamp-onnx-test.onnx",
                 id="virtual file system"),
    pytest.param(lambda d: Path("/sys/stamp-onnx-test.onnx"), "cannot write /sys/stamp-onnx-test.onnx",
                 id="no permission"),
    pytest.param(_read_only, "(Permission denied)", id="read-only folder",
                 marks=pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")),
    pytest.param(_parent_is_a_file, "is a file, not a folder", id="parent is a file"),
    pytest.param(lambda d: d / ("n" * 300 + ".onnx"), "(File name too long)", id="name too long"),
    # valid on its own, but the temporary folder next to it (".<name>.XXXXXXXX") is not
    pytest.param(lambda d: d / ("n" * 245 + ".onnx"), "(File name too long)", id="name too long for the temporary folder"),
    pytest.param(_fifo, "q.onnx exists and is not a regular file", id="a pipe"),
    pytest.param(_data_folder, "q.onnx.data exists and is not a regular file", id="data name is a folder"),
]


@pytest.mark.parametrize(("make", "message"), UNWRITABLE)
def test_unwritable_output_is_one_line_before_any_work(
    make: Callable[[Path], Path], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    src = models.save(models.mlp_model(), tmp_path / "mlp.onnx")
    folder = tmp_path / "out"
    folder.mkdir()
    out = make(folder)
    before = sorted(p.name for p in folder.iterdir())

    def no_loading(path: object) -> None:
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(stamp_onnx.pipeline, "load_model", no_loading)
    try:
        assert main(["-q", "quantize", str(src), "-o", str(out)]) == 2
    finally:
        folder.chmod(0o755)
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert err.startswith("stamp-onnx: error: ") and "Traceback" not in err
    assert sorted(p.name for p in folder.iterdir()) == before
