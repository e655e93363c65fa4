"""The fused direct convolution equals its im2col reference exactly; bad input is refused.

The references are the unfused pipeline of :mod:`minquant.kernels` (im2col -> exact GEMM ->
requantization), itself checked there against independent computations; the tests below also
rebuild that pipeline from the Numba kernels and compare.
"""

import numpy as np
import pytest

from minquant import kernels
from minquant.kernels import directconv


def random_int8(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform int8 with a share of the extreme values -128 and 127."""
    x = rng.integers(-128, 128, shape)
    extreme = rng.random(shape) < 0.2
    x[extreme] = rng.choice([-128, 127], int(extreme.sum()))
    return x.astype(np.int8)


CONV_CASES = [  # (N, C, H, W, kernel_size, stride, padding)
    (1, 1, 5, 5, 3, 1, 0),
    (2, 3, 7, 6, 3, 2, 1),
    (1, 2, 4, 4, (2, 3), (1, 2), (0, 1)),
    (3, 1, 1, 1, 1, 1, 0),
    (1, 4, 6, 5, 5, 1, 2),
]


# ---- fused convolution + requantization --------------------------------------------------


def _fused_conv_args(rng, c, kernel_size, n_out=5):
    kh, kw = (kernel_size, kernel_size) if np.isscalar(kernel_size) else kernel_size
    w_q = random_int8(rng, (n_out, c, kh, kw))
    bias = rng.integers(-50_000, 50_000, n_out).astype(np.int32)
    multiplier = rng.integers(2**30, 2**31, n_out)
    shift = rng.integers(-18, -6, n_out)
    return w_q, bias, multiplier, shift


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("rounding", ["double", "single"])
def test_conv2d_requantize_fixedpoint_equals_reference(case, rounding):
    n, c, h, w, kernel_size, stride, padding = case
    rng = np.random.default_rng(h * w + c)
    x_q = random_int8(rng, (n, c, h, w))
    w_q, bias, multiplier, shift = _fused_conv_args(rng, c, kernel_size)
    args = (x_q, w_q, bias, multiplier, shift, stride, padding, -7, 4, -9, 127, rounding)
    got = directconv.conv2d_requantize_fixedpoint(*args)
    want = directconv.conv2d_requantize_fixedpoint_ref(*args)
    assert got.dtype == np.int8 and got.shape == want.shape and got.shape[:2] == (n, 5)
    np.testing.assert_array_equal(got, want)
    # The reference is the unfused pipeline: im2col -> GEMM -> requantize, then NCHW.
    cols = kernels.im2col_int8(x_q, kernel_size, stride, padding, -7)
    acc = kernels.matmul_int8(cols, w_q.reshape(5, -1).T)  # (N*Ho*Wo, O)
    y = kernels.requantize_fixedpoint(acc, *args[2:5], 4, -9, 127, rounding)
    np.testing.assert_array_equal(y, want.transpose(0, 2, 3, 1).reshape(-1, 5))


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_requantize_float_equals_reference(case):
    n, c, h, w, kernel_size, stride, padding = case
    rng = np.random.default_rng(h * w + c + 1)
    x_q = random_int8(rng, (n, c, h, w))
    w_q, _, _, _ = _fused_conv_args(rng, c, kernel_size)
    zp_correction = rng.integers(-20_000, 20_000, 5).astype(np.int32)
    bias = rng.normal(0.0, 2.0, 5).astype(np.float32)
    acc_scale = rng.uniform(1e-4, 1e-3, 5).astype(np.float32)
    args = (x_q, w_q, zp_correction, bias, acc_scale, 0.05, stride, padding, -7, 4, -9, 127)
    got = directconv.conv2d_requantize_float(*args)
    want = directconv.conv2d_requantize_float_ref(*args)
    assert got.dtype == np.int8 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    cols = kernels.im2col_int8(x_q, kernel_size, stride, padding, -7)
    acc = kernels.matmul_int8(cols, w_q.reshape(5, -1).T) - zp_correction  # (N*Ho*Wo, O)
    y = kernels.requantize_float(acc, bias, acc_scale, 0.05, 4, -9, 127)
    np.testing.assert_array_equal(y, want.transpose(0, 2, 3, 1).reshape(-1, 5))


def test_conv2d_requantize_rejects_bad_input():
    x_q = np.zeros((1, 2, 5, 5), np.int8)
    w_q = np.zeros((3, 2, 3, 3), np.int8)
    args = (None, 1 << 30, -1, 1, 1, 0, 0, -128, 127)
    with pytest.raises(TypeError, match="x_q"):
        directconv.conv2d_requantize_fixedpoint(x_q.astype(np.int32), w_q, *args)
    with pytest.raises(TypeError, match="w_q"):
        directconv.conv2d_requantize_fixedpoint(x_q, w_q.astype(np.float32), *args)
    with pytest.raises(ValueError, match="does not match"):
        directconv.conv2d_requantize_fixedpoint(x_q, w_q[:, :1], *args)
    with pytest.raises(ValueError, match="pad_value"):
        directconv.conv2d_requantize_fixedpoint(
            x_q, w_q, None, 1 << 30, -1, 1, 1, 300, 0, -128, 127
        )
    with pytest.raises(ValueError, match="rounding"):
        directconv.conv2d_requantize_fixedpoint(x_q, w_q, *args, rounding="up")
    with pytest.raises(ValueError, match="bias_q"):
        directconv.conv2d_requantize_fixedpoint(x_q, w_q, np.zeros(2), *args[1:])
    zp = np.zeros(3, np.int32)
    with pytest.raises(ValueError, match="acc_scale"):
        directconv.conv2d_requantize_float(x_q, w_q, zp, None, -1.0, 1.0, 1, 1, 0, 0, -128, 127)
    with pytest.raises(ValueError, match="zp_correction"):
        directconv.conv2d_requantize_float(x_q, w_q, zp[:2], None, 1.0, 1.0, 1, 1, 0, 0, -128, 127)


# ---- pure Python mode --------------------------------------------------------------------


def test_directconv_runs_with_jit_disabled(run_without_jit):
    run_without_jit(
        """
        import numpy as np
        from minquant.kernels import directconv
        assert not hasattr(directconv._conv2d_requantize_fixedpoint_kernel, "signatures")
        rng = np.random.default_rng(0)
        x = rng.integers(-128, 128, (1, 2, 5, 5)).astype(np.int8)
        m = np.array([2**30, 1500000000, 2**31 - 1]); s = np.array([-3, -8, 0])
        w = rng.integers(-127, 128, (3, 2, 3, 3)).astype(np.int8)
        args = (x, w, np.array([9, 0, -9]), m, s, 2, 1, -4, 2, -128, 127)
        for r in ("double", "single"):
            y = directconv.conv2d_requantize_fixedpoint(*args, r)
            assert (y == directconv.conv2d_requantize_fixedpoint_ref(*args, r)).all()
        args = (x, w, np.array([5, 0, -5]), None, np.full(3, 1e-2, np.float32), 0.7, 1, 1, -4)
        y = directconv.conv2d_requantize_float(*args, 2, -128, 127)
        assert (y == directconv.conv2d_requantize_float_ref(*args, 2, -128, 127)).all()
        print("ok")
        """
    )
