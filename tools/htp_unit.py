"""One STaMP unit alone on the HTP: integer-only (QNN graph JSON), HTP vs CPU, both vs float.

    .venv/bin/python tools/htp_unit.py --transform haar --tokens 128             # synthetic activations
    .venv/bin/python tools/htp_unit.py --float-model out/minilm.onnx --layer node_MatMul_59 \
        --calibration out/calib.npz --eval out/eval.npz                          # a real layer's

A real layer's activations come from a float model (the export itself) run on the two .npz files
(arrays named after its inputs: ``export --calibration-data`` writes one; give the other held-out
samples): its MatMul ``--layer`` (node name), its weight and bias (a following Add of a constant). The unit is built by :func:`stamp_onnx.targets.htp_units.layer_model`; ``a16`` is
the same layer with one u16 encoding and int8 per-channel weights (the QNN baseline's layer).
Prints one JSON line per variant.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from stamp_onnx.core.quant import sqnr_db
from stamp_onnx.graph.calibration import load_feeds
from stamp_onnx.targets import htp_model, htp_plan, htp_rules, htp_runtime, htp_units
from stamp_onnx.targets.htp_plan import BlockPlan


def synthetic(tokens: int, d: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Token-correlated activations (random walks along the tokens, a loud first token)."""
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.standard_normal((10, tokens, d)), axis=1) / 8 + 0.3 * rng.standard_normal((10, tokens, d))
    x[:, 0] *= 6
    w = (rng.standard_normal((d, n)) / np.sqrt(d)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    return x[:8].astype(np.float32), x[8:].astype(np.float32), w, b


def real_layer(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    model = onnx.load(args.float_model)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    node = next((n for n in model.graph.node if n.name == args.layer), None)
    if node is None or node.op_type != "MatMul" or node.input[1] not in inits:
        sys.exit(f"{args.layer} is not a MatMul with a constant weight in {args.float_model}")
    users = [n for n in model.graph.node if node.output[0] in n.input]
    bias = None
    if len(users) == 1 and users[0].op_type == "Add":
        other = [i for i in users[0].input if i != node.output[0]]
        bias = inits.get(other[0]) if other else None
    calib = htp_model.float_activations(args.float_model, [node.input[0]], load_feeds(args.calibration))[node.input[0]]
    test = htp_model.float_activations(args.float_model, [node.input[0]], load_feeds(args.eval))[node.input[0]]
    return calib, test, inits[node.input[1]], bias


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transform", default="haar", choices=htp_plan.UNIT_TRANSFORMS)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--outputs", type=int, default=96)
    ap.add_argument("--hp-tokens", type=int, default=64)
    ap.add_argument("--prefix-tokens", type=int, default=1)
    ap.add_argument("--float-model")
    ap.add_argument("--layer")
    ap.add_argument("--calibration")
    ap.add_argument("--eval")
    ap.add_argument("--htp-samples", type=int, default=2)
    args = ap.parse_args()
    if args.float_model:
        calib, test, w, b = real_layer(args)
    else:
        calib, test, w, b = synthetic(args.tokens, args.features, args.outputs, 0)
    codes, scales = htp_units.quantize_weight_columns(w)
    want = test @ (codes * scales) + (0 if b is None else b)  # vs the int8 weight: the activation error alone
    variants = {"stamp": (args.transform, {}), "none": ("none", {}), "a16": (args.transform, {"baseline": True})}
    with tempfile.TemporaryDirectory() as tmp:
        for label, (transform, kwargs) in variants.items():
            plan = BlockPlan(transform, calib.shape[1], 3, args.prefix_tokens, args.hp_tokens)
            model = htp_units.layer_model(plan, w, b, calib, **kwargs)  # type: ignore[arg-type]
            path = Path(tmp) / f"{label}.onnx"
            onnx.save(model, path)
            cpu_session = htp_runtime.cpu_reference_session(path)
            cpu = np.concatenate([cpu_session.run(None, {"x": row[None]})[0] for row in test])
            row = {"variant": label, "transform": transform, "hp_tokens": plan.hp_count, "onnx_nodes": len(model.graph.node),
                   "rule_violations": len(htp_rules.rule_violations(model)), "sqnr_cpu_db": round(sqnr_db(want, cpu), 2)}
            if htp_runtime.available() and args.htp_samples:
                k = min(args.htp_samples, len(test))
                dump = Path(tmp) / f"{label}_json"
                session = htp_runtime.htp_session(path, dump_dir=dump)
                htp = np.concatenate([session.run(None, {"x": row[None]})[0] for row in test[:k]])
                report = htp_runtime.integer_report(dump)
                row |= {"sqnr_htp_db": round(sqnr_db(want[:k], htp), 2), "sqnr_cpu_same_db": round(sqnr_db(want[:k], cpu[:k]), 2),
                        "sqnr_htp_vs_cpu_db": round(sqnr_db(cpu[:k], htp), 2), "integer_only": report.integer_only,
                        "qnn_ops": report.op_counts, "activation_bytes": report.activation_bytes}
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
