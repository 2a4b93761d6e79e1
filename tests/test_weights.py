"""Weight quantization (RTN) and the Hadamard feature transform: math, passes, ORT vs the reference."""

from __future__ import annotations

import collections
from pathlib import Path

import backends
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from torch_models import tiny_llama, tiny_llama_onnx

from stamp_onnx.config import StampConfig
from stamp_onnx.core import weights
from stamp_onnx.errors import ConfigError
from stamp_onnx.evaluation.inspection import summarize
from stamp_onnx.evaluation.layer_check import per_layer_diffs
from stamp_onnx.evaluation.reference import layer_weight, stamp_reference
from stamp_onnx.graph.model_io import load_model
from stamp_onnx.pipeline import quantize_file
from stamp_onnx.zoo.models import sample_inputs


@pytest.mark.parametrize("d", [1, 2, 7, 64, 192, 576, 1536])
def test_feature_rotation_is_orthonormal_and_flat(d: int) -> None:
    r = weights.feature_rotation(d)
    np.testing.assert_allclose(r @ r.T, np.eye(d), atol=1e-12)
    power = d & -d
    assert np.abs(r).max() <= np.sqrt(2 / d) + 1e-12  # no feature gets more than sqrt(2) of a flat share
    if power == d:
        np.testing.assert_allclose(np.abs(r), 1 / np.sqrt(d))


@pytest.mark.parametrize(("bits", "block"), [(4, 0), (8, 0), (4, 16), (4, 24), (3, 7), (8, 32)])
def test_weight_qdq_matches_the_onnx_spec(bits: int, block: int) -> None:
    """DequantizeLinear of the pass's codes and scales (in onnxruntime) == fake_quantize_weight."""
    rng = np.random.default_rng(bits * 100 + block)
    w = (rng.standard_t(3, (50, 12)) * 0.1).astype(np.float32)  # 50 is not a multiple of any block
    w[:, 3] = 0.0  # an all-zero channel: scale 1
    q, scale = weights.quantize_weight(w, bits, block)
    qmax = 2 ** (bits - 1) - 1
    assert q.min() >= -qmax and q.max() <= qmax and scale.shape == ((-(-50 // block), 12) if block else (12,))
    storage = onnx.TensorProto.INT4 if bits <= 4 else onnx.TensorProto.INT8
    attrs = {"axis": 0, "block_size": block} if block else {"axis": 1}
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("DequantizeLinear", ["q", "scale"], ["w"], **attrs)], "dq", [],
        [onnx.helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, None)],
        [onnx.helper.make_tensor("q", storage, q.shape, q.flatten().tolist()), onnx.numpy_helper.from_array(scale, "scale")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 21)])
    (got,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})
    np.testing.assert_array_equal(got, weights.fake_quantize_weight(w, bits, block))
    np.testing.assert_array_equal(got, weights.dequantize_linear(q, scale, attrs["axis"], block))  # what validation reads back
    # the spec's formula written out: round half to even of w / scale, clipped, times the scale
    per_element = np.repeat(scale, block, axis=0)[:50] if block else scale[None, :]
    np.testing.assert_array_equal(got, np.clip(np.round(w / per_element), -qmax, qmax) * per_element)


def _rewrite(config: StampConfig, tmp_path: Path, name: str = "q.onnx") -> Path:
    out = tmp_path / name
    quantize_file(tiny_llama_onnx(), out, config)
    return out


def _outputs(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in wanted})[0]


@pytest.mark.parametrize("transform", ["haar", "dct", "none"])
def test_without_quantization_every_composition_is_the_float_model(transform: str, tmp_path: Path) -> None:
    """16-bit activations, float weights: a rotated model is the float model up to 16-bit rounding."""
    feeds = sample_inputs(tiny_llama(), 2, 37, seed=5)
    float_out = _outputs(tiny_llama_onnx(), feeds)
    config = StampConfig(transform=transform, hp_bits=16, lp_bits=16, hp_tokens=8, feature_transform="hadamard")
    got = _outputs(_rewrite(config, tmp_path), feeds)
    assert np.abs(got - float_out).max() <= 2e-3 * np.abs(float_out).max()


def test_passes_structure(tmp_path: Path) -> None:
    config = StampConfig(hp_tokens=8, weight_bits=4, weight_block=16, feature_transform="hadamard")
    path = _rewrite(config, tmp_path)
    summary = summarize(load_model(path))
    assert {(layer.feature_transform, layer.weight_format) for layer in summary.layers} == {("hadamard", "int4 block 16")}
    proto = onnx.load(str(path))
    counts = collections.Counter(node.op_type for node in proto.graph.node)
    layers = sum(1 for node in proto.graph.node if node.op_type == "TransformQDQ")
    assert counts["DequantizeLinear"] == layers
    rotations = [n for n in proto.graph.node if n.op_type == "FeatureRotation" and n.domain == "ai.stamp"]
    # one per activation: per block q/k/v share one, o one, gate/up share one, down one; lm_head one
    assert len(rotations) == 4 * 2 + 1 < layers
    rotated_inputs = {n.output[0] for n in rotations}
    quantizers = [n for n in proto.graph.node if n.op_type == "TransformQDQ"]
    assert all(n.input[0] in rotated_inputs for n in quantizers)
    overloads = {f.overload for f in proto.functions if f.name == "FeatureRotation"}
    assert overloads == {n.overload for n in rotations} and len(overloads) <= 3  # one function per width
    assert not any(t.dims == [64, 64] and t.data_type == onnx.TensorProto.FLOAT for t in proto.graph.initializer)  # no dense R
    int4 = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT4]
    assert len(int4) == layers
    for node in proto.graph.node:
        if node.op_type == "DequantizeLinear":
            assert {a.name: a.i for a in node.attribute} == {"axis": 0, "block_size": 16}
    onnx.checker.check_model(proto, full_check=True)


