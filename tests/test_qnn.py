"""Integer-only modules against independent float computations and PyTorch's x86 engine."""

import numpy as np
import pytest

from minquant.kernels import MAX_K
from minquant.qnn import (
    QParams,
    QuantizedConv2d,
    QuantizedFlatten,
    QuantizedLinear,
    QuantizedMaxPool2d,
    QuantizedReLU,
)
from minquant.qnn import layers as qnn


def _random_layer_data(rng, n_out, k, per_channel=True):
    """Random int8 weights (narrow range), weight scales, float bias, in/out qparams."""
    w_q = rng.integers(-127, 128, size=(n_out, k)).astype(np.int8)
    n_scales = n_out if per_channel else 1
    w_scale = rng.uniform(0.002, 0.02, size=n_scales).astype(np.float32)
    bias = rng.normal(0.0, 0.5, size=n_out).astype(np.float32)
    x_qp = QParams(scale=0.03, zero_point=int(rng.integers(-100, 50)), qmin=-128, qmax=127)
    y_qp = QParams(scale=0.25, zero_point=int(rng.integers(-20, 20)), qmin=-128, qmax=127)
    return w_q, w_scale, bias, x_qp, y_qp


def _ideal_requantize(acc_real, y_qp, relu=False):
    """Round the exact real output (float64) to the output grid: the ideal int8 result."""
    y = np.rint(acc_real / y_qp.scale) + y_qp.zero_point
    lo = max(y_qp.qmin, y_qp.zero_point) if relu else y_qp.qmin
    return np.clip(y, lo, y_qp.qmax).astype(np.int64)


def _assert_close_to_ideal(out, ideal, min_exact=0.99):
    diff = np.abs(out.astype(np.int64) - ideal)
    assert diff.max() <= 1, f"max difference {diff.max()} LSB"
    assert np.mean(diff == 0) >= min_exact, f"only {np.mean(diff == 0):.4f} exact"


REQUANT_ROUNDING = [("fixedpoint", "single"), ("fixedpoint", "double"), ("float", "single")]


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize(("requant", "rounding"), REQUANT_ROUNDING)
def test_linear_matches_float_computation(per_channel, requant, rounding):
    rng = np.random.default_rng(1)
    w_q, w_scale, bias, x_qp, y_qp = _random_layer_data(rng, 24, 300, per_channel)
    x_q = rng.integers(-128, 128, size=(64, 300)).astype(np.int8)
    layer = QuantizedLinear(w_q, w_scale, bias, x_qp, y_qp, requant=requant, rounding=rounding)
    out = layer(x_q)
    assert out.dtype == np.int8 and out.shape == (64, 24)
    # the exact real-valued output of the dequantized layer, in float64
    x = x_qp.scale * (x_q.astype(np.float64) - x_qp.zero_point)  # (64, 300)
    w = w_scale.astype(np.float64)[:, None] * w_q  # (24, 300)
    _assert_close_to_ideal(out, _ideal_requantize(x @ w.T + bias, y_qp))


def _conv_float64(x, w, b, padding):
    """Direct convolution in float64: one einsum per kernel offset, padding with 0.0."""
    n, _, h, wid = x.shape
    o, _, k, _ = w.shape
    x_pad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    h_out, w_out = h + 2 * padding - k + 1, wid + 2 * padding - k + 1
    y = np.zeros((n, o, h_out, w_out)) + b[None, :, None, None]
    for i in range(k):
        for j in range(k):
            patch = x_pad[:, :, i : i + h_out, j : j + w_out]  # (N, C, Ho, Wo)
            y += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return y


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize(("requant", "rounding"), REQUANT_ROUNDING)
def test_conv2d_matches_float_computation(relu, requant, rounding):
    rng = np.random.default_rng(2)
    w_q, w_scale, bias, x_qp, y_qp = _random_layer_data(rng, 8, 3 * 3 * 3)
    w_q = w_q.reshape(8, 3, 3, 3)
    x_q = rng.integers(-128, 128, size=(4, 3, 9, 7)).astype(np.int8)
    kwargs = dict(padding=1, relu=relu, requant=requant, rounding=rounding)
    conv = QuantizedConv2d(w_q, w_scale, bias, x_qp, y_qp, **kwargs)
    out = conv(x_q)
    assert out.dtype == np.int8 and out.shape == (4, 8, 9, 7)
    # NOTE: the reference pads with real zeros; the integer conv pads with the zero point.
    x = x_qp.scale * (x_q.astype(np.float64) - x_qp.zero_point)
    w = w_scale.astype(np.float64)[:, None, None, None] * w_q
    ideal = _ideal_requantize(_conv_float64(x, w, bias, padding=1), y_qp, relu)
    _assert_close_to_ideal(out, ideal)
    if relu:
        assert out.min() >= y_qp.zero_point


