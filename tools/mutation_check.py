"""Mutation check: plant known bugs one at a time in a temporary copy and see which tests catch them.

Each mutant is one small textual edit of one source file (a quantizer that forgets its clip, a
range that no longer includes 0, a rounding mode, an off-by-one split, ...). For each, the
project is copied to a temporary folder (the files git tracks or would track, plus the built
native library), the edit is applied, the native library is rebuilt there when the edit is in
native/ (tools/build_native.sh with the set-up's onnxruntime headers), and a targeted subset of
the tests runs in the copy. A mutant is caught when a test fails; it survives when every test
of its subset passes. The unmutated copy runs every subset first: a subset that fails without a
bug would make every "catch" meaningless.

    .venv/bin/python tools/mutation_check.py              # every mutant (~4 min on 2 cores)
    .venv/bin/python tools/mutation_check.py --list
    .venv/bin/python tools/mutation_check.py --only body-clip native-row-range --all-failures

Prints one line per mutant (caught / SURVIVED, the test that caught it; with --all-failures the
subset runs to the end and every failing test is counted) and exits 1 when a mutant
survives or the baseline fails. Run it before a release, and after changing the tests of the
ops: the suite must still catch every mutant listed here.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = Path("stamp_onnx/native/libstamp_onnx_ops.so")
TIMEOUT = 900  # seconds per pytest run

# Targeted test subsets (pytest arguments): the tests that claim to hold each part to its oracle.
HARD = "tests/test_hard_tokens.py"
NUMPY = (HARD, "tests/test_quant.py")
BODY = (HARD, "tests/test_ops.py")
NATIVE = (HARD, "tests/test_native.py", "-k", "not feature_rotation")  # FeatureRotation has no mutant here
INTEGER = ("tests/test_integer.py",)  # --target integer: the codes, their ops and the integer layers
ALLOCATION = ("tests/test_bit_allocation.py", "-k", "not rewrite and not integer and not cli")  # the allocation's math


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the project root
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]
    what: str

    @property
    def native(self) -> bool:
        return self.path.startswith("native/")


MUTANTS = [
    Mutant("numpy-clip", "stamp_onnx/core/quant.py",
           "    q = np.clip(np.round(x / scale) + zp, 0, qmax)\n", "    q = np.round(x / scale) + zp\n",
           NUMPY, "numpy quantizer: no clip of q to [0, qmax]"),
    Mutant("numpy-range", "stamp_onnx/core/quant.py",
           "rmin = np.minimum(x.min(axis=-1, keepdims=True), dtype(0))", "rmin = x.min(axis=-1, keepdims=True)",
           NUMPY, "numpy quantizer: rmin no longer includes 0"),
    Mutant("torch-clip", "stamp_onnx/core/quant.py",
           "q = torch.clamp(torch.round(x / scale) + zp, 0, qmax)", "q = torch.round(x / scale) + zp",
           NUMPY, "torch quantizer (the PyTorch reference): no clip of q"),
    Mutant("body-clip", "stamp_onnx/graph/ops.py",
           "    if bits not in (4, 8, 16):\n", "    if False:\n",
           BODY, "ONNX body: no clip to [0, qmax] for 2, 3, 5, 6, 7 bits"),
    Mutant("body-clip-high", "stamp_onnx/graph/ops.py",
           'high = body.op("Mul", [body.op("Sub", [fqmax, zp_float]), scale])',
           'high = body.op("Mul", [body.op("Sub", [body.op("Add", [fqmax, fone]), zp_float]), scale])',
           BODY, "ONNX body: the upper clip bound one step too high"),
    Mutant("body-range", "stamp_onnx/graph/ops.py",
           'rmin = body.op("Min", [body.op("ReduceMin", [flat, _i64(body, 1)], keepdims=0), fzero])',
           'rmin = body.op("ReduceMin", [flat, _i64(body, 1)], keepdims=0)',
           BODY, "ONNX body: rmin no longer includes 0"),
    Mutant("body-split", "stamp_onnx/graph/ops.py",
           "end = body.const(np.array([ends[0]], np.int64))",
           "end = body.const(np.array([ends[0] + 1], np.int64))",
           BODY, "ONNX body: one token too many at hp_bits"),
    Mutant("body-mid-split", "stamp_onnx/graph/ops.py",
           "start, end = end, body.const(np.array([ends[i]], np.int64))",
           "start, end = end, body.const(np.array([ends[i] - (i < len(ends) - 1)], np.int64))",
           BODY, "ONNX body: a middle tier one token short"),
    Mutant("native-mid-tier", "native/qdq.h",
           "if (pos < mid_ends[i]) return mid_bits[i];", "if (pos <= mid_ends[i]) return mid_bits[i];",
           NATIVE, "native TokenQDQ: a middle tier one token too long"),
    Mutant("allocation-pool", "stamp_onnx/core/allocation.py",
           "while len(means) > 1 and means[-2] < means[-1]:", "while len(means) > 1 and means[-2] < 0.5 * means[-1]:",
           ALLOCATION, "energy allocation: the non-increasing fit pools too little"),
    Mutant("allocation-backtrack", "stamp_onnx/core/allocation.py",
           "        r -= int(extra[picked[i]])\n", "",
           ALLOCATION, "energy allocation: the backtracking forgets the bits a token took"),
    Mutant("native-row-range", "native/qdq.h",
           "  float lo = 0.0f, hi = 0.0f;\n  int nan = 0;", "  float lo = x[0], hi = x[0];\n  int nan = 0;",
           NATIVE, "native TokenQDQ: per-row range no longer includes 0"),
    Mutant("native-haar-range", "native/transforms.h",
           "float lo0 = 0.0f, hi0 = 0.0f, lo1 = 0.0f, hi1 = 0.0f;",
           "float lo0 = INFINITY, hi0 = -INFINITY, lo1 = INFINITY, hi1 = -INFINITY;",
           NATIVE, "native fused Haar TransformQDQ: coefficient ranges no longer include 0"),
    Mutant("native-clip", "native/qdq.h",
           "    q = q > qmax ? qmax : q;\n", "",
           NATIVE, "native QDQ: no upper clip of q"),
    Mutant("native-rounding", "native/qdq.h",
           "float q = std::nearbyint(x[j] / scale) + zp;", "float q = std::round(x[j] / scale) + zp;",
           NATIVE, "native QDQ: rounds half away from zero"),
    Mutant("native-reciprocal", "native/qdq.h",
           "float q = std::nearbyint(x[j] / scale) + zp;", "float q = std::nearbyint(x[j] * (1.0f / scale)) + zp;",
           NATIVE, "native QDQ: multiplies by 1 / scale instead of dividing"),
    Mutant("native-haar-sign", "native/transforms.h",
           "    y0[j] = (u + v) * k;\n    y1[j] = (u - v) * k;\n", "    y0[j] = (u + v) * k;\n    y1[j] = (v - u) * k;\n",
           NATIVE, "native Haar (SequenceTransform): detail coefficients negated"),
    Mutant("native-haar-last-bit", "native/transforms.h",
           "    y0[j] = (u + v) * k;\n    y1[j] = (u - v) * k;\n", "    y0[j] = u * k + v * k;\n    y1[j] = (u - v) * k;\n",
           NATIVE, "native Haar (SequenceTransform, haar2d): low band off in the last bit (u k + v k)"),
    Mutant("native-codes-fold", "native/qdq.h",
           "const bool folded = qmax <= 127.0f;", "const bool folded = qmax < 127.0f;",
           INTEGER, "native integer codes: 7-bit tokens not folded around 128 (c = q, extra columns 128)"),
    Mutant("native-codes-column", "native/qdq.h",
           "folded ? 128 : static_cast<int>(zp)", "folded ? 128 : 128",
           INTEGER, "native integer codes: an 8-bit token's zero point not copied into the extra columns"),
    Mutant("numpy-zero-point-rows", "stamp_onnx/core/weights.py",
           "rest = -np.asarray(q, dtype=np.int64).sum(axis=0)", "rest = -np.asarray(q[1:], dtype=np.int64).sum(axis=0)",
           INTEGER, "zero-point rows miss the first input feature's codes"),
    Mutant("body-haar-last-bit", "stamp_onnx/graph/ops.py",
           'low = body.op("Mul", [body.op("Add", [even, odd]), c])',
           'low = body.op("Add", [body.op("Mul", [even, c]), body.op("Mul", [odd, c])])',
           BODY, "ONNX body Haar: low band off in the last bit (u k + v k)"),
]


@dataclasses.dataclass
class Result:
    name: str
    outcome: str  # "caught", "SURVIVED", "build failed", "error", "passed"/"FAILED" for the baseline
    seconds: float
    failing: list[str]
    detail: str = ""


def project_files(root: Path) -> list[str]:
    """The files git tracks or would track (uncommitted and new files included), as they are on disk."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, check=True,
                            capture_output=True).stdout.decode().split("\0")
    return [name for name in listed if name and (root / name).is_file()]


