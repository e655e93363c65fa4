r"""Exercise 4: integer matrix multiplication with the zero-point correction terms.

Follows notebook 04 (integer arithmetic). With $a = s_a (a_q - z_a)$ and
$b = s_b (b_q - z_b)$, a real matrix product becomes one integer product plus corrections
that depend on one operand only (Jacob et al. 2018, eq. 7):

$$\sum_k (a_{ik} - z_a)(b_{kj} - z_b) = \sum_k a_{ik} b_{kj} - z_b \sum_k a_{ik}
- z_a \sum_k b_{kj} + K z_a z_b.$$

The first sum is an int8 x int8 GEMM accumulated in int32; the column sums of the weights
are computed once, when the model is built. Write every function with NumPy only, without
calling ``minquant.kernels`` or ``minquant.qnn``. Check your work with
``pytest exercises -m ex4``.

References: B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", CVPR 2018 (arXiv:1712.05877), sections 2.3-2.4.
"""

import numpy as np

#: The largest K for which int32 accumulation of int8 products cannot overflow.
MAX_K = 2**31 // (128 * 128)


def matmul_int32(a_q: np.ndarray, b_q: np.ndarray) -> np.ndarray:
    r"""Exercise 4.1: $C = A B$ for int8 ``a_q`` (M, K) and ``b_q`` (K, N), exact, in int32.

    $$C_{ij} = \sum_{k=1}^{K} a_{ik}\, b_{kj}, \qquad |C_{ij}| \le K \cdot 128^2 < 2^{31}
    \iff K \le 131072 = $$ ``MAX_K``.

    Convert both operands to int32 *before* multiplying: in int8, $100 \cdot 100$ wraps
    around. Raise ``TypeError`` unless both are int8 ndarrays, ``ValueError`` unless both are
    2-D with matching inner dimensions, and ``ValueError`` when $K >$ ``MAX_K`` (the
    accumulator could overflow). Return int32 (M, N).

    Worked example: ``[[1, -2], [127, -128]] @ [[3, -128], [4, -128]]`` is
    ``[[1*3 - 2*4, 1*(-128) - 2*(-128)], [127*3 - 128*4, 127*(-128) + 128*128]]``
    $=$ ``[[-5, 128], [-131, 128]]``.
    """
    for name, x in (("a_q", a_q), ("b_q", b_q)):
        if not isinstance(x, np.ndarray) or x.dtype != np.int8:
            raise TypeError(f"{name} must be an int8 ndarray, got {getattr(x, 'dtype', x)}")
        if x.ndim != 2:
            raise ValueError(f"{name} must be 2-D, got shape {x.shape}")
    if a_q.shape[1] != b_q.shape[0]:
        raise ValueError(f"inner dimensions differ: a_q {a_q.shape}, b_q {b_q.shape}")
    if a_q.shape[1] > MAX_K:
        raise ValueError(f"K = {a_q.shape[1]} > {MAX_K}: the int32 accumulator could overflow")
    return a_q.astype(np.int32) @ b_q.astype(np.int32)  # (M, N)


def zero_point_matmul(
    a_q: np.ndarray, a_zero_point: int, b_q: np.ndarray, b_zero_point: int
) -> np.ndarray:
    r"""Exercise 4.2: $\sum_k (a_{ik} - z_a)(b_{kj} - z_b)$ from one int8 GEMM and corrections.

    $$\underbrace{A B}_{\texttt{matmul\_int32}} \;-\; z_b\, \underbrace{A \mathbf{1}}_{(M, 1)}
    \;-\; z_a\, \underbrace{\mathbf{1}^\top B}_{(1, N)} \;+\; K z_a z_b$$

    Use :func:`matmul_int32` for $AB$ (do not subtract the zero points from the operands:
    $a - z_a$ no longer fits in int8, and the point is that the GEMM stays int8). The
    corrections and the sum can exceed int32: compute them in int64 and return int64 (M, N).

    Worked example: ``a_q = [[1, 2]]``, $z_a = 1$, ``b_q = [[3], [5]]``, $z_b = 2$:
    $AB = 13$, $z_b \sum a = 6$, $z_a \sum b = 8$, $K z_a z_b = 4$, so $13 - 6 - 8 + 4 = 3$
    $= (1 - 1)(3 - 2) + (2 - 1)(5 - 2)$.
    """
    k = a_q.shape[1]
    acc = matmul_int32(a_q, b_q).astype(np.int64)  # (M, N)
    row_sums = a_q.sum(axis=1, dtype=np.int64)[:, None]  # (M, 1)
    col_sums = b_q.sum(axis=0, dtype=np.int64)[None, :]  # (1, N)
    za, zb = np.int64(a_zero_point), np.int64(b_zero_point)
    return acc - zb * row_sums - za * col_sums + k * za * zb  # (M, N)


