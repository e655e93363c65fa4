"""The convolution fused with the packed SIMD GEMM gives the integers of the unfused pipeline.

Oracles: the NumPy references of :mod:`minquant.kernels.directconv` (im2col, exact GEMM,
requantization, each checked in its own tests against independent computations), and the same
layer built on the plain path. Paths this CPU lacks are skipped with the reason.
"""

import numpy as np
import pytest

from minquant.kernels import directconv, vnni
from minquant.kernels.vnni_conv import offset_for, pack_conv_weights
from minquant.qnn import QParams, QuantizedConv2d, QuantizedLinear
from minquant.qnn import layers as qnn

HERE = vnni.available_paths()
SIMD = [
    pytest.param(p, marks=pytest.mark.skipif(p not in HERE, reason=f"this CPU lacks {p}"))
    for p in ("vnni512", "avx2")
]

CASES = [  # (N, C, H, W, O, kernel_size, stride, padding): K and O around 4, 32 and 8-row tiles
    (2, 1, 28, 28, 16, 3, 1, 1),  # small_cnn conv1: K = 9 -> K' = 12
    (3, 16, 14, 14, 32, 3, 1, 1),  # small_cnn conv2: K = 144
    (2, 3, 9, 8, 33, 3, 2, 1),  # two panels of 32 columns, stride 2
    (1, 5, 6, 7, 7, 5, 1, 2),  # K = 125, not a multiple of 4
    (4, 2, 3, 3, 1, 1, 1, 0),  # 1 x 1 kernel, 9 rows: one 8-row tile and one padded
]


def random_codes(rng: np.random.Generator, shape: tuple, lo: int, hi: int) -> np.ndarray:
    """Uniform int8 in [lo, hi], a fifth of them at the extremes lo and hi."""
    x = rng.integers(lo, hi + 1, shape)
    extreme = rng.random(shape) < 0.2
    x[extreme] = rng.choice([lo, hi], int(extreme.sum()))
    return x.astype(np.int8)


def _layer_data(rng, c, k, o, x_qp):
    w_q = random_codes(rng, (o, c, k, k), -127, 127)
    w_scale = rng.uniform(0.002, 0.02, o).astype(np.float32)
    bias = rng.normal(0, 0.5, o).astype(np.float32)
    y_qp = QParams(float(rng.uniform(0.05, 0.3)), int(rng.integers(-20, 20)), -128, 127)
    return w_q, w_scale, bias, y_qp


@pytest.mark.parametrize("path", SIMD)
@pytest.mark.parametrize("requant", ["fixedpoint", "float"])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize(("n", "c", "h", "w", "o", "k", "s", "p"), CASES)
def test_fused_conv_equals_reference(monkeypatch, path, requant, relu, n, c, h, w, o, k, s, p):
    rng = np.random.default_rng(n * 1000 + c * 100 + o)
    # NOTE: AVX2 runs only 7-bit activations (vpmaddubsw saturates otherwise).
    x_qp = QParams(0.05, 3, -128, 127) if path == "vnni512" else QParams(0.05, -60, -64, 63)
    w_q, w_scale, bias, y_qp = _layer_data(rng, c, k, o, x_qp)
    x_q = random_codes(rng, (n, c, h, w), x_qp.qmin, x_qp.qmax)
    monkeypatch.setenv("MINQUANT_INT8_PATH", path)
    conv = QuantizedConv2d(w_q, w_scale, bias, x_qp, y_qp, s, p, relu, requant)
    assert conv.int8_path == path and conv.int8_offset == offset_for(path, x_qp.qmin, x_qp.qmax)
    got = conv(x_q)
    rq = conv.requant
    clamp = (y_qp.zero_point, rq.qmin, rq.qmax)
    if requant == "fixedpoint":
        expected = directconv.conv2d_requantize_fixedpoint_ref(
            x_q, w_q, rq.bias_folded, rq.multiplier, rq.shift, s, p, x_qp.zero_point, *clamp,
            rounding=rq.rounding,
        )  # fmt: skip
    else:
        expected = directconv.conv2d_requantize_float_ref(
            x_q, w_q, rq.zp_correction, rq.bias, rq.acc_scale, y_qp.scale, s, p,
            x_qp.zero_point, *clamp,
        )  # fmt: skip
    np.testing.assert_array_equal(got, expected)
    monkeypatch.setenv("MINQUANT_INT8_PATH", "plain")  # the same layer on the plain path
    plain = QuantizedConv2d(w_q, w_scale, bias, x_qp, y_qp, s, p, relu, requant)
    assert plain.packed is None
    np.testing.assert_array_equal(plain(x_q), got)
    monkeypatch.setattr(qnn, "DIRECT_CONV_MAX_K", 0)  # plain: im2col + GEMM, never direct
    np.testing.assert_array_equal(plain(x_q), got)


