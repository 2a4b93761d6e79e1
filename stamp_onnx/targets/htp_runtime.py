"""Sessions on Qualcomm's HTP (NPU) through onnxruntime-qnn, and proof that a graph is integer there.

onnxruntime-qnn is a plugin execution provider for the pip ``onnxruntime`` (the optional extra
``htp``; on x86-64 Linux its HTP backend is a simulator). A QDQ model "running" on the HTP
proves little: when a node unit breaks one of the HTP's type rules it is often run as float ops
without a word. The proof is the QNN graph itself: with ``dump_dir`` the provider writes each
QNN graph it builds as JSON, and :func:`integer_report` lists every compute op that reads or
writes a float tensor there (docs/htp.md).

Example::

    with tempfile.TemporaryDirectory() as dump:
        session = htp_session("model.qdq.onnx", dump_dir=dump)   # CPU fallback disabled
        outputs = session.run(None, feeds)
        report = integer_report(dump)
        assert not report.float_ops
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import onnxruntime as ort

from stamp_onnx.errors import ConfigError, first_line

logger = logging.getLogger(__name__)

HTP_ARCHS = ("68", "69", "73", "75", "79")
INSTALL_HINT = "install the optional extra: pip install --no-deps onnxruntime-qnn==2.7.0 (or `make setup`)"
_FLOAT_TYPES = ("float", "fp")  # QNN data type names of float tensors: QNN_DATATYPE_FLOAT_32, ...
_registered = False


def available() -> bool:
    """True when onnxruntime-qnn is importable and this onnxruntime can load plugin providers."""
    try:
        import onnxruntime_qnn  # noqa: F401
    except ImportError:
        return False
    return hasattr(ort, "register_execution_provider_library")


def _qnn() -> Any:
    try:
        import onnxruntime_qnn
    except ImportError as err:
        raise ConfigError(f"onnxruntime-qnn is not installed: {INSTALL_HINT}") from err
    return onnxruntime_qnn


def _register() -> Any:
    """Register the QNN plugin library with onnxruntime (once per process); returns the module."""
    global _registered
    oq = _qnn()
    if not _registered:
        try:
            ort.register_execution_provider_library(oq.EP_NAME, oq.get_library_path())
        except Exception as err:  # onnxruntime raises its own kinds
            if "already" not in str(err).lower():
                raise ConfigError(f"onnxruntime cannot load the QNN provider ({first_line(err)}); {INSTALL_HINT}") from err
        _registered = True
    return oq


def htp_session(path: str | Path, *, dump_dir: str | Path | None = None, htp_arch: str = "75",
                fallback: bool = False) -> ort.InferenceSession:
    """An onnxruntime session that runs ``path`` entirely on the HTP: CPU fallback is disabled, so a
    node the HTP does not take makes session creation fail instead of running on the CPU.

    ``dump_dir``: write the QNN graphs as JSON there (read them with :func:`integer_report`).
    ``htp_arch``: the HTP generation to target; set it, the provider's default behaves like v68.
    ``fallback``: allow the CPU and record which provider got each node (:func:`refused_nodes`).
    """
    if str(htp_arch) not in HTP_ARCHS:
        raise ConfigError(f"htp_arch={htp_arch!r} is not known; choose one of {', '.join(HTP_ARCHS)}")
    oq = _register()
    devices = [d for d in ort.get_ep_devices() if d.ep_name == oq.EP_NAME]
    if not devices:
        raise ConfigError(f"onnxruntime lists no {oq.EP_NAME} device; {INSTALL_HINT}")
    # offload_graph_io_quantization 0: the HTP runs the graph's first Quantize and last Dequantize too (the
    # provider's default leaves them to the CPU when fallback is allowed, which refused_nodes would list)
    provider_options = {"backend_path": oq.get_qnn_htp_path(), "htp_arch": str(htp_arch),
                        "offload_graph_io_quantization": "0"}
    if dump_dir is not None:
        Path(dump_dir).mkdir(parents=True, exist_ok=True)
        provider_options |= {"dump_json_qnn_graph": "1", "json_qnn_graph_dir": str(dump_dir)}
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a refused node is reported by the caller, not as onnxruntime's log lines
    options.add_provider_for_devices(devices, provider_options)
    if fallback:
        options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        return ort.InferenceSession(str(path), sess_options=options)
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    try:
        return ort.InferenceSession(str(path), sess_options=options)
    except Exception as err:  # onnxruntime's own kinds; a refused node is the common cause: name them
        nodes = _refused_or_empty(path, htp_arch)
        if nodes:
            raise ConfigError(refusal_message(path, nodes)) from err
        raise


def refused_nodes(path: str | Path, *, htp_arch: str = "75") -> list[tuple[str, str]]:
    """(name, op type) of every node of ``path`` the HTP does not take: the nodes onnxruntime assigns
    to the CPU when fallback is allowed. Empty when the HTP takes the whole graph."""
    session = htp_session(path, htp_arch=htp_arch, fallback=True)
    return [(node.name, node.op_type) for sub in session.get_provider_graph_assignment_info()
            if sub.ep_name == "CPUExecutionProvider" for node in sub.get_nodes()]


def refusal_message(path: str | Path, nodes: list[tuple[str, str]], limit: int = 8) -> str:
    """One line naming the nodes the HTP does not take (the first ``limit``) and what to do."""
    named = ", ".join(f"{name or '(unnamed)'} ({op})" for name, op in nodes[:limit])
    more = f" and {len(nodes) - limit} more" if len(nodes) > limit else ""
    return (f"the HTP cannot run {len(nodes)} node(s) of {path}: {named}{more}; fold them away "
            "(fixed shapes, --fold-input for a constant input such as an all-ones attention_mask) or re-export "
            "the model without them")


def cpu_reference_session(path: str | Path) -> ort.InferenceSession:
    """The CPU provider with graph optimizations off: the QDQ model's own arithmetic. The default
    levels fuse QDQ node units into integer kernels of their own and change the numbers."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


