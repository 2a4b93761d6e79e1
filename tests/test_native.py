"""The native kernels (stamp_onnx/native/*.so, built by the set-up) against the references.

Skipped where this machine cannot build the library (no compiler, no headers: the set-up
records why in build/native.status), failed where it could and the library is missing
(tests/backends.py). The QDQ and the Haar transforms (1-D, 2-D, inside the fused kernel) are
bit-exact with numpy and are held to that; DCT, WHT and FeatureRotation sum in another order
and every element is held to the float32 error bound of its dot product (tests/oracles.py).
The hard tokens of the quantizer are in tests/test_hard_tokens.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import oracles
import pytest
from torch_models import tiny_llama, tiny_llama_onnx

from stamp_onnx.config import StampConfig
from stamp_onnx.core import quant
from stamp_onnx.evaluation.layer_check import per_layer_diffs
from stamp_onnx.graph import ops, runtime
from stamp_onnx.graph.op_models import single_op_model
from stamp_onnx.pipeline import quantize_file
from stamp_onnx.zoo.models import sample_inputs

pytestmark = pytest.mark.usefixtures("native_kernels")
LENGTHS = [1, 2, 3, 5, 7, 8, 9, 16, 17, 63, 64, 65, 130]


def native_session(spec: ops.Spec, rank: int = 3, *, with_transformed: bool = False) -> ort.InferenceSession:
    """A model with no function body: only the native kernel can run it."""
    proto = single_op_model(spec, rank, with_transformed=with_transformed, function_body=False)
    return runtime.session(proto.SerializeToString(), native=True)


def _inputs(rng: np.random.Generator, s: int, d: int = 24) -> list[np.ndarray]:
    normal = rng.standard_normal((2, s, d)).astype(np.float32)
    heavy = (rng.standard_t(2, (2, s, d)) * 10).astype(np.float32)  # outliers, as in real activations
    return [normal, heavy]


TRANSFORMS = [
    ops.SequenceTransformSpec(t, levels, inverse, prefix)
    for t, levels in (("haar", 1), ("haar", 3), ("haar", 4), ("dct", 0), ("wht", 0))
    for inverse in (False, True)
    for prefix in (0, 1, 3)
]


@pytest.mark.parametrize("spec", TRANSFORMS, ids=lambda s: s.overload)
def test_sequence_transform(spec: ops.SequenceTransformSpec) -> None:
    sess = native_session(spec)
    rng = np.random.default_rng(oracles.stable_seed(spec.overload))
    for s in LENGTHS:
        for x in _inputs(rng, s):
            oracles.check_transform(sess.run(None, {"x": x})[0], x, spec)


HAAR2D = [
    (ops.SequenceTransformSpec("haar2d", levels, inverse, prefix, width), height)
    for levels, width, height in ((1, 0, 4), (3, 0, 16), (3, 6, 5), (2, 3, 7))
    for inverse in (False, True)
    for prefix in (0, 1)
]


@pytest.mark.parametrize(("spec", "height"), HAAR2D, ids=lambda v: getattr(v, "overload", str(v)))
def test_haar2d(spec: ops.SequenceTransformSpec, height: int) -> None:
    width = spec.grid_width or height
    s = spec.prefix_tokens + height * width
    for x in _inputs(np.random.default_rng(height), s):
        np.testing.assert_array_equal(native_session(spec).run(None, {"x": x})[0], spec.reference(x))


QDQ = [ops.TokenQDQSpec(k, hp, lp) for k in (0, 1, 8, 1000) for hp, lp in ((8, 4), (8, 2), (16, 8), (4, 4), (3, 5))] + [
    ops.TokenQDQSpec(k, 8, 2, mid) for k in (0, 1, 5) for mid in (((3, 6), (7, 4)), ((1, 16), (2, 3), (1000, 5)))]


@pytest.mark.parametrize("spec", QDQ, ids=lambda s: s.overload)
def test_token_qdq_is_bit_exact(spec: ops.TokenQDQSpec) -> None:
    sess = native_session(spec)
    rng = np.random.default_rng(oracles.stable_seed(spec.overload))
    for s in LENGTHS:
        for x in _inputs(rng, s):
            np.testing.assert_array_equal(sess.run(None, {"x": x})[0], spec.reference(x))


FUSED = [
    ops.TransformQDQSpec(ops.SequenceTransformSpec(t, levels, False, prefix), ops.TokenQDQSpec(k, 8, lp))
    for t, levels in (("haar", 3), ("haar", 1), ("dct", 0), ("wht", 0))
    for prefix in (0, 1)
    for k, lp in ((8, 4), (0, 2), (1000, 4))
] + [ops.TransformQDQSpec(ops.SequenceTransformSpec("haar", 3, False, 1), ops.TokenQDQSpec(1, 8, 2, ((3, 6), (9, 4))))]


@pytest.mark.parametrize("spec", FUSED, ids=lambda s: s.overload)
def test_transform_qdq(spec: ops.TransformQDQSpec) -> None:
    """Y is TokenQDQ of the kernel's own T bit for bit; T is the transform; one output gives the same Y."""
    both, one = native_session(spec, with_transformed=True), native_session(spec)
    rng = np.random.default_rng(oracles.stable_seed(spec.overload))
    for s in LENGTHS:
        for x in _inputs(rng, s):
            y, t = both.run(None, {"x": x})
            np.testing.assert_array_equal(y, spec.qdq.reference(t))
            oracles.check_transform(t, x, spec.transform)
            np.testing.assert_array_equal(one.run(None, {"x": x})[0], y)


