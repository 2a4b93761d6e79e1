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
    _check_dimensions(model, path)
    return model


def _check_dimensions(model: ir.Model, path: Path) -> None:
    """Refuse negative dimensions: onnx's C++ shape inference aborts the process on some of them."""
    values = [*model.graph.inputs, *model.graph.outputs, *(v for node in model.graph for v in node.outputs)]
    for value in values:
        for dim in value.shape or ():
            if isinstance(dim, int) and dim < 0:
                raise ModelLoadError(
                    f"{path}: value {value.name!r} declares dimension {dim}; a dimension must be >= 0 or "
                    "symbolic: fix or re-export the model"
                )


def check_external_data(model: ir.Model, path: Path) -> None:
    """Every external tensor must live in an existing file inside the model's folder.

    A location that is absolute, climbs out with '..', or resolves (through symlinks) outside
    the folder is refused before anything reads it: a downloaded model must not make the tool
    read arbitrary files. The tensor's byte range must fit in its file.
    """
    folder = path.resolve().parent
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if not isinstance(tensor, ir.ExternalTensor):
            continue
        location = str(tensor.location)
        target = (folder / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(folder):
            raise ModelLoadError(
                f"{path}: tensor {value.name!r} points to external data {location!r} outside the model's "
                "folder; refusing to read it (move the data next to the model and fix its location)"
            )
        if not target.is_file():
            raise ModelLoadError(
                f"{path}: external data file {location!r} of tensor {value.name!r} is missing; "
                "copy it next to the model"
            )
        end = (tensor.offset or 0) + (tensor.length or tensor.nbytes)
        if target.stat().st_size < end:
            raise ModelLoadError(
                f"{path}: external data file {location!r} is too short for tensor {value.name!r} "
                f"({target.stat().st_size} bytes, need {end}); the download may be incomplete"
            )


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
    """Check and write ``model`` atomically; tensors go to ``<name>.data`` when over ~1.8 GB."""
    out = Path(out_path)
    external = _initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD
    data_name = f"{out.name}.data" if external else None
    if data_name is None:
        # Tensors still in the input's external data file would be written as references
        # relative to the wrong folder: read them in (the model is small enough).
        ir.external_data.load_to_model(model)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        tmp_model = Path(tmp) / out.name
        ir.save(model, tmp_model, external_data=data_name)
        try:
            onnx.checker.check_model(str(tmp_model), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
            raise RewriteError(
                f"the rewritten model fails onnx.checker (full check): {first_line(err)}; "
                "the input model's own shapes or types may be inconsistent: check it with onnx.checker"
            ) from err
        if data_name is not None:
            os.replace(Path(tmp) / data_name, out.parent / data_name)
        os.replace(tmp_model, out)
    logger.info("wrote %s%s", out, f" (+ {data_name})" if data_name else "")
    return out


def _initializer_bytes(model: ir.Model) -> int:
    total = 0
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is not None:
            with contextlib.suppress(Exception):
                total += tensor.nbytes
    return total