def make_copy(root: Path, dest: Path) -> None:
    """Copy the project (modification times kept, so build_native.sh rebuilds only what changed).

    ``passes/`` is installed as ``stamp_onnx.passes`` (a package-dir mapping of the editable
    install); the copy gets it at that place too, so that PYTHONPATH=copy imports nothing from
    the original project.
    """
    for name in project_files(root):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    if (root / LIBRARY).is_file():
        (dest / LIBRARY).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / LIBRARY, dest / LIBRARY)
    shutil.copytree(dest / "passes", dest / "stamp_onnx" / "passes")


def apply(dest: Path, mutant: Mutant) -> None:
    path = dest / mutant.path
    text = path.read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise SystemExit(f"mutation_check: mutant {mutant.name}: the text to replace occurs {count} times in "
                         f"{mutant.path} (expected once): update the mutant to the current source")
    path.write_text(text.replace(mutant.old, mutant.new))


def environment(dest: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("STAMP_NATIVE_LIBRARY", "PYTHONPATH")}
    env["PYTHONPATH"] = str(dest)
    return env


def build(dest: Path, headers: Path, *, must_compile: bool) -> tuple[bool, str]:
    """tools/build_native.sh in the copy (a no-op when its library is newer than every source).

    ``must_compile``: a native mutant, whose library must really be rebuilt from the edit.
    """
    done = subprocess.run(["bash", "tools/build_native.sh", "--headers", str(headers)], cwd=dest,
                          capture_output=True, text=True, timeout=TIMEOUT)
    log = dest / "build" / "native.log"
    detail = (done.stderr.strip() + "\n" + (log.read_text()[-2000:] if log.is_file() else "")).strip()
    if done.returncode == 0 and must_compile and "built" not in done.stdout:
        return False, "the library was not rebuilt after the edit (build_native.sh found it up to date)"
    return done.returncode == 0, detail


