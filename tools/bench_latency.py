"""Model latency in onnxruntime (CPU): float, the per-token baseline and STaMP, bodies vs native kernels.

For each model the float export is rewritten twice (``--transform none`` and the default
STaMP config) and each variant runs batch 1 through onnxruntime with its default threading,
the ai.stamp ops as function bodies and, when the library is built, as native kernels. The
inputs are the model's own evaluation data (``--seq-len`` tokens of text; one photo for
DINOv2). Each variant runs in a process of its own (sessions in one process disturb each
other: onnxruntime's idle threads of one session spin on the cores the next one needs): 3
warm-up runs, then the median of ``--repeat`` runs. The variants take turns, ``--rounds``
times, so drifts of the machine hit all of them; the table holds the median over rounds.
``--hadamard`` adds STaMP with ``--feature-transform hadamard`` twice: as rewritten (the
structured FeatureRotation op) and with each FeatureRotation replaced by the dense MatMul x R
it equals (the baseline the op is measured against).

    .venv/bin/python tools/bench_latency.py smollm2-135m dinov2-s --seq-len 512
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx

from stamp_onnx.config import StampConfig
from stamp_onnx.core import weights
from stamp_onnx.graph import ops, runtime
from stamp_onnx.pipeline import quantize_file
from stamp_onnx.zoo.export import export_onnx
from stamp_onnx.zoo.models import evaluation_samples, load_model


def variants(model: str, out_dir: Path, *, hadamard: bool = False) -> dict[str, tuple[Path, bool]]:
    """name -> (ONNX file, native) for float, none and STaMP (bodies and native), and the Hadamard pair."""
    loaded = load_model(model)
    float_path = out_dir / f"{loaded.name}.onnx"
    if not float_path.exists():
        export_onnx(loaded, float_path)
    configs = {"none": StampConfig(transform="none"), "stamp": StampConfig()}
    if hadamard:
        configs["hadamard"] = StampConfig(feature_transform="hadamard")
    paths = {}
    for label, config in configs.items():
        path = out_dir / f"{loaded.name}.bench.{label}.onnx"
        if not path.exists() or path.stat().st_mtime < float_path.stat().st_mtime:
            quantize_file(float_path, path, config)
        paths[label] = path
    rows = {"float": (float_path, False), "none, bodies": (paths["none"], False),
            "STaMP, bodies": (paths["stamp"], False)}
    native = runtime.native_library() is not None
    if native:
        rows["none, native"] = (paths["none"], True)
        rows["STaMP, native"] = (paths["stamp"], True)
    if hadamard:
        kernels = "native" if native else "bodies"
        rows[f"STaMP + Hadamard, {kernels}"] = (paths["hadamard"], native)
        rows[f"STaMP + Hadamard as dense x R, {kernels}"] = (dense_rotations(paths["hadamard"]), native)
    return rows


def dense_rotations(path: Path) -> Path:
    """A copy of ``path`` with every FeatureRotation(d) replaced by MatMul(x, R) (R a d x d initializer)."""
    out = path.with_suffix(".dense.onnx")
    if out.exists() and out.stat().st_mtime >= path.stat().st_mtime:
        return out
    model = onnx.load(str(path))
    nodes = []
    for node in model.graph.node:
        if node.domain == ops.DOMAIN and node.op_type == ops.FEATURE_ROTATION:
            d = next(a.i for a in node.attribute if a.name == "features")
            name = f"bench_dense_rotation_{d}"
            if all(t.name != name for t in model.graph.initializer):
                model.graph.initializer.append(onnx.numpy_helper.from_array(weights.feature_rotation(d).astype(np.float32), name))
            node = onnx.helper.make_node("MatMul", [node.input[0], name], list(node.output), name=node.name)
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(out))
    return out


def time_variant(path: Path, native: bool, feeds_path: Path, repeat: int) -> float:
    """Median seconds of ``repeat`` runs of one variant, after 3 warm-up runs (in this process)."""
    session = runtime.session(path, native)
    with np.load(feeds_path) as data:
        wanted = {i.name for i in session.get_inputs()}
        inputs = {k: data[k] for k in data.files if k in wanted}
    for _ in range(3):
        session.run(None, inputs)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        session.run(None, inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(
    model: str, out_dir: Path, seq_len: int, repeat: int, rounds: int, *, hadamard: bool = False
) -> list[tuple[str, float]]:
    """Every variant in its own child process, in turn, ``rounds`` times; the median per variant."""
    loaded = load_model(model)
    feeds_path = out_dir / f"{loaded.name}.bench.feeds.npz"
    np.savez(feeds_path, **evaluation_samples(loaded, 1, seq_len, seed=0).rows(0, 1))
    times: dict[str, list[float]] = {}
    rows = variants(model, out_dir, hadamard=hadamard)
    for _ in range(rounds):
        for name, (path, native) in rows.items():
            child = [sys.executable, __file__, "--child", str(path), str(int(native)), str(feeds_path), str(repeat)]
            result = subprocess.run(child, capture_output=True, text=True, check=True)
            times.setdefault(name, []).append(float(result.stdout.split()[-1]))
    return [(name, statistics.median(values)) for name, values in times.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--seq-len", type=int, default=512, help="text tokens (default 512)")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out-dir", type=Path, default=Path("out/bench"))
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--rounds", type=int, default=3, help="times each variant's process is run (default 3)")
    parser.add_argument("--hadamard", action="store_true",
                        help="also STaMP + Hadamard feature rotation, structured op vs dense x R")
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":  # one variant, in a child process
        path, native, feeds, repeat = sys.argv[2:6]
        print(time_variant(Path(path), native == "1", Path(feeds), int(repeat)))
        return 0
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if runtime.native_library() is None:
        print("native kernels not built (tools/build_native.sh): only function bodies are timed", file=sys.stderr)
    lines = ["| model | variant | ms | vs float | vs none (same kernels) |", "| --- | --- | ---: | ---: | ---: |"]
    for model in args.models:
        results = dict(bench_model(model, args.out_dir, args.seq_len, args.repeat, args.rounds, hadamard=args.hadamard))
        for name, seconds in results.items():
            kernels = name.split(", ")[-1]
            none = results.get(f"none, {kernels}")
            versus = f"{seconds / none - 1:+.1%}" if name.startswith("STaMP") and none else ""
            lines.append(f"| {model} | {name} | {seconds * 1e3:.1f} | {seconds / results['float']:.3f} | {versus} |")
            print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
