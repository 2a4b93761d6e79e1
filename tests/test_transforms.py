"""Tests for stamp_onnx.core.transforms, the sequence-transform oracle (conventions: docs/design.md).

Each transform is checked against an independent construction written here (hand-computed Haar
values, a plain recursive Haar, scipy's DCT and Hadamard), plus the algebra every transform must
satisfy: orthogonality, forward == M @ x, exact round trip, energy preservation, numpy == torch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from stamp_onnx.core import transforms

TRANSFORMS = ("haar", "dct", "wht", "none")
LENGTHS = (*range(1, 41), 64, 100, 127, 128)
# Haar is checked at several depths: 1 level, the default 3, and more than any length here allows.
CASES = [("haar", 1), ("haar", 3), ("haar", 10), ("dct", 3), ("wht", 3), ("none", 3)]
CASE_IDS = [f"{t}-L{levels}" for t, levels in CASES]
R2 = math.sqrt(2.0)


def _data(shape: tuple[int, ...], seed: int, dtype: type = np.float64) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# --- algebra, every transform and length ---------------------------------------------------------


@pytest.mark.parametrize("s", LENGTHS)
@pytest.mark.parametrize(("transform", "levels"), CASES, ids=CASE_IDS)
def test_matrix_is_orthogonal(transform: str, levels: int, s: int) -> None:
    m = transforms.matrix(s, transform, levels)
    assert m.shape == (s, s)
    assert m.dtype == np.float64
    np.testing.assert_allclose(m @ m.T, np.eye(s), rtol=0, atol=1e-12)
    np.testing.assert_allclose(m.T @ m, np.eye(s), rtol=0, atol=1e-12)


@pytest.mark.parametrize("s", LENGTHS)
@pytest.mark.parametrize(("transform", "levels"), CASES, ids=CASE_IDS)
def test_forward_matches_matrix_roundtrips_and_preserves_energy(
    transform: str, levels: int, s: int
) -> None:
    x = _data((2, s, 5), seed=s)
    y = transforms.forward(x, transform, levels)
    assert y.shape == x.shape
    assert y.dtype == x.dtype
    m = transforms.matrix(s, transform, levels)
    np.testing.assert_allclose(y, m @ x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(transforms.inverse(y, transform, levels), x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        transforms.inverse(x, transform, levels), m.T @ x, rtol=0, atol=1e-12
    )
    np.testing.assert_allclose(np.sum(y * y), np.sum(x * x), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("s", (1, 2, 3, 7, 8, 17, 64, 100, 127, 128))
@pytest.mark.parametrize(("transform", "levels"), CASES, ids=CASE_IDS)
def test_numpy_and_torch_agree(transform: str, levels: int, s: int, dtype: type) -> None:
    x = _data((3, s, 6), seed=1000 + s, dtype=dtype)
    xt = torch.from_numpy(x.copy())
    y, yt = transforms.forward(x, transform, levels), transforms.forward(xt, transform, levels)
    z, zt = transforms.inverse(y, transform, levels), transforms.inverse(yt, transform, levels)
    assert isinstance(yt, torch.Tensor) and isinstance(zt, torch.Tensor)
    assert y.dtype == dtype and yt.dtype == xt.dtype
    if transform in ("haar", "none"):
        # Element-wise butterflies in the same order: bit-identical.
        np.testing.assert_array_equal(yt.numpy(), y)
        np.testing.assert_array_equal(zt.numpy(), z)
    else:
        # A matmul: numpy and torch BLAS may sum in a different order.
        atol = (1e-5 if dtype == np.float32 else 1e-13) * float(np.abs(x).max())
        np.testing.assert_allclose(yt.numpy(), y, rtol=0, atol=atol)
        np.testing.assert_allclose(zt.numpy(), z, rtol=0, atol=atol)
    # Same round trip in float32 too (to float32 rounding).
    atol = (1e-5 if dtype == np.float32 else 1e-12) * float(np.abs(x).max())
    np.testing.assert_allclose(z, x, rtol=0, atol=atol)


def test_unknown_transform_and_empty_length_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown transform"):
        transforms.matrix(4, "fft")
    with pytest.raises(ValueError, match="sequence length"):
        transforms.matrix(0, "dct")


# --- Haar conventions ------------------------------------------------------------------------


def test_haar_one_level_by_hand() -> None:
    a, b, c, d = 3.0, -1.0, 4.0, 1.5
    x = np.array([a, b, c, d])[:, None]
    want = [(a + b) / R2, (c + d) / R2, (a - b) / R2, (c - d) / R2]
    np.testing.assert_allclose(transforms.forward(x, "haar", 1)[:, 0], want, rtol=0, atol=1e-15)


def test_haar_odd_length_appends_last_token_to_low_band() -> None:
    a, b, c, d, e = 3.0, -1.0, 4.0, 1.5, -9.0
    x = np.array([a, b, c, d, e])[:, None]
    want = [(a + b) / R2, (c + d) / R2, e, (a - b) / R2, (c - d) / R2]
    np.testing.assert_allclose(transforms.forward(x, "haar", 1)[:, 0], want, rtol=0, atol=1e-15)


def test_haar_two_levels_by_hand() -> None:
    v = [3.0, -1.0, 4.0, 1.5, -9.0, 2.0, 0.5, 7.0]
    lo = [(v[0] + v[1]) / R2, (v[2] + v[3]) / R2, (v[4] + v[5]) / R2, (v[6] + v[7]) / R2]
    hi = [(v[0] - v[1]) / R2, (v[2] - v[3]) / R2, (v[4] - v[5]) / R2, (v[6] - v[7]) / R2]
    want = [
        (lo[0] + lo[1]) / R2,
        (lo[2] + lo[3]) / R2,
        (lo[0] - lo[1]) / R2,
        (lo[2] - lo[3]) / R2,
        *hi,
    ]
    got = transforms.forward(np.array(v)[:, None], "haar", 2)[:, 0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-14)


def _haar_reference(x: list[float], levels: int) -> list[float]:
    """Straightforward recursive multi-level Haar on a 1-D list: [a_L | d_L | ... | d_1]."""
    if levels == 0 or len(x) < 2:
        return list(x)
    half = len(x) // 2
    low = [(x[2 * i] + x[2 * i + 1]) / R2 for i in range(half)]
    high = [(x[2 * i] - x[2 * i + 1]) / R2 for i in range(half)]
    if len(x) % 2:
        low.append(x[-1])
    return _haar_reference(low, levels - 1) + high


def _haar_wavedec_reference(x: list[float]) -> list[list[float]]:
    """pywt.wavedec(x, 'haar', mode='periodization') for len(x) a power of two: [a_L, d_L..d_1]."""
    coeffs: list[list[float]] = []
    approx = list(x)
    while len(approx) > 1:
        half = len(approx) // 2
        coeffs.insert(0, [(approx[2 * i] - approx[2 * i + 1]) / R2 for i in range(half)])
        approx = [(approx[2 * i] + approx[2 * i + 1]) / R2 for i in range(half)]
    return [approx, *coeffs]


@pytest.mark.parametrize("s", (*range(1, 41), 64, 100, 127, 128))
@pytest.mark.parametrize("levels", (0, 1, 2, 3, 4, 7, 10))
def test_haar_matches_recursive_reference(s: int, levels: int) -> None:
    x = _data((s, 3), seed=7 * s + levels)
    want = np.array([_haar_reference(list(col), levels) for col in x.T]).T
    np.testing.assert_allclose(transforms.forward(x, "haar", levels), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("s", (2, 4, 8, 16, 32, 64, 128))
def test_haar_full_depth_matches_wavedec_order(s: int) -> None:
    x = _data((s, 2), seed=s)
    try:
        import pywt

        bands = [pywt.wavedec(col, "haar", mode="periodization") for col in x.T]
        want = np.array([np.concatenate(b) for b in bands]).T
    except ImportError:  # pywt is optional: use the transcription of its definition above.
        want = np.array([np.concatenate(_haar_wavedec_reference(list(col))) for col in x.T]).T
    depth = int(math.log2(s))
    np.testing.assert_allclose(transforms.forward(x, "haar", depth), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("s", "full"), [(8, 3), (1, 0), (2, 1), (5, 3), (100, 7), (128, 7)])
def test_haar_extra_levels_stop_early(s: int, full: int) -> None:
    np.testing.assert_array_equal(
        transforms.matrix(s, "haar", 10), transforms.matrix(s, "haar", full)
    )
    assert len(transforms.haar_band_lengths(s, 10)) == full
    x = _data((s, 4), seed=s)
    np.testing.assert_array_equal(
        transforms.forward(x, "haar", 10), transforms.forward(x, "haar", full)
    )


def test_haar_band_lengths() -> None:
    assert transforms.haar_band_lengths(8, 10) == [8, 4, 2]
    assert transforms.haar_band_lengths(100, 3) == [100, 50, 25]
    assert transforms.haar_band_lengths(7, 10) == [7, 4, 2]
    assert transforms.haar_band_lengths(1, 3) == []
    assert transforms.haar_band_lengths(64, 0) == []


# --- DCT -------------------------------------------------------------------------------------


@pytest.mark.parametrize("s", LENGTHS)
def test_dct_matches_scipy(s: int) -> None:
    x = _data((2, s, 3), seed=s)
    want = scipy.fft.dct(x, type=2, norm="ortho", axis=-2)
    np.testing.assert_allclose(transforms.forward(x, "dct"), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        transforms.matrix(s, "dct"), scipy.fft.dct(np.eye(s), norm="ortho", axis=0), atol=1e-13
    )


# --- WHT -------------------------------------------------------------------------------------


def _sign_changes(rows: np.ndarray) -> np.ndarray:
    return (np.diff(np.sign(rows), axis=1) != 0).sum(axis=1)


def _sequency_hadamard_reference(p: int) -> np.ndarray:
    h = scipy.linalg.hadamard(p).astype(np.float64)
    return h[np.argsort(_sign_changes(h), kind="stable")] / math.sqrt(p)


@pytest.mark.parametrize("p", (1, 2, 4, 8, 16, 32, 64, 128))
def test_wht_power_of_two_is_sequency_ordered_hadamard(p: int) -> None:
    m = transforms.matrix(p, "wht")
    np.testing.assert_allclose(m, _sequency_hadamard_reference(p), rtol=0, atol=1e-15)
    # Row i has exactly i sign changes (sequency order is unique) and row 0 is all positive.
    np.testing.assert_array_equal(_sign_changes(m), np.arange(p))
    assert np.all(m[0] > 0)
    np.testing.assert_allclose(np.abs(m), 1 / math.sqrt(p), rtol=1e-15)


@pytest.mark.parametrize("s", LENGTHS)
def test_wht_merges_blocks_of_the_binary_expansion(s: int) -> None:
    bits = format(s, "b")
    sizes = [2 ** (len(bits) - 1 - i) for i, bit in enumerate(bits) if bit == "1"]
    assert sizes == sorted(sizes, reverse=True) and sum(sizes) == s
    assert transforms.wht_blocks(s) == sizes
    want = scipy.linalg.block_diag(*[_sequency_hadamard_reference(p) for p in sizes])
    # Rows merged across blocks by normalised sequency k / size, ties: larger block first.
    keys = [(k / p, b) for b, p in enumerate(sizes) for k in range(p)]
    order = sorted(range(s), key=lambda i: keys[i])
    np.testing.assert_allclose(transforms.matrix(s, "wht"), want[order], rtol=0, atol=1e-15)


def test_wht_blocks_examples() -> None:
    assert transforms.wht_blocks(6) == [4, 2]
    assert transforms.wht_blocks(1) == [1]
    assert transforms.wht_blocks(100) == [64, 32, 4]
    assert transforms.wht_blocks(127) == [64, 32, 16, 8, 4, 2, 1]


# --- energy compaction ---------------------------------------------------------------------


@pytest.mark.parametrize("transform", ("haar", "dct", "wht"))
def test_energy_compaction_on_random_walk(transform: str) -> None:
    """Correlated tokens (a random walk): 64 of 512 transformed tokens carry almost all energy."""
    x = np.cumsum(_data((2, 512, 32), seed=11), axis=-2)

    def head_fraction(y: np.ndarray) -> float:
        return float(np.sum(y[..., :64, :] ** 2) / np.sum(y**2))

    plain = head_fraction(x)
    compacted = head_fraction(transforms.forward(x, transform, 3))
    assert compacted > 0.95, compacted
    assert plain < 0.1, plain
    assert compacted > 10 * plain


# --- properties ------------------------------------------------------------------------------


@st.composite
def _activations(draw: st.DrawFn) -> np.ndarray:
    batch = draw(st.lists(st.integers(1, 3), min_size=0, max_size=2))
    shape = (*batch, draw(st.integers(1, 70)), draw(st.integers(1, 9)))
    elements = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=64)
    return draw(hnp.arrays(np.float64, shape, elements=elements))


@settings(max_examples=150, deadline=None)
@given(x=_activations(), transform=st.sampled_from(TRANSFORMS), levels=st.integers(0, 6))
def test_property_roundtrip_and_energy(x: np.ndarray, transform: str, levels: int) -> None:
    y = transforms.forward(x, transform, levels)
    assert y.shape == x.shape and y.dtype == x.dtype
    scale = float(np.abs(x).max())
    np.testing.assert_allclose(
        transforms.inverse(y, transform, levels), x, rtol=0, atol=1e-12 * scale + 1e-300
    )
    energy = float(np.sum(x * x))
    assert abs(float(np.sum(y * y)) - energy) <= 1e-12 * energy + 1e-300


# --- 2-D Haar on token grids ----------------------------------------------------------------

GRIDS = [(1, 1), (1, 5), (4, 1), (2, 2), (3, 5), (4, 4), (7, 6), (16, 16), (5, 12)]


def _mallat_2d(grid: np.ndarray, levels: int) -> np.ndarray:
    """The classic 2-D DWT layout, written independently: each level transforms the LL corner
    along rows then columns with one 1-D Haar step (odd last token kept in the low half)."""
    out = grid.copy()
    h, w = out.shape[:2]
    for _ in range(levels):
        if h < 2 and w < 2:
            break
        for axis, n in ((1, w), (0, h)):
            corner = np.moveaxis(out[:h, :w], axis, 0)
            m = n // 2
            low = (corner[0 : 2 * m : 2] + corner[1 : 2 * m : 2]) / R2
            high = (corner[0 : 2 * m : 2] - corner[1 : 2 * m : 2]) / R2
            out[:h, :w] = np.moveaxis(np.concatenate([low, corner[2 * m : n], high]), 0, axis)
        h, w = (h + 1) // 2, (w + 1) // 2
    return out


@pytest.mark.parametrize(("h", "w"), GRIDS)
@pytest.mark.parametrize("levels", (0, 1, 3, 6))
def test_haar2d_is_orthogonal_and_round_trips(h: int, w: int, levels: int) -> None:
    width = 0 if h == w else w
    m = transforms.matrix(h * w, "haar2d", levels, 0, width)
    np.testing.assert_allclose(m @ m.T, np.eye(h * w), atol=1e-12)
    x = _data((2, h * w, 3), seed=h * 31 + w)
    y = transforms.forward(x, "haar2d", levels, 0, width)
    np.testing.assert_allclose(y, m @ x, atol=1e-12)
    np.testing.assert_allclose(transforms.inverse(y, "haar2d", levels, 0, width), x, atol=1e-12)
    t = torch.from_numpy(x)
    np.testing.assert_allclose(transforms.forward(t, "haar2d", levels, 0, width).numpy(), y, atol=1e-12)
    np.testing.assert_allclose(transforms.inverse(torch.from_numpy(y), "haar2d", levels, 0, width).numpy(), x, atol=1e-12)


@pytest.mark.parametrize(("h", "w"), GRIDS)
@pytest.mark.parametrize("levels", (1, 2, 3))
def test_haar2d_groups_span_the_mallat_subspaces(h: int, w: int, levels: int) -> None:
    """The first g groups span what the first g Mallat levels' bands span (same energy held)."""
    n = h * w
    m = transforms.matrix(n, "haar2d", levels, 0, w)
    mallat = np.stack([_mallat_2d(np.eye(n)[:, k].reshape(h, w), levels).ravel() for k in range(n)], axis=1)
    groups = np.maximum.outer(transforms.haar_bands(h, levels), transforms.haar_bands(w, levels)).ravel()
    ours = np.sort(groups)
    for g in range(int(groups.max()) + 1):
        a = m[ours <= g]  # our first rows, in output order
        b = mallat[groups <= g]  # Mallat coefficients at the grid positions of the same groups
        np.testing.assert_allclose(a.T @ a, b.T @ b, atol=1e-10)  # equal projectors