def test_native_qdq_matches_the_function_body_bit_for_bit() -> None:
    spec = ops.TokenQDQSpec(8, 8, 4)
    body = ort.InferenceSession(single_op_model(spec).SerializeToString(), providers=runtime.PROVIDERS)
    x = (np.random.default_rng(5).standard_t(3, (3, 77, 40)) * 4).astype(np.float32)
    np.testing.assert_array_equal(native_session(spec).run(None, {"x": x})[0], body.run(None, {"x": x})[0])


def test_other_ranks() -> None:
    rng = np.random.default_rng(9)
    spec = ops.TransformQDQSpec(ops.SequenceTransformSpec("haar", 2), ops.TokenQDQSpec(4, 8, 4))
    for rank, shape in ((2, (11, 12)), (4, (2, 3, 11, 12))):
        x = rng.standard_normal(shape).astype(np.float32)
        y, t = native_session(spec, rank, with_transformed=True).run(None, {"x": x})
        np.testing.assert_array_equal(y, quant.token_qdq(t, 4, 8, 4))


def test_the_library_is_used_not_the_function_body() -> None:
    """A model without function bodies runs only when the kernels are registered."""
    proto = single_op_model(ops.TokenQDQSpec(4, 8, 4), function_body=False).SerializeToString()
    x = np.random.default_rng(0).standard_normal((1, 9, 8)).astype(np.float32)
    assert runtime.session(proto, native=True).run(None, {"x": x})[0].shape == x.shape
    with pytest.raises(Exception, match="TokenQDQ"):
        runtime.session(proto, native=False)
    assert runtime.kernels(native=True) == runtime.NATIVE
    assert runtime.kernels(native=False) == runtime.FUNCTION_BODIES


@pytest.mark.parametrize(("name", "value", "message"), [
    ("lp_bits", 40, "lp_bits must be in 2..16"),
    ("mid_bits", [6, 1], "mid_bits must be in 2..16"),
    ("mid_tokens", [2, 0], "mid_tokens must be >= 1"),
    ("mid_tokens", [2], "one length"),
])
def test_bad_attribute_is_an_error_not_a_crash(name: str, value: int | list[int], message: str) -> None:
    spec = ops.TokenQDQSpec(4, 8, 4, ((2, 6), (3, 5)))
    proto = single_op_model(spec, function_body=False)
    for attribute in proto.graph.node[0].attribute:
        if attribute.name == name and isinstance(value, int):
            attribute.i = value
        elif attribute.name == name:
            attribute.ClearField("ints")
            attribute.ints.extend(value)
    with pytest.raises(Exception, match=message):
        runtime.session(proto.SerializeToString(), native=True).run(
            None, {"x": np.ones((1, 4, 4), np.float32)}
        )


ROTATION_FEATURES = [1, 2, 7, 64, 96, 576, 1536]
ROTATION_ROWS = {1: (120,), 2: (120,), 3: (4, 30), 4: (2, 3, 20)}  # leading axes by rank


