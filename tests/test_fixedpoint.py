"""Fixed-point requantization against exact Python-integer / Fraction arithmetic.

The oracles below restate gemmlowp/TFLite mathematically (floor of an exact rational, Python
ints never overflow) instead of replaying the nudge-and-truncate code under test.
"""

import math
from fractions import Fraction

import numpy as np
import pytest

from minquant.fixedpoint import (
    INT32_MAX,
    INT32_MIN,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)

N_CASES = 100_000


# ---- exact oracles (Python ints and fractions) -------------------------------------------


def srdhm_exact(a: int, b: int) -> int:
    """floor(a*b / 2**31 + 1/2): the nearest integer to 2ab / 2**32, ties toward +inf."""
    if a == b == INT32_MIN:
        return INT32_MAX
    return (a * b + 2**30) // 2**31


def rdbpot_exact(x: int, e: int) -> int:
    """x / 2**e rounded half away from zero."""
    q = Fraction(x, 2**e)
    return int(math.copysign(math.floor(abs(q) + Fraction(1, 2)), x))


def mbqm_exact(x: int, multiplier: int, shift: int) -> int:
    return rdbpot_exact(srdhm_exact(x * 2 ** max(shift, 0), multiplier), max(-shift, 0))


def mbqm_single_exact(x: int, multiplier: int, shift: int) -> int:
    """floor(x * M0 / 2**(31 - shift) + 1/2): the exact product rounded once, ties up."""
    return math.floor(Fraction(x * multiplier, 2 ** (31 - shift)) + Fraction(1, 2))


def quantize_multiplier_exact(real: float) -> tuple[int, int]:
    """M0 = round_half_away(real * 2**(31 - e)) with 2**(e-1) <= real < 2**e, exactly."""
    r = Fraction(real)
    if r == 0:
        return 0, 0
    # A float is n / 2**t exactly, and n in [2**(b-1), 2**b) puts r in [2**(b-1-t), 2**(b-t)).
    t = r.denominator.bit_length() - 1
    assert r.denominator == 2**t
    e = r.numerator.bit_length() - t
    m0 = math.floor(r * Fraction(2) ** (31 - e) + Fraction(1, 2))
    if m0 == 2**31:
        m0, e = m0 // 2, e + 1
    if e < -31:
        return 0, 0
    return m0, e


# ---- random cases ------------------------------------------------------------------------