def check_imports(dest: Path) -> None:
    """The copy's modules and library are the ones imported, not the original project's."""
    code = ("import stamp_onnx, stamp_onnx.passes\nfrom stamp_onnx.graph import runtime\n"
            "print(stamp_onnx.__file__); print(stamp_onnx.passes.__file__); print(runtime.native_library())")
    out = subprocess.run([sys.executable, "-c", code], cwd=dest, env=environment(dest), capture_output=True,
                         text=True, check=True).stdout.split()
    outside = [p for p in out if not p.startswith(str(dest))]
    if outside:
        raise SystemExit(f"mutation_check: the copy in {dest} imports {outside[0]}: the check would test the "
                         "original code; is stamp_onnx installed in a way that overrides PYTHONPATH?")


def run_tests(dest: Path, tests: tuple[str, ...], first_failure: bool) -> tuple[int, list[str], str]:
    """pytest on ``tests`` in the copy: (exit code, failing test ids, tail of the output)."""
    missing = [t for t in tests if t.startswith("tests/") and not (dest / t.split("::")[0]).exists()]
    if missing:
        raise SystemExit(f"mutation_check: no test file {missing[0]}: update the subsets in tools/mutation_check.py")
    args = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-o", "addopts=", *tests]
    if first_failure:
        args.append("-x")
    done = subprocess.run(args, cwd=dest, env=environment(dest), capture_output=True, text=True, timeout=TIMEOUT)
    failing = [m.group(2) for m in re.finditer(r"^(FAILED|ERROR) (\S+)", done.stdout, re.MULTILINE)]
    return done.returncode, failing, "\n".join(done.stdout.splitlines()[-15:])