@pytest.mark.parametrize(("requant", "rounding"), REQUANT_ROUNDING)
@pytest.mark.parametrize(("c_in", "stride"), [(1, 1), (3, 2), (6, 1)])
def test_conv2d_direct_and_im2col_paths_agree(monkeypatch, requant, rounding, c_in, stride):
    rng = np.random.default_rng(c_in)
    w_q, w_scale, bias, x_qp, y_qp = _random_layer_data(rng, 5, c_in * 3 * 3)
    w_q = w_q.reshape(5, c_in, 3, 3)
    x_q = rng.integers(-128, 128, size=(3, c_in, 9, 8)).astype(np.int8)
    kwargs = dict(stride=stride, padding=1, relu=True, requant=requant, rounding=rounding)
    conv = QuantizedConv2d(w_q, w_scale, bias, x_qp, y_qp, **kwargs)
    monkeypatch.setattr(qnn, "DIRECT_CONV_MAX_K", 0)  # every convolution: im2col + GEMM
    via_gemm = conv(x_q)
    monkeypatch.setattr(qnn, "DIRECT_CONV_MAX_K", MAX_K)  # every convolution: direct
    np.testing.assert_array_equal(conv(x_q), via_gemm)


def test_conv2d_stride_and_no_bias():
    rng = np.random.default_rng(3)
    w_q = rng.integers(-127, 128, size=(4, 2, 3, 3)).astype(np.int8)
    w_scale = np.full(4, 0.01, np.float32)
    x_qp = QParams(0.05, 3, -128, 127)
    y_qp = QParams(0.2, -7, -128, 127)
    conv = QuantizedConv2d(w_q, w_scale, None, x_qp, y_qp, stride=2, padding=1)
    x_q = rng.integers(-128, 128, size=(2, 2, 8, 8)).astype(np.int8)
    out = conv(x_q)
    x = x_qp.scale * (x_q.astype(np.float64) - x_qp.zero_point)
    w = 0.01 * w_q.astype(np.float64)
    y = _conv_float64(x, w, np.zeros(4), padding=1)[:, :, ::2, ::2]
    assert out.shape == (2, 4, 4, 4)
    _assert_close_to_ideal(out, _ideal_requantize(y, y_qp))


def test_pool_flatten_relu():
    x_q = np.array([[-13, -3, 0, 127]], dtype=np.int8)  # codes with zero point -3
    assert QuantizedReLU(-3)(x_q).tolist() == [[-3, -3, 0, 127]]
    rng = np.random.default_rng(4)
    x4 = rng.integers(-128, 128, size=(2, 3, 5, 5)).astype(np.int8)
    pooled = QuantizedMaxPool2d(2)(x4)
    expected = x4[:, :, :4, :4].reshape(2, 3, 2, 2, 2, 2).max(axis=(3, 5))
    np.testing.assert_array_equal(pooled, expected)
    assert QuantizedFlatten()(x4).shape == (2, 75)


def test_nbytes_counts_stored_arrays():
    rng = np.random.default_rng(5)
    w_q, w_scale, bias, x_qp, y_qp = _random_layer_data(rng, 10, 100)
    layer = QuantizedLinear(w_q, w_scale, bias, x_qp, y_qp)
    # int8 weights + int32 folded bias + int32 multiplier + int8 shift per channel
    assert layer.nbytes == 10 * 100 + 10 * (4 + 4 + 1)
    assert "QuantizedLinear(100, 10" in repr(layer) and "rounding='single'" in repr(layer)
    # The GEMM reads the (out, in) rows in place: w_t is their transposed view.
    assert layer.w_t.shape == (100, 10) and layer.w_t.T.flags.c_contiguous
    assert np.shares_memory(layer.w_t, w_q)


