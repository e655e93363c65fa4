"""NF4 (QLoRA): the published table, nearest-level blocks of 64, double quantization."""

import numpy as np
import pytest

from minquant import formats
from minquant.formats import nf4

#: QLoRA appendix E / bitsandbytes, as listed in the design document.
PUBLISHED = [
    -1, -0.6961928, -0.5250731, -0.3949175, -0.2844414, -0.1847734, -0.09105004, 0,
    0.0795803, 0.1609302, 0.2461123, 0.3379152, 0.4407098, 0.562617, 0.7229568, 1,
]  # fmt: skip


def test_table_is_the_published_constants():
    np.testing.assert_array_equal(formats.NF4_TABLE, np.array(PUBLISHED, np.float32))


def test_table_is_the_normal_quantile_construction_of_qlora():
    torch = pytest.importorskip("torch", reason="torch (for the normal quantile function)")
    # QLoRA's create_normal_map(offset=0.9677083): 8 positive and 7 negative quantiles
    offset = 0.9677083
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    values = torch.cat([positive, negative, torch.zeros(1, dtype=torch.float64)]).sort().values
    values = (values / values.max()).numpy()
    np.testing.assert_allclose(formats.NF4_TABLE, values, atol=5e-7)


def test_codes_are_the_nearest_level_ties_to_the_lower_one():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 256)).astype(np.float32)
    codes, absmax = nf4.nf4_codes(x)
    normed = x.reshape(16, -1, 64).astype(np.float64) / absmax[..., None]
    distance = np.abs(normed.reshape(16, 256, 1) - formats.NF4_TABLE.astype(np.float64))
    chosen = np.take_along_axis(distance, codes[..., None].astype(np.int64), axis=-1)[..., 0]
    np.testing.assert_allclose(chosen, distance.min(axis=-1), rtol=0, atol=1e-7)
    # a midpoint takes the lower level; every block's extreme lands on +-1 exactly
    mid = (formats.NF4_TABLE[7] + formats.NF4_TABLE[8]) / 2
    tie_codes, _ = nf4.nf4_codes(np.array([[1.0, mid] + [0.0] * 62], np.float32))
    assert tie_codes[0, :2].tolist() == [15, 7]
    assert set(codes[np.abs(x) == np.repeat(absmax, 64, axis=1)].tolist()) <= {0, 15}


def test_block_bytes_round_trip_and_layout():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 128)).astype(np.float32)
    data = formats.quantize_blocks(x, "nf4")
    assert data.shape == (4, 72) and formats.bits_per_weight("nf4") == 4.5
    codes, absmax = nf4.nf4_codes(x)
    np.testing.assert_array_equal(data[:, :4].copy().view("<f4"), absmax[:, :1])
    assert data[0, 4] == (codes[0, 0] << 4) | codes[0, 1]  # first value in the high nibble
    expected = formats.NF4_TABLE[codes] * np.repeat(absmax, 64, axis=1)
    np.testing.assert_array_equal(formats.dequantize_blocks(data, "nf4", x.shape), expected)


def test_double_quantization_costs_4_127_bits_and_reads_back():
    rng = np.random.default_rng(2)
    w = (rng.normal(size=(512, 2048)) * 0.02).astype(np.float32)
    q = formats.quantize_nf4(w)
    data = q.to_bytes()
    assert data.nbytes == q.nbytes == formats.weight_nbytes("nf4_dq", w.shape)
    assert round(8 * q.nbytes / w.size, 3) == 4.127
    assert round(formats.bits_per_weight("nf4_dq"), 3) == 4.127  # 4 + 8/64 + 32/(64*256)
    again = nf4.nf4_weight_from_bytes(data, w.shape)
    np.testing.assert_array_equal(again.dequantize(), q.dequantize())
    # the 8-bit scales are within half a step of the float32 absmax
    _, absmax = nf4.nf4_codes(w)
    step = np.repeat(q.group_scales, nf4.SCALE_GROUP)[: absmax.size]
    assert np.all(np.abs(q.absmax() - absmax.reshape(-1)) <= step * 0.5 + 1e-7)
    single = formats.dequantize_blocks(formats.quantize_blocks(w, "nf4"), "nf4", w.shape)
    assert np.abs(q.dequantize() - single).max() < 1e-3  # double quantization costs little


def test_nf4_beats_int4_on_normal_weights():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(64, 1024)).astype(np.float32)
    nf4_error = np.mean((formats.quantize_weight(w, "nf4")[1] - w) ** 2)
    absmax = np.abs(w.reshape(64, -1, 64)).max(-1, keepdims=True)
    int4 = np.clip(np.rint(w.reshape(64, -1, 64) / absmax * 7), -7, 7) * absmax / 7
    assert nf4_error < 0.8 * np.mean((int4.reshape(w.shape) - w) ** 2)