def random_int32(rng: np.random.Generator, n: int) -> np.ndarray:
    """A mix of full-range, small, boundary and tie-prone int32 values."""
    full = rng.integers(INT32_MIN, INT32_MAX, n, endpoint=True)
    small = rng.integers(-1000, 1000, n, endpoint=True)
    powers = np.int64(1) << rng.integers(0, 31, n)
    ties = powers * rng.choice([-3, -1, 1, 3], n)  # odd multiples of a power of two
    edges = rng.choice([INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX - 1, INT32_MAX], n)
    pick = rng.integers(0, 5, n)
    x = np.choose(pick, [full, small, ties, edges, full // 65536])
    return np.clip(x, INT32_MIN, INT32_MAX).astype(np.int32)


def test_srdhm_matches_exact_on_100k_cases():
    rng = np.random.default_rng(0)
    a = random_int32(rng, N_CASES)
    b = random_int32(rng, N_CASES)
    got = saturating_rounding_doubling_high_mul(a, b)
    assert got.dtype == np.int32
    want = [srdhm_exact(int(x), int(y)) for x, y in zip(a, b, strict=True)]
    np.testing.assert_array_equal(got, want)


def test_rdbpot_matches_exact_on_100k_cases():
    rng = np.random.default_rng(1)
    x = random_int32(rng, N_CASES)
    e = rng.integers(0, 32, N_CASES)
    got = rounding_divide_by_pot(x, e)
    want = [rdbpot_exact(int(v), int(k)) for v, k in zip(x, e, strict=True)]
    np.testing.assert_array_equal(got, want)


def test_quantize_multiplier_matches_exact_on_100k_cases():
    rng = np.random.default_rng(2)
    real = np.exp2(rng.uniform(-40.0, 29.0, N_CASES))
    m, s = quantize_multiplier(real)
    assert m.dtype == np.int32 and s.dtype == np.int32
    want = np.array([quantize_multiplier_exact(float(r)) for r in real])
    np.testing.assert_array_equal(m, want[:, 0])
    np.testing.assert_array_equal(s, want[:, 1])
    normal = m != 0
    assert np.all((m[normal] >= 2**30) & (m[normal] < 2**31))


def test_multiply_by_quantized_multiplier_matches_exact_on_100k_cases():
    rng = np.random.default_rng(3)
    real = np.exp2(rng.uniform(-34.0, 0.0, N_CASES))
    multiplier, shift = quantize_multiplier(real)
    x = random_int32(rng, N_CASES)
    got = multiply_by_quantized_multiplier(x, multiplier, shift)
    want = [
        mbqm_exact(int(v), int(m), int(s)) for v, m, s in zip(x, multiplier, shift, strict=True)
    ]
    np.testing.assert_array_equal(got, want)
    # The two roundings stay within 1 of the exact product x * M0 * 2**(shift - 31).
    for v, m, s, y in list(zip(x, multiplier, shift, got, strict=True))[:2000]:
        exact = Fraction(int(v) * int(m)) * Fraction(2) ** (int(s) - 31)
        assert abs(int(y) - exact) <= 1


def test_single_rounding_matches_exact_on_100k_cases():
    rng = np.random.default_rng(6)
    real = np.exp2(rng.uniform(-34.0, 0.0, N_CASES))
    multiplier, shift = quantize_multiplier(real)
    x = random_int32(rng, N_CASES)
    got = multiply_by_quantized_multiplier(x, multiplier, shift, rounding="single")
    assert got.dtype == np.int32
    cases = list(zip(x, multiplier, shift, strict=True))
    want = [mbqm_single_exact(int(v), int(m), int(s)) for v, m, s in cases]
    np.testing.assert_array_equal(got, want)
    # One rounding: within 1/2 of the exact product, where the two roundings reach 1.
    double = multiply_by_quantized_multiplier(x, multiplier, shift, rounding="double")
    for (v, m, s), y, y2 in list(zip(cases, got, double, strict=True))[:2000]:
        exact = Fraction(int(v) * int(m)) * Fraction(2) ** (int(s) - 31)
        assert abs(int(y) - exact) <= Fraction(1, 2)
        assert abs(int(y2) - exact) <= 1
    differ = np.mean(got != double)
    assert 0.0 < differ < 0.5, differ  # the variants disagree, by one step only
    assert np.abs(got.astype(np.int64) - double).max() == 1


def test_single_rounding_left_shift_and_overflow():
    rng = np.random.default_rng(7)
    real = np.exp2(rng.uniform(0.0, 30.0, 5000))
    multiplier, shift = quantize_multiplier(real)
    x = rng.integers(-(2**22), 2**22, 5000) >> np.minimum(shift, 22)  # keeps x * M in int32
    x = x.astype(np.int32)
    got = multiply_by_quantized_multiplier(x, multiplier, shift, rounding="single")
    want = [
        mbqm_single_exact(int(v), int(m), int(s))
        for v, m, s in zip(x, multiplier, shift, strict=True)
    ]
    np.testing.assert_array_equal(got, want)
    # Largest shift and multiplier: INT32_MAX * (2**31 - 1) * 2**-1 does not fit int32.
    with pytest.raises(ValueError, match="overflows int32"):
        multiply_by_quantized_multiplier(np.array([2**20]), INT32_MAX, 30, rounding="single")


def test_single_rounding_ties_round_toward_plus_infinity():
    # M = 0.25 (M0 = 2**30, shift = -1): x / 4 with x = 4k + 2 are the ties.
    m, s = quantize_multiplier(0.25)
    x = np.array([2, -2, 6, -6, 10, -10, INT32_MIN + 2], dtype=np.int32)
    got = multiply_by_quantized_multiplier(x, m, s, rounding="single")
    np.testing.assert_array_equal(got, [1, 0, 2, -1, 3, -2, -(2**29) + 1])
    # The double-rounding reference rounds the negative ones away from zero instead.
    got = multiply_by_quantized_multiplier(x, m, s, rounding="double")
    np.testing.assert_array_equal(got, [1, -1, 2, -2, 3, -3, -(2**29)])
    # Ties at every shift in [-29, 0]: M0 = 3 * 2**29 (M = 3 * 2**(shift - 2)) and
    # x = +-2**(1 - shift) give x * M = +-1.5 exactly, which rounds to 2 and -1.
    shift = np.arange(-29, 1)  # (30,)
    for sign, tie_up in ((1, 2), (-1, -1)):
        x = (sign * (np.int64(1) << (1 - shift))).astype(np.int32)  # (30,)
        got = multiply_by_quantized_multiplier(x, 3 * 2**29, shift, rounding="single")
        np.testing.assert_array_equal(got, np.full(30, tie_up))
        pairs = zip(x, shift, strict=True)
        want = [mbqm_single_exact(int(v), 3 * 2**29, int(k)) for v, k in pairs]
        np.testing.assert_array_equal(got, want)


def test_multiply_by_quantized_multiplier_left_shift():
    rng = np.random.default_rng(4)
    real = np.exp2(rng.uniform(0.0, 8.0, 5000))
    multiplier, shift = quantize_multiplier(real)
    x = rng.integers(-(2**22), 2**22, 5000).astype(np.int32)
    got = multiply_by_quantized_multiplier(x, multiplier, shift)
    want = [
        mbqm_exact(int(v), int(m), int(s)) for v, m, s in zip(x, multiplier, shift, strict=True)
    ]
    np.testing.assert_array_equal(got, want)


# ---- edge cases --------------------------------------------------------------------------


def test_srdhm_int32_min_squared_saturates():
    got = saturating_rounding_doubling_high_mul(np.int32(INT32_MIN), np.int32(INT32_MIN))
    assert got.item() == INT32_MAX
    # INT32_MIN * (INT32_MIN + 1) is representable: no saturation, exact value 2**31 - 1.
    got = saturating_rounding_doubling_high_mul(np.int32(INT32_MIN), np.int32(INT32_MIN + 1))
    assert got.item() == INT32_MAX


def test_srdhm_ties_round_toward_plus_infinity():
    # a * b = +-2**30 is exactly +-0.5 in units of 2**31.
    a = np.array([1, -1, 3, -3], dtype=np.int32)
    got = saturating_rounding_doubling_high_mul(a, np.int32(2**30))
    np.testing.assert_array_equal(got, [1, 0, 2, -1])


def test_rdbpot_negative_ties_round_away_from_zero():
    x = np.array([-1, -3, -5, 1, 3, 5, -4, 4], dtype=np.int32)
    np.testing.assert_array_equal(rounding_divide_by_pot(x, 1), [-1, -2, -3, 1, 2, 3, -2, 2])
    np.testing.assert_array_equal(rounding_divide_by_pot(np.int32(-6), 2), -2)  # -1.5
    np.testing.assert_array_equal(rounding_divide_by_pot(np.int32(INT32_MIN), 31), -1)
    np.testing.assert_array_equal(rounding_divide_by_pot(np.int32(INT32_MAX), 31), 1)


def test_quantize_multiplier_rounds_up_to_two_pow_31():
    real = 1.0 - 2.0**-33  # q * 2**31 = 2**31 - 0.25 rounds to 2**31: halve and carry
    assert quantize_multiplier(real) == (2**30, 1)
    assert quantize_multiplier_exact(real) == (2**30, 1)


def test_quantize_multiplier_flushes_below_shift_minus_31():
    assert quantize_multiplier(2.0**-32) == (2**30, -31)
    assert quantize_multiplier(2.0**-33) == (0, 0)
    assert quantize_multiplier(0.0) == (0, 0)
    got = multiply_by_quantized_multiplier(np.int32(INT32_MAX), *quantize_multiplier(2.0**-40))
    assert got.item() == 0


def test_per_channel_broadcasts_along_last_axis():
    rng = np.random.default_rng(5)
    acc = rng.integers(-(2**20), 2**20, (7, 5)).astype(np.int32)  # (N, C)
    multiplier, shift = quantize_multiplier(rng.uniform(1e-4, 0.9, 5))  # (C,)
    got = multiply_by_quantized_multiplier(acc, multiplier, shift)
    assert got.shape == (7, 5) and got.dtype == np.int32
    for c in range(5):
        column = multiply_by_quantized_multiplier(acc[:, c], int(multiplier[c]), int(shift[c]))
        np.testing.assert_array_equal(got[:, c], column)


# ---- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("real", [-0.5, float("nan"), float("inf"), 2.0**31])
def test_quantize_multiplier_rejects_bad_values(real):
    with pytest.raises(ValueError, match="real_multiplier"):
        quantize_multiplier(real)


def test_rejects_unknown_rounding_and_negative_single_multiplier():
    with pytest.raises(ValueError, match="rounding must be one of"):
        multiply_by_quantized_multiplier(np.array([1]), 2**30, 0, rounding="half_even")
    with pytest.raises(ValueError, match="multiplier must be >= 0"):
        multiply_by_quantized_multiplier(np.array([1]), -(2**30), 0, rounding="single")


def test_rejects_float_accumulators():
    with pytest.raises(TypeError, match="acc_int32"):
        multiply_by_quantized_multiplier(np.array([1.5]), 2**30, 0)


def test_rejects_values_outside_int32():
    with pytest.raises(ValueError, match="acc_int32"):
        multiply_by_quantized_multiplier(np.array([2**31]), 2**30, 0)
    with pytest.raises(ValueError, match="multiplier"):
        multiply_by_quantized_multiplier(np.array([1]), 2**31, 0)


def test_rejects_shift_out_of_range():
    with pytest.raises(ValueError, match="shift"):
        multiply_by_quantized_multiplier(np.array([1]), 2**30, -32)
    with pytest.raises(ValueError, match="exponent"):
        rounding_divide_by_pot(np.array([1]), 32)


def test_rejects_left_shift_overflow():
    with pytest.raises(ValueError, match="overflows int32"):
        multiply_by_quantized_multiplier(np.array([2**29]), 2**30, 3)