def test_haar2d_ll_band_comes_first() -> None:
    """16 x 16 grid, 3 levels: the first 4 tokens are the 8 x 8 block sums / 8, in row-major order."""
    x = _data((16 * 16, 5), seed=3)
    y = transforms.forward(x, "haar2d", 3)
    blocks = x.reshape(2, 8, 2, 8, 5).sum(axis=(1, 3)).reshape(4, 5) / 8
    np.testing.assert_allclose(y[:4], blocks, atol=1e-12)
    assert list(transforms.grid_order(16, 16, 3)[:4]) == [0, 1, 16, 17]


def test_haar2d_prefix_tokens_stay_in_front() -> None:
    x = _data((2, 1 + 6 * 4, 3), seed=5)
    y = transforms.forward(x, "haar2d", 2, 1, 4)
    np.testing.assert_array_equal(y[:, :1], x[:, :1])
    np.testing.assert_allclose(y[:, 1:], transforms.forward(x[:, 1:], "haar2d", 2, 0, 4), atol=0)


def test_haar2d_compacts_a_smooth_image_better_than_1d() -> None:
    """A smooth 2-D field: the first 16 of 256 tokens hold more energy with 2-D than with 1-D Haar."""
    rng = np.random.default_rng(0)
    field = np.cumsum(np.cumsum(rng.standard_normal((2, 16, 16, 8)), axis=1), axis=2).reshape(2, 256, 8)

    def head(y: np.ndarray) -> float:
        return float(np.sum(y[:, :16] ** 2) / np.sum(y**2))

    assert head(transforms.forward(field, "haar2d", 2)) > head(transforms.forward(field, "haar", 4))


@pytest.mark.parametrize(("n", "width"), [(10, 0), (12, 5), (15, 0)])
def test_haar2d_rejects_tokens_that_are_not_a_grid(n: int, width: int) -> None:
    with pytest.raises(ValueError, match="do not form"):
        transforms.forward(_data((n, 2), seed=0), "haar2d", 3, 0, width)


def test_haar_bands_examples() -> None:
    assert transforms.haar_bands(8, 3).tolist() == [0, 1, 2, 2, 3, 3, 3, 3]
    assert transforms.haar_bands(3, 3).tolist() == [0, 2, 3]  # a, d_2, d_1 (level 3 has nothing to do)
    assert transforms.haar_bands(5, 0).tolist() == [0] * 5
