"""GGUF blocks Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 (and MXFP4, TQ*) against the gguf package."""

from pathlib import Path

import numpy as np
import pytest

from minquant import formats

GOLDEN = np.load(Path(__file__).parent / "fixtures" / "formats_golden.npz")
GGUF_TYPES = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "mxfp4", "tq2_0", "tq1_0")


def gguf_quants():
    gguf = pytest.importorskip("gguf", reason="gguf (the GGUF block oracle)")
    return gguf.quants, gguf.GGMLQuantizationType


def random_rows(rng: np.random.Generator) -> np.ndarray:
    """float32 (rows, 512): normal, uniform, heavy-tailed and sparse rows of many scales."""
    scales = np.exp2(rng.integers(-20, 12, size=(96, 1)))
    normal = rng.normal(size=(32, 512))
    uniform = rng.uniform(-1, 1, size=(32, 512))
    heavy = rng.standard_t(2, size=(32, 512))
    x = np.concatenate([normal, uniform, heavy]) * scales  # (96, 512)
    x[::7, rng.integers(0, 512, size=200)] = 0.0  # sparse entries
    return x.astype(np.float32)


@pytest.mark.parametrize("fmt", GGUF_TYPES)
def test_bytes_and_values_match_frozen_gguf(fmt):
    x = GOLDEN["blocks_x"]  # (rows, 256) adversarial rows
    data = formats.quantize_blocks(x, fmt)
    expected = GOLDEN[f"blocks_{fmt}"]
    assert data.dtype == np.uint8 and data.shape == expected.shape
    assert int(np.sum(data != expected)) == 0, f"{fmt}: bytes differ from gguf"
    np.testing.assert_array_equal(
        formats.dequantize_blocks(expected, fmt, x.shape), GOLDEN[f"blocks_{fmt}_dequant"]
    )


@pytest.mark.parametrize("fmt", GGUF_TYPES)
def test_bytes_and_values_match_live_gguf(fmt):
    quants, qtype = gguf_quants()
    qtype = getattr(qtype, fmt.upper())
    x = np.concatenate([random_rows(np.random.default_rng(1)).reshape(-1, 256), GOLDEN["blocks_x"]])
    expected = quants.quantize(x, qtype)
    data = formats.quantize_blocks(x, fmt)
    assert int(np.sum(data != expected)) == 0, f"{fmt}: bytes differ from gguf"
    with np.errstate(all="ignore"):
        expected_values = quants.dequantize(expected, qtype)
    np.testing.assert_array_equal(formats.dequantize_blocks(data, fmt, x.shape), expected_values)


def test_q4_0_worked_block():
    # largest magnitude -8 (negative) gives d = 1; x/d + 8.5 truncates: a tie rounds up
    x = np.array([-8.0, 7.5, -0.5, 0.5, 2.49] + [0.0] * 27, dtype=np.float32)
    data = formats.quantize_blocks(x, "q4_0")[0]
    assert data[:2].view(np.float16)[0] == 1.0
    codes = np.concatenate([data[2:] & 15, data[2:] >> 4])
    assert codes[:5].tolist() == [0, 15, 8, 9, 10]  # 7.5 -> 16 clamps to 15; -0.5 -> 0
    np.testing.assert_array_equal(
        formats.dequantize_blocks(data[None], "q4_0", (1, 32))[0, :5], [-8, 7, 0, 1, 2]
    )


def test_q8_0_rounds_half_away_from_zero():
    x = np.array([127.0, 0.5, -0.5, 1.5, 2.5, -2.5, 0.49999997] + [0.0] * 25, np.float32)
    data = formats.quantize_blocks(x, "q8_0")[0]
    assert data[2:9].view(np.int8).tolist() == [127, 1, -1, 2, 3, -3, 0]


def test_mxfp4_float32_log2_edge_matches_gguf():
    # NOTE: just below 2^64, float32 log2 rounds up: GGUF's scale is twice the OCP one.
    x = GOLDEN["mxfp4_edge_x"]
    data = formats.quantize_blocks(x, "mxfp4")
    np.testing.assert_array_equal(data, GOLDEN["mxfp4_edge"])
    scales, _ = formats.mx_quantize(x, "fp4_e2m1")
    assert data[:, 0].tolist() == [189, 25] and scales[:, 0].tolist() == [188, 24]


@pytest.mark.parametrize("fmt", [*GGUF_TYPES, "nf4", "mxint8", "mxfp8_e4m3"])
def test_bad_input_is_rejected_with_the_argument_named(fmt):
    size = formats.BLOCK_FORMATS[fmt].block_size
    with pytest.raises(ValueError, match=rf"not a multiple of the {fmt} block size {size}"):
        formats.quantize_blocks(np.ones((2, size + 1), np.float32), fmt)
    for bad in (np.nan, np.inf):
        x = np.ones((1, size), np.float32)
        x[0, 3] = bad
        with pytest.raises(ValueError, match="x must be finite"):
            formats.quantize_blocks(x, fmt)
    with pytest.raises(TypeError, match="x must be a float array"):
        formats.quantize_blocks(np.ones((1, size), np.int32), fmt)
    with pytest.raises(ValueError, match="data of shape"):
        formats.dequantize_blocks(np.zeros((1, 3), np.uint8), fmt, (1, size))


def test_unknown_format_lists_the_allowed_ones():
    with pytest.raises(ValueError, match=r"fmt must be one of \[.*'q4_0'.*\], got 'q3_k'"):
        formats.quantize_blocks(np.ones((1, 32), np.float32), "q3_k")
    with pytest.raises(ValueError, match="fmt must be one of"):
        formats.bits_per_weight("int3")


def test_scales_beyond_float16_are_an_error():
    x = np.full((1, 32), 1e7, np.float32)  # d = 1e7 / 127 > 65504
    with pytest.raises(ValueError, match="block scale exceeds the float16 maximum"):
        formats.quantize_blocks(x, "q8_0")
