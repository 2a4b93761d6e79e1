"""Reading and writing ONNX files safely: clear errors, atomic writes, external data when large.

The input file is only ever read. Output is written to a temporary name in the destination
folder, checked with onnx.checker (full_check), then renamed into place, so a failed run
leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from stamp_onnx.errors import ConfigError, ModelLoadError, RewriteError, StampError, first_line
from stamp_onnx.graph.external_data import (
    check_external_data,
    external_tensors,
    write_external_data,
)

logger = logging.getLogger(__name__)

# Protobuf cannot hold more than 2 GiB; stay clear of it.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def load_model(path: str | Path, error: type[StampError] = ModelLoadError) -> ir.Model:
    """Load an ONNX file (external data stays on disk until a pass reads it); ``error`` on failure."""
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: no such file; pass the path of an .onnx model")
    if path.is_dir():
        raise error(f"{path} is a directory; pass the path of an .onnx model file "
                    "(or of an onnxruntime-genai folder, which holds genai_config.json)")
    if path.stat().st_size == 0:
        raise error(f"{path} is empty; pass a valid .onnx model")
    try:
        model = ir.load(path)
    except Exception as err:  # protobuf and onnx raise many kinds
        raise error(f"{path} is not a readable ONNX model ({first_line(err)})") from err
    if model.graph.num_nodes() == 0:
        raise error(f"{path} holds no graph nodes: it is not an ONNX model or it is empty")
    check_external_data(model, path)
    try:  # by path: the C++ checker reads the graph only, however large the weights
        check_file(path)
    except onnx.checker.ValidationError as err:
        raise error(
            f"{path} fails onnx.checker ({first_line(err)}); fix or re-export the model"
        ) from err
    return model


def load_arrays(path: str | Path, what: str, hint: str) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, by name; ConfigError naming ``what`` the file is, with ``hint``
    (how to write one), when it is missing or unreadable."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: np.asarray(data[name]) for name in data.files}
    except FileNotFoundError as err:
        raise ConfigError(f"{what} {path} does not exist") from err
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, AttributeError) as err:
        raise ConfigError(f"{what} {path} is not a readable .npz of arrays ({first_line(err)}); {hint}") from err
    return arrays


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
    """Refuse, before any work, an output that would overwrite the input or cannot be written.

    The folder is probed by creating what :func:`save_model` creates there (its temporary
    folder, the output and its ``.data`` file inside), so that a read-only or virtual file
    system, a parent that is a file, missing permissions or a name too long fail here in one
    line rather than after the rewrite. An existing output that is not a regular file (a
    device, a pipe) is refused: the atomic rename would replace it.
    """
    out = Path(out_path)
    # os.path's tests, not Path's: they answer False where Path raises (a name too long)
    if os.path.exists(out) and os.path.exists(in_path) and os.path.samefile(out, in_path):
        raise ConfigError(f"output {out} is the input file; choose a different -o path")
    if not os.path.exists(out.parent):
        raise ConfigError(f"output folder {out.parent} does not exist; create it first")
    if not os.path.isdir(out.parent):
        raise ConfigError(f"output folder {out.parent} is a file, not a folder; choose an -o path in a folder")
    if os.path.isdir(out):
        raise ConfigError(f"output {out} is a directory; give a file name ending in .onnx")
    for path in (out, _data_path(out)):
        if os.path.exists(path) and not os.path.isfile(path):
            raise ConfigError(f"{path} exists and is not a regular file; remove it or choose another -o path")
    try:
        with _staging(out) as tmp:
            for path in (tmp / out.name, tmp / _data_path(out).name):
                path.touch()
    except OSError as err:
        raise ConfigError(
            f"cannot write {out}: creating a file in {out.parent} failed ({err.strerror or err}); "
            "choose an -o path in a writable folder"
        ) from err
    return out


# Ops that onnxruntime registers in the ONNX domain itself although ONNX does not define them;
# onnxruntime-genai's model builder writes them (e.g. SmolLM2's RMSNorm).
ORT_ONNX_DOMAIN_OPS = frozenset({"SimplifiedLayerNormalization"})
_NO_OP = re.compile(r"No Op registered for (\w+) with domain_version")


def check_file(path: str | Path, *, full_check: bool = False) -> None:
    """onnx.checker on the file at ``path``; ValidationError (or InferenceError) when it fails.

    A model whose only unknown ops are onnxruntime's ONNX-domain ones
    (:data:`ORT_ONNX_DOMAIN_OPS`) is checked with those nodes moved to onnxruntime's own domain
    for the check (the graph only, without its external data): the checker then treats them like
    any contrib op instead of refusing the file.
    """
    try:
        onnx.checker.check_model(str(path), full_check=full_check)
        return
    except onnx.checker.ValidationError as err:
        found = _NO_OP.search(str(err))
        if found is None or found.group(1) not in ORT_ONNX_DOMAIN_OPS:
            raise
    proto = onnx.load(str(path), load_external_data=False)
    moved = 0
    # the external weights become graph inputs of their type and shape: nothing is read
    weights = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    for tensor in weights:
        proto.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
        proto.graph.initializer.remove(tensor)
    for graph in _graphs(proto.graph):
        for node in graph.node:
            if node.domain in ("", "ai.onnx") and node.op_type in ORT_ONNX_DOMAIN_OPS:
                node.domain = "com.microsoft"
                moved += 1
    if not any(entry.domain == "com.microsoft" for entry in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    logger.debug("checking %s with %d onnxruntime ONNX-domain nodes as com.microsoft", path, moved)
    onnx.checker.check_model(proto, full_check=full_check)


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attribute.g)
            for sub in attribute.graphs:
                yield from _graphs(sub)


def save_model(model: ir.Model, out_path: str | Path) -> Path:
    """Check and write ``model`` atomically.

    The weights go to ``<name>.data`` next to the output when the input kept them in external
    data (the format is kept, and they are copied file to file, never loaded) or when they
    exceed ~1.8 GB; otherwise the output is one file, and a ``<name>.data`` that the output it
    replaces referenced is removed once the new file is in place (it would be stale).
    """
    out = Path(out_path)
    data = _data_path(out)
    sources = {Path(tensor.path).resolve() for _, tensor in external_tensors(model)}
    if data.resolve() in sources:
        raise ConfigError(
            f"writing {out} would overwrite the input's external data {data.name}; choose another -o name"
        )
    external = bool(sources) or _initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD
    with _staging(out) as tmp:
        tmp_model = tmp / out.name
        if external:
            replaced = write_external_data(model, tmp, data.name)
            try:
                ir.save(model, tmp_model)
            finally:
                for value, tensor in replaced.items():
                    value.const_value = tensor
        else:
            ir.save(model, tmp_model)
        try:
            check_file(tmp_model, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
            raise RewriteError(
                f"the rewritten model fails onnx.checker (full check): {first_line(err)}; "
                "the input model's own shapes or types may be inconsistent: check it with onnx.checker"
            ) from err
        stale = not external and _references(out, data)
        if external:
            os.replace(tmp / data.name, data)
        os.replace(tmp_model, out)
    if stale:
        data.unlink(missing_ok=True)
        logger.info("removed %s: the output it belonged to was replaced by a single file", data)
    logger.info("wrote %s%s", out, f" (+ {data.name})" if external else "")
    return out


def _data_path(out: Path) -> Path:
    """Where :func:`save_model` puts the external data of the output ``out``."""
    return out.with_name(f"{out.name}.data")


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A temporary folder next to ``out``: written there, the output is renamed into place."""
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        yield Path(tmp)


def _references(model_path: Path, data: Path) -> bool:
    """Whether the ONNX file at ``model_path`` (if any) keeps tensors in ``data``."""
    if not (model_path.is_file() and data.is_file()):
        return False
    try:
        model = ir.load(model_path)
    except Exception:  # not a model we can read: leave its neighbours alone
        return False
    return any(Path(tensor.path).resolve() == data.resolve() for _, tensor in external_tensors(model))


def _initializer_bytes(model: ir.Model) -> int:
    total = 0
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is not None:
            with contextlib.suppress(Exception):
                total += tensor.nbytes
    return total
