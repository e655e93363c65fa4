"""Exercise 10: per-group quantization and 4-bit packing, against minquant."""

import numpy as np
import pytest

import minquant as mq
from minquant import packing, quant
from minquant.granularity import group_min_max

pytestmark = pytest.mark.ex10

#: (shape, axis, group_size) cases: a weight (out, in) grouped along in, along out, 3-D.
CASES = [((8, 64), 1, 16), ((8, 64), -1, 64), ((12, 6), 0, 4), ((3, 32, 5), 1, 8)]
#: (qmin, qmax, symmetric) of the usual weight quantizers.
RANGES = [(-8, 7, True), (0, 15, False), (-128, 127, True), (0, 255, False), (-2, 1, True)]


def weight(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Random values whose groups span ranges 1000x apart (and one all-zero row)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 0, size=shape)
    x.reshape(shape[0], -1)[0] = 0.0
    return x.astype(np.float32)


def test_group_min_max_worked_example(ex):
    x = np.array([[-1.0, 0.5, 2.0, 4.0], [3.0, -3.0, 0.0, 1.0]], np.float32)
    lo, hi = ex.group_min_max(x, 1, 2)
    np.testing.assert_array_equal(lo, [[-1, 2], [-3, 0]])
    np.testing.assert_array_equal(hi, [[0.5, 4], [3, 1]])
    assert lo.dtype == hi.dtype == np.float32


@pytest.mark.parametrize("shape, axis, group_size", CASES)
def test_group_min_max_matches_minquant(ex, shape, axis, group_size):
    x = weight(0, shape)
    lo, hi = ex.group_min_max(x, axis, group_size)
    expected_lo, expected_hi = group_min_max(x, axis, group_size)
    np.testing.assert_array_equal(lo, expected_lo)
    np.testing.assert_array_equal(hi, expected_hi)
    assert lo.shape == quant.calc_group_qparams(x, -8, 7, axis, group_size)[0].shape


def test_group_min_max_rejects_a_bad_group_size(ex):
    with pytest.raises(ValueError, match="group_size"):
        ex.group_min_max(np.zeros((2, 10), np.float32), 1, 4)


def test_group_qparams_worked_example(ex):
    x = np.array([[-1.0, 0.5, 2.0, 4.0]], np.float32)
    scale, zero_point = ex.group_qparams(x, -8, 7, 1, 2, symmetric=True)
    # max |x| per group = 1 and 4, divided by (7 - (-8)) / 2 = 7.5
    np.testing.assert_array_equal(scale, [[np.float32(1) / 7.5, np.float32(4) / 7.5]])
    np.testing.assert_array_equal(zero_point, [[0, 0]])


@pytest.mark.parametrize("shape, axis, group_size", CASES)
@pytest.mark.parametrize("qmin, qmax, symmetric", RANGES)
def test_group_qparams_match_minquant(ex, shape, axis, group_size, qmin, qmax, symmetric):
    x = weight(1, shape)
    scale, zero_point = ex.group_qparams(x, qmin, qmax, axis, group_size, symmetric)
    expected = quant.calc_group_qparams(x, qmin, qmax, axis, group_size, symmetric)
    np.testing.assert_array_equal(scale, expected[0])
    np.testing.assert_array_equal(zero_point, expected[1])
    assert scale.dtype == np.float32


def test_quantize_worked_example(ex):
    x = np.array([[0.5, -1.0, 2.0, 4.0]], np.float32)
    x_q = ex.quantize_per_group(x, np.array([[0.25, 1.0]]), np.array([[0, 0]]), -8, 7, 1, 2)
    assert x_q.dtype == np.int8
    np.testing.assert_array_equal(x_q, [[2, -4, 2, 4]])


def test_quantize_rounds_ties_to_even_after_adding_the_zero_point(ex):
    # x / s + z = 0.5 + 1 = 1.5 -> 2 (even); 2.5 + 1 = 3.5 -> 4; group 2 has s = 1, z = 0
    x = np.array([[0.5, 2.5, 0.5, 1.5]], np.float32)
    x_q = ex.quantize_per_group(x, np.array([[1.0, 1.0]]), np.array([[1, 0]]), 0, 15, 1, 2)
    assert x_q.dtype == np.int8  # [0, 15] fits in int8
    np.testing.assert_array_equal(x_q, [[2, 4, 0, 2]])


def test_dequantize_worked_example(ex):
    x_hat = ex.dequantize_per_group(
        np.array([[1, 2, 1, 2]]), np.array([[0.5, 2.0]]), np.array([[0, 1]]), 1, 2
    )
    assert x_hat.dtype == np.float32
    np.testing.assert_array_equal(x_hat, [[0.5, 1.0, 0.0, 2.0]])


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("shape, axis, group_size", CASES)
@pytest.mark.parametrize("qmin, qmax, symmetric", RANGES)
def test_quantize_and_dequantize_match_minquant(
    ex, seed, shape, axis, group_size, qmin, qmax, symmetric
):
    x = weight(seed, shape)
    scale, zero_point = quant.calc_group_qparams(x, qmin, qmax, axis, group_size, symmetric)
    x_q = ex.quantize_per_group(x, scale, zero_point, qmin, qmax, axis, group_size)
    expected = mq.quantize(x, scale, zero_point, qmin, qmax, axis=axis, group_size=group_size)
    assert x_q.dtype == expected.dtype
    np.testing.assert_array_equal(x_q, expected)
    x_hat = ex.dequantize_per_group(x_q, scale, zero_point, axis, group_size)
    np.testing.assert_array_equal(
        x_hat, mq.dequantize(expected, scale, zero_point, axis=axis, group_size=group_size)
    )