def _rank_one(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A rank-2 single-op model turned into one on a single row of features (x and y of shape (d,))."""
    for value in (*proto.graph.input, *proto.graph.output):
        del value.type.tensor_type.shape.dim[0]
    return proto


def _rotation_sessions(spec: ops.FeatureRotationSpec, rank: int) -> tuple[ort.InferenceSession, ort.InferenceSession]:
    """(native kernel only, function body only) sessions of a one-node FeatureRotation model."""
    native = single_op_model(spec, max(rank, 2), function_body=False)
    body = single_op_model(spec, max(rank, 2))
    if rank == 1:
        native, body = _rank_one(native), _rank_one(body)
    return (runtime.session(native.SerializeToString(), native=True),
            ort.InferenceSession(body.SerializeToString(), providers=runtime.PROVIDERS))


@pytest.mark.parametrize("d", ROTATION_FEATURES)
@pytest.mark.parametrize("rank", [2, 3, 4])
def test_feature_rotation(d: int, rank: int) -> None:
    """The kernel (C X H per row, X the row as m x p blocks) is x R in float64, and the body, within float rounding."""
    spec = ops.FeatureRotationSpec(d)
    native, body = _rotation_sessions(spec, rank)
    rng = np.random.default_rng(100 * d + rank)
    shape = (*ROTATION_ROWS[rank], d)
    for x in (rng.standard_normal(shape).astype(np.float32), (rng.standard_t(2, shape) * 10).astype(np.float32)):
        got = native.run(None, {"x": x})[0]
        assert got.shape == x.shape and got.dtype == np.float32
        oracles.assert_rotation_within_bound(got, x)
        oracles.assert_rotation_within_bound(body.run(None, {"x": x})[0], x)


@pytest.mark.parametrize("d", [3, 4, 8, 12, 16, 48, 128, 256, 640, 1024, 2048, 4096])
def test_feature_rotation_every_block_size(d: int) -> None:
    """Every path of the kernel: p < 8 on scalars, p = 8 and 16 in one and two vectors (32: d = 96
    above), p > 64 with one or two more Hadamard passes of 2, 4 or 8 vectors; m = 1, 3 and 5."""
    native, _ = _rotation_sessions(ops.FeatureRotationSpec(d), 3)
    x = (np.random.default_rng(d).standard_t(3, (2, 9, d)) * 4).astype(np.float32)
    oracles.assert_rotation_within_bound(native.run(None, {"x": x})[0], x)


@pytest.mark.parametrize("d", [7, 96, 576])
def test_feature_rotation_on_one_row_and_on_many(d: int) -> None:
    """Rank 1 (one row, run on the calling thread) and thousands of rows (shared out to the pool); no row is empty."""
    spec = ops.FeatureRotationSpec(d)
    rng = np.random.default_rng(d)
    one, one_body = _rotation_sessions(spec, 1)
    x = rng.standard_normal(d).astype(np.float32)
    oracles.assert_rotation_within_bound(one.run(None, {"x": x})[0], x)
    oracles.assert_rotation_within_bound(one_body.run(None, {"x": x})[0], x)
    many, _ = _rotation_sessions(spec, 3)
    x = (rng.standard_t(3, (3, 1001, d)) * 5).astype(np.float32)
    oracles.assert_rotation_within_bound(many.run(None, {"x": x})[0], x)
    for empty in (np.zeros((0, 5, d), np.float32), np.zeros((2, 0, d), np.float32)):
        assert many.run(None, {"x": empty})[0].shape == empty.shape


def test_feature_rotation_needs_the_library() -> None:
    """A FeatureRotation model without the function body runs only when the kernel is registered."""
    proto = single_op_model(ops.FeatureRotationSpec(96), function_body=False).SerializeToString()
    x = np.random.default_rng(3).standard_normal((2, 5, 96)).astype(np.float32)
    assert runtime.session(proto, native=True).run(None, {"x": x})[0].shape == x.shape
    with pytest.raises(Exception, match="FeatureRotation"):
        runtime.session(proto, native=False)


def test_feature_rotation_wrong_feature_count_is_an_error_not_a_crash() -> None:
    sess = native_session(ops.FeatureRotationSpec(96))
    rng = np.random.default_rng(4)
    for d in (95, 97, 192, 1):
        with pytest.raises(Exception, match=f"input X has {d} features on its last axis.*features is 96"):
            sess.run(None, {"x": rng.standard_normal((2, 3, d)).astype(np.float32)})
    x = rng.standard_normal((2, 3, 96)).astype(np.float32)  # the session still works
    oracles.assert_rotation_within_bound(sess.run(None, {"x": x})[0], x)
    scalar = _rank_one(_rank_one(single_op_model(ops.FeatureRotationSpec(1), 2, function_body=False)))
    with pytest.raises(Exception, match="rank >= 1"):
        runtime.session(scalar.SerializeToString(), native=True).run(None, {"x": np.array(1.0, np.float32)})


@pytest.mark.parametrize(
    ("features", "message"),
    [(0, "features must be >= 1, got 0"), (-4, "features must be >= 1, got -4"),
     (None, "missing attribute features"), (2 * 16385, "odd factor 16385")],
)
def test_feature_rotation_bad_attribute_fails_at_session_creation(features: int | None, message: str) -> None:
    proto = single_op_model(ops.FeatureRotationSpec(4), function_body=False)
    node = proto.graph.node[0]
    (attribute,) = node.attribute
    if features is None:
        node.ClearField("attribute")
    else:
        attribute.i = features
    with pytest.raises(Exception, match=message):
        runtime.session(proto.SerializeToString(), native=True)


@pytest.mark.parametrize("transform", ["haar", "wht"])
def test_whole_model_layer_by_layer(transform: str, tmp_path: Path) -> None:
    """Every layer of a rewritten model run by the kernels: all quantized codes as the reference."""
    config = StampConfig(transform=transform, hp_tokens=8)
    out = tmp_path / "q.onnx"
    quantize_file(tiny_llama_onnx(), out, config)
    feeds = sample_inputs(tiny_llama(), 2, 37, seed=11)
    diffs = per_layer_diffs(out, tiny_llama().module, config, feeds, native=True)
    assert diffs and all(d.qdq_mismatches == 0 for d in diffs)
    assert max(d.transform_rel for d in diffs) < 1e-5
    assert max(d.output_rel for d in diffs) < 1e-4

