"""Function bodies in onnxruntime vs the math module, on random inputs seeded by name.

Haar (1-D and 2-D) and the QDQ are bit-exact with the numpy reference and are held to that;
DCT, WHT and FeatureRotation are MatMuls whose summation order differs, and each element is
held to the float32 error bound of its own dot product (tests/oracles.py). The hard tokens of
the quantizer are in tests/test_hard_tokens.py.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import oracles
import pytest

from stamp_onnx.core import transforms
from stamp_onnx.graph import ops
from stamp_onnx.graph.op_models import single_op_model

LENGTHS = [1, 2, 3, 4, 5, 7, 8, 9, 16, 31, 33, 64, 65, 100]


def session(spec: ops.Spec, rank: int = 3, *, with_transformed: bool = False) -> ort.InferenceSession:
    """One node of ``spec`` calling its function body; TransformQDQ's T as a second output if asked."""
    proto = single_op_model(spec, rank, with_transformed=with_transformed)
    onnx.checker.check_model(proto, full_check=True)
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


TRANSFORM_SPECS = [
    ops.SequenceTransformSpec(t, levels, inverse, prefix)
    for t, levels in (("haar", 1), ("haar", 3), ("haar", 7), ("dct", 0), ("wht", 0))
    for inverse in (False, True)
    for prefix in (0, 1, 5)
]


@pytest.mark.parametrize("spec", TRANSFORM_SPECS, ids=lambda s: s.overload)
def test_sequence_transform_matches_reference(spec: ops.SequenceTransformSpec) -> None:
    sess = session(spec)
    rng = np.random.default_rng(oracles.stable_seed(spec.overload))
    for s in LENGTHS:
        x = rng.standard_normal((2, s, 12)).astype(np.float32)
        (y,) = sess.run(None, {"x": x})
        oracles.check_transform(y, x, spec)


HAAR2D_SPECS = [
    ops.SequenceTransformSpec("haar2d", levels, inverse, prefix, width)
    for levels, width in ((1, 0), (3, 0), (3, 6), (5, 3))
    for inverse in (False, True)
    for prefix in (0, 1)
]


@pytest.mark.parametrize("spec", HAAR2D_SPECS, ids=lambda s: s.overload)
def test_haar2d_body_is_bit_exact(spec: ops.SequenceTransformSpec) -> None:
    """Same butterflies and order as the oracle, float32: every element identical, every grid."""
    sess = session(spec)
    rng = np.random.default_rng(oracles.stable_seed(spec.overload))
    widths = [spec.grid_width] if spec.grid_width else [1, 2, 3, 4, 5, 16]
    for w in widths:
        for h in (1, 2, 3, 5, 16) if spec.grid_width else (w,):
            x = rng.standard_normal((2, spec.prefix_tokens + h * w, 12)).astype(np.float32)
            (y,) = sess.run(None, {"x": x})
            np.testing.assert_array_equal(y, spec.reference(x))


def test_haar2d_body_handles_an_empty_grid_and_rejects_a_non_grid() -> None:
    sess = session(ops.SequenceTransformSpec("haar2d", 3, False, 1))
    x = np.random.default_rng(0).standard_normal((2, 1, 12)).astype(np.float32)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], x)
    with pytest.raises(Exception, match="Reshape"):
        sess.run(None, {"x": np.ones((1, 11, 12), np.float32)})


@pytest.mark.parametrize("transform", ["haar", "dct", "wht"])
def test_forward_then_inverse_in_onnx_is_identity(transform: str) -> None:
    fwd = session(ops.SequenceTransformSpec(transform, 3, False))
    inv = session(ops.SequenceTransformSpec(transform, 3, True))
    rng = np.random.default_rng(7)
    for s in (1, 6, 37, 128):
        x = rng.standard_normal((3, s, 12)).astype(np.float32)
        (y,) = fwd.run(None, {"x": x})
        (z,) = inv.run(None, {"x": y})
        # Both directions' float32 error bounds, the forward one carried through |L^T|.
        m = np.abs(transforms.matrix(s, transform, 3))
        bound = 2 * (s + 2) * oracles.EPS32 * (m.T @ (m @ np.abs(x.astype(np.float64))))
        assert np.all(np.abs(z.astype(np.float64) - x) <= bound)


def test_haar_body_is_bit_exact() -> None:
    """The Haar body performs the same float32 operations as the numpy reference."""
    spec = ops.SequenceTransformSpec("haar", 3, False)
    x = np.random.default_rng(3).standard_normal((2, 45, 12)).astype(np.float32)
    (y,) = session(spec).run(None, {"x": x})
    np.testing.assert_array_equal(y, spec.reference(x))


QDQ_SPECS = [ops.TokenQDQSpec(k, hp, lp) for k in (0, 3, 64) for hp, lp in ((8, 4), (16, 2), (3, 5), (7, 6), (6, 4))] + [
    ops.TokenQDQSpec(k, 8, 2, mid) for k in (0, 3) for mid in (((2, 7), (5, 4), (4, 3)), ((1, 16), (100, 5)))]


