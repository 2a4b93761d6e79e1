"""Layer names for ONNX nodes, matching the PyTorch module names where the exporter recorded them.

torch.onnx's dynamo exporter stores each node's module scopes in metadata, e.g.
``pkg.torch.onnx.name_scopes = "['', 'model', 'model.layers.0.mlp.down_proj', 'linear_5']"``;
the second-to-last entry is the module that called the op (``model.layers.0.mlp.down_proj``).
Any other model falls back to the node name.

Also the names of dims: which symbolic dims look like a batch or a sequence (the token-axis
inference of the passes and ``compare``'s batch axis read them alike).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable, Mapping

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


_SEQUENCE_NAME = re.compile(
    r"seq|sequence|length|len\b|time|token|frame|step|position|past|total|^s$|^t$|^l$|^src$|^tgt$", re.IGNORECASE
)
_BATCH_NAME = re.compile(r"batch|^b$|^n$|^nb$|^bs$|^bsz$|^num_samples$", re.IGNORECASE)


def looks_like_batch(name: str) -> bool:
    """A dim name such as 'batch', 'batch_size', 'N', 'B', 'bs'."""
    return bool(_BATCH_NAME.search(name))


def looks_like_sequence(name: str) -> bool:
    """A dim name such as 'seq', 'sequence_length', 'tokens', 'time', 'frames', 'past_len'."""
    return not looks_like_batch(name) and bool(_SEQUENCE_NAME.search(name))


def counter_namer(taken: Iterable[str] = ()) -> Callable[[str], str]:
    """Fresh names: ``base``, then ``base_1``, ``base_2``...; never one of ``taken`` or one given before."""
    used = set(taken)

    def fresh(base: str) -> str:
        name, n = base, 0
        while name in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name)
        return name

    return fresh
