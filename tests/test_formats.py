"""Number formats checked against NumPy's float16/float32 and PyTorch's bfloat16 and FP8."""

import numpy as np
import pytest

from minquant import formats
from minquant.formats import BFLOAT16, FLOAT16, FLOAT32, FP8_E4M3, FP8_E5M2


def _hard_values(rng: np.random.Generator) -> np.ndarray:
    """float32 values that stress rounding: ties, subnormals, overflow, signed zeros."""
    wide = rng.normal(size=20_000) * np.exp2(rng.integers(-30, 30, size=20_000))  # (20000,)
    # every float32 in a few binades near 1 and near the FP8/float16 limits
    ones = np.arange(0x3F800000, 0x3F800000 + 70_000, dtype=np.uint32).view(np.float32)
    near_max = np.linspace(400.0, 70_000.0, 20_000)
    tiny = np.exp2(rng.uniform(-20, -5, size=20_000))
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 464.0, 480.0, 61440.0, 65520.0])
    x = np.concatenate([wide, ones, near_max, tiny, specials]).astype(np.float32)
    return np.concatenate([x, -x])  # (2 * 130009,)


def test_format_constants_match_numpy_and_the_ocp_spec():
    for fmt, dtype in ((FLOAT32, np.float32), (FLOAT16, np.float16)):
        info = np.finfo(dtype)
        assert fmt.max_value == float(info.max)
        assert fmt.min_normal == float(info.smallest_normal)
        assert fmt.min_subnormal == float(info.smallest_subnormal)
        assert fmt.epsilon == float(info.eps)
    # OCP OFP8 rev. 1.0, Table 1
    assert (FP8_E4M3.max_value, FP8_E4M3.min_normal, FP8_E4M3.min_subnormal) == (
        448.0,
        2.0**-6,
        2.0**-9,
    )
    assert (FP8_E5M2.max_value, FP8_E5M2.min_normal, FP8_E5M2.min_subnormal) == (
        57344.0,
        2.0**-14,
        2.0**-16,
    )
    assert [f.bits for f in formats.FORMATS.values()] == [32, 16, 16, 8, 8]


def test_cast_float16_matches_numpy():
    x = _hard_values(np.random.default_rng(0))
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(formats.cast(x, FLOAT16), expected)
    np.testing.assert_array_equal(np.signbit(formats.cast(x, FLOAT16)), np.signbit(expected))


def test_cast_float32_matches_numpy_on_float64_input():
    rng = np.random.default_rng(1)
    x = rng.normal(size=10_000) * np.exp2(rng.integers(-140, 128, size=10_000))  # (10000,)
    with np.errstate(over="ignore"):
        expected = x.astype(np.float32)
    np.testing.assert_array_equal(formats.cast(x, FLOAT32), expected)


def test_decode_every_float16_pattern_matches_numpy():
    bits = np.arange(2**16, dtype=np.uint16)
    expected = bits.view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(formats.decode(bits, FLOAT16), expected)
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(formats.encode(expected[finite], FLOAT16), bits[finite])


def test_encode_float32_is_the_memory_layout():
    x = _hard_values(np.random.default_rng(2))
    x = x[~np.isnan(x)]
    np.testing.assert_array_equal(formats.encode(x, FLOAT32), x.view(np.uint32))
    np.testing.assert_array_equal(formats.decode(x.view(np.uint32), FLOAT32), x)


@pytest.mark.torch
@pytest.mark.parametrize(
    ("fmt", "dtype_name", "saturate"),
    [
        (BFLOAT16, "bfloat16", False),
        # NOTE: torch's float8_e4m3fn cast saturates (even Inf -> 448); float8_e5m2 does not.
        (FP8_E4M3, "float8_e4m3fn", True),
        (FP8_E5M2, "float8_e5m2", False),
    ],
)
def test_cast_encode_decode_match_torch(fmt, dtype_name, saturate):
    torch = pytest.importorskip("torch")
    dtype = getattr(torch, dtype_name)
    x = _hard_values(np.random.default_rng(3))
    t = torch.from_numpy(x).to(dtype)
    expected = t.float().numpy()
    got = formats.cast(x, fmt, saturate=saturate)
    np.testing.assert_array_equal(got, expected)
    keep = ~np.isnan(expected)  # NaN sign and payload may differ; NaN-ness is checked above
    np.testing.assert_array_equal(np.signbit(got)[keep], np.signbit(expected)[keep])
    uint = torch.uint8 if fmt.bits == 8 else torch.int16
    torch_bits = t.view(uint).numpy().astype(fmt.uint_dtype)
    np.testing.assert_array_equal(formats.encode(x, fmt, saturate)[keep], torch_bits[keep])

    # every bit pattern decodes as torch reads it
    all_bits = np.arange(2**fmt.bits, dtype=fmt.uint_dtype)
    torch_values = torch.from_numpy(all_bits.view(np.int8 if fmt.bits == 8 else np.int16))
    expected_all = torch_values.view(dtype).float().numpy()
    np.testing.assert_array_equal(formats.decode(all_bits, fmt), expected_all)