def test_round_trip_error_is_at_most_half_a_step(ex):
    x = weight(7, (16, 128))
    scale, zero_point = ex.group_qparams(x, 0, 15, 1, 32)
    x_q = ex.quantize_per_group(x, scale, zero_point, 0, 15, 1, 32)
    x_hat = ex.dequantize_per_group(x_q, scale, zero_point, 1, 32)
    step = np.repeat(scale, 32, axis=1)  # (16, 128)
    # the range of each group holds 0 and all its values: no clipping, rounding only
    assert np.all(np.abs(x_hat - x) <= step * 0.5001)


def test_smaller_groups_never_have_a_larger_error(ex):
    # a group of 16 lies inside a group of 64: its range, hence its step, is no larger
    x = weight(8, (32, 128))
    errors = []
    for group_size in (128, 64, 16):
        scale, zero_point = ex.group_qparams(x, -8, 7, 1, group_size, symmetric=True)
        x_q = ex.quantize_per_group(x, scale, zero_point, -8, 7, 1, group_size)
        x_hat = ex.dequantize_per_group(x_q, scale, zero_point, 1, group_size)
        errors.append(float(np.mean((x_hat - x) ** 2)))
        assert scale.shape == (32, 128 // group_size)
    assert errors[0] > errors[1] > errors[2]


def test_pack_int4_worked_example(ex):
    packed = ex.pack_int4(np.array([1, -2, 7], np.int8))
    assert packed.dtype == np.uint8
    assert packed.tolist() == [0xE1, 0x07]  # 1 | 14 << 4, then 7 | 0 << 4


def test_unpack_int4_worked_example(ex):
    packed = np.array([0xE1, 0x07], np.uint8)
    signed = ex.unpack_int4(packed, 3)
    assert signed.dtype == np.int8 and signed.tolist() == [1, -2, 7]
    unsigned = ex.unpack_int4(packed, 3, signed=False)
    assert unsigned.dtype == np.uint8 and unsigned.tolist() == [1, 14, 7]


@pytest.mark.parametrize("count", [0, 1, 2, 7, 64, 1001])
@pytest.mark.parametrize("signed", [True, False])
def test_packing_matches_minquant(ex, count, signed):
    rng = np.random.default_rng(count)
    low, high = (-8, 8) if signed else (0, 16)
    x_q = rng.integers(low, high, size=count).astype(np.int8 if signed else np.uint8)
    packed = ex.pack_int4(x_q)
    np.testing.assert_array_equal(packed, packing.pack_bits(x_q, 4, signed=signed))
    assert packed.shape == ((count + 1) // 2,)
    unpacked = ex.unpack_int4(packed, count, signed=signed)
    assert unpacked.dtype == x_q.dtype
    np.testing.assert_array_equal(unpacked, x_q)


def test_packing_a_quantized_weight_halves_its_bytes(ex):
    x = weight(3, (8, 64))
    scale, zero_point = quant.calc_group_qparams(x, -8, 7, 1, 32, symmetric=True)
    x_q = mq.quantize(x, scale, zero_point, -8, 7, axis=1, group_size=32)  # (8, 64) int8
    packed = ex.pack_int4(x_q)
    assert packed.nbytes * 2 == x_q.nbytes
    np.testing.assert_array_equal(ex.unpack_int4(packed, x_q.size).reshape(x_q.shape), x_q)


def test_bad_input_is_rejected(ex):
    with pytest.raises(ValueError, match="x_q"):
        ex.pack_int4(np.array([3, 16]))
    with pytest.raises(ValueError, match="x_q"):
        ex.pack_int4(np.array([-9, 0]))
    with pytest.raises(ValueError, match="packed"):
        ex.unpack_int4(np.zeros(3, np.uint8), 3)
    with pytest.raises(ValueError, match="packed"):
        ex.unpack_int4(np.zeros(2, np.int8), 3)


def test_no_library_shortcut(ex, forbid):
    x = weight(4, (8, 64))
    scale, zero_point = quant.calc_group_qparams(x, 0, 15, 1, 16)
    x_q = mq.quantize(x, scale, zero_point, 0, 15, axis=1, group_size=16)
    x_hat = mq.dequantize(x_q, scale, zero_point, axis=1, group_size=16)
    packed = packing.pack_bits(x_q, 4, signed=False)
    forbid(
        quant.quantize, quant.dequantize, quant.calc_group_qparams, group_min_max,
        packing.pack_bits, packing.unpack_bits, packing.pack_int4, packing.unpack_int4,
    )  # fmt: skip
    got_scale, got_zero_point = ex.group_qparams(x, 0, 15, 1, 16)
    np.testing.assert_array_equal(got_scale, scale)
    np.testing.assert_array_equal(got_zero_point, zero_point)
    np.testing.assert_array_equal(ex.quantize_per_group(x, scale, zero_point, 0, 15, 1, 16), x_q)
    np.testing.assert_array_equal(ex.dequantize_per_group(x_q, scale, zero_point, 1, 16), x_hat)
    np.testing.assert_array_equal(ex.pack_int4(x_q), packed)
    np.testing.assert_array_equal(ex.unpack_int4(packed, x_q.size, signed=False), x_q.ravel())
