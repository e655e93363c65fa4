"""Bit packing (int4 and 2-8 bits): round trip, the layout, sizes, bits per weight, bad input."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minquant as mq
from minquant import quant
from minquant.packing import bits_per_weight, pack_bits, pack_int4, unpack_bits, unpack_int4


def test_old_import_paths_still_work():
    assert quant.pack_int4 is pack_int4 and quant.unpack_int4 is unpack_int4
    assert mq.pack_int4 is pack_int4 and mq.unpack_int4 is unpack_int4


# --- round trip and layout -------------------------------------------------------------------


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("shape", [(1,), (7,), (4, 6), (3, 5)])
def test_pack_unpack_int4_round_trip(signed, shape):
    qmin, qmax = quant.qrange(4, signed)
    x_q = np.random.default_rng(0).integers(qmin, qmax + 1, size=shape)
    packed = pack_int4(x_q, signed)
    assert packed.dtype == np.uint8 and packed.shape == ((x_q.size + 1) // 2,)
    np.testing.assert_array_equal(unpack_int4(packed, shape, signed), x_q)


def test_pack_int4_nibble_order_and_size():
    assert pack_int4(np.array([1, 2, 3]), signed=False).tolist() == [0x21, 0x03]
    assert pack_int4(np.array([-1, -8]), signed=True).tolist() == [0x8F]
    w = np.zeros((64, 64), dtype=np.float32)
    assert w.nbytes / pack_int4(np.zeros(w.shape, np.int8)).nbytes == 8.0


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: pack_int4(np.array([8])), ValueError, r"\[-8, 7\]"),
        (lambda: pack_int4(np.array([-1]), signed=False), ValueError, r"\[0, 15\]"),
        (lambda: pack_int4(np.array([1.0])), TypeError, "integer array"),
        (lambda: unpack_int4(np.zeros(2, np.uint8), 5), ValueError, r"shape \(3,\)"),
        (lambda: unpack_int4(np.zeros(2, np.int8), 4), TypeError, "uint8"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- 2- to 8-bit packing and the bits-per-weight count -----------------------------------------


@given(
    num_bits=st.integers(2, 8),
    signed=st.booleans(),
    shape=st.lists(st.integers(0, 9), min_size=1, max_size=3),
    seed=st.integers(0, 2**32 - 1),
)
def test_pack_bits_round_trip(num_bits, signed, shape, seed):
    qmin, qmax = quant.qrange(num_bits, signed)
    x_q = np.random.default_rng(seed).integers(qmin, qmax + 1, size=shape)
    packed = pack_bits(x_q, num_bits, signed)
    assert packed.dtype == np.uint8 and packed.shape == (-(-x_q.size * num_bits // 8),)
    unpacked = unpack_bits(packed, num_bits, tuple(shape), signed)
    assert unpacked.dtype == (np.int8 if signed else np.uint8)
    np.testing.assert_array_equal(unpacked, x_q)


def bit_stream_reference(x_q, num_bits):
    """The layout spelled out bit by bit: element i in bits [b*i, b*(i+1)), LSB first."""
    bits = []
    for value in np.asarray(x_q).ravel():
        field = int(value) & (2**num_bits - 1)
        bits.extend((field >> k) & 1 for k in range(num_bits))
    bits.extend([0] * (-len(bits) % 8))
    return [sum(bits[8 * i + k] << k for k in range(8)) for i in range(len(bits) // 8)]


@given(
    num_bits=st.integers(2, 8),
    values=st.lists(st.integers(-128, 127), min_size=1, max_size=40),
)
def test_pack_bits_layout_is_the_little_endian_bit_stream(num_bits, values):
    qmin, qmax = quant.qrange(num_bits, True)
    x_q = np.clip(np.array(values), qmin, qmax)
    assert pack_bits(x_q, num_bits).tolist() == bit_stream_reference(x_q, num_bits)


@given(values=st.lists(st.integers(-8, 7), min_size=1, max_size=40))
def test_pack_bits_4_is_pack_int4(values):
    x_q = np.array(values, dtype=np.int8)
    np.testing.assert_array_equal(pack_bits(x_q, 4), pack_int4(x_q))


def test_pack_bits_sizes():
    x_q = np.zeros((64, 64), np.int8)
    assert {b: pack_bits(x_q, b).nbytes for b in (2, 3, 4, 8)} == {
        2: 1024,
        3: 1536,
        4: 2048,
        8: 4096,
    }
    assert pack_bits(np.zeros(8, np.int8), 3).tolist() == [0, 0, 0]  # 8 codes in 3 bytes
    assert pack_bits(np.array([3, 0, 0, 0, 0, 0, 0, 0]), 2, signed=False).tolist() == [3, 0]


def test_bits_per_weight():
    assert bits_per_weight(4, 128) == 4.125  # fp16 scale per 128 weights
    assert bits_per_weight(4, 64, scale_bits=16, zero_point_bits=4) == 4.3125
    assert bits_per_weight(8, 4096, scale_bits=32) == 8 + 32 / 4096  # per channel, K=4096
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        bits_per_weight(4, 0)
    with pytest.raises(ValueError, match="scale_bits must be a non-negative int"):
        bits_per_weight(4, 64, scale_bits=-1)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: pack_bits(np.array([4]), 3), ValueError, r"\[-4, 3\] for num_bits=3"),
        (lambda: pack_bits(np.array([4]), 2, signed=False), ValueError, r"\[0, 3\]"),
        (lambda: pack_bits(np.array([1]), 9), ValueError, r"num_bits must be in \[2, 8\]"),
        (lambda: pack_bits(np.array([1]), 1), ValueError, r"num_bits must be in \[2, 8\]"),
        (lambda: pack_bits(np.array([1.0]), 3), TypeError, "integer array"),
        (lambda: unpack_bits(np.zeros(2, np.uint8), 3, 8), ValueError, r"shape \(3,\)"),
        (lambda: unpack_bits(np.zeros(3, np.int8), 3, 8), TypeError, "uint8"),
    ],
)
def test_pack_bits_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
