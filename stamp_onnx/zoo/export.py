"""Export a loaded PyTorch model to ONNX (dynamo exporter) with dynamic batch and sequence axes.

The HF module itself is exported, called with keyword inputs, so the exporter's name scopes
(``pkg.torch.onnx.name_scopes`` on every node) start at the module's own children: the
layer name :func:`stamp_onnx.core.naming.layer_name_from_metadata` reads off a linear MatMul is
exactly its ``named_modules()`` name (``model.layers.0.mlp.down_proj``, ``lm_head``). A
wrapper module would prefix every name with its attribute; :func:`export_onnx` checks the
names and logs any linear layer it cannot find.

Graph: text models take ``input_ids`` (+ ``attention_mask`` for encoders), int64 (batch,
sequence); image and speech models take their own input (``pixel_values``, ``input_features``)
with only the batch axis dynamic. One output, ``logits`` (causal LM) or ``last_hidden_state``
(encoder); no KV cache.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common
import torch

from stamp_onnx.core.naming import layer_name_from_metadata
from stamp_onnx.errors import ExportError, first_line
from stamp_onnx.graph.contract import SOURCE_KEY
from stamp_onnx.zoo.models import LoadedModel, linear_layer_names, with_attention_mask

logger = logging.getLogger(__name__)

TRACE_BATCH = 2  # not 1: torch.export would specialise a size-1 axis to a constant
TRACE_SEQ_LEN = 16


def export_onnx(
    loaded: LoadedModel,
    out_path: str | Path,
    *,
    seq_len: int = TRACE_SEQ_LEN,
    opset: int | None = None,
) -> Path:
    """Export ``loaded`` to ``out_path``; returns the path. Tensors go to external data over 2 GB.

    ``seq_len`` is only the traced length of a text model: its sequence axis is dynamic
    (1..max_length). ``opset=None`` keeps the exporter's default opset.
    """
    out = Path(out_path)
    if not out.parent.is_dir():
        raise ExportError(f"output folder {out.parent} does not exist; create it first")
    batch = torch.export.Dim("batch", min=1, max=4096)
    if loaded.samples is not None:
        kwargs = {k: torch.from_numpy(v) for k, v in loaded.samples(TRACE_BATCH, 0).feeds.items()}
        dynamic_shapes: dict[str, dict[int, torch.export.Dim]] = {k: {0: batch} for k in kwargs}
    else:
        if not 2 <= seq_len <= loaded.max_length:
            raise ExportError(f"trace seq_len={seq_len} must be in 2..{loaded.max_length} for {loaded.name}")
        ids = np.random.default_rng(0).integers(0, loaded.vocab_size, size=(TRACE_BATCH, seq_len), dtype=np.int64)
        kwargs = {k: torch.from_numpy(v) for k, v in with_attention_mask(loaded, ids).items()}
        sequence = torch.export.Dim("sequence", min=1, max=loaded.max_length)
        dynamic_shapes = {k: {0: batch, 1: sequence} for k in kwargs}
    # The exporter warns once per torchvision op that torchvision is absent: not needed here.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    start = time.perf_counter()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # Inputs sharing one Dim make the exporter warn that it keeps the name: harmless.
            warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
            # torch's pytree deprecation noise, raised inside the exporter, not by our code.
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            program = torch.onnx.export(
                loaded.module,
                (),
                kwargs=kwargs,
                dynamo=True,
                input_names=list(kwargs),
                output_names=[loaded.output_name],
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
        if program is None:
            raise ExportError(f"torch.onnx.export returned no program for {loaded.name}")
        _keep_first_output(program.model, loaded.output_name)
        program.model.metadata_props[SOURCE_KEY] = loaded.name
        check_layer_names(program.model, linear_layer_names(loaded.module))
        program.save(out, external_data=None)  # None: external data only when over 2 GB
    except ExportError:
        raise
    except Exception as err:
        raise ExportError(f"exporting {loaded.name} to ONNX failed: {first_line(err)}") from err
    logger.info("exported %s to %s in %.1f s", loaded.name, out, time.perf_counter() - start)
    return out


def matmul_layer_names(model: ir.Model) -> list[str]:
    """The layer name of every MatMul/Gemm in the main graph, in graph order."""
    return [
        layer_name_from_metadata(node.metadata_props, node.name or "")
        for node in model.graph
        if node.op_type in ("MatMul", "Gemm") and node.domain in ("", "ai.onnx")
    ]


def check_layer_names(model: ir.Model, expected: list[str]) -> list[str]:
    """Linear layers of the torch model that no MatMul/Gemm is named after (logged, returned)."""
    found = set(matmul_layer_names(model))
    missing = [name for name in expected if name not in found]
    if missing:
        logger.warning(
            "%d of %d linear layers have no MatMul/Gemm named after them (e.g. %s); "
            "validation cannot match them", len(missing), len(expected), missing[0],
        )
    return missing


def _keep_first_output(model: ir.Model, name: str) -> None:
    """Drop outputs beyond the first (e.g. a pooler's) and name the kept one."""
    graph = model.graph
    if not graph.outputs:
        raise ExportError("the exported graph has no outputs")
    extra = len(graph.outputs) - 1
    if extra:
        logger.info("dropping %d extra graph output(s): %s", extra, [v.name for v in graph.outputs[1:]])
        del graph.outputs[1:]
        ir.passes.common.RemoveUnusedNodesPass()(model)
    graph.outputs[0].name = name