def test_packed_nbytes_counts_bits():
    rng = np.random.default_rng(7)
    # 7 x 9 = 63 codes in [-1, 1]: 63 bytes at 8 bits, 32 at 4 bits, 16 at 2 bits.
    w_q = rng.integers(-1, 2, size=(7, 9)).astype(np.int8)
    _, w_scale, bias, x_qp, y_qp = _random_layer_data(rng, 7, 9)
    per_channel = 7 * (4 + 4 + 1)  # int32 folded bias, int32 multiplier, int8 shift
    layer = QuantizedLinear(w_q, w_scale, bias, x_qp, y_qp)
    assert layer.nbytes == 63 + per_channel
    assert layer.packed_nbytes(8) == 63 + per_channel
    assert layer.packed_nbytes(4) == 32 + per_channel
    assert layer.packed_nbytes(2) == 16 + per_channel
    assert layer.packed_nbytes(3) == 24 + per_channel  # 189 bits
    float_layer = QuantizedLinear(w_q, w_scale, bias, x_qp, y_qp, requant="float")
    assert float_layer.packed_nbytes(2) == 16 + 7 * (4 + 4 + 4)  # float bias, int32, float32
    assert QuantizedFlatten().packed_nbytes(4) == 0
    with pytest.raises(ValueError, match=r"weight_bits must be in \[2, 8\], got 1"):
        layer.packed_nbytes(1)
    big = QuantizedLinear(np.full((2, 3), -8, np.int8), w_scale[:2], None, x_qp, y_qp)
    assert big.packed_nbytes(4) == 3 + 2 * 9
    with pytest.raises(ValueError, match=r"weight codes in \[-8, -8\] do not fit 3 bits"):
        big.packed_nbytes(3)
    with pytest.raises(TypeError, match="weight_bits"):
        layer.packed_nbytes(4.0)


def test_max_k_is_the_int32_accumulator_bound():
    # 131,071 products of (-128)(-128) sum to 2**31 - 2**14, which fits int32; 131,072 reach
    # 2**31, which wraps: K = 131,072 is refused although 2**31 / 128**2 = 131,072.
    assert MAX_K == 131_071 and MAX_K * 128 * 128 <= 2**31 - 1 < (MAX_K + 1) * 128 * 128
    x_qp = QParams(scale=1.0, zero_point=0, qmin=-128, qmax=127)
    QuantizedLinear(np.zeros((1, MAX_K), np.int8), np.float32([1.0]), None, x_qp, x_qp)
    with pytest.raises(ValueError, match="131072 inputs per output exceeds 131071"):
        QuantizedLinear(np.zeros((1, MAX_K + 1), np.int8), np.float32([1.0]), None, x_qp, x_qp)


@pytest.mark.parametrize("requant", ["float", "fixedpoint"])
def test_zero_point_corrected_accumulator_cannot_wrap(requant):
    # sum_k (x - z_x) w: with z_x = -128 an input code 127 is 255 steps away, so K = 70,000
    # weights of 127 could reach 70,000 * 255 * 127 = 2,266,950,000 > 2**31 - 1. Before the
    # check, requant="float" silently returned -128 here (the int32 subtraction wrapped).
    x_qp = QParams(scale=1.0, zero_point=-128, qmin=-128, qmax=127)
    y_qp = QParams(scale=1e8, zero_point=0, qmin=-128, qmax=127)
    w_q = np.full((1, 70_000), 127, np.int8)
    with pytest.raises(ValueError, match=r"could reach 2,266,950,000 > 2\^31 - 1"):
        QuantizedLinear(w_q, np.float32([1.0]), None, x_qp, y_qp, requant=requant)
    # the largest K that is safe for these codes is accepted and gives the exact result
    k_safe = (2**31 - 1) // (255 * 127)  # 66,311
    layer = QuantizedLinear(w_q[:, :k_safe], np.float32([1.0]), None, x_qp, y_qp, requant=requant)
    y_q = layer(np.full((1, k_safe), 127, np.int8))
    assert y_q.tolist() == [[round(k_safe * 255 * 127 / 1e8)]]  # 21