def test_fp8_overflow_rules():
    # E4M3: 464 is the tie between 448 (mantissa 110, even) and the would-be 480: stays 448
    x = np.array([448.0, 464.0, 464.5, 1e9, np.inf, np.nan, -500.0])
    e4m3 = formats.cast(x, FP8_E4M3)
    np.testing.assert_array_equal(e4m3[:2], [448.0, 448.0])
    assert np.isnan(e4m3[2:]).all()  # no infinities in E4M3: overflow is NaN
    np.testing.assert_array_equal(
        formats.cast(x, FP8_E4M3, saturate=True), [448, 448, 448, 448, 448, np.nan, -448]
    )
    # E5M2 is IEEE-like: overflow is +-Inf, 61440 (the tie to 65536) overflows (57344 is odd)
    y = np.array([57344.0, 61439.0, 61440.0, -1e9, np.inf])
    np.testing.assert_array_equal(
        formats.cast(y, FP8_E5M2), [57344, 57344, np.inf, -np.inf, np.inf]
    )
    np.testing.assert_array_equal(
        formats.cast(y, FP8_E5M2, saturate=True), [57344, 57344, 57344, -57344, 57344]
    )


def test_subnormal_ties_round_to_even():
    s = FP8_E4M3.min_subnormal
    x = np.array([0.5, 1.5, 2.5, 3.5]) * s
    np.testing.assert_array_equal(formats.cast(x, FP8_E4M3), np.array([0.0, 2.0, 2.0, 4.0]) * s)


def test_encode_decode_roundtrip_all_fp8_patterns():
    for fmt in (FP8_E4M3, FP8_E5M2):
        bits = np.arange(256, dtype=np.uint8)
        values = formats.decode(bits, fmt)
        finite = ~np.isnan(values)
        np.testing.assert_array_equal(formats.encode(values[finite], fmt), bits[finite])
        assert np.isnan(values).sum() == (2 if fmt is FP8_E4M3 else 6)


def test_bit_fields_and_int_bits():
    assert formats.bit_fields(1.0, "float32") == ("0", "01111111", "0" * 23)
    assert formats.bit_fields(-448.0, "fp8_e4m3") == ("1", "1111", "110")
    assert formats.bit_fields(1.0 / 3.0, "bfloat16") == ("0", "01111101", "0101011")
    assert formats.int_bits(127) == "01111111"
    assert formats.int_bits(-128) == "10000000"
    assert formats.int_bits(7, num_bits=4) == "0111"


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="fmt must be one of"):
        formats.cast(np.array([1.0]), "fp16")
    with pytest.raises(TypeError, match="x must be a float array"):
        formats.cast(np.array([1, 2]), FLOAT16)
    with pytest.raises(TypeError, match="bits must be an integer array"):
        formats.decode(np.array([1.0]), FLOAT16)
    with pytest.raises(ValueError, match=r"bits must be in \[0, 2\*\*8\)"):
        formats.decode(np.array([256]), FP8_E4M3)
    with pytest.raises(ValueError, match="x must be a scalar"):
        formats.bit_fields(np.array([1.0, 2.0]), FLOAT16)
    with pytest.raises(ValueError, match=r"x_q must be in \[-128, 127\]"):
        formats.int_bits(128)


def test_horowitz_table_is_the_papers_figures():
    table = formats.HOROWITZ_45NM
    assert table["8-bit int add"] == (0.03, 36)
    assert table["32-bit float mult"] == (3.7, 7700)
    assert len(table) == 8