@dataclasses.dataclass
class IntegerReport:
    """What the HTP runs, read from the QNN graph JSON.

    op_counts: QNN op type -> count over all graphs. float_ops: (op type, node name, float tensor)
    for every compute op with a float input or output, except a Quantize reading a graph input
    and a Dequantize writing a graph output. activation_bytes: bytes of the activation tensors
    (every non-static tensor, graph inputs and outputs included) by QNN data type: what one
    inference writes into memory at least once. reshape_bytes: the part of them written by
    Reshape ops, which may be views of their input (the simulator does not say).
    """

    op_counts: dict[str, int]
    float_ops: list[tuple[str, str, str]]
    activation_bytes: dict[str, int]
    graphs: int
    reshape_bytes: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def integer_only(self) -> bool:
        return self.graphs > 0 and not self.float_ops

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"integer_only": self.integer_only}


_TYPE_BYTES = {"8": 1, "16": 2, "32": 4, "64": 8}


def _dtype_name(tensor: dict[str, Any]) -> str:
    """A QNN tensor's data type as a short lowercase name (ufixed_point_16, float_32, int_32...)."""
    raw = str(tensor.get("data_type", "unknown"))
    name = raw.removeprefix("QNN_DATATYPE_").lower()
    if name.isdigit():  # older dumps give the numeric enum
        name = _NUMERIC_TYPES.get(int(raw), f"type_{raw}")
    return name


# QNN_DATATYPE_* enum values (QnnTypes.h): what a dump may hold instead of names.
_NUMERIC_TYPES = {
    0x0008: "int_8", 0x0016: "int_16", 0x0032: "int_32", 0x0064: "int_64",
    0x0108: "uint_8", 0x0116: "uint_16", 0x0132: "uint_32", 0x0164: "uint_64",
    0x0216: "float_16", 0x0232: "float_32",
    0x0304: "sfixed_point_4", 0x0308: "sfixed_point_8", 0x0316: "sfixed_point_16", 0x0332: "sfixed_point_32",
    0x0404: "ufixed_point_4", 0x0408: "ufixed_point_8", 0x0416: "ufixed_point_16", 0x0432: "ufixed_point_32",
    0x0508: "bool_8",
}


def _nbytes(tensor: dict[str, Any], dtype: str) -> int:
    dims = tensor.get("dims") or tensor.get("current_dims") or []
    count = 1
    for dim in dims:
        count *= int(dim)
    bits = dtype.rsplit("_", 1)[-1]
    if bits == "4":
        return (count + 1) // 2
    return count * _TYPE_BYTES.get(bits, 1)


# QNN_TENSOR_TYPE_* enum values: graph input, graph output, ..., constant.
_TENSOR_KINDS = {0: "app_write", 1: "app_read", 2: "app_readwrite", 3: "native", 4: "static", 5: "null"}


def _kind(tensor: dict[str, Any]) -> str:
    raw = str(tensor.get("type", ""))
    if raw.isdigit():
        return _TENSOR_KINDS.get(int(raw), raw)
    return raw.removeprefix("QNN_TENSOR_TYPE_").lower()


def _is_static(tensor: dict[str, Any]) -> bool:
    return _kind(tensor) == "static"


def _graph_files(dump_dir: Path) -> list[Path]:
    return sorted(p for p in dump_dir.rglob("*.json") if not p.name.endswith("_tensor_log.json"))


