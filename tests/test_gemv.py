"""Weight-only GEMV kernels: equal to dequantize-then-matmul up to float32 summation order."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minquant as mq
from minquant.kernels.gemv import (
    interleave_lanes,
    matmul_weight_only,
    matmul_weight_only_ref,
    pack_weight,
    rounding_bound,
    unpack_weight,
)
from minquant.kernels.gemv_plain import _half_to_float
from minquant.packing import pack_bits


def make_operands(rng, rows, in_features, num_bits, group_size, signed, symmetric):
    """Random weights quantized per group with float16 scales, packed per row."""
    w = rng.standard_normal((rows, in_features)).astype(np.float32)  # (N, K)
    qmin, qmax = mq.qrange(num_bits, signed, narrow_range=symmetric and signed)
    scale, zero_point = mq.quant.calc_group_qparams(w, qmin, qmax, 1, group_size, symmetric)
    scale = scale.astype(np.float16)  # (N, G) the stored precision
    scale32 = scale.astype(np.float32)
    w_q = mq.quantize(w, scale32, zero_point, qmin, qmax, axis=1, group_size=group_size)
    packed = pack_weight(w_q, num_bits, group_size, signed)  # (N, K * b / 8)
    zp = None if symmetric and signed else zero_point.astype(np.uint8 if not signed else np.int8)
    w_hat = mq.dequantize(w_q, scale32, zero_point, axis=1, group_size=group_size)
    return packed, scale, zp, w_hat


@st.composite
def gemv_cases(draw):
    num_bits = draw(st.sampled_from([2, 3, 4, 5, 8]))
    unit = 2 if num_bits == 4 else 1 if num_bits == 8 else 8
    group_size = unit * draw(st.sampled_from([1, 2, 4, 8]))
    in_features = group_size * draw(st.integers(1, 5))
    return dict(
        rows=draw(st.integers(1, 9)),
        in_features=in_features,
        num_bits=num_bits,
        group_size=group_size,
        signed=draw(st.booleans()),
        symmetric=draw(st.booleans()),
        batch=draw(st.sampled_from([None, 1, 3])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@given(gemv_cases())
def test_kernel_matches_dequantize_then_matmul(case):
    rng = np.random.default_rng(case["seed"])
    packed, scale, zp, w_hat = make_operands(
        rng,
        case["rows"],
        case["in_features"],
        case["num_bits"],
        case["group_size"],
        case["signed"],
        case["symmetric"],
    )
    shape = (case["in_features"],) if case["batch"] is None else (case["batch"], -1)
    x = rng.standard_normal(case["in_features"]).astype(np.float32)
    x = np.tile(x, 1 if case["batch"] is None else case["batch"]).reshape(shape)
    if case["batch"] is not None:
        x = x * np.arange(1, case["batch"] + 1, dtype=np.float32)[:, None]  # distinct rows
    args = (packed, scale, zp, case["num_bits"], case["group_size"], case["signed"])
    y = matmul_weight_only(x, *args)
    y_ref = matmul_weight_only_ref(x, *args)
    assert y.dtype == y_ref.dtype == np.float32 and y.shape == y_ref.shape
    np.testing.assert_array_equal(y_ref, x @ w_hat.T)  # the reference is what it says
    bound = rounding_bound(x, w_hat)
    assert np.all(np.abs(y.astype(np.float64) - y_ref) <= bound)


@pytest.mark.parametrize("num_bits", [3, 4, 8])
def test_large_matrix_within_bound_and_bound_catches_a_zero_point_bug(num_bits):
    """4096-long rows: the bound holds; a zero point off by one in one group breaks it."""
    rng = np.random.default_rng(num_bits)
    packed, scale, zp, w_hat = make_operands(rng, 64, 4096, num_bits, 64, True, True)
    x = np.abs(rng.standard_normal(4096)).astype(np.float32)  # no cancellation
    args = (scale, zp, num_bits, 64, True)
    y = matmul_weight_only(x, packed, *args)
    bound = rounding_bound(x, w_hat)
    assert np.all(np.abs(y - matmul_weight_only_ref(x, packed, *args)) <= bound)
    # NOTE: the worst-case bound, 2 * 4098 * 2^-24 * sum |w x| (about 5e-4 relative), is
    # loose: an off-by-one zero point shifts the result by scale * sum(x in group) only.
    if num_bits < 8:
        w_bad = w_hat.copy()
        w_bad[0, :64] -= scale[0, 0].astype(np.float32)
        assert abs(float(x @ w_bad[0]) - float(y[0])) > bound[0]


@pytest.mark.parametrize("num_bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize(("in_features", "lanes"), [(2048, 64), (96, 48)])
def test_pack_weight_layout_and_round_trip(num_bits, signed, in_features, lanes):
    """At 4 and 8 bits byte j of lane c lands at j * L + c (a lane is a group when a row
    has 32 groups or more, else an equal piece of one: 3 groups of 32 make 48 lanes of 2
    codes); the other widths keep pack_bits order."""
    rng = np.random.default_rng(num_bits)
    qmin, qmax = mq.qrange(num_bits, signed)
    w_q = rng.integers(qmin, qmax + 1, size=(3, in_features))  # (N, K), groups of 32
    packed = pack_weight(w_q, num_bits, 32, signed)  # (N, K * b / 8)
    rows = pack_bits(w_q, num_bits, signed).reshape(3, -1)  # (N, K * b / 8)
    if num_bits in (4, 8):
        assert interleave_lanes(in_features, 32, num_bits) == lanes
        per_lane = rows.shape[1] // lanes
        for c in range(lanes):
            for j in range(per_lane):
                assert np.array_equal(packed[:, j * lanes + c], rows[:, c * per_lane + j])
    else:
        assert np.array_equal(packed, rows)
    np.testing.assert_array_equal(unpack_weight(packed, num_bits, 32, in_features, signed), w_q)


def test_half_to_float_all_positive_finite_bit_patterns():
    bits = np.arange(0x7C00, dtype=np.uint16)  # +0, subnormals, normals up to 65504
    expected = bits.view(np.float16).astype(np.float32)
    got = np.array([_half_to_float(b) for b in bits], dtype=np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_signed_codes_use_the_sign_flip():
    """Two's complement -8 (0x8) and 7 (0x7) read back as -8 and 7, not 8 and 7."""
    packed = pack_weight(np.array([[-8, 7]]), 4, 2, signed=True)
    scale = np.ones((1, 1), np.float16)
    y = matmul_weight_only(np.array([1.0, 10.0], np.float32), packed, scale, None, 4, 2, True)
    assert y.tolist() == [62.0]


