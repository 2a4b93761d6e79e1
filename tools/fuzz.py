"""Fuzz `stamp-onnx quantize` with mutated models: every run must end in success or one clean error.

Each case takes a valid seed model, applies one mutation (byte flips, truncation, corrupted
shapes, attributes, initializers, duplicate names, a cycle, an unknown op, a wrong opset) and
runs the CLI's quantize in a forked child process (imports shared, so a case costs
milliseconds) under a per-run timeout. A case fails when the CLI raises (a crash with a
traceback), the child dies of a signal (a native abort in a library), runs past the timeout
(a hang), exits 0 without a valid output, exits non-zero without exactly one
"stamp-onnx: error:" line, or changes its input file.

    .venv/bin/python tools/fuzz.py SEED.onnx [SEED.onnx ...] --cases 2000 --seed 0

Prints a summary per mutation and outcome, and every failing case (reproducible by seed).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import hashlib
import io
import multiprocessing
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from stamp_onnx.cli.commands import main as cli_main

Mutation = Callable[[onnx.ModelProto, np.random.Generator], bytes]


@dataclasses.dataclass(frozen=True)
class Outcome:
    mutation: str
    case_seed: int
    kind: str  # "ok", "error", or a failure: "crash", "hang", "bad-error", "bad-output", "input-changed"
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.kind not in ("ok", "error")


def _serialize(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString()


def byte_flips(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    data = bytearray(_serialize(model))
    for i in rng.integers(0, len(data), size=int(rng.integers(1, 16))):
        data[i] ^= 1 << int(rng.integers(0, 8))
    return bytes(data)


def truncation(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    data = _serialize(model)
    return data[: int(rng.integers(0, len(data)))]


def shapes(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    values = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    value = values[int(rng.integers(0, len(values)))]
    dims = value.type.tensor_type.shape.dim
    if len(dims) and rng.random() < 0.7:
        dim = dims[int(rng.integers(0, len(dims)))]
        dim.dim_value = int(rng.choice([0, 1, 3, 7, 1 << 40, -5]))
    elif len(dims):
        del dims[int(rng.integers(0, len(dims)))]
    else:
        value.type.tensor_type.elem_type = int(rng.integers(0, 30))
    return _serialize(model)


def attributes(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    node = model.graph.node[int(rng.integers(0, len(model.graph.node)))]
    if node.attribute and rng.random() < 0.7:
        attr = node.attribute[int(rng.integers(0, len(node.attribute)))]
        if attr.type == onnx.AttributeProto.INTS:
            attr.ints[:] = [int(v) for v in rng.integers(-4, 6, size=int(rng.integers(0, 5)))]
        elif attr.type == onnx.AttributeProto.INT:
            attr.i = int(rng.integers(-(1 << 31), 1 << 31))
        else:
            attr.type = onnx.AttributeProto.FLOAT
    else:
        node.attribute.append(onnx.helper.make_attribute(f"junk{int(rng.integers(0, 9))}", int(rng.integers(0, 9))))
    return _serialize(model)


def initializers(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    tensor = model.graph.initializer[int(rng.integers(0, len(model.graph.initializer)))]
    choice = int(rng.integers(0, 4))
    if choice == 0 and tensor.dims:
        tensor.dims[int(rng.integers(0, len(tensor.dims)))] += int(rng.integers(1, 5))
    elif choice == 1:
        tensor.data_type = int(rng.choice([onnx.TensorProto.INT8, onnx.TensorProto.DOUBLE, onnx.TensorProto.STRING, 99]))
    elif choice == 2:
        tensor.raw_data = tensor.raw_data[: len(tensor.raw_data) // 2]
    else:
        tensor.name = model.graph.node[0].output[0]  # collides with a node output
    return _serialize(model)


def duplicate_names(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    nodes = model.graph.node
    a, b = (int(i) for i in rng.integers(0, len(nodes), size=2))
    nodes[a].output[0] = nodes[b].output[0]
    return _serialize(model)


def cycle(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    nodes = model.graph.node
    first = nodes[int(rng.integers(0, len(nodes) // 2 + 1))]
    first.input[0] = nodes[-1].output[0]
    return _serialize(model)


def unknown_op(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    node = model.graph.node[int(rng.integers(0, len(model.graph.node)))]
    if rng.random() < 0.5:
        node.op_type = "NoSuchOp"
    else:
        node.domain = "com.example.missing"
    return _serialize(model)


def opset(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    model.opset_import[0].version = int(rng.choice([0, 1, 6, 13, 99, -1]))
    return _serialize(model)


MUTATIONS: dict[str, Mutation] = {
    f.__name__.replace("_", "-"): f
    for f in (byte_flips, truncation, shapes, attributes, initializers, duplicate_names, cycle, unknown_op, opset)
}


def run_case(seed_model: onnx.ModelProto, mutation: str, case_seed: int, folder: Path, timeout: int) -> Outcome:
    """Run one case in a forked child; a child killed by a signal or the timeout is a failure."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(send, seed_model, mutation, case_seed, folder))
    child.start()
    send.close()
    ready = receive.poll(timeout)
    outcome = None
    if ready:
        with contextlib.suppress(EOFError):  # the child died before it could answer
            outcome = receive.recv()
    child.join(timeout=5 if ready else 0)
    if child.is_alive():
        child.kill()
        child.join()
    if outcome is None and not ready:
        return Outcome(mutation, case_seed, "hang", f"no result after {timeout} s")
    if outcome is None:
        code = child.exitcode or 0
        how = f"died of signal {-code}" if code < 0 else f"exited with code {code} without a result"
        return Outcome(mutation, case_seed, "crash", f"child {how}")
    return outcome


