"""Running rewritten models in onnxruntime, with the native kernels when they were built.

The set-up builds ``stamp_onnx/native/libstamp_onnx_ops.so`` (tools/build_native.sh) when a
C++ compiler and onnxruntime's headers can be had. Registered in a session, its kernels run the
``ai.stamp`` ops in place of the model-local function bodies (onnxruntime prefers a registered
kernel to a function of the same domain and name), so one model file runs either way. Without
the library every session falls back to the function bodies, which need nothing but stock
onnxruntime.

``STAMP_NATIVE_LIBRARY`` names another build of the library; set it to an empty string to
disable the native kernels everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import onnx
import onnxruntime as ort

from stamp_onnx.errors import ConfigError, StampError, first_line

LIBRARY_NAME = "libstamp_onnx_ops.so"
ENV_VAR = "STAMP_NATIVE_LIBRARY"
PROVIDERS = ["CPUExecutionProvider"]
MATMULNBITS_ACCURACY = "session.qdq_matmulnbits_accuracy_level"
NATIVE = "native"
FUNCTION_BODIES = "function bodies"
PROTOBUF_LIMIT = 2**31 - 1  # bytes: a model rebuilt in memory must stay below


def native_library() -> Path | None:
    """The path of the native kernel library, or None when it was not built (or is disabled)."""
    override = os.environ.get(ENV_VAR)
    if override is not None:
        return Path(override) if override and Path(override).is_file() else None
    path = Path(__file__).resolve().parents[1] / "native" / LIBRARY_NAME
    return path if path.is_file() else None


def session_options(native: bool = True) -> ort.SessionOptions:
    """SessionOptions with the native kernels registered when ``native`` and the library exists.

    ``native=False`` gives plain options: the ai.stamp ops run as their function bodies.
    Both keep weight-only quantized layers in float arithmetic: onnxruntime fuses an int4/int8
    DequantizeLinear + MatMul into MatMulNBits, which by default also quantizes the activation
    to int8 (a second quantizer on top of the model's own); accuracy level 1 computes in fp32.
    """
    options = ort.SessionOptions()
    options.add_session_config_entry(MATMULNBITS_ACCURACY, "1")
    library = native_library() if native else None
    if library is not None:
        try:
            options.register_custom_ops_library(str(library))
        except Exception as err:  # onnxruntime raises its own Fail/RuntimeError kinds
            raise ConfigError(
                f"the native kernel library {library} does not load in this onnxruntime ({err}); "
                "rebuild it with tools/build_native.sh or pass --no-native"
            ) from err
    return options


def kernels(native: bool = True) -> str:
    """What runs the ai.stamp ops in a session made with ``native``: NATIVE or FUNCTION_BODIES."""
    return NATIVE if native and native_library() is not None else FUNCTION_BODIES


def session(model: str | Path | bytes, native: bool = True) -> ort.InferenceSession:
    """An onnxruntime CPU session for ``model`` (a path or serialized bytes)."""
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, session_options(native), providers=PROVIDERS)


def session_exposing(
    proto: onnx.ModelProto, names: Iterable[str], *, native: bool, source: str | Path, what: str,
    error: type[StampError],
) -> ort.InferenceSession:
    """A session of ``proto`` in which every value in ``names`` is also a graph output (float32).

    The one way calibration and the per-layer check observe a model's activations: the model
    is rebuilt in memory (so it must stay under protobuf's 2 GiB) and run with the extra
    outputs. ``error`` (naming ``source`` and ``what`` needs it) when it is too large or does
    not load.
    """
    existing = {o.name for o in proto.graph.output}
    for name in dict.fromkeys(names):
        if name not in existing:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    if proto.ByteSize() > PROTOBUF_LIMIT:
        raise error(f"{source} is over 2 GB: {what} builds the model in memory and cannot take it")
    try:
        return session(proto.SerializeToString(), native)
    except StampError:
        raise
    except Exception as err:  # onnxruntime raises its own Fail/RuntimeError kinds
        raise error(f"onnxruntime cannot load {source} for {what}: {first_line(err)}") from err
