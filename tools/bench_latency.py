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

``--integer`` measures the integer target instead (docs/results.md, "Integer execution"): float,
onnxruntime's quantize_dynamic, fake-quant STaMP and the integer variants, all in one process
with ``--threads`` non-spinning intra-op threads each (default 1), alternating run by run, the
median per variant and its spread (p90 - p10 over the median); then the quality on
``--windows`` samples (perplexity, or output SQNR vs float) and the size on disk.

    .venv/bin/python tools/bench_latency.py --integer smollm2-135m --seq-lens 1 16 64 512
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from stamp_onnx.config import StampConfig
from stamp_onnx.core import weights
from stamp_onnx.graph import ops, runtime
from stamp_onnx.pipeline import TARGET_INTEGER, TARGET_ONNX, quantize_file
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


# --- --integer: integer GEMMs against float, quantize_dynamic and fake-quant STaMP ----------

def integer_variants(model: str, out_dir: Path) -> dict[str, Path]:
    """name -> ONNX file of the rows of docs/results.md's integer tables (written when missing or stale)."""
    loaded = load_model(model)
    float_path = out_dir / f"{loaded.name}.onnx"
    if not float_path.exists():
        export_onnx(loaded, float_path)
    transform = "haar" if loaded.is_text else "haar2d"  # image tokens: a 2-D grid
    stamp = StampConfig(transform=transform)
    a8 = StampConfig(transform="none", hp_tokens=0, lp_bits=8)
    rows: dict[str, tuple[StampConfig | None, str]] = {
        "fake-quant STaMP 8/4 (today)": (stamp, TARGET_ONNX),
        "integer per-token A8 W8": (a8.replace(weight_bits=8), TARGET_INTEGER),
        "integer STaMP 8/4 W8": (stamp.replace(weight_bits=8), TARGET_INTEGER),
        "integer per-token A8 W4": (a8.replace(weight_bits=4), TARGET_INTEGER),
        "integer STaMP 8/4 W4": (stamp.replace(weight_bits=4), TARGET_INTEGER),
    }
    paths = {"float": float_path, "quantize_dynamic (per-tensor int8)": out_dir / f"{loaded.name}.qdyn.onnx"}
    if not _fresh(paths["quantize_dynamic (per-tensor int8)"], float_path):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(float_path, paths["quantize_dynamic (per-tensor int8)"], weight_type=QuantType.QInt8)
    for name, (config, target) in rows.items():
        assert config is not None
        path = out_dir / f"{loaded.name}.{'-'.join(name.split()[:4]).replace('/', '')}.onnx"
        if not _fresh(path, float_path):
            quantize_file(float_path, path, config, target=target)
        paths[name] = path
    return paths


def _fresh(path: Path, source: Path) -> bool:
    return path.exists() and path.stat().st_mtime >= source.stat().st_mtime


def _sessions(paths: dict[str, Path], threads: int) -> dict[str, ort.InferenceSession]:
    """One session per variant, ``threads`` intra-op threads that do not spin (so sessions in one
    process do not steal each other's cores); native kernels when built."""
    sessions = {}
    for name, path in paths.items():
        options = runtime.session_options(runtime.native_library() is not None)
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions[name] = ort.InferenceSession(str(path), options, providers=runtime.PROVIDERS)
    return sessions


def alternating_medians(sessions: dict[str, ort.InferenceSession], feeds: dict[str, np.ndarray],
                        repeat: int) -> dict[str, tuple[float, float]]:
    """(median seconds, spread = (p90 - p10) / median) per variant; the variants take turns, run by run."""
    inputs = {name: {i.name: feeds[i.name] for i in sess.get_inputs()} for name, sess in sessions.items()}
    for name, sess in sessions.items():
        sess.run(None, inputs[name])
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(repeat):
        for name, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, inputs[name])
            times[name].append(time.perf_counter() - start)
    out = {}
    for name, values in times.items():
        q = statistics.quantiles(values, n=10) if len(values) > 2 else [values[0]] * 9
        median = statistics.median(values)
        out[name] = (median, (q[-1] - q[0]) / median)
    return out