@pytest.mark.parametrize(("transform", "feature", "bits", "block"), [
    ("haar", "hadamard", 4, 16), ("haar", "none", 4, 0), ("none", "hadamard", 8, 0), ("wht", "hadamard", 4, 0),
])
def test_onnx_matches_the_reference_layer_by_layer(backend: str, transform: str, feature: str, bits: int, block: int,
                                                   tmp_path: Path) -> None:
    """With the function bodies and with the native kernels (FeatureRotation's differ: C (X H) vs butterflies)."""
    config = StampConfig(transform=transform, hp_tokens=8, weight_bits=bits, weight_block=block, feature_transform=feature)
    out = _rewrite(config, tmp_path)
    diffs = per_layer_diffs(out, tiny_llama().module, config, sample_inputs(tiny_llama(), 2, 37, seed=9),
                            native=backend == backends.NATIVE)
    assert diffs and all(d.qdq_mismatches == 0 for d in diffs)
    assert max(d.transform_rel for d in diffs) < 1e-5
    assert max(d.output_rel for d in diffs) < 1e-4


def test_reference_swaps_the_weights_in_and_out() -> None:
    module = tiny_llama().module
    config = StampConfig(weight_bits=4, feature_transform="hadamard")
    name, linear = next((n, m) for n, m in module.named_modules() if isinstance(m, torch.nn.Linear))
    before = linear.weight.detach().clone()
    with stamp_reference(module, config) as hooked:
        assert name in hooked
        torch.testing.assert_close(linear.weight.detach(), layer_weight(before, config))
    torch.testing.assert_close(linear.weight.detach(), before)


def test_reference_leaves_a_tied_embedding_alone() -> None:
    """An LM head tied to the embedding: the head's weight changes, the embedding's must not."""
    embed = torch.nn.Embedding(10, 8)
    head = torch.nn.Linear(8, 10, bias=False)
    head.weight = embed.weight
    module = torch.nn.ModuleDict({"embed": embed, "head": head})
    before = embed.weight.detach().clone()
    with stamp_reference(module, StampConfig(weight_bits=4, feature_transform="hadamard")):
        torch.testing.assert_close(embed.weight.detach(), before)
        assert not torch.equal(head.weight.detach(), before)
    assert head.weight is embed.weight


@pytest.mark.parametrize(("changes", "message"), [
    ({"weight_bits": 1}, "weight_bits=1 is not allowed"),
    ({"weight_bits": 16}, "weight_bits=16 is not allowed"),
    ({"weight_block": 32}, "needs weight_bits"),
    ({"weight_bits": 4, "weight_block": -1}, "weight_block=-1"),
    ({"feature_transform": "quarot"}, "feature_transform='quarot' is not allowed"),
])
def test_bad_weight_config(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        StampConfig(**changes)  # type: ignore[arg-type]


def test_ir_int4_round_trip() -> None:
    """The INT4 initializer the pass writes holds the codes (onnx-ir + ml_dtypes packing)."""
    q = np.array([[-7, 7, 0], [3, -1, 5]], np.int8)
    tensor = ir.Tensor(q.astype(weights_int4()), dtype=ir.DataType.INT4)
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(ir.serde.serialize_tensor(tensor)).astype(np.int8), q)


def weights_int4() -> type:
    import ml_dtypes

    return ml_dtypes.int4


def test_the_latency_baseline_is_the_same_model_with_a_dense_rotation(tmp_path: Path) -> None:
    """tools/bench_latency.py's dense x R copy computes what the FeatureRotation model computes."""
    import tool_modules

    path = _rewrite(StampConfig(hp_tokens=8, hp_bits=16, lp_bits=16, feature_transform="hadamard"), tmp_path)
    dense = tool_modules.load("bench_latency").dense_rotations(path)
    proto = onnx.load(str(dense))
    assert not any(n.op_type == "FeatureRotation" for n in proto.graph.node)
    assert sum(n.name.endswith("/FeatureRotation") and n.op_type == "MatMul" for n in proto.graph.node) == 9
    feeds = sample_inputs(tiny_llama(), 2, 21, seed=2)
    a, b = _outputs(path, feeds), _outputs(dense, feeds)
    assert np.abs(a - b).max() <= 1e-3 * np.abs(a).max()  # 16-bit activations: float rounding only
