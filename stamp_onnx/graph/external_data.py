"""External tensor data: checked before anything reads it, copied without passing through Python.

A rewrite that only adds activation quantizers leaves every weight as it was, so the output's
data file is the input's weights byte for byte. ``write_external_data`` copies those byte
ranges file to file in the kernel (``os.copy_file_range``): the weights are never mapped or
read into the process, which keeps peak memory near the size of the graph itself whatever
the size of the model. Tensors that live in memory (new or changed by a pass) are written
from memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import onnx_ir as ir

from stamp_onnx.errors import ModelLoadError

# Tensors up to this size stay inside the .onnx file (scales, zero points, shapes).
INLINE_LIMIT = 1024
# Large tensors start at 64 KiB boundaries so that runtimes can map them directly.
ALIGNMENT = 1 << 16
ALIGN_THRESHOLD = 1 << 20
_CHUNK = 1 << 24


def _initializers(model: ir.Model) -> Iterator[ir.Value]:
    for graph in model.graphs():
        yield from graph.initializers.values()


def external_tensors(model: ir.Model) -> Iterator[tuple[ir.Value, ir.ExternalTensor]]:
    """Every initializer (main graph and subgraphs) whose data is in an external file."""
    for value in _initializers(model):
        if isinstance(value.const_value, ir.ExternalTensor):
            yield value, value.const_value


def check_external_data(model: ir.Model, path: Path) -> None:
    """Every external tensor must live in an existing file inside the model's folder.

    A location that is absolute, climbs out with '..', or resolves (through symlinks) outside
    the folder is refused before anything reads it: a downloaded model must not make the tool
    read arbitrary files. The tensor's byte range must fit in its file.
    """
    folder = path.resolve().parent
    for value, tensor in external_tensors(model):
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
        end = (tensor.offset or 0) + _length(tensor)
        if target.stat().st_size < end:
            raise ModelLoadError(
                f"{path}: external data file {location!r} is too short for tensor {value.name!r} "
                f"({target.stat().st_size} bytes, need {end}); the download may be incomplete"
            )


def _length(tensor: ir.ExternalTensor) -> int:
    return tensor.length if tensor.length is not None else tensor.nbytes


def write_external_data(model: ir.Model, folder: Path, data_name: str) -> dict[ir.Value, ir.TensorProtocol]:
    """Write every initializer over INLINE_LIMIT bytes to ``folder / data_name``; inline the rest.

    The model's values are pointed at the new file (as ``data_name``, relative to the model);
    the tensors they held before are returned so that the caller can put them back.
    """
    replaced: dict[ir.Value, ir.TensorProtocol] = {}
    with (folder / data_name).open("wb") as out:
        for value in _initializers(model):
            tensor = value.const_value
            if tensor is None:
                continue
            if tensor.nbytes <= INLINE_LIMIT:
                if isinstance(tensor, ir.ExternalTensor):  # small: inline it, read from the input
                    replaced[value] = tensor
                    value.const_value = ir.Tensor(tensor.numpy().copy(), dtype=tensor.dtype, name=value.name)
                    tensor.release()
                continue
            offset = out.tell()
            if tensor.nbytes >= ALIGN_THRESHOLD and offset % ALIGNMENT:
                offset += ALIGNMENT - offset % ALIGNMENT
                out.truncate(offset)
                out.seek(offset)
            if isinstance(tensor, ir.ExternalTensor):
                length = _length(tensor)
                _copy_range(Path(tensor.path), tensor.offset or 0, length, out)
            else:
                data = tensor.tobytes()
                length = len(data)
                out.write(data)
            replaced[value] = tensor
            value.const_value = ir.ExternalTensor(
                data_name, offset, length, dtype=tensor.dtype, shape=ir.Shape(tensor.shape.numpy()),
                name=value.name or "", base_dir=folder,
            )
    return replaced


def _copy_range(source: Path, offset: int, length: int, out: BinaryIO) -> None:
    """Append ``length`` bytes of ``source`` from ``offset`` to ``out``, in the kernel when it can."""
    out.flush()
    with source.open("rb") as src:
        done = 0
        try:
            while done < length:
                copied = os.copy_file_range(src.fileno(), out.fileno(), length - done, offset + done)
                if copied == 0:
                    break
                done += copied
        except OSError:  # another file system or no kernel support: copy through a small buffer
            pass
        out.seek(0, os.SEEK_END)
        src.seek(offset + done)
        while done < length:
            chunk = src.read(min(_CHUNK, length - done))
            if not chunk:
                raise ModelLoadError(f"external data file {source} ended early; the download may be incomplete")
            out.write(chunk)
            done += len(chunk)