def integer_report(dump_dir: str | Path) -> IntegerReport:
    """Read every QNN graph JSON that :func:`htp_session` dumped into ``dump_dir``."""
    dump_dir = Path(dump_dir)
    files = _graph_files(dump_dir)
    if not files:
        raise ConfigError(f"{dump_dir} holds no QNN graph JSON; open the session with htp_session(..., dump_dir=...)")
    counts: collections.Counter[str] = collections.Counter()
    float_ops: list[tuple[str, str, str]] = []
    activation: collections.Counter[str] = collections.Counter()
    reshaped: collections.Counter[str] = collections.Counter()
    for path in files:
        graph = json.loads(path.read_text()).get("graph", {})
        tensors: dict[str, dict[str, Any]] = graph.get("tensors", {})
        types = {name: _dtype_name(t) for name, t in tensors.items()}
        for name, tensor in tensors.items():
            if not _is_static(tensor):
                activation[types[name]] += _nbytes(tensor, types[name])
        for node_name, node in graph.get("nodes", {}).items():
            op = str(node.get("type", "?"))
            counts[op] += 1
            ins, outs = list(node.get("input_names", [])), list(node.get("output_names", []))
            floats = [t for t in ins + outs if types.get(t, "").startswith(_FLOAT_TYPES)]
            if op == "Quantize":  # quantizing a float graph input is the graph's edge
                floats = [t for t in floats if not (t in ins and _kind(tensors[t]) == "app_write")]
            elif op == "Dequantize":  # and so is dequantizing into a graph output
                floats = [t for t in floats if not (t in outs and _kind(tensors[t]) == "app_read")]
            float_ops += [(op, node_name, t) for t in floats[:1]]
            if op == "Reshape":
                for t in outs:
                    if t in tensors:
                        reshaped[types[t]] += _nbytes(tensors[t], types[t])
    return IntegerReport(dict(sorted(counts.items())), float_ops, dict(sorted(activation.items())), len(files),
                         dict(sorted(reshaped.items())))


_ORT_INPUT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
                    "tensor(int32)": "int32", "tensor(bool)": "bool", "tensor(uint8)": "uint8", "tensor(uint16)": "uint16"}


def check_model(path: str | Path, *, dump_dir: str | Path | None = None, htp_arch: str = "75",
                feeds: dict[str, Any] | None = None) -> IntegerReport:
    """``stamp-onnx htp-check MODEL.onnx``: open ``path`` on the HTP with CPU fallback disabled,
    run one inference (``feeds``, else zeros of the inputs' fixed shapes) and read the QNN graph
    JSON. A model the HTP cannot take at all fails here with onnxruntime's reason."""
    import tempfile

    import numpy as np

    if not Path(path).is_file():
        raise ConfigError(f"{path} does not exist")
    _require_fixed_shapes(path)
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(dump_dir) if dump_dir is not None else Path(tmp)
        for old in _graph_files(target) if target.exists() else []:
            old.unlink()
        try:
            session = htp_session(path, dump_dir=target, htp_arch=htp_arch)
        except ConfigError:
            raise
        except Exception as err:
            raise ConfigError(f"the HTP does not take {path} with CPU fallback disabled: {first_line(err)}") from err
        if feeds is None:
            feeds = {arg.name: np.zeros(arg.shape, dtype=_ORT_INPUT_TYPES.get(arg.type, "float32"))
                     for arg in session.get_inputs()}
        session.run(None, feeds)
        return integer_report(target)


def _require_fixed_shapes(path: str | Path) -> None:
    from stamp_onnx.graph.model_io import load_model

    model = load_model(path, ConfigError)
    for value in model.graph.inputs:
        dims = list(value.shape or ())
        if value.shape is None or not all(isinstance(d, int) and d > 0 for d in dims):
            shape = "unknown" if value.shape is None else "[" + ", ".join(str(d) for d in dims) + "]"
            raise ConfigError(f"input {value.name} has shape {shape}; the HTP needs fixed shapes "
                              "(quantize with --target htp --seq-len S)")


def _refused_or_empty(path: str | Path, htp_arch: str) -> list[tuple[str, str]]:
    try:
        return refused_nodes(path, htp_arch=htp_arch)
    except Exception:  # the model fails for another reason too: the caller reports the first error
        return []


def format_report(report: IntegerReport) -> str:
    """The report as lines for the terminal: QNN op counts, float ops, activation bytes by type."""
    lines = [f"integer-only on the HTP: {'yes' if report.integer_only else 'NO'} ({report.graphs} QNN graph(s))",
             "QNN ops: " + ", ".join(f"{op} {n}" for op, n in report.op_counts.items())]
    for op, node, tensor in report.float_ops:
        lines.append(f"float compute: {op} {node} (tensor {tensor})")
    total = sum(report.activation_bytes.values())
    lines.append("activation bytes per inference: " + ", ".join(f"{t} {n:,}" for t, n in report.activation_bytes.items())
                 + f" (total {total:,}; {sum(report.reshape_bytes.values()):,} of it written by Reshape ops)")
    return "\n".join(lines)