@pytest.mark.parametrize("path", SIMD)
@pytest.mark.parametrize("requant", ["fixedpoint", "float"])
def test_linear_packed_equals_plain(monkeypatch, path, requant):
    rng = np.random.default_rng(7)
    x_qp = QParams(0.05, 3, -128, 127) if path == "vnni512" else QParams(0.05, -60, -64, 63)
    w_q = random_codes(rng, (10, 1568), -127, 127)
    w_scale = rng.uniform(0.002, 0.02, 10).astype(np.float32)
    y_qp = QParams(0.2, -5, -128, 127)
    x_q = random_codes(rng, (37, 1568), x_qp.qmin, x_qp.qmax)
    outputs = []
    for env in (path, "plain"):
        monkeypatch.setenv("MINQUANT_INT8_PATH", env)
        layer = QuantizedLinear(w_q, w_scale, None, x_qp, y_qp, requant=requant)
        assert layer.int8_path == env
        outputs.append(layer(x_q))
    np.testing.assert_array_equal(*outputs)


def test_avx2_needs_7_bit_activations(monkeypatch):
    if "avx2" not in HERE:
        pytest.skip("this CPU lacks avx2")
    monkeypatch.setenv("MINQUANT_INT8_PATH", "avx2")
    qp8, qp7 = QParams(0.05, 0, -128, 127), QParams(0.05, 0, -64, 63)
    w_q = np.ones((2, 3), np.int8)
    assert QuantizedLinear(w_q, np.float32([1.0]), None, qp8, qp8).int8_path == "plain"
    assert qnn.int8_path(qp7) == ("avx2", 64)
    assert qnn.int8_path(qp8) == ("plain", None)


def test_packed_weights_are_a_cache_not_storage(monkeypatch):
    qp = QParams(scale=1.0, zero_point=0, qmin=-128, qmax=127)
    w_q = np.arange(-12, 12, dtype=np.int8).reshape(2, 3, 2, 2)
    sizes = []
    for env in ("plain", HERE[0]):
        monkeypatch.setenv("MINQUANT_INT8_PATH", env)
        conv = QuantizedConv2d(w_q, np.float32([1.0]), None, qp, qp)
        assert set(conv.arrays()) == {"w_t", "bias_folded", "multiplier", "shift"}
        np.testing.assert_array_equal(conv.w_t.T.reshape(w_q.shape), w_q)  # still the truth
        sizes.append(conv.nbytes)
    assert sizes[0] == sizes[1]


def test_pack_conv_weights_orders_taps_channels_last():
    rng = np.random.default_rng(0)
    w_q = random_codes(rng, (5, 3, 2, 4), -127, 127)  # (O, C, kh, kw)
    packed = pack_conv_weights(w_q)
    for o in range(5):
        np.testing.assert_array_equal(packed.b_q[:, o], w_q[o].transpose(1, 2, 0).ravel())
    np.testing.assert_array_equal(packed.col_sum[:5], w_q.reshape(5, -1).sum(axis=1))