def test_bad_input():
    rng = np.random.default_rng(6)
    w_q, w_scale, bias, x_qp, y_qp = _random_layer_data(rng, 4, 6)
    layer = QuantizedLinear(w_q, w_scale, bias, x_qp, y_qp)
    with pytest.raises(TypeError, match="int8"):
        layer(np.zeros((2, 6), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        layer(np.zeros((2, 5), dtype=np.int8))
    with pytest.raises(TypeError, match="w_q must be an int8"):
        QuantizedLinear(w_q.astype(np.int16), w_scale, bias, x_qp, y_qp)
    with pytest.raises(ValueError, match="requant"):
        QuantizedLinear(w_q, w_scale, bias, x_qp, y_qp, requant="double")
    with pytest.raises(ValueError, match="rounding must be one of"):
        QuantizedLinear(w_q, w_scale, bias, x_qp, y_qp, rounding="even")
    with pytest.raises(ValueError, match="overflow"):
        big = np.zeros((1, MAX_K + 1), dtype=np.int8)
        QuantizedLinear(big, w_scale[:1], None, x_qp, y_qp)
    with pytest.raises(ValueError, match="int32"):
        QuantizedLinear(w_q, np.full(4, 1e-12, np.float32), bias * 1e3, x_qp, y_qp)
    conv = QuantizedConv2d(w_q.reshape(4, 6, 1, 1), w_scale, bias, x_qp, y_qp)
    with pytest.raises(ValueError, match="4 dimensions"):
        conv(np.zeros((6, 5, 5), dtype=np.int8))


def _torch_pair(torch, x_q, w_q, w_scale, bias, x_qp, y_qp):
    """The same tensors in PyTorch's convention: quint8 activations (code + 128)."""
    x_t = torch._make_per_tensor_quantized_tensor(
        torch.tensor(x_q.astype(np.int16) + 128, dtype=torch.uint8),
        float(x_qp.scale),
        x_qp.zero_point + 128,
    )
    w_t = torch._make_per_channel_quantized_tensor(
        torch.tensor(w_q),
        torch.tensor(w_scale.astype(np.float64)),
        torch.zeros(len(w_scale), dtype=torch.int64),
        0,
    )
    return x_t, w_t, torch.tensor(bias)


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:.*quantized tensor creation:UserWarning")
@pytest.mark.parametrize("relu", [False, True])
def test_linear_bit_exact_with_torch_x86(relu):
    torch = pytest.importorskip("torch")
    torch.backends.quantized.engine = "x86"
    rng = np.random.default_rng(7)
    w_q, w_scale, bias, _, _ = _random_layer_data(rng, 16, 200)
    # NOTE: activations in the 7-bit range [0, 127] as quint8 (PyTorch x86 reduce_range):
    # fbgemm's AVX2 kernels saturate int16 pair sums on the full uint8 range.
    x_qp = QParams(scale=0.02, zero_point=-70, qmin=-128, qmax=-1)
    y_qp = QParams(scale=0.1, zero_point=-60, qmin=-128, qmax=127)
    x_q = rng.integers(-128, 0, size=(50, 200)).astype(np.int8)
    layer = QuantizedLinear(w_q, w_scale, bias, x_qp, y_qp, relu=relu, requant="float")
    x_t, w_t, b_t = _torch_pair(torch, x_q, w_q, w_scale, bias, x_qp, y_qp)
    cls = torch.ao.nn.intrinsic.quantized.LinearReLU if relu else torch.ao.nn.quantized.Linear
    ref = cls(200, 16)
    ref.set_weight_bias(w_t, b_t)
    ref.scale, ref.zero_point = float(y_qp.scale), y_qp.zero_point + 128
    expected = ref(x_t).int_repr().numpy().astype(np.int16) - 128
    np.testing.assert_array_equal(layer(x_q), expected)


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:.*quantized tensor creation:UserWarning")
@pytest.mark.parametrize("relu", [False, True])
def test_conv2d_bit_exact_with_torch_x86(relu):
    torch = pytest.importorskip("torch")
    torch.backends.quantized.engine = "x86"
    rng = np.random.default_rng(8)
    w_q, w_scale, bias, _, _ = _random_layer_data(rng, 12, 5 * 3 * 3)
    w_q = w_q.reshape(12, 5, 3, 3)
    x_qp = QParams(scale=0.05, zero_point=-90, qmin=-128, qmax=-1)
    y_qp = QParams(scale=0.3, zero_point=-10, qmin=-128, qmax=127)
    x_q = rng.integers(-128, 0, size=(3, 5, 10, 11)).astype(np.int8)
    conv = QuantizedConv2d(w_q, w_scale, bias, x_qp, y_qp, padding=1, relu=relu, requant="float")
    x_t, w_t, b_t = _torch_pair(torch, x_q, w_q, w_scale, bias, x_qp, y_qp)
    if relu:
        ref = torch.ao.nn.intrinsic.quantized.ConvReLU2d(5, 12, 3, padding=1)
    else:
        ref = torch.ao.nn.quantized.Conv2d(5, 12, 3, padding=1)
    ref.set_weight_bias(w_t, b_t)
    ref.scale, ref.zero_point = float(y_qp.scale), y_qp.zero_point + 128
    expected = ref(x_t).int_repr().numpy().astype(np.int16) - 128
    np.testing.assert_array_equal(conv(x_q), expected)
