"""Throughput of the ai.stamp ops in onnxruntime, native kernels vs function bodies, vs a memory copy.

Each op runs alone in a one-node model through an onnxruntime session with I/O binding (the
input and a preallocated output stay in place, so nothing but the op and the session's own
overhead is timed). The baseline is ``np.copyto`` of the same array into a preallocated one,
timed in the same process: "vs copy" is copy time / op time, so 1.0 means the op moves the
activation as fast as a plain copy does. FeatureRotation rows also time what the op replaces,
the dense ``x @ R`` (one onnxruntime MatMul with R a d x d float32 initializer, timed the same
way): "native vs dense" is dense time / native time. Median of ``--repeat`` runs after warm-up.

    .venv/bin/python tools/bench_ops.py                       # s x d = 2048 x 1024, 512 x 576, 512 x 1536
    .venv/bin/python tools/bench_ops.py --shapes 512x576 --markdown out/ops.md
    .venv/bin/python tools/bench_ops.py --ops FeatureRotation --shapes 512x576 512x1536
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort

from stamp_onnx.core import weights
from stamp_onnx.graph import ops, runtime
from stamp_onnx.graph.op_models import OPSET, single_op_model


def _median_seconds(fn: Callable[[], object], repeat: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _bound_seconds(model: bytes, x: np.ndarray, *, native: bool, repeat: int) -> float:
    """Median seconds of one run of ``model`` (input x, output y) with x and y bound in place."""
    session = runtime.session(model, native=native)
    binding = session.io_binding()
    binding.bind_cpu_input("x", x)
    y = ort.OrtValue.ortvalue_from_numpy(np.empty_like(x))
    binding.bind_ortvalue_output("y", y)
    return _median_seconds(lambda: session.run_with_iobinding(binding), repeat)


def op_seconds(spec: ops.Spec, x: np.ndarray, *, native: bool, repeat: int) -> float:
    proto = single_op_model(spec, x.ndim, function_body=not native)
    return _bound_seconds(proto.SerializeToString(), x, native=native, repeat=repeat)


def dense_rotation_seconds(x: np.ndarray, repeat: int) -> float:
    """``x @ R`` as one onnxruntime MatMul, R = weights.feature_rotation(d) in float32 (a d x d initializer)."""
    d = x.shape[-1]
    r = onnx.numpy_helper.from_array(weights.feature_rotation(d).astype(np.float32), "r")
    dims: list[str | int] = [*(f"n{i}" for i in range(x.ndim - 1)), d]
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "r"], ["y"])], "dense_rotation",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, dims)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, dims)], [r],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)], ir_version=10)
    return _bound_seconds(model.SerializeToString(), x, native=False, repeat=repeat)


def copy_seconds(x: np.ndarray, repeat: int) -> float:
    out = np.empty_like(x)
    return _median_seconds(lambda: np.copyto(out, x), repeat)


def specs(d: int) -> list[tuple[str, ops.Spec]]:
    """The ops timed on activations of d features: (label, spec)."""
    qdq = ops.TokenQDQSpec(64, 8, 4)
    rows: list[tuple[str, ops.Spec]] = [("TokenQDQ (none)", qdq)]
    for transform, levels in (("haar", 3), ("wht", 0), ("dct", 0)):
        forward = ops.SequenceTransformSpec(transform, levels, False, 1)
        rows.append((f"TransformQDQ {transform}", ops.TransformQDQSpec(forward, qdq)))
        rows.append((f"SequenceTransform {transform} inverse", ops.SequenceTransformSpec(transform, levels, True, 1)))
    auto = ops.SequenceTransformSpec("haar", ops.AUTO, False, 1, 0, qdq.hp_tokens - 1)  # --levels auto, dynamic length
    rows.append(("TransformQDQ haar auto", ops.TransformQDQSpec(auto, qdq)))
    rows.append(("SequenceTransform haar auto inverse", ops.SequenceTransformSpec("haar", ops.AUTO, True, 1, 0, qdq.hp_tokens - 1)))
    rows.append(("FeatureRotation", ops.FeatureRotationSpec(d)))
    return rows


def _selected(label: str, patterns: list[str] | None) -> bool:
    return patterns is None or any(p.lower() in label.lower() for p in patterns)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["2048x1024", "512x576", "512x1536"],
                        help="SxD token x feature sizes")
    parser.add_argument("--ops", nargs="+", metavar="TEXT",
                        help="time only the ops whose label contains one of these (case-insensitive), "
                             "e.g. FeatureRotation or TransformQDQ")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args(argv)
    if runtime.native_library() is None:
        print("native kernels not built (tools/build_native.sh): only function bodies are timed", file=sys.stderr)
    if not any(_selected(label, args.ops) for label, _ in specs(1)):
        parser.error(f"--ops {' '.join(args.ops)} selects none of: {', '.join(label for label, _ in specs(1))}")
    lines = ["| op | s x d | copy ms | body ms | native ms | dense ms | body vs copy | native vs copy | "
             "native speed-up | native vs dense |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for shape in args.shapes:
        s, d = (int(v) for v in shape.split("x"))
        x = (np.random.default_rng(0).standard_t(4, (1, s, d)) * 3).astype(np.float32)
        copy = copy_seconds(x, args.repeat * 3)
        for label, spec in specs(d):
            if not _selected(label, args.ops):
                continue
            body = op_seconds(spec, x, native=False, repeat=max(3, args.repeat // 10) if s * s > 2**20 else args.repeat)
            native = op_seconds(spec, x, native=True, repeat=args.repeat) if runtime.native_library() else float("nan")
            if isinstance(spec, ops.FeatureRotationSpec):
                dense = dense_rotation_seconds(x, args.repeat)
                dense_cells = f"{dense * 1e3:.3f}", f"{dense / native:.1f}x"
            else:
                dense_cells = "-", "-"
            lines.append(f"| {label} | {s} x {d} | {copy * 1e3:.3f} | {body * 1e3:.3f} | {native * 1e3:.3f} | "
                         f"{dense_cells[0]} | {copy / body:.3f} | {copy / native:.3f} | {body / native:.1f}x | "
                         f"{dense_cells[1]} |")
            print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
