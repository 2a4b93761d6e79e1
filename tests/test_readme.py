"""The README's commands, run through the CLI's Python entry point, so the README cannot rot.

The usage block is run as written, on the tiny random LLaMA instead of SmolLM2 (same code
path, seconds instead of minutes), and so are the Python examples of ``compare_files`` and of the
API (on the tiny MLP of tests/models.py); the signatures the README gives are the functions' own;
the quick start's two make targets are checked to exist and to call what the README says they call.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path

import models
import onnx
import pytest

from stamp_onnx.cli.commands import main
from stamp_onnx.config import StampConfig
from stamp_onnx.pipeline import quantize_file

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
    assert [c[0] for c in commands] == ["export", *["quantize"] * 6, "inspect", "validate", "compare", "eval"]
    for argv in commands:
        argv = ["tiny-llama" if a == "smollm2-135m" else a for a in argv]
        assert main(["-q", *argv]) == 0, argv
    assert (tmp_path / "smollm2.stamp.onnx").exists() and (tmp_path / "smollm2.none.onnx").exists()


def test_compare_library_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The Usage section's Python example of compare_files, as written, on the tiny MLP and its rewrite."""
    section = README.split("## Usage", 1)[1].split("\n## ", 1)[0]
    [code] = [b for b in re.findall(r"```python\n(.*?)```", section, re.S) if "compare_files" in b]
    monkeypatch.chdir(tmp_path)
    models.save(models.mlp_model(), tmp_path / "smollm2.onnx")
    quantize_file(tmp_path / "smollm2.onnx", tmp_path / "smollm2.stamp.onnx", StampConfig())
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "batch independence: ok" in out and "\ny " in out and "\nTrue sample 0, then sample 1, of x changed" in out


def test_demo_runs_on_the_tiny_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "demo", "--model", "tiny-llama", "--out-dir", str(tmp_path), "--seq-len", "32", "--windows", "2"]) == 0
    out = capsys.readouterr().out
    assert "haar L=3, P=1, K=64, 8/4" in out and "none, K=64, 8/4" in out


def _api_section() -> str:
    return README.split("## Python API", 1)[1].split("\n## ", 1)[0]


def test_python_api_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    [code] = re.findall(r"```python\n(.*?)```", _api_section(), re.S)
    monkeypatch.chdir(tmp_path)
    models.save(models.mlp_model(), tmp_path / "model.onnx")
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.startswith("2 layers; none skipped")
    onnx.checker.check_model(str(tmp_path / "model.stamp.onnx"), full_check=True)
    inlined = onnx.load(str(tmp_path / "model.dct.onnx"))
    assert not inlined.functions and {n.domain for n in inlined.graph.node} == {""}


def _signature(function: Callable[..., object]) -> str:
    """``name(a, b, *, c=1, d="x") -> Return`` as the README writes it."""
    parts: list[str] = []
    for param in inspect.signature(function).parameters.values():
        if param.kind is param.KEYWORD_ONLY and "*" not in parts:
            parts.append("*")
        parts.append(param.name if param.default is param.empty else f"{param.name}={json.dumps(param.default)}")
    returns = str(inspect.signature(function).return_annotation).strip("'")
    return f"{function.__name__}({', '.join(parts)}) -> {returns}".replace("=null", "=None").replace("=true", "=True").replace(
        "=false", "=False")


def test_python_api_signatures_are_the_code_s() -> None:
    text = " ".join(_api_section().split())
    functions = [("stamp_onnx.pipeline", "quantize_file"), ("stamp_onnx.pipeline", "rewrite")]
    if importlib.util.find_spec("stamp_onnx.evaluation.compare") is not None:  # written on its own branch
        functions.append(("stamp_onnx.evaluation.compare", "compare_files"))
    for module, name in functions:
        assert _signature(getattr(importlib.import_module(module), name)) in text, name
