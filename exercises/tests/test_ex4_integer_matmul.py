"""Exercise 4: integer matmul with int32 accumulation and the zero-point correction terms."""

import numpy as np
import pytest

from minquant import kernels, qnn
from minquant.kernels import gemm

pytestmark = pytest.mark.ex4


def random_int8(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(-128, 127, size=shape, endpoint=True).astype(np.int8)


def test_matmul_int32_worked_example(ex):
    a_q = np.array([[1, -2], [127, -128]], dtype=np.int8)
    b_q = np.array([[3, -128], [4, -128]], dtype=np.int8)
    # [[3 - 8, -128 + 256], [381 - 512, -16256 + 16384]]
    c = ex.matmul_int32(a_q, b_q)
    assert c.dtype == np.int32
    assert c.tolist() == [[-5, 128], [-131, 128]]


@pytest.mark.parametrize(("m", "k", "n"), [(1, 1, 1), (7, 1, 3), (13, 65, 9), (32, 300, 17)])
def test_matmul_int32_matches_minquant_and_float64(ex, m, k, n):
    rng = np.random.default_rng(m * k * n)
    a_q, b_q = random_int8(rng, (m, k)), random_int8(rng, (k, n))
    c = ex.matmul_int32(a_q, b_q)
    np.testing.assert_array_equal(c, kernels.matmul_int8_ref(a_q, b_q))
    # float64 is exact for these sums (|C| < 2^53): an independent oracle
    np.testing.assert_array_equal(c, a_q.astype(np.float64) @ b_q.astype(np.float64))


def test_matmul_int32_extremes_do_not_wrap(ex):
    k = 4096  # 4096 * 128 * 128 = 2^26: needs int32, wraps in int8 or int16
    a_q = np.full((2, k), -128, dtype=np.int8)
    b_q = np.full((k, 3), -128, dtype=np.int8)
    assert ex.matmul_int32(a_q, b_q).tolist() == [[2**26] * 3] * 2


@pytest.mark.parametrize(
    ("a_q", "b_q", "error"),
    [
        (np.zeros((2, 3), np.int16), np.zeros((3, 2), np.int8), TypeError),
        (np.zeros((2, 3), np.int8), np.zeros((3, 2), np.float32), TypeError),
        (np.zeros((2, 3), np.int8), np.zeros((4, 2), np.int8), ValueError),
        (np.zeros(3, np.int8), np.zeros((3, 2), np.int8), ValueError),
        (np.zeros((1, 131_073), np.int8), np.zeros((131_073, 1), np.int8), ValueError),
    ],
)
def test_matmul_int32_rejects_bad_input(ex, a_q, b_q, error):
    with pytest.raises(error):
        ex.matmul_int32(a_q, b_q)


def test_zero_point_matmul_worked_example(ex):
    # AB = 13, z_b sum a = 6, z_a sum b = 8, K z_a z_b = 4: 13 - 6 - 8 + 4 = 3 = 0*1 + 1*3
    a_q, b_q = np.array([[1, 2]], np.int8), np.array([[3], [5]], np.int8)
    assert ex.zero_point_matmul(a_q, 1, b_q, 2).tolist() == [[3]]


@pytest.mark.parametrize("seed", range(5))
def test_zero_point_matmul_equals_the_direct_sum(ex, seed):
    rng = np.random.default_rng(seed)
    m, k, n = rng.integers(1, 40, size=3)
    a_q, b_q = random_int8(rng, (m, k)), random_int8(rng, (k, n))
    za, zb = (int(z) for z in rng.integers(-128, 127, size=2, endpoint=True))
    got = ex.zero_point_matmul(a_q, za, b_q, zb)
    assert got.dtype == np.int64
    direct = (a_q.astype(np.int64) - za) @ (b_q.astype(np.int64) - zb)  # (M, N)
    np.testing.assert_array_equal(got, direct)


def test_zero_point_matmul_uses_the_int8_gemm(ex, monkeypatch):
    calls = []
    matmul = ex.matmul_int32

    def spy(a_q, b_q):
        calls.append((a_q.dtype, b_q.dtype))
        return matmul(a_q, b_q)

    monkeypatch.setattr(ex, "matmul_int32", spy)
    a_q, b_q = np.array([[1, 2]], np.int8), np.array([[3], [5]], np.int8)
    assert ex.zero_point_matmul(a_q, 1, b_q, 2).tolist() == [[3]]
    assert calls == [(np.int8, np.int8)]


def test_quantize_bias_worked_example(ex):
    # b / (s_in * s_w) = [0.5 / 0.001, -0.25 / 0.001, 0.03 / 0.002] = [500, -250, 15]
    bias_q = ex.quantize_bias(np.array([0.5, -0.25, 0.03]), 0.1, np.array([0.01, 0.01, 0.02]))
    assert bias_q.dtype == np.int32
    assert bias_q.tolist() == [500, -250, 15]
    with pytest.raises(ValueError):
        ex.quantize_bias(np.array([1.0]), 1e-6, np.array([1e-6]))  # 10^12 > 2^31


def quantized_linear(seed: int):
    """A quantized Linear layer built by minquant, with its inputs."""
    rng = np.random.default_rng(seed)
    w_q = rng.integers(-127, 127, size=(6, 20), endpoint=True).astype(np.int8)
    w_scale = rng.uniform(0.001, 0.01, 6).astype(np.float32)
    bias = rng.normal(0.0, 0.5, 6).astype(np.float32)
    x_qp = qnn.QParams(scale=0.05, zero_point=int(rng.integers(-20, 20)), qmin=-128, qmax=127)
    y_qp = qnn.QParams(scale=0.1, zero_point=0, qmin=-128, qmax=127)
    layer = qnn.QuantizedLinear(w_q, w_scale, bias, x_qp, y_qp)
    x_q = random_int8(rng, (9, 20))
    return layer, w_q, w_scale, bias, x_qp, x_q


@pytest.mark.parametrize("seed", range(3))
def test_quantize_bias_and_accumulator_match_minquant(ex, seed):
    layer, w_q, w_scale, bias, x_qp, x_q = quantized_linear(seed)
    bias_q = ex.quantize_bias(bias, x_qp.scale, w_scale)
    np.testing.assert_array_equal(bias_q, layer.requant.bias_q)
    acc = ex.linear_accumulator(x_q, x_qp.zero_point, w_q, bias_q)
    assert acc.dtype == np.int32 and acc.shape == (9, 6)
    expected = kernels.matmul_int8_ref(x_q, layer.w_t) + layer.requant.bias_folded
    np.testing.assert_array_equal(acc, expected)
    # the real output: acc * s_x * s_w = dequantized x @ dequantized W^T + bias, up to the
    # rounding of the bias (half a step of the accumulator)
    s = np.float64(x_qp.scale) * w_scale.astype(np.float64)  # (C,)
    x = (x_q.astype(np.float64) - x_qp.zero_point) * x_qp.scale
    w = w_q.astype(np.float64) * w_scale[:, None]
    assert np.all(np.abs(acc * s - (x @ w.T + bias)) <= s / 2 + 1e-6)


def test_linear_accumulator_worked_example(ex):
    # (3 - 1) * 1 + (5 - 1) * 2 + 10 = 20 = x_q w_q^T - z_x sum(w_q) + b_q = 13 - 3 + 10
    acc = ex.linear_accumulator(
        np.array([[3, 5]], np.int8), 1, np.array([[1, 2]], np.int8), np.array([10], np.int32)
    )
    assert acc.tolist() == [[20]]


def test_no_library_shortcut(ex, forbid):
    forbid(gemm.matmul_int8, gemm.matmul_int8_ref, gemm.check_matmul_int8)
    a_q = np.array([[1, -2], [127, -128]], dtype=np.int8)
    b_q = np.array([[3, -128], [4, -128]], dtype=np.int8)
    assert ex.matmul_int32(a_q, b_q).tolist() == [[-5, 128], [-131, 128]]
    # (a - 1) @ (b - 2) = [[0 * 1 - 3 * 2, 0 * -130 - 3 * -130], [126 * 1 - 129 * 2, 390]]
    assert ex.zero_point_matmul(a_q, 1, b_q, 2).tolist() == [[-6, 390], [-132, 390]]
    assert ex.quantize_bias(np.array([0.5]), 0.1, np.array([0.01])).tolist() == [500]
    w_q = np.array([[1, 2]], np.int8)
    acc = ex.linear_accumulator(np.array([[3, 5]], np.int8), 1, w_q, np.array([10], np.int32))
    assert acc.tolist() == [[20]]
