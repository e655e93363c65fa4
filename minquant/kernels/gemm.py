r"""The int8 x int8 -> int32 matrix multiply behind every quantized Linear and Conv2d.

$$C_{ij} = \sum_{k=1}^{K} A_{ik} B_{kj}, \qquad A \in \mathbb{Z}_8^{M \times K},\
B \in \mathbb{Z}_8^{K \times N},\ C \in \mathbb{Z}_{32}^{M \times N}.$$

Every product is at most $128 \cdot 128 = 2^{14}$ in magnitude, so int32 accumulation is exact
for $K \le (2^{31} - 1) / 2^{14}$, i.e. $K \le 131071$; a larger K is refused.

NumPy's integer matmul does not use BLAS (it is a plain triple loop), so
:func:`matmul_int8_ref` is exact but slow. :func:`matmul_int8` is a Numba kernel shaped like a
textbook BLAS micro-kernel (see ``docs/performance.md`` for measurements):

* B is used transposed, ``bt`` (N, K), so that both operands are read along contiguous rows;
* a 4 x 2 **register tile**: eight int32 accumulators (eight vector registers once vectorised)
  live in registers while the k loop runs, so each loaded value of A is used twice and each
  value of B four times;
* LLVM vectorises the k loop (8 lanes of int32 with AVX2: ``vpmovsxbd`` loads and widens int8,
  ``vpmulld`` multiplies, ``vpaddd`` accumulates); the casts to int32 in the loop body keep
  Numba from widening the arithmetic to int64, which would halve the vector width;
* **cache blocking**: B^T is processed in panels of columns small enough to stay in the L2
  cache while a block of ``MC`` rows of A streams past them;
* ``prange`` spreads the blocks of rows of A over the cores (one parallel region per call).

References:

* K. Goto and R. van de Geijn, "Anatomy of High-Performance Matrix Multiplication",
  ACM TOMS 34(3), 2008 (register tiles, packing, panels sized for the caches).
* B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", CVPR 2018 (arXiv:1712.05877) and the gemmlowp library.
"""

import numpy as np
from numba import njit, prange

#: Largest K for which int32 accumulation of int8 products cannot overflow.
# NOTE: 2**31 / 128**2 = 131072 is one too many: 131072 products (-128)(-128) sum to 2**31,
# which wraps to -2**31. With narrow-range ([-127, 127]) weights 131072 would be safe.
MAX_K = (2**31 - 1) // (128 * 128)

#: Register tile: rows of A and columns of B computed together by the micro-kernel.
MR, NR = 4, 2

#: Rows of A per parallel work item (Goto's m_c): 32 x K int8 stays in L2 next to the panel.
MC = 32

#: Bytes of B^T kept hot per panel (half of a 512 KiB L2, leaving room for A and C).
PANEL_BYTES = 256 * 1024


