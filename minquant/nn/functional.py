r"""Stateless pieces of the float engine: im2col/col2im, the loss, default initialisation.

**im2col** turns a convolution into one matrix multiplication. Every output pixel
$(n, h, w)$ sees a patch of $C \cdot k_h \cdot k_w$ input values; stacking the patches
as the columns of a matrix ``cols`` of shape $(C k_h k_w,\ N H_o W_o)$ and then

$$y = W\, \mathrm{cols}, \qquad W \in \mathbb{R}^{C_{out} \times C k_h k_w},$$

a single BLAS call. The patches are read through a strided *view* of the input
(``sliding_window_view``), so the only copy is the one that lays ``cols`` out for BLAS.
**col2im** is the adjoint: it adds every patch gradient back to the pixels it came from.

References:

* K. Chellapilla, S. Puri, P. Simard, "High Performance Convolutional Neural Networks for
  Document Processing", 2006 (im2col).
* K. He et al., "Delving Deep into Rectifiers", ICCV 2015 (Kaiming initialisation).
"""

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def conv_output_size(size: int, kernel_size: int, stride: int, padding: int) -> int:
    r"""Output length of a convolution or pooling along one axis (PyTorch, floor mode).

    $$L_{out} = \left\lfloor \frac{L + 2p - k}{s} \right\rfloor + 1$$

    >>> conv_output_size(28, 3, stride=1, padding=1), conv_output_size(28, 2, 2, 0)
    (28, 14)
    """
    return (size + 2 * padding - kernel_size) // stride + 1


def im2col(x: np.ndarray, kernel_size: int, stride: int, padding: int) -> np.ndarray:
    r"""Patches of ``x`` (N, C, H, W) as columns: shape (C, kh, kw, N, H_out, W_out).

    Reshape the result to $(C k_h k_w,\ N H_o W_o)$ for the matmul: column $(n, h, w)$
    holds the patch that output pixel $(n, h, w)$ sees.

    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> cols = im2col(x, kernel_size=2, stride=2, padding=0)
    >>> cols.shape, cols[0, :, :, 0, 0, 1].tolist()
    ((1, 2, 2, 1, 2, 2), [[2.0, 3.0], [6.0, 7.0]])
    """
    if padding > 0:
        pad = ((0, 0), (0, 0), (padding, padding), (padding, padding))
        x = np.pad(x, pad)  # (N, C, H + 2p, W + 2p)
    k, s = kernel_size, stride
    windows = sliding_window_view(x, (k, k), axis=(2, 3))  # (N, C, H', W', k, k), a view
    windows = windows[:, :, ::s, ::s]  # (N, C, H_out, W_out, k, k), still a view
    # NOTE: this transpose + copy is the one real copy of the convolution.
    return np.ascontiguousarray(windows.transpose(1, 4, 5, 0, 2, 3))  # (C, k, k, N, Ho, Wo)


def col2im(
    dcols: np.ndarray, input_shape: tuple[int, ...], kernel_size: int, stride: int, padding: int
) -> np.ndarray:
    """Adjoint of :func:`im2col`: add the patch gradients (C, kh, kw, N, Ho, Wo) back to pixels.

    Overlapping patches (stride < kernel size) add up, as they must for a gradient.

    >>> x = np.ones((1, 1, 3, 3))
    >>> col2im(im2col(x, 2, 1, 0), x.shape, 2, 1, 0)[0, 0].tolist()
    [[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]
    """
    n, c, h, w = input_shape
    k, s, p = kernel_size, stride, padding
    h_out, w_out = dcols.shape[4:]
    if dcols.shape[:4] != (c, k, k, n):
        raise ValueError(
            f"dcols must have shape (C, k, k, N, Ho, Wo) = ({c}, {k}, {k}, {n}, ...) for "
            f"input_shape {tuple(input_shape)} and kernel_size {k}, got {dcols.shape}"
        )
    dx = np.zeros((c, n, h + 2 * p, w + 2 * p), dtype=dcols.dtype)  # (C, N, H', W'), padded
    # NOTE: a loop over the k*k kernel offsets (9 for a 3x3 kernel), never over the batch.
    for i in range(k):
        for j in range(k):
            dx[:, :, i : i + s * h_out : s, j : j + s * w_out : s] += dcols[:, i, j]
    return dx[:, :, p : p + h, p : p + w].transpose(1, 0, 2, 3)  # (N, C, H, W), a view


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    r"""Mean softmax cross-entropy over the batch and its gradient with respect to the logits.

    $$L = \frac{1}{N} \sum_n \Big(\log \sum_k e^{z_{nk}} - z_{n y_n}\Big), \qquad
    \frac{\partial L}{\partial z_{nk}} = \frac{\mathrm{softmax}(z_n)_k - [k = y_n]}{N}.$$

    The log-sum-exp is computed after subtracting each row's maximum, so logits of any
    magnitude are safe (no overflow in ``exp``).

    >>> logits = np.array([[2.0, 0.0, 0.0], [0.0, 1e4, 0.0]])
    >>> loss, dlogits = cross_entropy(logits, np.array([0, 1]))
    >>> round(loss, 6), dlogits.shape
    (0.119772, (2, 3))
    """
    logits = np.asarray(logits)
    y = np.asarray(y)
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy: logits must have shape (N, K), got {logits.shape}")
    if not np.issubdtype(logits.dtype, np.floating):
        raise TypeError(f"cross_entropy: logits must be floating point, got {logits.dtype}")
    n, k = logits.shape
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"cross_entropy: y must be integer labels of shape ({n},), got {y.dtype} {y.shape}"
        )
    if n == 0:
        raise ValueError("cross_entropy: the batch is empty")
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"cross_entropy: labels must be in [0, {k - 1}], got {y.min()}..{y.max()}")
    rows = np.arange(n)
    # NOTE: subtracting the row maximum changes nothing mathematically and keeps exp <= 1.
    shifted = logits - logits.max(axis=1, keepdims=True)  # (N, K), every row's max is 0
    exp = np.exp(shifted)  # (N, K)
    sum_exp = exp.sum(axis=1)  # (N,), in [1, K]
    loss = float(np.mean(np.log(sum_exp) - shifted[rows, y]))
    dlogits = exp / sum_exp[:, None]  # (N, K), the softmax
    dlogits[rows, y] -= 1
    dlogits /= n
    return loss, dlogits


def kaiming_uniform(shape: tuple[int, ...], fan_in: int, rng: np.random.Generator) -> np.ndarray:
    r"""PyTorch's default weight init for Linear and Conv2d: $U(-b, b)$, $b = 1/\sqrt{fan_{in}}$.

    (``kaiming_uniform_(a=sqrt(5))``: gain $\sqrt{2 / (1 + 5)}$, bound
    $\sqrt{3}\cdot\mathrm{gain}/\sqrt{fan_{in}} = 1/\sqrt{fan_{in}}$.) PyTorch uses the same
    bound for the bias.

    >>> w = kaiming_uniform((64, 100), fan_in=100, rng=np.random.default_rng(0))
    >>> w.dtype, bool(np.abs(w).max() <= 0.1)
    (dtype('float32'), True)
    """
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)
