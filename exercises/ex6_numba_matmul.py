r"""Exercise 6: a parallel int8 matrix multiplication with Numba.

Follows notebook 04 (integer arithmetic). NumPy's integer ``@`` does not use BLAS and is
hundreds of times slower than float32 BLAS. Numba compiles a plain triple loop to machine
code, and ``numba.prange`` spreads its outer loop over the CPU cores:

$$C_{ij} = \sum_{k=1}^{K} a_{ik}\, b_{kj} \quad \text{(int8 operands, int32 accumulator)}.$$

Loop order matters: with ``i`` outermost (parallel), then ``k``, then ``j``, the innermost
loop walks a row of ``b_q`` and a row of ``C`` contiguously, which LLVM can vectorise.
Write the kernel with Numba and NumPy only, without calling ``minquant.kernels``.
Check your work with ``pytest exercises -m ex6`` (the first run compiles the kernel; with
``cache=True`` later runs reuse the machine code).

References: S. K. Lam, A. Pitrou, S. Seibert, "Numba: a LLVM-based Python JIT compiler",
LLVM-HPC 2015; B. Jacob et al., CVPR 2018 (arXiv:1712.05877).
"""

import numba
import numpy as np

#: The largest K for which int32 accumulation of int8 products cannot overflow.
MAX_K = 2**31 // (128 * 128)


@numba.njit(parallel=True, cache=True)
def matmul_int8_kernel(a_q: np.ndarray, b_q: np.ndarray) -> np.ndarray:
    r"""Exercise 6.1: $C = A B$ for C-contiguous int8 ``a_q`` (M, K), ``b_q`` (K, N), in int32.

    $$C_{ij} = \sum_k a_{ik}\, b_{kj}$$

    Allocate ``C = np.zeros((M, N), dtype=np.int32)``; loop ``for i in numba.prange(M)``
    (one row of ``C`` per task, so no two threads write the same element), then over ``k``,
    then over ``j``, adding ``np.int32(a_q[i, k]) * np.int32(b_q[k, j])`` to ``C[i, j]``
    (convert before multiplying: int8 products wrap around). Keep the decorator as given:
    ``parallel=True`` makes ``prange`` parallel, ``cache=True`` saves the compiled code.

    Worked example: ``[[1, -2], [127, -128]] @ [[3, -128], [4, -128]]`` is
    ``[[-5, 128], [-131, 128]]``.
    """
    raise NotImplementedError("Exercise 6.1: matmul_int8_kernel")


def matmul_int8(a_q: np.ndarray, b_q: np.ndarray) -> np.ndarray:
    r"""Exercise 6.2: the checked entry point: $C = A B$ in int32 with :func:`matmul_int8_kernel`.

    $$C = \texttt{matmul\_int8\_kernel}\big(\mathrm{contiguous}(A),\
    \mathrm{contiguous}(B)\big)$$

    Raise ``TypeError`` unless both arguments are int8 ndarrays, ``ValueError`` unless both
    are 2-D with matching inner dimensions, and ``ValueError`` when $K >$ ``MAX_K``. Pass
    C-contiguous arrays to the kernel (``np.ascontiguousarray``: a transposed view is not).
    Return int32 (M, N).

    Worked example: ``matmul_int8(a_q, b_q.T.T)`` equals ``matmul_int8(a_q, b_q)``, and an
    int16 operand is a ``TypeError``.
    """
    raise NotImplementedError("Exercise 6.2: matmul_int8")