def run_mutant(mutant: Mutant | None, tests: tuple[str, ...], headers: Path, keep: bool, first_failure: bool) -> Result:
    start = time.perf_counter()
    name = mutant.name if mutant else "baseline"
    dest = Path(tempfile.mkdtemp(prefix=f"stamp-mutant-{name}-"))
    try:
        make_copy(ROOT, dest)
        if mutant:
            apply(dest, mutant)
        built, log = build(dest, headers, must_compile=mutant is not None and mutant.native)
        if not built:
            outcome = "build failed" if mutant and mutant.native else "error"
            return Result(name, outcome, time.perf_counter() - start, [], log)
        check_imports(dest)
        code, failing, tail = run_tests(dest, tests, first_failure)
        if mutant is None:
            outcome = "passed" if code == 0 else "FAILED"
        else:
            outcome = {0: "SURVIVED", 1: "caught"}.get(code, "error")
        return Result(name, outcome, time.perf_counter() - start, failing, "" if code in (0, 1) else tail)
    finally:
        if keep:
            print(f"  (copy kept in {dest})")
        else:
            shutil.rmtree(dest, ignore_errors=True)


def default_headers() -> Path:
    """Where the set-up put onnxruntime's headers (tools/build_native.sh: .venv/ort-headers)."""
    return ROOT / ".venv" / "ort-headers"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutants only")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--headers", type=Path, default=default_headers(),
                        help="onnxruntime headers for the native builds (default: .venv/ort-headers, as the set-up fetched them)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copies (their paths are printed)")
    parser.add_argument("--all-failures", action="store_true",
                        help="run each subset to the end and list every failing test (default: stop at the first)")
    args = parser.parse_args(argv)
    by_name = {m.name: m for m in MUTANTS}
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:20} {m.path:24} {m.what}")
        return 0
    unknown = [n for n in args.only or [] if n not in by_name]
    if unknown:
        parser.error(f"no mutant named {unknown[0]!r} (see --list)")
    mutants = [by_name[n] for n in args.only] if args.only else MUTANTS
    if any(m.native for m in mutants) and not args.headers.exists():
        parser.error(f"no onnxruntime headers in {args.headers}: run the set-up (make setup) or pass --headers DIR")
    print(f"baseline: every subset on the unmutated copy ({len(mutants)} mutants to run)", flush=True)
    for subset in dict.fromkeys(m.tests for m in mutants):
        baseline = run_mutant(None, subset, args.headers, args.keep, first_failure=False)
        print(f"  {baseline.outcome:9} {baseline.seconds:4.0f} s  {' '.join(subset)}", flush=True)
        if baseline.outcome != "passed":
            print(f"the unmutated copy fails its tests: {baseline.failing[:5]}\n{baseline.detail}")
            return 1
    results = []
    for mutant in mutants:
        result = run_mutant(mutant, mutant.tests, args.headers, args.keep, first_failure=not args.all_failures)
        results.append(result)
        shown = ", ".join(result.failing[:3]) + (f" (+{len(result.failing) - 3} more)" if len(result.failing) > 3 else "")
        print(f"{mutant.name:20} {result.outcome:9} {result.seconds:4.0f} s  {len(result.failing):3} failing  {shown}",
              flush=True)
        if args.all_failures and result.failing:
            files = collections.Counter(name.split("::")[0] for name in result.failing)
            print("    failing by file: " + ", ".join(f"{f} {n}" for f, n in files.items()))
        if result.detail:
            print("    " + result.detail.replace("\n", "\n    "))
    survived = [r.name for r in results if r.outcome != "caught"]
    print(f"{len(results) - len(survived)} of {len(results)} mutants caught" +
          (f"; not caught: {', '.join(survived)}" if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
