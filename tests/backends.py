"""The backends of the ai.stamp ops in the tests, and whether the native one must be present.

Three implementations of every op are held to each other: the numpy reference
(``spec.reference``), the ONNX function bodies (stock onnxruntime) and the native kernels
(stamp_onnx/native/libstamp_onnx_ops.so). The native library is optional for users, but a
test run must not turn green because it is missing: tools/build_native.sh records in
build/native.status whether this machine could build it, and :func:`native_absence` turns
that into a skip (it could not: no compiler, no headers to be had) or a failure (it could, or
nobody tried). See docs/testing.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

from stamp_onnx.graph import ops, runtime
from stamp_onnx.graph.op_models import single_op_model

BODIES = "bodies"
NATIVE = "native"
BACKENDS = (BODIES, NATIVE)
STATUS = Path(__file__).resolve().parents[1] / "build" / "native.status"


def native_absence() -> tuple[bool, str]:
    """Why the native library is absent, and whether that is an error (True) or a fact of the machine."""
    override = os.environ.get(runtime.ENV_VAR)
    if override == "":
        return False, f"native kernels disabled ({runtime.ENV_VAR} is empty)"
    if override is not None:
        return True, f"{runtime.ENV_VAR}={override} is not a file"
    status = STATUS.read_text().strip() if STATUS.is_file() else ""
    if status.startswith("unavailable:"):
        return False, f"native kernels cannot be built on this machine ({status.removeprefix('unavailable:').strip()})"
    if status.startswith("failed:"):
        return True, f"the native kernel build failed: {status.removeprefix('failed:').strip()}; fix it and rerun tools/build_native.sh"
    if status == "built":
        return True, "build/native.status says built but the library is gone: rerun tools/build_native.sh"
    return True, ("the native kernel library is missing and tools/build_native.sh has not recorded why "
                  f"({STATUS} is absent): run `make test` or tools/build_native.sh, or set {runtime.ENV_VAR}= "
                  "(empty) to test without the native kernels")


def session(spec: ops.Spec, backend: str, rank: int = 3, *, with_transformed: bool = False) -> ort.InferenceSession:
    """A one-node model of ``spec``: its function body only (BODIES), or no body at all (NATIVE: only the kernel can run it)."""
    proto = single_op_model(spec, rank, with_transformed=with_transformed, function_body=backend == BODIES)
    if backend == BODIES:
        return ort.InferenceSession(proto.SerializeToString(), providers=runtime.PROVIDERS)
    return runtime.session(proto.SerializeToString(), native=True)