@pytest.mark.parametrize("spec", QDQ_SPECS, ids=lambda s: s.overload)
def test_token_qdq_is_bit_exact(spec: ops.TokenQDQSpec) -> None:
    sess = session(spec)
    rng = np.random.default_rng(oracles.stable_seed(spec.overload))
    for s in LENGTHS:
        x = (rng.standard_normal((2, s, 12)) * rng.uniform(0.1, 10)).astype(np.float32)
        x[:, ::5] = np.abs(x[:, ::5])  # some all-positive tokens: rmin = 0
        (y,) = sess.run(None, {"x": x})
        np.testing.assert_array_equal(y, spec.reference(x))


@pytest.mark.parametrize("rank", [2, 4])
def test_ops_accept_other_ranks(rank: int) -> None:
    rng = np.random.default_rng(rank)
    shape = (9, 12) if rank == 2 else (2, 3, 9, 12)
    x = rng.standard_normal(shape).astype(np.float32)
    for spec in (ops.SequenceTransformSpec("haar", 2, False), ops.SequenceTransformSpec("haar", 2, True), ops.TokenQDQSpec(4, 8, 4)):
        (y,) = session(spec, rank).run(None, {"x": x})
        np.testing.assert_array_equal(y, spec.reference(x))


FUSED_SPECS = [
    ops.TransformQDQSpec(ops.SequenceTransformSpec(t, levels, False, prefix, width), ops.TokenQDQSpec(k, hp, lp))
    for t, levels, width in (("haar", 3, 0), ("haar", 1, 0), ("haar2d", 2, 4), ("dct", 0, 0), ("wht", 0, 0))
    for prefix in (0, 1)
    for k, hp, lp in ((4, 8, 4), (0, 8, 2), (100, 16, 8))
] + [ops.TransformQDQSpec(ops.SequenceTransformSpec("haar", 2, False, 1), ops.TokenQDQSpec(1, 8, 2, ((2, 6), (3, 4))))]


@pytest.mark.parametrize("spec", FUSED_SPECS, ids=lambda s: s.overload)
def test_transform_qdq_is_the_transform_then_the_qdq(spec: ops.TransformQDQSpec) -> None:
    """Y equals TokenQDQ of the body's own T bit for bit; T matches the transform reference."""
    one, two = session(spec), session(spec, with_transformed=True)
    rng = np.random.default_rng(oracles.stable_seed(spec.overload))
    grid = spec.transform.transform == "haar2d"  # a 4 x 4 grid after the prefix
    for s in [spec.transform.prefix_tokens + 16] if grid else LENGTHS:
        x = rng.standard_normal((2, s, 12)).astype(np.float32)
        y, t = two.run(None, {"x": x})
        np.testing.assert_array_equal(y, spec.qdq.reference(t))
        np.testing.assert_array_equal(one.run(None, {"x": x})[0], y)
        oracles.check_transform(t, x, spec.transform)


def test_transform_qdq_refuses_an_inverse() -> None:
    with pytest.raises(ValueError, match="forward transform only"):
        ops.TransformQDQSpec(ops.SequenceTransformSpec("haar", 3, inverse=True), ops.TokenQDQSpec(4, 8, 4))


def test_spec_round_trips_through_node_attributes() -> None:
    for spec in [*TRANSFORM_SPECS, *QDQ_SPECS, *FUSED_SPECS]:
        node = ir.Node(ops.DOMAIN, ops.op_type(spec), [], spec.attributes(), overload=spec.overload)
        assert ops.spec_from_node(node) == spec


def test_quant_type_by_width() -> None:
    assert ops.quant_type(2) == ir.DataType.UINT4
    assert ops.quant_type(4) == ir.DataType.UINT4
    assert ops.quant_type(5) == ir.DataType.UINT8
    assert ops.quant_type(16) == ir.DataType.UINT16


@pytest.mark.parametrize("d", [1, 2, 7, 64, 96, 576, 1536])
@pytest.mark.parametrize("shape", [(5,), (4, 5), (2, 3, 5)])
def test_feature_rotation_body_is_x_times_r(d: int, shape: tuple[int, ...]) -> None:
    """The structured body (C (X H) on x viewed as (m, p)) equals the dense x R, for ranks 2 to 4."""
    spec = ops.FeatureRotationSpec(d)
    x = np.random.default_rng(d).standard_normal((*shape, d)).astype(np.float32)
    (got,) = session(spec, x.ndim).run(None, {"x": x})
    oracles.assert_rotation_within_bound(got, x)
    oracles.assert_rotation_within_bound(spec.reference(x), x)
    assert ops.spec_from_node(ir.Node(ops.DOMAIN, ops.FEATURE_ROTATION, [], spec.attributes())) == spec