def quality(loaded: Any, sessions: dict[str, ort.InferenceSession], samples: Any) -> dict[str, float]:
    """Perplexity (causal LMs, over every target) or output SQNR vs float in dB (others), per variant."""
    from stamp_onnx.core.quant import sqnr_db
    from stamp_onnx.evaluation.metrics import RunningNLL

    feeds = samples.feeds
    count = len(samples)
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in sessions}
    nll = {name: RunningNLL() for name in sessions}
    for i in range(count):
        row = {k: v[i:i + 1] for k, v in feeds.items()}
        for name, sess in sessions.items():
            y = sess.run(None, {inp.name: row[inp.name] for inp in sess.get_inputs()})[0]
            if loaded.kind == "causal-lm":
                ids = row["input_ids"]
                nll[name].update(y, ids, np.ones(ids.shape[1], bool))
            else:
                outputs[name].append(y)
    if loaded.kind == "causal-lm":
        return {name: acc.perplexity(leak_free=False) for name, acc in nll.items()}
    reference = np.concatenate(outputs["float"])
    return {name: sqnr_db(reference, np.concatenate(values)) for name, values in outputs.items()}


def integer_table(model: str, out_dir: Path, seq_lens: list[int], repeat: int, threads: int, windows: int) -> str:
    loaded = load_model(model)
    paths = integer_variants(model, out_dir)
    sessions = _sessions(paths, threads)
    lengths = seq_lens if loaded.is_text else [loaded.tokens or 0]
    if loaded.kind != "causal-lm":  # an encoder's window holds its special tokens too
        lengths = [n for n in lengths if n >= 3]
    measured = {}
    for seq_len in lengths:
        feeds = evaluation_samples(loaded, 1, seq_len, seed=0).rows(0, 1)
        measured[seq_len] = alternating_medians(sessions, feeds, repeat)
        print(f"{model} at {seq_len} tokens: " + ", ".join(
            f"{name} {times['float'][0] / t:.2f}x (spread {spread:.0%})" for name, (t, spread) in measured[seq_len].items()
            for times in [measured[seq_len]]), flush=True)
    eval_len = max(lengths)
    scores = quality(loaded, sessions, evaluation_samples(loaded, windows, eval_len, seed=0))
    metric = "perplexity" if loaded.kind == "causal-lm" else "output SQNR vs float (dB)"
    head = [f"{n} tokens: x float" for n in lengths]
    lines = [f"{model}: {threads} thread(s), medians of {repeat} alternating runs; {metric} on {windows} samples"
             + (f" of {eval_len} tokens" if loaded.is_text else ""), "",
             "| variant | " + " | ".join(head) + f" | {metric} | size (MB) |",
             "| --- |" + " ---: |" * (len(head) + 2)]
    for name, path in paths.items():
        ratios = [f"{measured[n]['float'][0] / measured[n][name][0]:.2f}" for n in lengths]
        score = f"{scores[name]:.2f}" if loaded.kind == "causal-lm" else ("inf" if name == "float" else f"{scores[name]:.1f}")
        size = (path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.name + ".data"))) / 1e6
        lines.append(f"| {name} | " + " | ".join(ratios) + f" | {score} | {size:.0f} |")
    return "\n".join(lines) + "\n"


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
    parser.add_argument("--integer", action="store_true",
                        help="the integer target's table instead: float, quantize_dynamic, fake-quant STaMP and the integer "
                        "variants in one process, alternating, with quality and size")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[1, 16, 64, 512], help="--integer: text lengths")
    parser.add_argument("--threads", type=int, default=1, help="--integer: intra-op threads per session (default 1)")
    parser.add_argument("--windows", type=int, default=8, help="--integer: samples for the quality column (default 8)")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.integer:
        tables = []
        for m in args.models:  # each table printed and saved as soon as it is measured
            tables.append(integer_table(m, args.out_dir, args.seq_lens, args.repeat, args.threads, args.windows))
            print(tables[-1], flush=True)
            if args.markdown:
                args.markdown.write_text("\n".join(tables))
        return 0
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
