"""OCP Microscaling (MXFP4, MXFP8, MXINT8): the spec's scale rule and ml_dtypes' casts."""

from pathlib import Path

import numpy as np
import pytest

from minquant import formats
from minquant.formats import mx

GOLDEN = np.load(Path(__file__).parent / "fixtures" / "formats_golden.npz")
EMAX = {"fp4_e2m1": 2, "fp8_e4m3": 8, "fp8_e5m2": 15}
MAX_VALUE = {"fp4_e2m1": 6.0, "fp8_e4m3": 448.0, "fp8_e5m2": 57344.0}
#: E2M1 magnitudes: ties between neighbours are the midpoints.
E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6])


def mx_inputs(rng: np.random.Generator) -> np.ndarray:
    """float32 (rows, 256): random rows of many scales plus the adversarial golden rows."""
    scales = np.exp2(rng.integers(-40, 40, size=(64, 1)))
    x = rng.normal(size=(64, 256)) * scales
    x[::5, ::3] = 0.0
    return np.concatenate([x.astype(np.float32), GOLDEN["blocks_x"]])


def ocp_reference(x: np.ndarray, elem: str, dtype) -> tuple[np.ndarray, np.ndarray]:
    """The OCP MX v1.0 conversion written with ml_dtypes' casts (section 6.3)."""
    blocks = x.reshape(x.shape[0], -1, 32).astype(np.float64)  # (rows, blocks, 32)
    amax = np.abs(blocks).max(axis=-1)
    with np.errstate(divide="ignore"):
        shared = np.where(amax > 0, np.floor(np.log2(amax)) - EMAX[elem], -127)
    shared = np.clip(shared, -127, 127)
    scaled = blocks / np.exp2(shared)[..., None]
    # NOTE: saturation is a clamp to the element's max before the (RNE) cast.
    scaled = np.clip(scaled, -MAX_VALUE[elem], MAX_VALUE[elem]).astype(np.float32)
    codes = scaled.astype(dtype).view(np.uint8).reshape(x.shape)
    return (shared + 127).astype(np.uint8), codes


@pytest.mark.parametrize("elem", ["fp4_e2m1", "fp8_e4m3", "fp8_e5m2"])
def test_mx_quantize_matches_the_spec_with_ml_dtypes_casts(elem):
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes (the MX element oracle)")
    dtype = {
        "fp4_e2m1": ml_dtypes.float4_e2m1fn,
        "fp8_e4m3": ml_dtypes.float8_e4m3fn,
        "fp8_e5m2": ml_dtypes.float8_e5m2,
    }[elem]
    x = mx_inputs(np.random.default_rng(3))
    scales, codes = formats.mx_quantize(x, elem)
    expected_scales, expected_codes = ocp_reference(x, elem, dtype)
    np.testing.assert_array_equal(scales, expected_scales)
    assert int(np.sum(codes != expected_codes)) == 0
    values = formats.mx_dequantize(scales, codes, elem)
    reference = expected_codes.view(dtype).astype(np.float32).reshape(x.shape[0], -1, 32)
    reference = reference * np.exp2(expected_scales.astype(np.float64) - 127)[..., None]
    np.testing.assert_array_equal(values, reference.reshape(x.shape).astype(np.float32))


def test_the_largest_element_keeps_full_precision():
    x = mx_inputs(np.random.default_rng(4))
    scales, _ = formats.mx_quantize(x, "fp4_e2m1")
    scaled_amax = np.abs(x.reshape(x.shape[0], -1, 32)).max(-1) / np.exp2(scales - 127.0)
    nonzero = scaled_amax > 0
    # floor(log2 amax) - 2 puts the block maximum in [4, 8): the top binade of E2M1
    assert np.all((scaled_amax[nonzero] >= 4) & (scaled_amax[nonzero] < 8))


def test_mxint8_elements_are_fixed_point_q_over_64():
    x = np.zeros((1, 32), np.float32)
    x[0, :4] = [1.0, -1.0, 0.5 + 1 / 128, 1.9999]  # amax < 2: shared exponent 0
    scales, codes = formats.mx_quantize(x, "int8")
    assert scales.tolist() == [[127]]
    # 0.5 + 1/128 = 32.5 / 64 is a tie: half to even -> 32; 1.9999 * 64 -> 128 -> clamp 127
    assert codes[0, :4].view(np.int8).tolist() == [64, -64, 32, 127]
    np.testing.assert_array_equal(
        formats.mx_dequantize(scales, codes, "int8")[0, :4], [1, -1, 0.5, 127 / 64]
    )


def test_ocp_and_gguf_mxfp4_differ_only_at_exact_ties():
    x = mx_inputs(np.random.default_rng(5))
    ocp = formats.mx_dequantize(*formats.mx_quantize(x, "fp4_e2m1"), "fp4_e2m1")
    gguf = formats.dequantize_blocks(formats.quantize_blocks(x, "mxfp4"), "mxfp4", x.shape)
    scales, _ = formats.mx_quantize(x, "fp4_e2m1")
    scaled = np.abs(x.reshape(x.shape[0], -1, 32)) / np.exp2(scales - 127.0)[..., None]
    midpoints = (E2M1[1:] + E2M1[:-1]) / 2
    is_tie = np.isin(scaled.reshape(x.shape), midpoints)
    differs = ocp != gguf
    assert differs.any()  # the golden rows hold ties
    assert np.all(is_tie[differs])
    # at a tie GGUF takes the smaller magnitude
    assert np.all(np.abs(gguf[differs]) < np.abs(ocp[differs]))


@pytest.mark.parametrize("fmt", ["mxfp4", "mxfp8_e4m3", "mxfp8_e5m2", "mxint8"])
def test_block_bytes_layout_and_round_trip(fmt):
    x = mx_inputs(np.random.default_rng(6))
    data = formats.quantize_blocks(x, fmt)
    bytes_per_block = formats.BLOCK_FORMATS[fmt].bytes_per_block
    assert data.shape == (x.shape[0], x.shape[1] // 32 * bytes_per_block)
    elem = {v: k for k, v in mx.MX_NAMES.items()}[fmt]
    scales, _ = formats.mx_quantize(x, elem)
    if fmt == "mxfp4":
        # GGUF's scale differs from OCP only where float32 log2 rounds up (none here)
        np.testing.assert_array_equal(data[:, ::17], scales)
    else:
        np.testing.assert_array_equal(data[:, ::33], scales)
        expected = formats.mx_dequantize(*formats.mx_quantize(x, elem), elem)
        np.testing.assert_array_equal(formats.dequantize_blocks(data, fmt, x.shape), expected)


def test_unknown_element_format_is_rejected():
    with pytest.raises(ValueError, match=r"elem must be one of \['fp4_e2m1'"):
        formats.mx_quantize(np.ones((1, 32), np.float32), "fp6_e2m3")
