"""Reading and writing ONNX files safely: clear errors, atomic writes, external data when large.

The input file is only ever read. Output is written to a temporary name in the destination
folder, checked with onnx.checker (full_check), then renamed into place, so a failed run
leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir

from stamp_onnx.errors import ConfigError, ModelLoadError, RewriteError, StampError, first_line
from stamp_onnx.external_data import check_external_data, external_tensors, write_external_data

logger = logging.getLogger(__name__)

# Protobuf cannot hold more than 2 GiB; stay clear of it.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def load_model(path: str | Path) -> ir.Model:
    """Load an ONNX file (external data stays on disk until a pass reads it)."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file; pass the path of an .onnx model")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a directory; pass the path of an .onnx model file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path} is empty; pass a valid .onnx model")
    try:
        model = ir.load(path)
    except Exception as err:  # protobuf and onnx raise many kinds
        raise ModelLoadError(f"{path} is not a readable ONNX model ({first_line(err)})") from err
    if model.graph.num_nodes() == 0:
        raise ModelLoadError(f"{path} holds no graph nodes: it is not an ONNX model or it is empty")
    check_external_data(model, path)
    try:  # by path: the C++ checker reads the graph only, however large the weights
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as err:
        raise ModelLoadError(
            f"{path} fails onnx.checker ({first_line(err)}); fix or re-export the model"
        ) from err
    return model


def read_header(path: str | Path, error: type[StampError] = ModelLoadError) -> onnx.ModelProto:
    """The graph and metadata of an ONNX file, without its external data; ``error`` on failure."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such file; pass the path of an .onnx model file")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf and onnx raise many kinds
        raise error(f"{path} is not a readable ONNX model ({first_line(err)})") from err


def check_output_path(in_path: str | Path, out_path: str | Path) -> Path:
    """Refuse to overwrite the input or to write into a folder that does not exist."""
    out = Path(out_path)
    if out.exists() and Path(in_path).exists() and out.resolve() == Path(in_path).resolve():
        raise ConfigError(f"output {out} is the input file; choose a different -o path")
    if not out.parent.exists():
        raise ConfigError(f"output folder {out.parent} does not exist; create it first")
    if out.is_dir():
        raise ConfigError(f"output {out} is a directory; give a file name ending in .onnx")
    return out


def save_model(model: ir.Model, out_path: str | Path) -> Path:
    """Check and write ``model`` atomically.

    The weights go to ``<name>.data`` next to the output when the input kept them in external
    data (the format is kept, and they are copied file to file, never loaded) or when they
    exceed ~1.8 GB; otherwise the output is one file.
    """
    out = Path(out_path)
    data_name = f"{out.name}.data"
    sources = {Path(tensor.path).resolve() for _, tensor in external_tensors(model)}
    if (out.parent / data_name).resolve() in sources:
        raise ConfigError(
            f"writing {out} would overwrite the input's external data {data_name}; choose another -o name"
        )
    external = bool(sources) or _initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        tmp_model = Path(tmp) / out.name
        if external:
            replaced = write_external_data(model, Path(tmp), data_name)
            try:
                ir.save(model, tmp_model)
            finally:
                for value, tensor in replaced.items():
                    value.const_value = tensor
        else:
            ir.save(model, tmp_model)
        try:
            onnx.checker.check_model(str(tmp_model), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
            raise RewriteError(
                f"the rewritten model fails onnx.checker (full check): {first_line(err)}; "
                "the input model's own shapes or types may be inconsistent: check it with onnx.checker"
            ) from err
        if external:
            os.replace(Path(tmp) / data_name, out.parent / data_name)
        os.replace(tmp_model, out)
    logger.info("wrote %s%s", out, f" (+ {data_name})" if external else "")
    return out


def _initializer_bytes(model: ir.Model) -> int:
    total = 0
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is not None:
            with contextlib.suppress(Exception):
                total += tensor.nbytes
    return total
