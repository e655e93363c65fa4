"""Exercise 6: a parallel int8 matmul compiled with Numba."""

import inspect

import numba
import numpy as np
import pytest

from minquant import kernels
from minquant.kernels import gemm

pytestmark = [
    pytest.mark.ex6,
    # NOTE: the untouched stub has parallel=True but no prange, which Numba warns about.
    pytest.mark.filterwarnings("ignore::numba.NumbaPerformanceWarning"),
]


def random_int8(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(-128, 127, size=shape, endpoint=True).astype(np.int8)


def test_kernel_worked_example(ex):
    a_q = np.array([[1, -2], [127, -128]], dtype=np.int8)
    b_q = np.array([[3, -128], [4, -128]], dtype=np.int8)
    # [[3 - 8, -128 + 256], [381 - 512, -16256 + 16384]]
    c = ex.matmul_int8_kernel(a_q, b_q)
    assert c.dtype == np.int32
    assert c.tolist() == [[-5, 128], [-131, 128]]


@pytest.mark.parametrize(("m", "k", "n"), [(1, 1, 1), (5, 1, 7), (33, 65, 17), (64, 256, 48)])
def test_kernel_matches_minquant(ex, m, k, n):
    rng = np.random.default_rng(m + k + n)
    a_q, b_q = random_int8(rng, (m, k)), random_int8(rng, (k, n))
    c = ex.matmul_int8_kernel(a_q, b_q)
    assert c.dtype == np.int32 and c.shape == (m, n)
    np.testing.assert_array_equal(c, kernels.matmul_int8_ref(a_q, b_q))


def test_kernel_accumulates_in_int32(ex):
    k = 4096  # 4096 * (-128) * (-128) = 2^26: wraps in int8 or int16
    a_q = np.full((3, k), -128, dtype=np.int8)
    b_q = np.full((k, 2), -128, dtype=np.int8)
    assert ex.matmul_int8_kernel(a_q, b_q).tolist() == [[2**26] * 2] * 3


def test_kernel_is_a_parallel_cached_numba_function(ex):
    kernel = ex.matmul_int8_kernel
    if numba.config.DISABLE_JIT:
        pytest.skip("NUMBA_DISABLE_JIT=1: the kernel runs as plain Python")
    assert isinstance(kernel, numba.core.registry.CPUDispatcher), "decorate with numba.njit"
    assert kernel.targetoptions.get("parallel") is True, "use numba.njit(parallel=True)"
    assert type(kernel._cache).__name__ != "NullCache", "use numba.njit(cache=True)"
    assert "prange" in inspect.getsource(kernel.py_func), "parallelise a loop with prange"
    a_q = np.ones((4, 3), dtype=np.int8)
    np.testing.assert_array_equal(kernel(a_q, a_q.T.copy()), np.full((4, 4), 3))


@pytest.mark.parametrize("seed", range(3))
def test_matmul_int8_matches_minquant(ex, seed):
    rng = np.random.default_rng(seed)
    m, k, n = (int(v) for v in rng.integers(1, 50, size=3))
    a_q, b_q = random_int8(rng, (m, k)), random_int8(rng, (k, n))
    c = ex.matmul_int8(a_q, b_q)
    np.testing.assert_array_equal(c, kernels.matmul_int8_ref(a_q, b_q))
    np.testing.assert_array_equal(c, kernels.matmul_int8(a_q, b_q))


def test_matmul_int8_accepts_non_contiguous_views(ex):
    rng = np.random.default_rng(7)
    a_q, bt_q = random_int8(rng, (9, 30)), random_int8(rng, (11, 30))
    b_view = bt_q.T  # (30, 11), Fortran order: the kernel needs C order
    expected = kernels.matmul_int8_ref(a_q, np.ascontiguousarray(b_view))
    np.testing.assert_array_equal(ex.matmul_int8(a_q, b_view), expected)
    np.testing.assert_array_equal(ex.matmul_int8(a_q[::2], b_view), expected[::2])


@pytest.mark.parametrize(
    ("a_q", "b_q", "error"),
    [
        (np.zeros((2, 3), np.int16), np.zeros((3, 2), np.int8), TypeError),
        (np.zeros((2, 3), np.int8), [[1, 2], [3, 4], [5, 6]], TypeError),
        (np.zeros((2, 3), np.int8), np.zeros((4, 2), np.int8), ValueError),
        (np.zeros((2, 3, 1), np.int8), np.zeros((3, 2), np.int8), ValueError),
        (np.zeros((1, 131_073), np.int8), np.zeros((131_073, 1), np.int8), ValueError),
    ],
)
def test_matmul_int8_rejects_bad_input(ex, a_q, b_q, error):
    with pytest.raises(error):
        ex.matmul_int8(a_q, b_q)


def test_no_library_shortcut(ex, forbid):
    forbid(gemm.matmul_int8, gemm.matmul_int8_ref, gemm.check_matmul_int8)
    a_q = np.array([[1, -2], [127, -128]], dtype=np.int8)
    b_q = np.array([[3, -128], [4, -128]], dtype=np.int8)
    assert ex.matmul_int8_kernel(a_q, b_q).tolist() == [[-5, 128], [-131, 128]]
    assert ex.matmul_int8(a_q, b_q).tolist() == [[-5, 128], [-131, 128]]
