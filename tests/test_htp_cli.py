"""`quantize --target htp` and `htp-check` through the CLI: bad input is one line before any
work; a tiny model goes through the QNN quantizer and the STaMP units and runs integer-only."""

from __future__ import annotations

from pathlib import Path

import models
import numpy as np
import pytest

from stamp_onnx.cli import main
from stamp_onnx.targets import htp_runtime


@pytest.fixture
def float_and_calibration(tmp_path: Path) -> tuple[Path, Path]:
    source = models.save(models.mlp_model(), tmp_path / "mlp.onnx")
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "calib.npz", x=(np.cumsum(rng.standard_normal((4, 32, models.D_IN)), axis=1) / 8).astype(np.float32))
    return source, tmp_path / "calib.npz"


@pytest.mark.parametrize(("flags", "message"), [
    ([], "--target htp needs --seq-len S"),
    (["--seq-len", "32", "--calibration", "-"], None),
    (["--seq-len", "32", "--feature-transform", "hadamard"], "does not take --feature-transform"),
    (["--seq-len", "32", "--inline"], "does not take --inline"),
    (["--seq-len", "32", "--transform", "dct"], "takes --transform haar, haar2d or none"),
])
def test_bad_htp_flags_are_one_line(float_and_calibration: tuple[Path, Path], tmp_path: Path, flags: list[str],
                                    message: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    source, calibration = float_and_calibration
    flags = [str(calibration) if f == "-" else f for f in flags]
    if "--calibration" not in flags and message is None:
        flags += ["--calibration", str(calibration)]
    out = tmp_path / "out.onnx"
    argv = ["-q", "quantize", str(source), "-o", str(out), "--target", "htp", *flags]
    if message is None:  # no calibration given at all
        argv = [a for a in argv if a not in ("--calibration", str(calibration))]
        message = "--target htp needs --calibration FILE.npz"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_htp_flags_need_the_htp_target(float_and_calibration: tuple[Path, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    source, _ = float_and_calibration
    assert main(["-q", "quantize", str(source), "-o", str(tmp_path / "o.onnx"), "--seq-len", "32"]) == 2
    assert "--seq-len only apply to --target htp" in capsys.readouterr().err


@pytest.mark.skipif(not htp_runtime.available(), reason="onnxruntime-qnn is not installed (optional extra `htp`)")
def test_quantize_for_the_htp_and_check_it(float_and_calibration: tuple[Path, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    source, calibration = float_and_calibration
    out = tmp_path / "mlp.htp.onnx"
    assert main(["-q", "quantize", str(source), "-o", str(out), "--target", "htp", "--seq-len", "32",
                 "--calibration", str(calibration), "--hp-tokens", "16"]) == 0
    text = capsys.readouterr().out
    assert "2 STaMP units" in text and "activations 16/8 bits" in text
    assert main(["-q", "htp-check", str(out)]) == 0
    report = capsys.readouterr().out
    assert "integer" in report.lower()
    assert main(["-q", "compare", str(source), str(out), "--ep", "htp", "--batch", "1", "--seq-len", "32"]) == 0
    text = capsys.readouterr().out
    assert "on the HTP (vs float)" in text and "HTP - CPU" in text
    from stamp_onnx.evaluation.compare import compare_files

    report = compare_files(source, out, batch=1, seq_len=32, ep="htp")
    cpu, htp = {o.name: o.sqnr_db for o in report.outputs}, {o.name: o.sqnr_db for o in report.ep_outputs}
    assert cpu.keys() == htp.keys() and all(abs(cpu[k] - htp[k]) < 0.5 for k in cpu if np.isfinite(cpu[k])), (cpu, htp)
    assert main(["-q", "htp-check", str(source)]) == 2  # dynamic shapes: the HTP refuses the float model
    assert "the HTP needs fixed shapes" in capsys.readouterr().err