def quantize_bias(bias: np.ndarray, input_scale: float, weight_scale: np.ndarray) -> np.ndarray:
    r"""Exercise 4.3: the int32 bias of a quantized layer, at the scale of its accumulator.

    $$b_{q,c} = \mathrm{round}\Big(\frac{b_c}{s_{in}\, s_{w,c}}\Big)$$

    so that it can be added to the int32 accumulator $\sum_k x_q w_q$, whose scale is
    $s_{in} s_{w,c}$. Compute $s_{in} s_{w,c}$ and the quotient in float64 and round half to
    even (``np.rint``). ``weight_scale`` is (C,) (one scale per output channel) or a
    scalar. Raise ``ValueError`` if a value does not fit in int32. Return int32 (C,).

    Worked example: $b = [0.5, -0.25, 0.03]$, $s_{in} = 0.1$, $s_w = [0.01, 0.01, 0.02]$:
    $b / (s_{in} s_w) = [500, -250, 15]$.
    """
    acc_scale = np.float64(input_scale) * np.asarray(weight_scale, dtype=np.float64)  # (C,)
    bias_q = np.rint(np.asarray(bias, dtype=np.float64) / acc_scale)  # (C,)
    if np.any(np.abs(bias_q) > 2**31 - 1):
        raise ValueError(f"bias / (s_in * s_w) does not fit in int32: {bias_q.max()}")
    return bias_q.astype(np.int32)


def linear_accumulator(
    x_q: np.ndarray, x_zero_point: int, w_q: np.ndarray, bias_q: np.ndarray
) -> np.ndarray:
    r"""Exercise 4.4: the int32 accumulator of a quantized Linear layer before requantization.

    $$\mathrm{acc}_{nc} = \sum_k (x_{q,nk} - z_x)\, w_{q,ck} + b_{q,c}
    = \underbrace{(X_q W_q^\top)_{nc}}_{\text{int8 GEMM}}
    - \underbrace{z_x \textstyle\sum_k w_{q,ck} - b_{q,c}}_{\text{precomputed, } (C,)}$$

    ``x_q`` int8 (N, K) with zero point $z_x$; ``w_q`` int8 (C, K), symmetric (its zero point
    is 0, as TFLite weights); ``bias_q`` int32 (C,). Use :func:`matmul_int32` for the GEMM
    (with ``w_q.T``). Return int32 (N, C); the real output is
    $\mathrm{acc}_{nc}\, s_x s_{w,c}$.

    Worked example: ``x_q = [[3, 5]]``, $z_x = 1$, ``w_q = [[1, 2]]``, ``bias_q = [10]``:
    $13 - 1 \cdot 3 + 10 = 20 = (3 - 1) \cdot 1 + (5 - 1) \cdot 2 + 10$.
    """
    col_sums = w_q.sum(axis=1, dtype=np.int64)  # (C,)
    folded = bias_q.astype(np.int64) - np.int64(x_zero_point) * col_sums  # (C,)
    acc = matmul_int32(x_q, w_q.T).astype(np.int64) + folded  # (N, C)
    return acc.astype(np.int32)
