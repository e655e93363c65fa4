"""Exercise 1: uniform quantization (qrange, scale and zero point, quantize, dequantize)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minquant as mq
from minquant import quant

pytestmark = pytest.mark.ex1

SETTINGS = settings(deadline=None, max_examples=100, derandomize=True)


def test_qrange_worked_examples(ex):
    assert ex.qrange(8, signed=True) == (-128, 127)
    assert ex.qrange(8, signed=False) == (0, 255)
    assert ex.qrange(4, signed=True) == (-8, 7)
    assert ex.qrange(2, signed=False) == (0, 3)
    assert ex.qrange(8, signed=True, narrow_range=True) == (-127, 127)


@pytest.mark.parametrize("num_bits", range(2, 17))
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("narrow_range", [True, False])
def test_qrange_matches_minquant(ex, num_bits, signed, narrow_range):
    expected = mq.qrange(num_bits, signed=signed, narrow_range=narrow_range)
    got = ex.qrange(num_bits, signed, narrow_range)
    assert got == expected
    assert all(isinstance(q, int) for q in got)


def test_calc_qparams_worked_examples(ex):
    # s = 4 / 255 in float32; z = 0 - rint(-1 / s) = rint(63.75) = 64
    scale, zero_point = ex.calc_qparams(-1.0, 3.0, 0, 255)
    assert scale == np.float32(4.0) / np.float32(255.0) and zero_point == 64
    # symmetric int8: s = max(1, 3) / 127.5, z = 0
    scale, zero_point = ex.calc_qparams(-1.0, 3.0, -128, 127, symmetric=True)
    assert scale == np.float32(3.0) / np.float32(127.5) and zero_point == 0
    # [0.5, 2] is widened to [0, 2] so that 0.0 stays exact: s = 2/255, z = 0
    scale, zero_point = ex.calc_qparams(0.5, 2.0, 0, 255)
    assert scale == np.float32(2.0) / np.float32(255.0) and zero_point == 0
    # an all-zero tensor: the range [0, 0] gives the smallest scale, eps
    scale, zero_point = ex.calc_qparams(0.0, 0.0, 0, 255)
    assert scale == np.finfo(np.float32).eps and zero_point == 0
    # an all-negative range [-2, 0] puts the zero point at the top: z = 0 - rint(-255) = 255
    assert ex.calc_qparams(-2.0, -1.0, 0, 255)[1] == 255


def test_calc_qparams_types(ex):
    scale, zero_point = ex.calc_qparams(-1.0, 3.0, 0, 255)
    assert isinstance(scale, np.float32)
    assert isinstance(zero_point, int)


@SETTINGS
@given(
    lo=st.floats(-1e4, 1e4, width=32),
    width=st.floats(0.0, 1e4, width=32),
    bits=st.integers(2, 16),
    signed=st.booleans(),
    symmetric=st.booleans(),
)
def test_calc_qparams_matches_minquant_bit_for_bit(ex, lo, width, bits, signed, symmetric):
    hi = float(np.float32(lo + width))
    lo = min(lo, hi)
    signed = signed or symmetric
    qmin, qmax = mq.qrange(bits, signed=signed)
    scale, zero_point = ex.calc_qparams(lo, hi, qmin, qmax, symmetric)
    ref_scale, ref_zero_point = mq.calc_qparams(lo, hi, qmin, qmax, symmetric)
    assert np.float32(scale).tobytes() == ref_scale[0].tobytes()
    assert zero_point == ref_zero_point[0]


@pytest.mark.parametrize(("num_bits", "symmetric"), [(8, False), (8, True), (4, False)])
def test_calc_qparams_float32_arithmetic_on_random_ranges(ex, num_bits, symmetric):
    # NOTE: the same formulas in float64 give a scale one float32 ulp off for about one
    # range in ten; only float32 arithmetic, as the spec says, matches PyTorch everywhere.
    rng = np.random.default_rng(num_bits)
    qmin, qmax = mq.qrange(num_bits, signed=symmetric)
    lows = -rng.uniform(0, 10, 500) * 10.0 ** rng.integers(-3, 3, 500)
    highs = rng.uniform(0, 10, 500) * 10.0 ** rng.integers(-3, 3, 500)
    for lo, hi in zip(lows.astype(np.float32), highs.astype(np.float32), strict=True):
        scale, zero_point = ex.calc_qparams(lo, hi, qmin, qmax, symmetric)
        ref_scale, ref_zero_point = mq.calc_qparams(lo, hi, qmin, qmax, symmetric)
        assert (np.float32(scale), zero_point) == (ref_scale[0], ref_zero_point[0]), (lo, hi)


@pytest.mark.parametrize(
    ("min_val", "max_val", "qmin", "qmax", "symmetric"),
    [
        (2.0, 1.0, 0, 255, False),  # min_val > max_val
        (np.nan, 1.0, 0, 255, False),
        (-1.0, np.inf, 0, 255, False),
        (-1.0, 1.0, 0, 255, True),  # symmetric needs a signed range
    ],
)
def test_calc_qparams_rejects_bad_input(ex, min_val, max_val, qmin, qmax, symmetric):
    with pytest.raises(ValueError):
        ex.calc_qparams(min_val, max_val, qmin, qmax, symmetric)


def test_quantize_worked_example(ex):
    # x / s = [-2, 0, 0.5, 1.5, 6, 200] -> rint (ties to even) [-2, 0, 0, 2, 6, 200] -> + z = 2
    x = np.array([-1.0, 0.0, 0.25, 0.75, 3.0, 100.0])
    x_q = ex.quantize(x, 0.5, 2, 0, 255)
    assert x_q.dtype == np.int32
    assert x_q.tolist() == [0, 2, 2, 4, 8, 202]
    # clipping on both sides of [-8, 7]: -20 / 2 = -10 -> -8; 20 / 2 = 10 -> 7
    assert ex.quantize(np.array([-20.0, 20.0]), 2.0, 0, -8, 7).tolist() == [-8, 7]
    # the zero point is added after rounding: 0.5 -> rint(0.5) + 1 = 1, not rint(1.5) = 2
    assert ex.quantize(np.array([0.5]), 1.0, 1, 0, 255).tolist() == [1]


def test_quantize_keeps_shape(ex):
    x = np.linspace(-1.0, 1.0, 24).reshape(2, 3, 4)
    assert ex.quantize(x, 0.01, 0, -128, 127).shape == (2, 3, 4)


def test_dequantize_worked_example(ex):
    x_hat = ex.dequantize(np.array([0, 2, 3, 8], dtype=np.uint8), 0.5, 2)
    assert x_hat.dtype == np.float32
    # (x_q - z) * s = [-2, 0, 1, 6] * 0.5: uint8 0 - 2 must not wrap around to 254
    assert x_hat.tolist() == [-1.0, 0.0, 0.5, 3.0]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("num_bits", "signed"), [(8, False), (8, True), (4, True), (3, False)])
def test_round_trip_matches_minquant_fake_quantize(ex, seed, num_bits, signed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(2000) * rng.uniform(0.01, 100) + rng.normal()).astype(np.float32)
    qmin, qmax = mq.qrange(num_bits, signed=signed)
    scale, zero_point = mq.calc_qparams(x.min() * 0.8, x.max() * 0.8, qmin, qmax)
    s, z = float(scale[0]), int(zero_point[0])
    # exact ties x / s = k + 1/2 (s is a power of two here, so x * (1/s) is exact)
    ties = (np.arange(-20, 20) + 0.5).astype(np.float32) * np.float32(0.25)
    for x_test, s_test in ((x, s), (ties, 0.25)):
        x_q = ex.quantize(x_test, s_test, z, qmin, qmax)
        assert x_q.min() >= qmin and x_q.max() <= qmax
        expected = quant.fake_quantize(x_test, s_test, z, qmin, qmax)  # s * (x_q - z)
        np.testing.assert_array_equal(mq.dequantize(x_q, s_test, z), expected)
        np.testing.assert_array_equal(ex.dequantize(x_q, s_test, z), expected)


@SETTINGS
@given(x=st.lists(st.floats(-50, 50, width=32), min_size=1, max_size=50), bits=st.integers(2, 8))
def test_round_trip_error_is_at_most_half_a_step(ex, x, bits):
    x = np.array(x, dtype=np.float32)
    qmin, qmax = ex.qrange(bits, signed=False)
    scale, zero_point = ex.calc_qparams(float(x.min()), float(x.max()), qmin, qmax)
    x_hat = ex.dequantize(ex.quantize(x, scale, zero_point, qmin, qmax), scale, zero_point)
    # inside the range, the error is at most half a step (plus float32 rounding)
    assert np.all(np.abs(x_hat - x) <= scale / 2 * (1 + 1e-4) + 1e-6)
    # 0.0 is exactly representable: it maps to the zero point and back to 0.0
    assert ex.quantize(np.zeros(1), scale, zero_point, qmin, qmax).tolist() == [zero_point]
    assert ex.dequantize(np.array([zero_point]), scale, zero_point).tolist() == [0.0]


def test_no_library_shortcut(ex, forbid):
    forbid(quant.qrange, quant.calc_qparams, quant.quantize, quant.dequantize)
    forbid(quant.fake_quantize)
    assert ex.qrange(8, signed=False) == (0, 255)
    scale, zero_point = ex.calc_qparams(-1.0, 3.0, 0, 255)
    assert (scale, zero_point) == (np.float32(4.0) / np.float32(255.0), 64)
    x_q = ex.quantize(np.array([-1.0, 0.0, 0.75]), 0.5, 2, 0, 255)
    assert x_q.tolist() == [0, 2, 4]
    assert ex.dequantize(x_q, 0.5, 2).tolist() == [-1.0, 0.0, 1.0]
