"""The formats registry: quantize_weight for every format, real byte counts, bits per weight."""

import numpy as np
import pytest

from minquant import formats

#: Bits per weight of one block (QLoRA's 4.127 for NF4 with double quantization).
EXPECTED_BITS = {
    "q8_0": 8.5,
    "q5_1": 6.0,
    "q5_0": 5.5,
    "q4_1": 5.0,
    "q4_0": 4.5,
    "mxint8": 8.25,
    "mxfp8_e4m3": 8.25,
    "mxfp8_e5m2": 8.25,
    "mxfp4": 4.25,
    "nf4": 4.5,
    "tq2_0": 2.0625,
    "tq1_0": 1.6875,
    "nf4_dq": 4.126953125,
    "ternary": 2.0625,
}


@pytest.mark.parametrize("fmt", formats.WEIGHT_FORMATS)
def test_quantize_weight_counts_its_real_bytes(fmt):
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(16, 512)) * 0.02).astype(np.float32)  # (out, in)
    data, w_hat = formats.quantize_weight(w, fmt)
    assert data.dtype == np.uint8
    assert w_hat.shape == w.shape and w_hat.dtype == np.float32
    assert data.nbytes == formats.weight_nbytes(fmt, w.shape)
    assert formats.bits_per_weight(fmt, w.shape) == 8 * data.nbytes / w.size
    relative_error = np.linalg.norm(w_hat - w) / np.linalg.norm(w)
    # NOTE: TQ*_0's absmax scale suits weights that are already ternary (BitNet), not these
    bound = {"tq2_0": 0.85, "tq1_0": 0.85, "ternary": 0.7, "binary": 0.7}.get(fmt, 0.2)
    assert relative_error < bound


@pytest.mark.parametrize("fmt", list(EXPECTED_BITS))
def test_bits_per_weight_of_one_block(fmt):
    assert formats.bits_per_weight(fmt) == EXPECTED_BITS[fmt]


def test_shaped_formats_need_a_shape():
    with pytest.raises(ValueError, match=r"bits_per_weight\('binary'\) needs shape"):
        formats.bits_per_weight("binary")
    assert formats.bits_per_weight("fp8_e4m3", (4, 128)) == 8.25


def test_quantize_weight_rejects_bad_input():
    with pytest.raises(ValueError, match=r"w must be a 2-D weight \(out, in\)"):
        formats.quantize_weight(np.ones(64, np.float32), "q4_0")
    with pytest.raises(ValueError, match=r"fmt must be one of \[.*'nf4_dq'.*\], got 'int3'"):
        formats.quantize_weight(np.ones((2, 64), np.float32), "int3")
    with pytest.raises(ValueError, match="x must be finite for fp8_e4m3"):
        formats.quantize_weight(np.full((2, 64), np.nan, np.float32), "fp8_e4m3")


def test_fp8_rows_use_the_whole_range():
    w = np.array([[0.5, -1.0, 0.25, 0.0]], np.float32)
    data, w_hat = formats.quantize_weight(w, "fp8_e4m3")
    assert data[0, :4].view("<f4")[0] == np.float32(1 / 448)
    assert formats.decode(data[0, 4:], "fp8_e4m3").tolist() == [224, -448, 112, 0]
    np.testing.assert_allclose(w_hat, w, rtol=1e-6)
