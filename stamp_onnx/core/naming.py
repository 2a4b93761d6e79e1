"""Layer names for ONNX nodes, matching the PyTorch module names where the exporter recorded them.

torch.onnx's dynamo exporter stores each node's module scopes in metadata, e.g.
``pkg.torch.onnx.name_scopes = "['', 'model', 'model.layers.0.mlp.down_proj', 'linear_5']"``;
the second-to-last entry is the module that called the op (``model.layers.0.mlp.down_proj``).
Any other model falls back to the node name.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping

NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
_CALL_SUFFIX = re.compile(r"#\d+$")


def numbered_layer_name(base: str, call: int) -> str:
    """The name of the ``call``-th (1-based) MatMul of one module: 'fc', 'fc#2', 'fc#3', ..."""
    return base if call == 1 else f"{base}#{call}"


def module_of_layer(layer: str) -> str:
    """The module a layer name belongs to: the inverse of :func:`numbered_layer_name`."""
    return _CALL_SUFFIX.sub("", layer)


def layer_name_from_metadata(metadata_props: Mapping[str, str], fallback: str) -> str:
    """The module name recorded by the exporter, else ``fallback``."""
    raw = metadata_props.get(NAME_SCOPES_KEY)
    if not raw:
        return fallback
    try:
        scopes = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return fallback
    if not isinstance(scopes, list) or len(scopes) < 2 or not isinstance(scopes[-2], str):
        return fallback
    return scopes[-2] or fallback
