"""Exercise 2: per-channel symmetric quantization of a convolution weight."""

import numpy as np
import pytest

import minquant as mq
from minquant import quant

pytestmark = pytest.mark.ex2


def conv_weight(seed: int, shape: tuple[int, ...] = (16, 8, 3, 3)) -> np.ndarray:
    """A conv weight whose output channels have ranges 1000x apart, as in trained layers."""
    rng = np.random.default_rng(seed)
    spread = np.logspace(-3, 0, shape[0]).reshape(-1, *([1] * (len(shape) - 1)))
    return (rng.standard_normal(shape) * spread).astype(np.float32)


def test_per_channel_scale_worked_example(ex):
    w = np.array([[[[0.5, -1.27]]], [[[0.0, 0.0]]]], dtype=np.float32)  # (2, 1, 1, 2)
    scale = ex.per_channel_scale(w)
    assert scale.dtype == np.float32 and scale.shape == (2,)
    # channel 0: max |w| = 1.27, 1.27 / 127 = 0.01; channel 1 is all zero: eps
    assert scale[0] == np.float32(1.27) / np.float32(127)
    assert scale[1] == np.finfo(np.float32).eps


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("num_bits", [8, 4, 2])
@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (5, 3), (7, 1, 5, 5)])
def test_matches_minquant_bit_for_bit(ex, seed, num_bits, shape):
    w = conv_weight(seed, shape)
    qmin, qmax = mq.qrange(num_bits, signed=True, narrow_range=True)
    flat = w.reshape(w.shape[0], -1)  # (C_out, rest)
    ref_scale, ref_zp = mq.calc_qparams(flat.min(axis=1), flat.max(axis=1), qmin, qmax, True)
    scale = ex.per_channel_scale(w, num_bits)
    np.testing.assert_array_equal(scale, ref_scale)
    w_q = ex.quantize_per_channel(w, ref_scale, num_bits)
    assert w_q.dtype == np.int8 and w_q.shape == w.shape
    np.testing.assert_array_equal(w_q, mq.quantize(w, ref_scale, ref_zp, qmin, qmax, axis=0))
    w_hat = ex.dequantize_per_channel(w_q, ref_scale)
    assert w_hat.dtype == np.float32
    np.testing.assert_array_equal(w_hat, mq.dequantize(w_q, ref_scale, ref_zp, axis=0))


def test_quantize_worked_example(ex):
    w = np.array([[0.5, -1.27], [0.02, 0.05]], dtype=np.float32)
    scale = np.array([0.01, 0.02], dtype=np.float32)
    # 0.5 / 0.01 = 50; -1.27 / 0.01 = -127; 0.02 / 0.02 = 1; 0.05 / 0.02 = 2.5 -> even 2
    w_q = ex.quantize_per_channel(w, scale)
    assert w_q.dtype == np.int8
    assert w_q.tolist() == [[50, -127], [1, 2]]
    # clipping to the narrow range [-7, 7] at 4 bits: 0.5 / 0.01 = 50 -> 7
    assert ex.quantize_per_channel(w, scale, num_bits=4).tolist() == [[7, -7], [1, 2]]
    w_hat = ex.dequantize_per_channel(w_q, scale)
    np.testing.assert_allclose(w_hat, [[0.5, -1.27], [0.02, 0.04]], rtol=1e-6)


def test_per_channel_beats_per_tensor(ex):
    w = conv_weight(0)
    scale = ex.per_channel_scale(w)
    w_hat = ex.dequantize_per_channel(ex.quantize_per_channel(w, scale), scale)
    # every element is within half a step of its own channel
    step = scale.reshape(-1, 1, 1, 1)
    assert np.all(np.abs(w - w_hat) <= step / 2 * (1 + 1e-5))
    # one scale for the whole tensor (the per-tensor baseline, computed by minquant)
    s, z = mq.calc_qparams(w.min(), w.max(), -127, 127, symmetric=True)
    w_hat_tensor = mq.dequantize(mq.quantize(w, s, z, -127, 127), s, z)
    # the smallest channel is crushed to 0 by one shared scale; with its own scale it keeps
    # about 8 bits (6.02 dB per bit, minus the loss of a Gaussian's peak-to-rms ratio)
    assert mq.sqnr(w[0], w_hat_tensor[0]) < 1.0
    assert mq.sqnr(w[0], w_hat[0]) > 35.0
    assert mq.sqnr(w, w_hat) > mq.sqnr(w, w_hat_tensor)


def test_no_library_shortcut(ex, forbid):
    forbid(quant.calc_qparams, quant.quantize, quant.dequantize, quant.fake_quantize)
    w = np.array([[0.5, -1.27], [0.02, 0.05]], dtype=np.float32)
    scale = ex.per_channel_scale(w)
    np.testing.assert_array_equal(scale, np.float32([1.27, 0.05]) / np.float32(127))
    w_q = ex.quantize_per_channel(w, np.array([0.01, 0.02], dtype=np.float32))
    assert w_q.tolist() == [[50, -127], [1, 2]]
    w_hat = ex.dequantize_per_channel(w_q, np.array([0.01, 0.02], dtype=np.float32))
    np.testing.assert_allclose(w_hat, [[0.5, -1.27], [0.02, 0.04]], rtol=1e-6)