def check_int8(name: str, x: np.ndarray, ndim: int) -> None:
    """Raise TypeError / ValueError unless ``x`` is an int8 ndarray with ``ndim`` dimensions.

    The one int8 check of the kernels and the integer layers; ``name`` is the argument.

    >>> check_int8("x_q", np.zeros((2, 3), np.int16), ndim=2)
    Traceback (most recent call last):
    TypeError: x_q must be an int8 ndarray, got int16
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.int8:
        dtype = getattr(x, "dtype", type(x).__name__)
        raise TypeError(f"{name} must be an int8 ndarray, got {dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D ({ndim} dimensions), got shape {x.shape}")


def check_k(k: int, message: str = "") -> None:
    """Raise ValueError if ``k`` inputs per output could overflow the int32 accumulator.

    The one K bound (:data:`MAX_K`) of the GEMM, the fused convolution and the layers;
    ``message`` replaces the default error text (a caller naming its own arguments).

    >>> check_k(MAX_K + 1)
    Traceback (most recent call last):
    ValueError: K = 131072 > 131071: int32 accumulation of int8 products could overflow
    """
    if k > MAX_K:
        default = f"K = {k} > {MAX_K}: int32 accumulation of int8 products could overflow"
        raise ValueError(message or default)


def check_matmul_int8(a_q: np.ndarray, b_q: np.ndarray) -> None:
    """Raise TypeError / ValueError unless ``a_q`` (M, K) @ ``b_q`` (K, N) is a valid int8 GEMM."""
    check_int8("a_q", a_q, ndim=2)
    check_int8("b_q", b_q, ndim=2)
    if a_q.shape[1] != b_q.shape[0]:
        raise ValueError(
            f"inner dimensions differ: a_q {a_q.shape} (M, K) and b_q {b_q.shape} (K, N)"
        )
    check_k(a_q.shape[1])


def matmul_int8_ref(a_q: np.ndarray, b_q: np.ndarray) -> np.ndarray:
    r"""Reference int8 GEMM in plain NumPy: $C = A B$ accumulated in int32.

    >>> a_q = np.array([[1, -2], [127, -128]], dtype=np.int8)
    >>> b_q = np.array([[3, -128], [4, -128]], dtype=np.int8)
    >>> matmul_int8_ref(a_q, b_q)
    array([[  -5,  128],
           [-131,  128]], dtype=int32)
    """
    check_matmul_int8(a_q, b_q)
    # NOTE: the products need 15 bits, so int32 operands cannot overflow for K <= MAX_K.
    return a_q.astype(np.int32) @ b_q.astype(np.int32)  # (M, N)


def _matmul_int8_py(a: np.ndarray, bt: np.ndarray, c: np.ndarray, panel: int) -> None:
    """C = A @ BT.T for A (M, K), BT (N, K) int8 with M % MR == 0 and N % NR == 0 -> C (M, N)."""
    m, k_dim = a.shape
    n = bt.shape[0]
    for i_block in prange((m + MC - 1) // MC):  # blocks of MC rows of A, shared among cores
        i_start = i_block * MC
        i_end = min(i_start + MC, m)
        for j_panel in range(0, n, panel):  # a panel of B^T that stays in L2 ...
            j_end = min(j_panel + panel, n)
            for i in range(i_start, i_end, MR):  # ... while the MC rows of A pass by it
                for j in range(j_panel, j_end, NR):
                    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = np.int32(0)
                    for k in range(k_dim):
                        a0 = np.int32(a[i, k])
                        a1 = np.int32(a[i + 1, k])
                        a2 = np.int32(a[i + 2, k])
                        a3 = np.int32(a[i + 3, k])
                        b0 = np.int32(bt[j, k])
                        b1 = np.int32(bt[j + 1, k])
                        c00 = np.int32(c00 + a0 * b0)
                        c01 = np.int32(c01 + a0 * b1)
                        c10 = np.int32(c10 + a1 * b0)
                        c11 = np.int32(c11 + a1 * b1)
                        c20 = np.int32(c20 + a2 * b0)
                        c21 = np.int32(c21 + a2 * b1)
                        c30 = np.int32(c30 + a3 * b0)
                        c31 = np.int32(c31 + a3 * b1)
                    c[i, j], c[i, j + 1] = c00, c01
                    c[i + 1, j], c[i + 1, j + 1] = c10, c11
                    c[i + 2, j], c[i + 2, j + 1] = c20, c21
                    c[i + 3, j], c[i + 3, j + 1] = c30, c31


# NOTE: boundscheck stays off (Numba's default); the wrapper guarantees the tile fits.
_matmul_int8_kernel = njit(cache=True, parallel=True)(_matmul_int8_py)


def _pad_rows(x: np.ndarray, multiple: int) -> np.ndarray:
    """``x`` with zero rows appended up to a multiple of ``multiple`` (no copy if none needed)."""
    extra = -x.shape[0] % multiple
    if extra == 0:
        return np.ascontiguousarray(x)
    return np.concatenate([x, np.zeros((extra, x.shape[1]), dtype=x.dtype)])


def matmul_int8(a_q: np.ndarray, b_q: np.ndarray) -> np.ndarray:
    r"""int8 GEMM with int32 accumulation, $C = A B$: Numba, parallel, exact.

    ``a_q`` is int8 (M, K), ``b_q`` int8 (K, N); returns int32 (M, N), equal to
    :func:`matmul_int8_ref`. B is read as B^T (N, K): passing ``w_q.T`` for a weight ``w_q``
    stored (N, K) (PyTorch's Linear layout) costs no copy.

    >>> a_q = np.array([[1, -2], [127, -128]], dtype=np.int8)
    >>> b_q = np.array([[3, -128], [4, -128]], dtype=np.int8)
    >>> matmul_int8(a_q, b_q)
    array([[  -5,  128],
           [-131,  128]], dtype=int32)
    """
    check_matmul_int8(a_q, b_q)
    m, k_dim = a_q.shape
    n = b_q.shape[1]
    if m == 0 or n == 0 or k_dim == 0:
        return np.zeros((m, n), dtype=np.int32)
    a = _pad_rows(a_q, MR)  # (M', K), M' a multiple of MR
    bt = _pad_rows(b_q.T, NR)  # (N', K), N' a multiple of NR
    panel = max(NR, PANEL_BYTES // k_dim // NR * NR)
    c = np.empty((a.shape[0], bt.shape[0]), dtype=np.int32)  # (M', N')
    _matmul_int8_kernel(a, bt, c, panel)
    return c[:m, :n]
