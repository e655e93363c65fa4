"""FP8 E4M3 / E5M2, FP4 E2M1 and E8M0 element casts against ml_dtypes (live and frozen)."""

from pathlib import Path

import numpy as np
import pytest

from minquant import formats

GOLDEN = np.load(Path(__file__).parent / "fixtures" / "formats_golden.npz")
ELEMENTS = ("fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "e8m0")
MAX_VALUE = {"fp8_e4m3": 448.0, "fp8_e5m2": 57344.0, "fp4_e2m1": 6.0, "e8m0": 2.0**127}
N_CODES = {"fp8_e4m3": 256, "fp8_e5m2": 256, "fp4_e2m1": 16, "e8m0": 256}


def ml_dtype(fmt: str):
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes (the FP8/FP4 oracle)")
    return {
        "fp8_e4m3": ml_dtypes.float8_e4m3fn,
        "fp8_e5m2": ml_dtypes.float8_e5m2,
        "fp4_e2m1": ml_dtypes.float4_e2m1fn,
        "e8m0": ml_dtypes.float8_e8m0fnu,
    }[fmt]


def assert_same_patterns(got: np.ndarray, expected: np.ndarray, fmt: str) -> None:
    """Bit-exact, except that any NaN pattern matches any NaN pattern."""
    got_nan = np.isnan(formats.decode(got, fmt))
    expected_nan = np.isnan(formats.decode(expected, fmt))
    np.testing.assert_array_equal(got_nan, expected_nan)
    mismatches = int(np.sum((got != expected) & ~expected_nan))
    assert mismatches == 0, f"{fmt}: {mismatches} of {got.size} bit patterns differ"


def hard_inputs(rng: np.random.Generator) -> np.ndarray:
    """float32 values: every float32 of a few binades' top bits, random, ties, overflow."""
    ones = np.arange(0x3F800000, 0x3F800000 + 2**16, 17, dtype=np.uint32).view(np.float32)
    wide = rng.normal(size=20_000) * np.exp2(rng.integers(-30, 30, size=20_000))
    halves = np.arange(0, 1024, 0.25)  # ties of every element format near 1 and up
    edges = np.array([448, 464, 464.5, 480, 57344, 61439, 61440, 6.0, 6.5, 7.0, 1e38, np.inf])
    tiny = np.exp2(rng.uniform(-30, -5, size=5_000))
    x = np.concatenate([ones, wide, halves, edges, tiny, [0.0]]).astype(np.float32)
    return np.concatenate([x, -x])


@pytest.mark.parametrize("fmt", ELEMENTS)
@pytest.mark.parametrize("saturate", [False, True])
def test_encode_matches_frozen_ml_dtypes_patterns(fmt, saturate):
    x = GOLDEN["elements_x"]
    expected = GOLDEN[f"elements_{fmt}" + ("_sat" if saturate else "")]
    assert_same_patterns(formats.encode(x, fmt, saturate=saturate), expected, fmt)


@pytest.mark.parametrize("fmt", ELEMENTS)
def test_every_pattern_decodes_as_ml_dtypes_and_round_trips(fmt):
    dtype = ml_dtype(fmt)
    bits = np.arange(N_CODES[fmt], dtype=np.uint8)
    expected = bits.view(dtype).astype(np.float32)
    got = formats.decode(bits, fmt)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(
        np.signbit(got[~np.isnan(got)]), np.signbit(expected[~np.isnan(got)])
    )
    finite = np.isfinite(expected)
    # every value of the format encodes back to its own pattern
    np.testing.assert_array_equal(formats.encode(got[finite], fmt), bits[finite])


@pytest.mark.parametrize("fmt", ELEMENTS)
@pytest.mark.parametrize("saturate", [False, True])
def test_encode_matches_ml_dtypes_on_random_tie_and_overflow_values(fmt, saturate):
    dtype = ml_dtype(fmt)
    x = hard_inputs(np.random.default_rng(7))
    if saturate:
        # NOTE: OCP saturation is a clamp to +-max before rounding (ml_dtypes has no mode).
        x_ref = np.clip(x, -MAX_VALUE[fmt], MAX_VALUE[fmt]).astype(np.float32)
    else:
        x_ref = x
    with np.errstate(over="ignore", invalid="ignore"):
        expected = x_ref.astype(dtype).view(np.uint8)
    assert_same_patterns(formats.encode(x, fmt, saturate=saturate), expected, fmt)


def test_e4m3_overflows_to_nan_unless_saturated():
    x = np.array([448.0, 464.0, 464.01, 1e6, np.inf, -500.0], dtype=np.float32)
    assert formats.encode(x, "fp8_e4m3").tolist() == [0x7E, 0x7E, 0x7F, 0x7F, 0x7F, 0x7F]
    assert formats.encode(x, "fp8_e4m3", saturate=True).tolist() == [0x7E] * 5 + [0xFE]
    assert formats.encode(np.float32([65536.0]), "fp8_e5m2").tolist() == [0x7C]  # +Inf


def test_fp4_ties_round_to_even_and_overflow_saturates():
    x = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, 1e9, -0.25, -5.0], np.float32)
    # 0.25 -> 0, 0.75 -> 1 (even mantissa), 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4
    np.testing.assert_array_equal(
        formats.decode(formats.encode(x, "fp4_e2m1"), "fp4_e2m1"),
        [0, 1, 1, 2, 2, 4, 4, 6, 6, -0.0, -4],
    )
    with pytest.raises(ValueError, match="fp4_e2m1 cannot represent"):
        formats.encode(np.array([np.nan]), "fp4_e2m1")


def test_e8m0_rounds_ties_up_and_has_no_zero():
    x = np.array([1.0, 1.49, 1.5, 3.0, 2.0**-130, 0.0, -1.0, np.nan, 2.0**127 * 1.5], np.float32)
    assert formats.encode(x, "e8m0").tolist() == [127, 127, 128, 129, 0, 255, 255, 255, 255]
    assert formats.encode(np.float32([np.inf]), "e8m0", saturate=True).tolist() == [254]


def test_element_format_names_are_checked():
    with pytest.raises(ValueError, match=r"fmt must be one of .*'e8m0'.*'fp4_e2m1'"):
        formats.encode(np.array([1.0]), "fp6_e3m2")
    with pytest.raises(ValueError, match="fmt must be one of"):
        formats.decode(np.array([1]), "int3")
    with pytest.raises(ValueError, match=r"bits must be integers in \[0, 255\]"):
        formats.decode(np.array([256]), "e8m0")
