"""The README's commands, run through the CLI's Python entry point, so the README cannot rot.

The usage block is run as written, on the tiny random LLaMA instead of SmolLM2 (same code
path, seconds instead of minutes); the quick start's two make targets are checked to exist and
to call what the README says they call.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from stamp_onnx.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def usage_commands() -> list[list[str]]:
    section = README.split("## Usage", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "README's Usage section has no sh block"
    return [shlex.split(line, comments=True)[1:] for line in block.group(1).splitlines() if line.startswith("stamp-onnx ")]


def test_quick_start_has_exactly_the_two_make_commands() -> None:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:.*\n\t\$\(BIN\)/stamp-onnx demo$", makefile, re.M)
    # The native kernels are (re)built first, so that their tests run on the current sources.
    assert re.search(r"^test:.*\n\t@bash tools/build_native\.sh \|\| true\n\t\$\(BIN\)/python -m pytest$", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_usage_block_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    commands = usage_commands()
    assert [c[0] for c in commands] == ["export", *["quantize"] * 6, "inspect", "validate", "eval"]
    for argv in commands:
        argv = ["tiny-llama" if a == "smollm2-135m" else a for a in argv]
        assert main(["-q", *argv]) == 0, argv
    assert (tmp_path / "smollm2.stamp.onnx").exists() and (tmp_path / "smollm2.none.onnx").exists()


def test_demo_runs_on_the_tiny_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "demo", "--model", "tiny-llama", "--out-dir", str(tmp_path), "--seq-len", "32", "--windows", "2"]) == 0
    out = capsys.readouterr().out
    assert "haar L=3, P=1, K=64, 8/4" in out and "none, K=64, 8/4" in out
