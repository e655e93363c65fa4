"""Ternary (BitNet b1.58, TQ2_0 / TQ1_0 packings) and binary (XNOR-Net) weights."""

import numpy as np
import pytest

from minquant import formats
from minquant.formats import ternary


def test_ternarize_matches_the_bitnet_reference_code():
    torch = pytest.importorskip("torch", reason="torch (to run BitNet's reference weight_quant)")
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(64, 256)) * 0.05).astype(np.float32)
    w_q, gamma = formats.ternarize(w)
    # BitNet b1.58 weight_quant: scale = 1 / mean|w|.clamp(1e-5); (w * scale).round().clamp
    t = torch.from_numpy(w)
    scale = 1.0 / t.abs().mean().clamp_(min=1e-5)
    expected = (t * scale).round().clamp_(-1, 1)
    np.testing.assert_allclose(gamma, 1.0 / scale.item(), rtol=1e-6)
    # NOTE: the mean is summed in float64 here, in float32 by torch: gamma agrees to 1e-6
    # and no code differs for this weight (a value exactly on +-gamma/2 could flip).
    assert int(np.sum(w_q != expected.numpy())) == 0
    assert set(np.unique(w_q).tolist()) == {-1, 0, 1}


def test_ternary_weight_is_exactly_gamma_times_codes_in_tq2_0():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(8, 512)).astype(np.float32)
    w_q, gamma = formats.ternarize(w)
    data, w_hat = formats.quantize_weight(w, "ternary")
    assert data.shape == (8, 2 * 66)
    np.testing.assert_array_equal(w_hat, np.float32(np.float16(gamma)) * w_q)


def test_tq2_0_packs_four_codes_per_byte():
    x = np.zeros((1, 256), np.float32)
    x[0, [0, 32, 64, 96, 1]] = [1.0, -1.0, 1.0, 0.0, -1.0]
    data = formats.quantize_blocks(x, "tq2_0")[0]
    # byte 0: codes q+1 of elements 0, 32, 64, 96 at bits 0, 2, 4, 6: 2 | 0 | 2<<4 | 1<<6
    assert data[0] == 2 | (0 << 2) | (2 << 4) | (1 << 6)
    assert data[1] == 0 | (1 << 2) | (1 << 4) | (1 << 6)
    assert data[-2:].view(np.float16)[0] == 1.0


def test_tq1_0_stores_five_trits_per_byte():
    x = np.zeros((1, 256), np.float32)
    x[0, [0, 32, 64, 96, 128]] = [1.0, -1.0, 1.0, 0.0, -1.0]
    data = formats.quantize_blocks(x, "tq1_0")[0]
    v = 81 * 2 + 27 * 0 + 9 * 2 + 3 * 1 + 1 * 0  # base 3, first trit most significant
    assert data[0] == -(-v * 256 // 243)  # ceil(256 v / 243)
    np.testing.assert_array_equal(formats.dequantize_blocks(data[None], "tq1_0", x.shape), x)


def test_every_trit_pattern_survives_tq1_0():
    rng = np.random.default_rng(2)
    w_q = rng.integers(-1, 2, size=(64, 256)).astype(np.float32)
    w_q[:, 0] = 1.0  # the block scale is 1
    data = formats.quantize_blocks(w_q, "tq1_0")
    np.testing.assert_array_equal(formats.dequantize_blocks(data, "tq1_0", w_q.shape), w_q)


def test_binary_is_sign_times_mean_magnitude_per_row():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(16, 64)).astype(np.float32)
    w[0, 0] = 0.0
    signs, alpha = formats.binarize(w)
    np.testing.assert_allclose(alpha, np.abs(w).mean(axis=1), rtol=1e-6)
    assert signs[0, 0] == 1 and set(np.unique(signs).tolist()) == {-1, 1}
    data, w_hat = formats.quantize_weight(w, "binary")
    assert data.shape == (16, 4 + 8) and formats.bits_per_weight("binary", w.shape) == 1.5
    np.testing.assert_array_equal(w_hat, alpha[:, None] * signs)
    # XNOR-Net's alpha minimises ||w - alpha * sign(w)||^2 over alpha
    for factor in (0.9, 1.1):
        worse = np.sum((w - factor * alpha[:, None] * signs) ** 2, axis=1)
        assert np.all(np.sum((w - w_hat) ** 2, axis=1) < worse)


def test_binary_needs_whole_bytes_per_row():
    with pytest.raises(ValueError, match="not a multiple of 8"):
        ternary.quantize_binary(np.ones((2, 12), np.float32))
