"""Exercise 5: fixed-point requantization (QuantizeMultiplier, SRDHM, RoundingDivideByPOT)."""

from fractions import Fraction

import numpy as np
import pytest

from minquant import fixedpoint

pytestmark = pytest.mark.ex5

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
EDGES = np.array([INT32_MIN, INT32_MIN + 1, -(2**30), -3, -1, 0, 1, 3, 2**30, INT32_MAX])


def random_int32(rng: np.random.Generator, n: int) -> np.ndarray:
    """int32 values of every magnitude: uniform bits, then a random right shift."""
    x = rng.integers(INT32_MIN, INT32_MAX, size=n, endpoint=True, dtype=np.int64)
    return (x >> rng.integers(0, 31, size=n)).astype(np.int32)


def test_quantize_multiplier_worked_examples(ex):
    assert ex.quantize_multiplier(0.5) == (2**30, 0)  # 0.5 = 0.5 * 2^0
    assert ex.quantize_multiplier(3.0) == (3 * 2**29, 2)  # 3 = 0.75 * 2^2
    # 0.0123 = 0.7872 * 2^-6 and 0.7872 * 2^31 = 1690499127.7 -> 1690499128
    assert ex.quantize_multiplier(0.0123) == (1690499128, -6)
    assert ex.quantize_multiplier(0.0) == (0, 0)
    # q = 1 - 2^-40 rounds up to 2^31, which is halved: (2^30, shift + 1)
    assert ex.quantize_multiplier(1.0 - 2.0**-40) == (2**30, 1)
    # 2^-40 would need shift -39 < -31: flushed to zero
    assert ex.quantize_multiplier(2.0**-40) == (0, 0)
    multiplier, shift = ex.quantize_multiplier(0.3)
    assert isinstance(multiplier, int) and isinstance(shift, int)


def test_quantize_multiplier_matches_minquant(ex):
    rng = np.random.default_rng(0)
    reals = np.concatenate([10.0 ** rng.uniform(-11, 3, 2000), [2.0**-31, 2.0**-32, 1.0]])
    for real in reals:
        assert ex.quantize_multiplier(float(real)) == fixedpoint.quantize_multiplier(real)


def test_quantize_multiplier_is_accurate(ex):
    # an exact oracle: |M0 * 2^(shift - 31) - M| <= half a unit in the last place of M0
    for real in (0.1, 0.00390625, 0.7, 1.5, 123.456):
        multiplier, shift = ex.quantize_multiplier(real)
        assert 2**30 <= multiplier < 2**31
        error = Fraction(multiplier) * Fraction(2) ** (shift - 31) - Fraction(real)
        assert abs(error) <= Fraction(2) ** (shift - 32)


def test_srdhm_worked_examples(ex):
    srdhm = ex.saturating_rounding_doubling_high_mul
    assert int(srdhm(np.int32(3), np.int32(2**30))) == 2  # 3 * 2^30 / 2^31 = 1.5 -> 2
    assert int(srdhm(np.int32(-3), np.int32(2**30))) == -1  # -1.5 -> -1: ties round up
    assert int(srdhm(np.int32(INT32_MIN), np.int32(INT32_MIN))) == INT32_MAX  # saturates
    assert srdhm(np.array([5, -5]), np.int32(2**30)).tolist() == [3, -2]  # 2.5 -> 3, -2.5 -> -2


def test_srdhm_matches_minquant(ex):
    rng = np.random.default_rng(1)
    a = np.concatenate([random_int32(rng, 20_000), np.repeat(EDGES, EDGES.size)])
    b = np.concatenate([random_int32(rng, 20_000), np.tile(EDGES, EDGES.size)])
    got = ex.saturating_rounding_doubling_high_mul(a.astype(np.int32), b.astype(np.int32))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, fixedpoint.saturating_rounding_doubling_high_mul(a, b))


def test_rdbpot_worked_example(ex):
    got = ex.rounding_divide_by_pot(np.array([5, -5, 6, -6, 7, -7], dtype=np.int32), 1)
    assert got.dtype == np.int32
    assert got.tolist() == [3, -3, 3, -3, 4, -4]  # ties (+-2.5, +-3.5) go away from zero
    # -12 / 8 = -1.5 -> -2; -11 / 8 = -1.375 -> -1; 12 / 8 = 1.5 -> 2
    assert ex.rounding_divide_by_pot(np.array([-12, -11, 12], np.int32), 3).tolist() == [-2, -1, 2]


@pytest.mark.parametrize("exponent", [0, 1, 2, 5, 13, 30, 31])
def test_rdbpot_matches_minquant_and_exact_rounding(ex, exponent):
    rng = np.random.default_rng(exponent)
    x = np.concatenate([random_int32(rng, 5000), EDGES]).astype(np.int32)
    got = ex.rounding_divide_by_pot(x, exponent)
    np.testing.assert_array_equal(got, fixedpoint.rounding_divide_by_pot(x, exponent))
    for value, result in zip(x[:200].tolist(), got[:200].tolist(), strict=True):
        exact = Fraction(value, 2**exponent)  # round half away from zero, exactly
        magnitude = int(abs(exact) + Fraction(1, 2))
        assert result == (magnitude if exact >= 0 else -magnitude)


@pytest.mark.parametrize("real", [0.25, 0.0123, 0.75, 1e-5, 2.5, 37.0])
def test_multiply_by_quantized_multiplier_matches_minquant(ex, real):
    rng = np.random.default_rng(2)
    multiplier, shift = fixedpoint.quantize_multiplier(real)
    limit = INT32_MAX >> max(shift, 0)  # keep acc * 2^shift inside int32
    acc = rng.integers(-limit, limit, size=20_000, endpoint=True).astype(np.int32)
    got = ex.multiply_by_quantized_multiplier(acc, multiplier, shift)
    assert got.dtype == np.int32
    expected = fixedpoint.multiply_by_quantized_multiplier(acc, multiplier, shift)
    np.testing.assert_array_equal(got, expected)
    # and it is round(acc * M) up to one unit (two roundings, each at most half a unit)
    exact = acc.astype(np.float64) * (multiplier * 2.0 ** (shift - 31))
    assert np.max(np.abs(got - exact)) <= 1.0


def test_multiply_by_quantized_multiplier_worked_example(ex):
    acc = np.array([10, -10, 6, -6], dtype=np.int32)
    # M = 0.25 = 2^30 * 2^(-1 - 31): 2.5 -> 3, -2.5 -> -3, 1.5 -> 2, -1.5 -> -2
    assert ex.multiply_by_quantized_multiplier(acc, 2**30, -1).tolist() == [3, -3, 2, -2]
    with pytest.raises(ValueError):  # 2^30 * 2^2 does not fit in int32
        ex.multiply_by_quantized_multiplier(np.array([2**30], np.int32), 3 * 2**29, 2)


def test_no_library_shortcut(ex, forbid):
    forbid(
        fixedpoint.quantize_multiplier,
        fixedpoint.saturating_rounding_doubling_high_mul,
        fixedpoint.rounding_divide_by_pot,
        fixedpoint.multiply_by_quantized_multiplier,
    )
    assert ex.quantize_multiplier(0.25) == (2**30, -1)
    assert int(ex.saturating_rounding_doubling_high_mul(np.int32(3), np.int32(2**30))) == 2
    assert ex.rounding_divide_by_pot(np.array([5, -5], np.int32), 1).tolist() == [3, -3]
    acc = np.array([10, -10], dtype=np.int32)
    assert ex.multiply_by_quantized_multiplier(acc, 2**30, -1).tolist() == [3, -3]
