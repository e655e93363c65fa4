"""Every Numba kernel equals its NumPy reference exactly; bad input is refused clearly.

The references are themselves checked against independent computations: the GEMM against
exact float64 BLAS, im2col against a direct convolution, the fixed-point requantization
against :mod:`minquant.fixedpoint` (tested against exact integers), the float requantization
against PyTorch's quantized Linear.
"""

import math
from fractions import Fraction

import numpy as np
import pytest

from minquant import kernels
from minquant.fixedpoint import quantize_multiplier


def random_int8(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform int8 with a share of the extreme values -128 and 127."""
    x = rng.integers(-128, 128, shape)
    extreme = rng.random(shape) < 0.2
    x[extreme] = rng.choice([-128, 127], int(extreme.sum()))
    return x.astype(np.int8)


# ---- GEMM --------------------------------------------------------------------------------

GEMM_SHAPES = [(1, 1, 1), (1, 7, 1), (5, 1, 3), (3, 5, 7), (2, 4, 4), (17, 33, 9), (64, 300, 31)]


@pytest.mark.parametrize(("m", "k", "n"), GEMM_SHAPES)
def test_matmul_int8_equals_reference(m, k, n):
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    a_q, b_q = random_int8(rng, (m, k)), random_int8(rng, (k, n))
    got = kernels.matmul_int8(a_q, b_q)
    want = kernels.matmul_int8_ref(a_q, b_q)
    assert got.dtype == np.int32 and got.shape == (m, n)
    np.testing.assert_array_equal(got, want)
    # The reference against exact float64 BLAS (|C| < 2**53).
    np.testing.assert_array_equal(want, a_q.astype(np.float64) @ b_q.astype(np.float64))


def test_matmul_int8_extremes_and_views():
    k = 1000
    a_q = np.full((3, k), -128, dtype=np.int8)
    b_q = np.full((k, 5), -128, dtype=np.int8)
    b_q[:, 1] = 127
    got = kernels.matmul_int8(a_q, b_q)
    assert got[0, 0] == 128 * 128 * k and got[0, 1] == -128 * 127 * k
    # A transposed view of an (N, K) weight and a non-contiguous slice of A.
    rng = np.random.default_rng(7)
    w_q = random_int8(rng, (6, 40))  # (N, K)
    x_q = random_int8(rng, (9, 80))[:, ::2]  # (M, K), strided
    np.testing.assert_array_equal(
        kernels.matmul_int8(x_q, w_q.T), kernels.matmul_int8_ref(x_q, w_q.T)
    )


def test_matmul_int8_largest_k_is_exact():
    k = kernels.MAX_K  # every product is (-128)(-128) = 2**14: the sum is 2**31 - 2**14
    a_q = np.full((2, k), -128, dtype=np.int8)
    b_q = np.full((k, 4), -128, dtype=np.int8)
    assert np.all(kernels.matmul_int8(a_q, b_q) == 2**31 - 2**14)


def test_matmul_int8_empty():
    a_q = np.zeros((0, 3), dtype=np.int8)
    b_q = np.zeros((3, 2), dtype=np.int8)
    assert kernels.matmul_int8(a_q, b_q).shape == (0, 2)


def test_matmul_int8_rejects_non_int8():
    a_q = np.zeros((2, 3), dtype=np.int8)
    with pytest.raises(TypeError, match="b_q must be an int8 ndarray, got int32"):
        kernels.matmul_int8(a_q, np.zeros((3, 2), dtype=np.int32))
    with pytest.raises(TypeError, match="a_q must be an int8 ndarray, got uint8"):
        kernels.matmul_int8(a_q.astype(np.uint8), np.zeros((3, 2), dtype=np.int8))
    with pytest.raises(TypeError, match="a_q"):
        kernels.matmul_int8_ref([[1, 2, 3]], np.zeros((3, 2), dtype=np.int8))


def test_matmul_int8_rejects_mismatched_k():
    with pytest.raises(ValueError, match=r"a_q \(2, 3\).*b_q \(4, 2\)"):
        kernels.matmul_int8(np.zeros((2, 3), np.int8), np.zeros((4, 2), np.int8))


def test_matmul_int8_rejects_k_that_could_overflow():
    k = kernels.MAX_K + 1
    with pytest.raises(ValueError, match="131072 > 131071"):
        kernels.matmul_int8(np.zeros((1, k), np.int8), np.zeros((k, 1), np.int8))


def test_matmul_int8_rejects_wrong_ndim():
    with pytest.raises(ValueError, match="2-D"):
        kernels.matmul_int8(np.zeros(3, np.int8), np.zeros((3, 1), np.int8))


# ---- im2col ------------------------------------------------------------------------------

CONV_CASES = [  # (N, C, H, W, kernel_size, stride, padding)
    (1, 1, 5, 5, 3, 1, 0),
    (2, 3, 7, 6, 3, 2, 1),
    (1, 2, 4, 4, (2, 3), (1, 2), (0, 1)),
    (3, 1, 1, 1, 1, 1, 0),
    (1, 4, 6, 5, 5, 1, 2),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_im2col_int8_equals_reference_and_direct_convolution(case):
    n, c, h, w, kernel_size, stride, padding = case
    rng = np.random.default_rng(h * w + c)
    x_q = random_int8(rng, (n, c, h, w))
    pad_value = -7
    got = kernels.im2col_int8(x_q, kernel_size, stride, padding, pad_value)
    want = kernels.im2col_int8_ref(x_q, kernel_size, stride, padding, pad_value)
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, want)
    # A direct convolution with a PyTorch-layout weight (O, C, kh, kw) gives the same numbers.
    kh, kw = (kernel_size, kernel_size) if np.isscalar(kernel_size) else kernel_size
    sh, sw = (stride, stride) if np.isscalar(stride) else stride
    ph, pw = (padding, padding) if np.isscalar(padding) else padding
    w_q = random_int8(rng, (4, c, kh, kw))
    xp = np.pad(x_q.astype(np.int64), ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-7)
    h_out, w_out = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    direct = np.zeros((n, h_out, w_out, 4), dtype=np.int64)
    for oy in range(h_out):
        for ox in range(w_out):
            patch = xp[:, :, oy * sh : oy * sh + kh, ox * sw : ox * sw + kw]  # (N, C, kh, kw)
            direct[:, oy, ox] = np.einsum("nchw,ochw->no", patch, w_q.astype(np.int64))
    gemm = kernels.matmul_int8(got, w_q.reshape(4, -1).T)  # (N*Ho*Wo, O)
    np.testing.assert_array_equal(gemm.reshape(n, h_out, w_out, 4), direct)


def test_im2col_int8_pads_with_pad_value():
    x_q = np.full((1, 1, 2, 2), 5, dtype=np.int8)
    cols = kernels.im2col_int8(x_q, 3, padding=1, pad_value=-128)
    assert cols.shape == (4, 9)
    assert (cols == -128).sum() == 4 * 9 - 4 * 4 and (cols == 5).sum() == 16


def test_im2col_int8_rejects_bad_input():
    with pytest.raises(TypeError, match="x_q must be an int8"):
        kernels.im2col_int8(np.zeros((1, 1, 3, 3), np.float32), 3)
    with pytest.raises(ValueError, match="x_q must be 4-D"):
        kernels.im2col_int8(np.zeros((1, 3, 3), np.int8), 3)
    with pytest.raises(ValueError, match="does not fit"):
        kernels.im2col_int8(np.zeros((1, 1, 3, 3), np.int8), 5)
    with pytest.raises(ValueError, match="pad_value"):
        kernels.im2col_int8(np.zeros((1, 1, 3, 3), np.int8), 3, pad_value=128)
    with pytest.raises(ValueError, match="stride"):
        kernels.im2col_int8(np.zeros((1, 1, 3, 3), np.int8), 3, stride=0)


# ---- requantization ----------------------------------------------------------------------


def random_acc(rng: np.random.Generator, shape: tuple[int, int], bits: int) -> np.ndarray:
    acc = rng.integers(-(2**bits), 2**bits, shape)
    acc[rng.random(shape) < 0.05] = 0
    return acc.astype(np.int32)


@pytest.mark.parametrize("rounding", ["double", "single"])
@pytest.mark.parametrize(("m", "n", "relu"), [(1, 1, False), (37, 13, False), (64, 10, True)])
def test_requantize_fixedpoint_equals_reference(m, n, relu, rounding):
    rng = np.random.default_rng(m + n)
    acc = random_acc(rng, (m, n), 20)
    bias_q = rng.integers(-(2**16), 2**16, n).astype(np.int32)
    multiplier, shift = quantize_multiplier(np.exp2(rng.uniform(-20.0, -0.5, n)))
    zero_point_out = int(rng.integers(-20, 20))
    qmin = zero_point_out if relu else -128
    for bias in (bias_q, None):
        args = (acc, bias, multiplier, shift, zero_point_out, qmin, 127)
        got = kernels.requantize_fixedpoint(*args, rounding=rounding)
        want = kernels.requantize_fixedpoint_ref(*args, rounding=rounding)
        assert got.dtype == np.int8 and got.shape == (m, n)
        np.testing.assert_array_equal(got, want)
        assert got.min() >= qmin


def test_requantize_fixedpoint_scalar_multiplier_and_ties():
    # M = 0.5: 3 -> 1.5 -> 2 and -3 -> -1.5 -> -1 (gemmlowp's SRDHM rounds ties up).
    acc = np.array([[3, -3, 5, -5, 2**31 - 1, -(2**31)]], dtype=np.int32)
    got = kernels.requantize_fixedpoint(acc, None, 2**30, 0, 0, -128, 127)
    np.testing.assert_array_equal(got, [[2, -1, 3, -2, 127, -128]])
    want = kernels.requantize_fixedpoint_ref(acc, None, 2**30, 0, 0, -128, 127)
    np.testing.assert_array_equal(got, want)


def requantize_single_exact(v: int, m: int, s: int, zero_point_out: int) -> int:
    """clip(z + floor(v * M0 / 2**(31 - s) + 1/2)): one rounding of the exact product."""
    y = math.floor(Fraction(v * m, 2 ** (31 - s)) + Fraction(1, 2)) + zero_point_out
    return min(max(y, -128), 127)


def test_requantize_fixedpoint_single_matches_exact_on_100k_cases():
    rng = np.random.default_rng(12)
    m, n = 1000, 100
    acc = random_acc(rng, (m, n), 24)  # (M, N)
    bias_q = rng.integers(-(2**20), 2**20, n).astype(np.int32)  # (N,)
    multiplier, shift = quantize_multiplier(np.exp2(rng.uniform(-24.0, -16.0, n)))  # (N,)
    # A (200, 20) block of exact ties: (acc + b) * M = k + 1/2 with M0 = 2**30.
    multiplier[:20] = 2**30
    ties = (2 * rng.integers(-50, 50, (200, 20)) + 1) << -shift[:20].astype(np.int64)
    acc[:200, :20] = ties - bias_q[:20]
    got = kernels.requantize_fixedpoint(acc, bias_q, multiplier, shift, -3, -128, 127, "single")
    want = np.array(
        [
            [
                requantize_single_exact(int(acc[i, j]) + int(bias_q[j]), int(mj), int(sj), -3)
                for j, (mj, sj) in enumerate(zip(multiplier, shift, strict=True))
            ]
            for i in range(m)
        ]
    )
    np.testing.assert_array_equal(got, want)
    assert np.mean((want > -128) & (want < 127)) > 0.9  # the rounding is tested, not the clamp
    # On the ties the double rounding differs for negative values (away from zero).
    double = kernels.requantize_fixedpoint(acc, bias_q, multiplier, shift, -3, -128, 127)
    negative_ties = ties < 0  # (200, 20)
    tie_got, tie_double = got[:200, :20].astype(int), double[:200, :20].astype(int)
    np.testing.assert_array_equal(tie_double[negative_ties], tie_got[negative_ties] - 1)
    np.testing.assert_array_equal(tie_double[~negative_ties], tie_got[~negative_ties])


@pytest.mark.parametrize(("m", "n", "relu"), [(1, 1, False), (37, 13, False), (64, 10, True)])
def test_requantize_float_equals_reference(m, n, relu):
    rng = np.random.default_rng(100 + m + n)
    acc = random_acc(rng, (m, n), 26)  # includes |acc| > 2**24: float32 conversion rounds
    acc_scale = (np.float32(0.02) * rng.uniform(1e-4, 1e-2, n)).astype(np.float32)
    bias = rng.normal(0.0, 0.5, n).astype(np.float32)
    out_scale = float(np.max(acc_scale) * 2**20)
    qmin = 3 if relu else -128
    for b in (bias, None):
        got = kernels.requantize_float(acc, b, acc_scale, out_scale, 3, qmin, 127)
        want = kernels.requantize_float_ref(acc, b, acc_scale, out_scale, 3, qmin, 127)
        np.testing.assert_array_equal(got, want)


def test_requantize_float_ties_round_half_even():
    acc = np.array([[1, 3, 5, -1, -3]], dtype=np.int32)
    got = kernels.requantize_float(acc, None, 0.5, 1.0, 0, -128, 127)  # x / 2
    np.testing.assert_array_equal(got, [[0, 2, 2, 0, -2]])


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:.*quantized tensor creation.*:UserWarning")
def test_requantize_float_is_bit_exact_with_torch_quantized_linear():
    torch = pytest.importorskip("torch")
    torch.backends.quantized.engine = "x86"
    rng = np.random.default_rng(11)
    m, k, n = 64, 50, 12
    # NOTE: x86 (fbgemm) multiplies uint8 x int8 pairs with VPMADDUBSW, whose int16 sums
    # saturate for 8-bit activations: PyTorch uses reduce_range (7-bit, [0, 127]) for them.
    x_scale, x_zp = 0.037, 61  # quint8 input in the reduced range [0, 127]
    w_scale = rng.uniform(0.002, 0.02, n)
    out_scale, out_zp = 0.5, 120  # quint8 output
    x_u8 = rng.integers(0, 128, (m, k)).astype(np.uint8)
    w_q = random_int8(rng, (n, k))
    w_q[w_q == -128] = -127  # symmetric weights
    bias = rng.normal(0.0, 1.0, n).astype(np.float32)

    qx = torch._make_per_tensor_quantized_tensor(torch.from_numpy(x_u8), x_scale, x_zp)
    qw = torch._make_per_channel_quantized_tensor(
        torch.from_numpy(w_q), torch.from_numpy(w_scale), torch.zeros(n, dtype=torch.long), 0
    )
    linear = torch.ao.nn.quantized.Linear(k, n)
    linear.set_weight_bias(qw, torch.from_numpy(bias))
    linear.scale, linear.zero_point = out_scale, out_zp
    want = linear(qx).int_repr().numpy().astype(np.int64) - 128  # uint8 codes -> int8 codes

    # int8 codes: x_i8 = x_u8 - 128 with zero point x_zp - 128; same for the output.
    x_i8 = (x_u8.astype(np.int16) - 128).astype(np.int8)
    acc = kernels.matmul_int8(x_i8, w_q.T)  # (M, N)
    acc -= np.int32(x_zp - 128) * w_q.astype(np.int32).sum(axis=1)  # zero-point correction
    acc_scale = np.float32(x_scale) * w_scale.astype(np.float32)  # (N,) float32
    got = kernels.requantize_float(acc, bias, acc_scale, out_scale, out_zp - 128, -128, 127)
    np.testing.assert_array_equal(got, want)
    assert np.mean((want > -128) & (want < 127)) > 0.9  # the rounding is tested, not the clamp


def test_requantize_rejects_bad_input():
    acc = np.zeros((2, 3), dtype=np.int32)
    with pytest.raises(TypeError, match="acc must be an int32"):
        kernels.requantize_fixedpoint(acc.astype(np.int64), None, 2**30, 0, 0, -128, 127)
    with pytest.raises(ValueError, match=r"bias_q must have shape \(3,\)"):
        kernels.requantize_fixedpoint(acc, np.zeros(2, np.int32), 2**30, 0, 0, -128, 127)
    with pytest.raises(ValueError, match="multiplier"):
        kernels.requantize_fixedpoint(acc, None, np.ones(2, np.int32), 0, 0, -128, 127)
    with pytest.raises(ValueError, match="qmin"):
        kernels.requantize_fixedpoint(acc, None, 2**30, 0, 0, -129, 127)
    with pytest.raises(ValueError, match="rounding must be one of"):
        kernels.requantize_fixedpoint(acc, None, 2**30, 0, 0, -128, 127, rounding="even")
    with pytest.raises(ValueError, match="zero_point_out"):
        kernels.requantize_float(acc, None, 0.1, 0.1, 5, 6, 127)
    with pytest.raises(ValueError, match="out_scale"):
        kernels.requantize_float(acc, None, 0.1, 0.0, 0, -128, 127)
    with pytest.raises(ValueError, match="finite"):
        kernels.requantize_float(acc, None, 0.1, float("inf"), 0, -128, 127)
    with pytest.raises(ValueError, match="bias must be finite"):
        kernels.requantize_float(acc, np.array([0.0, np.nan, 1.0]), 0.1, 0.1, 0, -128, 127)


# ---- max pooling -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "kernel_size", "stride"),
    [((2, 3, 8, 8), 2, None), ((1, 2, 7, 5), 3, 2), ((1, 1, 5, 6), (2, 3), (1, 2))],
)
def test_maxpool2d_int8_equals_reference(shape, kernel_size, stride):
    rng = np.random.default_rng(sum(shape))
    x_q = random_int8(rng, shape)
    got = kernels.maxpool2d_int8(x_q, kernel_size, stride)
    np.testing.assert_array_equal(got, kernels.maxpool2d_int8_ref(x_q, kernel_size, stride))
    # A direct loop over the windows.
    kh, kw = (kernel_size, kernel_size) if np.isscalar(kernel_size) else kernel_size
    sh, sw = (kh, kw) if stride is None else (stride, stride) if np.isscalar(stride) else stride
    for oy in range(got.shape[2]):
        for ox in range(got.shape[3]):
            window = x_q[:, :, oy * sh : oy * sh + kh, ox * sw : ox * sw + kw]
            np.testing.assert_array_equal(got[:, :, oy, ox], window.max(axis=(2, 3)))


def test_maxpool2d_int8_rejects_bad_input():
    with pytest.raises(TypeError, match="int8"):
        kernels.maxpool2d_int8(np.zeros((1, 1, 4, 4), np.int32), 2)
    with pytest.raises(ValueError, match="does not fit"):
        kernels.maxpool2d_int8(np.zeros((1, 1, 1, 1), np.int8), 2)


# ---- pure Python mode --------------------------------------------------------------------


def test_kernels_run_with_jit_disabled(run_without_jit):
    run_without_jit(
        """
        import numpy as np
        from minquant import kernels
        from minquant.kernels import gemm
        assert not hasattr(gemm._matmul_int8_kernel, "signatures")  # plain Python
        rng = np.random.default_rng(0)
        a = rng.integers(-128, 128, (5, 7)).astype(np.int8)
        b = rng.integers(-128, 128, (7, 3)).astype(np.int8)
        assert (kernels.matmul_int8(a, b) == kernels.matmul_int8_ref(a, b)).all()
        x = rng.integers(-128, 128, (1, 2, 5, 5)).astype(np.int8)
        cols = kernels.im2col_int8(x, 3, 2, 1, -4)
        assert (cols == kernels.im2col_int8_ref(x, 3, 2, 1, -4)).all()
        assert (kernels.maxpool2d_int8(x, 2) == kernels.maxpool2d_int8_ref(x, 2)).all()
        acc = rng.integers(-2**20, 2**20, (4, 3)).astype(np.int32)
        m = np.array([2**30, 1500000000, 2**31 - 1]); s = np.array([-3, -8, 0])
        args = (acc, np.array([5, -5, 0], np.int32), m, s, 2, -128, 127)
        for r in ("double", "single"):
            y = kernels.requantize_fixedpoint(*args, rounding=r)
            assert (y == kernels.requantize_fixedpoint_ref(*args, rounding=r)).all()
        args = (acc, np.ones(3, np.float32), np.full(3, 1e-3, np.float32), 0.7, 2, -128, 127)
        assert (kernels.requantize_float(*args) == kernels.requantize_float_ref(*args)).all()
        print("ok")
        """
    )
