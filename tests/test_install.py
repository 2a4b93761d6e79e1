"""What an install holds: the rewrite path without PyTorch, and a wheel with no top-level `passes`.

The lean test runs the CLI in a fresh interpreter where every module of the `models` extra is
unimportable (``sys.modules[name] = None``: ``import`` raises, ``find_spec`` answers None), as
after a plain ``pip install .``. The wheel test builds the wheel the way pip installs the
project (build isolation) and reads its file list.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from stamp_onnx.cli.commands import MODELS_EXTRA, NEEDS_MODELS_EXTRA

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

LEAN_RUN = """
import contextlib, io, json, sys
from pathlib import Path
for name in {blocked!r}:
    sys.modules[name] = None
sys.path.insert(0, {tests!r})
import models
import numpy as np
from stamp_onnx.graph import runtime
from stamp_onnx.cli.commands import main

src = models.save(models.mlp_model(opset=17), Path("mlp.onnx"))
np.savez("calib.npz", x=np.random.default_rng(0).standard_normal((4, 8, 16)).astype(np.float32))
runs = {{
    "haar": [],
    "w4_hadamard": ["--weight-bits", "4", "--feature-transform", "hadamard"],
    "gptq": ["--weight-bits", "4", "--weight-method", "gptq", "--calibration", "calib.npz"],
    "smoothquant": ["--weight-bits", "8", "--feature-transform", "smoothquant", "--calibration", "calib.npz"],
    "inline": ["--inline"],
}}
result = {{}}
for name, flags in runs.items():
    out = name + ".onnx"
    code = main(["quantize", str(src), "-o", out, "-q", *flags])
    with contextlib.redirect_stdout(io.StringIO()) as text:
        inspected = main(["inspect", out])
    y = runtime.session(out).run(None, {{"x": np.ones((2, 8, 16), np.float32)}})[0]
    result[name] = [code, inspected, "recorded config:" in text.getvalue(), list(y.shape), bool(np.isfinite(y).all())]
commands = {{"export": ["-o", "e.onnx"], "validate": ["tiny-llama", "haar.onnx"], "eval": ["tiny-llama"], "demo": []}}
for command, rest in commands.items():
    with contextlib.redirect_stderr(io.StringIO()) as err:
        code = main([command, *rest])
    result[command] = [code, err.getvalue()]
result["imported"] = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r} and sys.modules[m] is not None)
print(json.dumps(result))
"""


def test_rewrite_path_runs_without_the_models_extra(tmp_path: Path) -> None:
    script = LEAN_RUN.format(blocked=list(MODELS_EXTRA), tests=str(TESTS))
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("haar", "w4_hadamard", "gptq", "smoothquant", "inline"):
        assert result[name] == [0, 0, True, [2, 8, 8], True], name
    for command in NEEDS_MODELS_EXTRA:
        code, err = result[command]
        assert code == 1 and err.count("\n") == 1, (command, err)
        assert err.startswith(f"stamp-onnx: error: `{command}` needs the models extra (torch, transformers,"), err
        assert "pip install '.[models]'" in err
    assert result["imported"] == []
    assert not (tmp_path / "e.onnx").exists() and not (tmp_path / "out").exists()


def test_wheel_installs_passes_inside_stamp_onnx(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("stamp_onnx", "passes"):
        shutil.copytree(ROOT / package, src / package, ignore=skip)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(src), "-w", str(wheels)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(info).decode()
        top_level = archive.read(info.replace("METADATA", "top_level.txt")).decode().split()
        entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()

    # Every source file ships, passes/ under stamp_onnx/. Not the native library: the set-up
    # builds it into the source tree (tools/build_native.sh), where the editable install finds it.
    native = src / "stamp_onnx" / "native"
    expected = {f"stamp_onnx/{p.relative_to(src / 'stamp_onnx').as_posix()}"
                for p in (src / "stamp_onnx").rglob("*") if p.is_file() and native not in p.parents}
    expected |= {f"stamp_onnx/passes/{p.relative_to(src / 'passes').as_posix()}" for p in (src / "passes").rglob("*") if p.is_file()}
    assert "stamp_onnx/passes/convert_opset.py" in expected
    assert {n for n in names if ".dist-info/" not in n} == expected
    assert not any(n.startswith("passes/") for n in names)
    assert top_level == ["stamp_onnx"]
    assert "stamp-onnx = stamp_onnx.cli:main" in entry_points

    # The dependency split: PyTorch and the model packages only with the `models` extra.
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    plain = {r.split(";")[0].strip() for r in requires if "extra ==" not in r}
    assert {r.split(">")[0].split("=")[0] for r in plain} == {"numpy", "onnx", "onnxruntime", "onnxscript", "onnx-ir", "ml_dtypes"}
    assert 'torch==2.13.0; extra == "models"' in requires
    for name in ("transformers", "scipy", "tqdm", "matplotlib"):
        assert any(r.startswith(name) and 'extra == "models"' in r for r in requires), name