def _child(send: Any, seed_model: onnx.ModelProto, mutation: str, case_seed: int, folder: Path) -> None:
    try:
        send.send(_judge(seed_model, mutation, case_seed, folder))
    except EOFError:
        pass
    finally:
        send.close()


def _judge(seed_model: onnx.ModelProto, mutation: str, case_seed: int, folder: Path) -> Outcome:
    """Mutate a copy of ``seed_model``, run quantize on it, judge the result."""
    model = onnx.ModelProto()
    model.CopyFrom(seed_model)
    data = MUTATIONS[mutation](model, np.random.default_rng(case_seed))
    src, out = folder / "in.onnx", folder / "out.onnx"
    src.write_bytes(data)
    out.unlink(missing_ok=True)
    before = hashlib.sha256(data).hexdigest()
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            code = cli_main(["-q", "quantize", str(src), "-o", str(out)])
    except BaseException as err:
        return Outcome(mutation, case_seed, "crash", "".join(traceback.format_exception_only(err)).strip())
    if hashlib.sha256(src.read_bytes()).hexdigest() != before:
        return Outcome(mutation, case_seed, "input-changed")
    errors = [line for line in stderr.getvalue().splitlines() if line.startswith("stamp-onnx: error:")]
    if code == 0:
        if not out.is_file():
            return Outcome(mutation, case_seed, "bad-output", "exit 0 without an output file")
        try:
            onnx.checker.check_model(str(out), full_check=True)
        except Exception as err:
            return Outcome(mutation, case_seed, "bad-output", str(err).splitlines()[0])
        return Outcome(mutation, case_seed, "ok")
    if len(errors) != 1 or "Traceback" in stderr.getvalue() or out.exists():
        return Outcome(mutation, case_seed, "bad-error", stderr.getvalue().strip()[:300])
    return Outcome(mutation, case_seed, "error", errors[0][len("stamp-onnx: error: "):][:120])


def fuzz(seeds: list[Path], cases: int, seed: int, timeout: int = 30) -> list[Outcome]:
    models = [onnx.load(str(p)) for p in seeds]
    rng = np.random.default_rng(seed)
    names = list(MUTATIONS)
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="stamp-fuzz-") as tmp:
        for i in range(cases):
            mutation = names[i % len(names)]  # every mutation equally often
            model = models[int(rng.integers(0, len(models)))]
            case = Path(tmp) / str(len(outcomes))
            case.mkdir()
            outcomes.append(run_case(model, mutation, int(rng.integers(0, 2**31)), case, timeout))
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seeds", nargs="+", type=Path, help="valid ONNX models to mutate")
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=30, help="seconds per case")
    args = parser.parse_args()
    start = time.perf_counter()
    outcomes = fuzz(args.seeds, args.cases, args.seed, args.timeout)
    counts = collections.Counter((o.mutation, o.kind) for o in outcomes)
    for (mutation, kind), n in sorted(counts.items()):
        print(f"{mutation:<16} {kind:<14} {n:>6}")
    failures = [o for o in outcomes if o.failed]
    for o in failures:
        print(f"FAIL {o.kind} {o.mutation} case_seed={o.case_seed}: {o.detail}")
    print(f"{len(outcomes)} cases in {time.perf_counter() - start:.0f} s: {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
