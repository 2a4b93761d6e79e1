"""How `stamp-onnx quantize` scales with model size: wall time and peak memory, against I/O and ORT.

For each size this makes (once, cached in --work) a synthetic LLaMA-shaped float32 model with
external data (tools/make_llama.py), then measures, each in its own child process so that its
peak resident memory (ru_maxrss from wait4) is its own:

- copy:  copying the model's files (.onnx and .data) to a new name: the I/O floor;
- stamp: `stamp-onnx quantize` with the default config (activation-only rewrite);
- ort:   onnxruntime's `quantize_dynamic` (int8 weights, external data output), the usual tool
         for the same job, on the same file.

Files are read from the page cache (the machine has the memory), so "copy" is a memory-speed
copy; cold-disk reads would slow every row by the same bytes.

    .venv/bin/python tools/bench_scale.py --sizes 0.3 1 3 --markdown docs/scale.md
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_llama

_COPY = """
import shutil, sys
for src, dst in zip(sys.argv[1::2], sys.argv[2::2]):
    shutil.copyfile(src, dst)
"""
_ORT = """
import sys
from onnxruntime.quantization import QuantType, quantize_dynamic
quantize_dynamic(sys.argv[1], sys.argv[2], weight_type=QuantType.QInt8, use_external_data_format=True)
"""


@dataclasses.dataclass(frozen=True)
class Run:
    seconds: float
    peak_mb: float
    returncode: int
    stderr: str


def measure(argv: list[str], repeat: int, cleanup: list[Path]) -> Run:
    """The run of ``argv`` with the median wall time over ``repeat`` runs, with its own peak memory.

    Dirty pages are flushed (sync) before each run so that one run's write-back is not
    charged to the next; ``cleanup`` is deleted after each run.
    """
    runs = []
    for _ in range(repeat):
        os.sync()
        runs.append(_measure_once(argv))
        for path in cleanup:
            path.unlink(missing_ok=True)
        if runs[-1].returncode != 0:
            return runs[-1]
    return sorted(runs, key=lambda run: run.seconds)[len(runs) // 2]


def _measure_once(argv: list[str]) -> Run:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    return Run(seconds, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), stderr.strip())


def model_files(path: Path) -> list[Path]:
    return [path, path.with_name(path.name + ".data")]


def total_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in model_files(path) if f.exists())


def bench_size(size_gb: float, work: Path, repeat: int, with_ort: bool) -> dict[str, object]:
    model = work / f"llama-{size_gb:g}g.onnx"
    if not model.exists() or not model_files(model)[1].exists():
        shape = make_llama.LlamaShape().with_size(size_gb * 1e9)
        make_llama.build(model, shape)
    nodes = len(onnx.load(str(model), load_external_data=False).graph.node)
    size = total_bytes(model)
    row: dict[str, object] = {"size_gb": size / 1e9, "nodes": nodes}

    copy = model_files(work / "copy.onnx")
    pairs = [str(p) for pair in zip(model_files(model), copy, strict=True) for p in pair]
    row["copy"] = measure([sys.executable, "-c", _COPY, *pairs], repeat, copy)

    stamp = model_files(work / "stamp.onnx")
    stamp_cli = str(Path(sys.executable).with_name("stamp-onnx"))
    row["stamp"] = measure([stamp_cli, "quantize", str(model), "-o", str(stamp[0])], repeat, stamp)

    if with_ort:
        # quantize_dynamic writes its external data as <output name>.data
        ort = model_files(work / "ort.onnx")
        row["ort"] = measure([sys.executable, "-c", _ORT, str(model), str(ort[0])], repeat, ort)
    return row


def markdown(rows: list[dict[str, object]]) -> str:
    head = ["model GB", "nodes", "copy s", "stamp s", "stamp / copy", "stamp peak MB", "peak / model",
            "ORT dynamic s", "ORT peak MB", "ORT peak / model"]
    lines = ["| " + " | ".join(head) + " |", "|" + " ---: |" * len(head)]
    for row in rows:
        size_mb = float(row["size_gb"]) * 1000  # type: ignore[arg-type]
        copy, stamp = row["copy"], row["stamp"]
        assert isinstance(copy, Run) and isinstance(stamp, Run)
        cells = [f"{row['size_gb']:.2f}", str(row["nodes"]), f"{copy.seconds:.2f}", f"{stamp.seconds:.2f}",
                 f"{stamp.seconds / copy.seconds:.1f}", f"{stamp.peak_mb:.0f}", f"{stamp.peak_mb / size_mb:.3f}"]
        ort = row.get("ort")
        if isinstance(ort, Run):
            ok = ort.returncode == 0
            cells += [f"{ort.seconds:.1f}" if ok else f"failed ({ort.returncode})", f"{ort.peak_mb:.0f}",
                      f"{ort.peak_mb / size_mb:.2f}"]
        else:
            cells += ["", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.3, 1.0, 3.0], help="model sizes in GB (1e9 bytes)")
    parser.add_argument("--work", type=Path, default=Path("out/scale"), help="folder for the models (cached)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is kept (default 3)")
    parser.add_argument("--no-ort", action="store_true", help="skip onnxruntime's quantize_dynamic")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(args.work).free < 3.5 * max(args.sizes) * 1e9:
        parser.error(f"not enough free disk in {args.work} for a {max(args.sizes)} GB model and its outputs")
    rows = []
    for size in args.sizes:
        row = bench_size(size, args.work, args.repeat, with_ort=not args.no_ort)
        for key in ("stamp", "ort"):
            run = row.get(key)
            if isinstance(run, Run) and run.returncode != 0:
                print(f"{key} failed on {size} GB: {run.stderr[-300:]}", file=sys.stderr)
        rows.append(row)
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    table = markdown(rows)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
