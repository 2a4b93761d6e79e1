"""The command line: happy paths, and bad input giving one line, the right exit code, no damage."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from stamp_onnx.cli.commands import build_parser, config_from_args, main
from stamp_onnx.config import StampConfig
from stamp_onnx.errors import ModelLoadError


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_quantize_then_inspect(mlp_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "q.onnx"
    before = digest(mlp_path)
    assert main(["-q", "quantize", str(mlp_path), "-o", str(out), "--transform", "dct", "--hp-tokens", "4"]) == 0
    assert digest(mlp_path) == before
    assert "rewrote 2 linear layers" in capsys.readouterr().out
    assert main(["inspect", str(out), "--json", "--seq-len", "16"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [layer["name"] for layer in summary["layers"]] == ["fc1", "fc2"]
    assert summary["layers"][0]["transform"] == "dct"
    assert summary["layers"][0]["average_bits"] == pytest.approx((4 * 8 + 12 * 4) / 16)
    assert summary["op_counts"]["ai.stamp::TransformQDQ"] == 2
    assert summary["config"]["transform"] == "dct"
    assert main(["inspect", str(out)]) == 0
    assert "fc1" in capsys.readouterr().out


def test_config_file_and_flags(mlp_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"transform": "wht", "hp_tokens": 2, "lp_bits": 3}))
    out = tmp_path / "q.onnx"
    assert main(["-q", "quantize", str(mlp_path), "-o", str(out), "--config", str(config), "--lp-bits", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"] == {
        "transform": "wht", "levels": 3, "prefix_tokens": 1, "grid_width": 0, "hp_tokens": 2, "hp_bits": 8, "lp_bits": 2,
        "bit_allocation": "tiers", "avg_bits": 0.0, "include": None, "exclude": None, "weight_bits": 0, "weight_block": 0, "feature_transform": "none",
        "smooth_alpha": 0.5, "weight_method": "rtn", "token_axis": None, "token_axes": [],
    }


BAD_FLAGS = [
    (["--hp-bits", "17"], "hp_bits=17"),
    (["--lp-bits", "0"], "lp_bits=0"),
    (["--hp-tokens", "-1"], "hp_tokens=-1"),
    (["--levels", "-2"], "levels=-2"),
    (["--transform", "fft"], "transform='fft'"),
    (["--include", "("], "not a valid regular expression"),
    (["--levels", "three"], "levels='three' is not allowed; use an integer in [0, 16] or 'auto'"),
    (["--weight-bits", "16"], "weight_bits=16"),
    (["--weight-block", "32"], "needs weight_bits"),
    (["--feature-transform", "quarot"], "feature_transform='quarot'"),
    (["--weight-bits", "4", "--weight-granularity", "row"], "is not 'channel' or a block size"),
    (["--weight-bits", "4", "--weight-granularity", "32", "--weight-block", "32"], "pass one of them"),
    (["--weight-method", "gptq"], "needs weight_bits"),
    (["--weight-bits", "4", "--weight-method", "gptq"], "needs calibration data"),
    (["--alpha", "2", "--feature-transform", "smoothquant"], "smooth_alpha=2.0"),
]


def test_weight_granularity_is_weight_block() -> None:
    def parse(*flags: str) -> StampConfig:
        return config_from_args(build_parser().parse_args(["quantize", "in.onnx", "-o", "out.onnx", "--weight-bits", "4", *flags]))

    assert parse("--weight-granularity", "64").weight_block == 64
    assert parse("--weight-granularity", "channel").weight_block == 0


@pytest.mark.parametrize(("flags", "message"), BAD_FLAGS)
def test_bad_flags_exit_2_with_one_line(
    flags: list[str], message: str, mlp_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "q.onnx"
    before = digest(mlp_path)
    assert main(["quantize", str(mlp_path), "-o", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()
    assert digest(mlp_path) == before


@pytest.mark.parametrize(
    ("setup", "message", "code"),
    [
        (lambda d: d / "missing.onnx", "no such file", 1),
        (lambda d: d, "is a directory", 1),
        (lambda d: _write(d / "empty.onnx", b""), "is empty", 1),
        (lambda d: _write(d / "junk.onnx", bytes(range(256)) * 4), "not a readable ONNX model", 1),
    ],
)
def test_bad_inputs_exit_1_with_one_line(setup, message: str, code: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    src = setup(tmp_path)
    assert main(["quantize", str(src), "-o", str(tmp_path / "out.onnx")]) == code
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out.onnx").exists()


def test_output_equal_to_input_is_refused(mlp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = digest(mlp_path)
    assert main(["quantize", str(mlp_path), "-o", str(mlp_path)]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert digest(mlp_path) == before


def test_missing_output_folder(mlp_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quantize", str(mlp_path), "-o", str(tmp_path / "nope" / "q.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_nothing_to_rewrite(mlp_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quantize", str(mlp_path), "-o", str(tmp_path / "q.onnx"), "--include", "^zzz$"]) == 1
    err = capsys.readouterr().err
    assert "no linear layer to rewrite" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "q.onnx").exists()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("argv", "quiet", "debug"),
    [
        (["quantize", "a.onnx", "-o", "b.onnx"], False, False),
        (["-q", "--debug", "quantize", "a.onnx", "-o", "b.onnx"], True, True),
        (["quantize", "a.onnx", "-o", "b.onnx", "-q", "--debug"], True, True),
        (["-q", "quantize", "a.onnx", "--debug", "-o", "b.onnx"], True, True),
        (["inspect", "--quiet", "a.onnx"], True, False),
        (["eval", "--debug"], False, True),
    ],
)
def test_quiet_and_debug_before_or_after_the_subcommand(argv: list[str], quiet: bool, debug: bool) -> None:
    args = build_parser().parse_args(argv)
    assert (args.quiet, args.debug) == (quiet, debug)


def test_debug_after_the_subcommand_shows_the_traceback(mlp_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    assert main(["quantize", str(mlp_path), "-o", str(out), "-q"]) == 0
    assert logging.getLogger("stamp_onnx").level == logging.WARNING
    with pytest.raises(ModelLoadError, match="no such file"):
        main(["quantize", str(tmp_path / "missing.onnx"), "-o", str(out), "-q", "--debug"])