def test_nan_in_x_propagates():
    packed = pack_weight(np.array([[1, 2]]), 4, 2, signed=True)
    scale = np.ones((1, 1), np.float16)
    x = np.array([np.nan, 1.0], np.float32)
    assert np.isnan(matmul_weight_only(x, packed, scale, None, 4, 2, True)[0])


PACKED = np.zeros((2, 8), np.uint8)
SCALE = np.ones((2, 1), np.float16)
X = np.zeros(16, np.float32)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: matmul_weight_only(X, PACKED, SCALE, None, 1, 16, True), ValueError, "num_bits"),
        (
            lambda: matmul_weight_only(X.astype(np.float64), PACKED, SCALE, None, 4, 16, True),
            TypeError,
            "x must be a float32",
        ),
        (
            lambda: matmul_weight_only(X, PACKED, SCALE, None, 4, 6, True),
            ValueError,
            "group_size=6 must be a multiple of 2 .* divide in_features=16",
        ),
        (
            lambda: matmul_weight_only(X, PACKED, SCALE, None, 3, 16, True),
            ValueError,
            "in_features=16 at 3 bits needs 6",
        ),
        (
            lambda: matmul_weight_only(X, PACKED, SCALE.astype(np.float32), None, 4, 16, True),
            TypeError,
            "scale must be a float16",
        ),
        (
            lambda: matmul_weight_only(X, PACKED, -SCALE, None, 4, 16, True),
            ValueError,
            "scale must be positive and finite",
        ),
        (
            lambda: matmul_weight_only(X, PACKED, SCALE, np.zeros((2, 2)), 4, 16, True),
            ValueError,
            r"zero_point must be None or have shape \(2, 1\)",
        ),
        (
            lambda: matmul_weight_only(X, PACKED.astype(np.int8), SCALE, None, 4, 16, True),
            TypeError,
            "packed must be a uint8",
        ),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
