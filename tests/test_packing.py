"""Int4 packing: round trip, the ONNX nibble order, the 8x size, bad input."""

import numpy as np
import pytest

import minquant as mq
from minquant import quant
from minquant.packing import pack_int4, unpack_int4


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
