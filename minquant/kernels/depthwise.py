r"""Depthwise int8 convolution: one k x k filter per channel, int32 accumulators.

A depthwise convolution (``groups`` = channels, MobileNet) never mixes channels:

$$acc[n, i, j, c] = \sum_{dy, dx} x_q[n, c, i s + dy, j s + dx]\; w_q[c, 0, dy, dx],$$

with the input padded by its zero point $z_x$ (the code of 0.0, so the padding is an exact
zero after the zero-point correction $- z_x \sum w_q[c]$ that the requantizer adds). There is
no GEMM to hand this to: each output needs only $k^2$ products (K = 9 for 3x3), too short for
an im2col matrix to pay off, so a direct loop computes it. The accumulators come out
channels-last, (N, Ho, Wo, C), so that the requantizers of :mod:`minquant.qnn.requant` (which
take (M, channels)) apply unchanged; the layer transposes the int8 result back to NCHW.

As in :mod:`minquant.kernels`, the kernel is plain Python (``_name_py``) compiled with
``njit(cache=True)``, next to a NumPy reference (``_ref``) that must give the same integers.

References:

* A. Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
  Applications", 2017 (arXiv:1704.04861): depthwise-separable convolutions.
* TensorFlow Lite ``reference_integer_ops::DepthwiseConvPerChannel``; fbgemm's depthwise
  kernels (``FbgemmI8DepthwiseAvx2``), used by PyTorch's x86 engine for ``groups`` = C.
"""

import numpy as np
from numba import njit, prange

from minquant.kernels.gemm import check_int8
from minquant.nn.functional import conv_output_size

__all__ = ["depthwise_conv2d_int8", "depthwise_conv2d_int8_ref"]


def _check_depthwise(x_q: np.ndarray, w_q: np.ndarray, stride: int, padding: int) -> None:
    check_int8("depthwise_conv2d_int8: x_q", x_q, ndim=4)
    check_int8("depthwise_conv2d_int8: w_q", w_q, ndim=4)
    c, k = x_q.shape[1], w_q.shape[2]
    if w_q.shape != (c, 1, k, k):
        raise ValueError(
            f"depthwise_conv2d_int8: w_q must be (C, 1, k, k) = ({c}, 1, k, k) for an input "
            f"with C = {c} channels, got {w_q.shape}"
        )
    if stride < 1 or padding < 0:
        raise ValueError(f"stride must be >= 1 and padding >= 0, got {stride}, {padding}")
    for size in x_q.shape[2:]:
        if size + 2 * padding < k:
            raise ValueError(f"kernel {k} does not fit the padded input {x_q.shape[2:]}")


def depthwise_conv2d_int8_ref(
    x_q: np.ndarray, w_q: np.ndarray, stride: int = 1, padding: int = 0, pad_value: int = 0
) -> np.ndarray:
    """NumPy reference: int8 (N, C, H, W) and (C, 1, k, k) -> int32 (N, Ho, Wo, C).

    >>> x_q = np.arange(9, dtype=np.int8).reshape(1, 1, 3, 3)
    >>> depthwise_conv2d_int8_ref(x_q, np.ones((1, 1, 2, 2), np.int8))[0, :, :, 0]
    array([[ 8, 12],
           [20, 24]], dtype=int32)
    """
    _check_depthwise(x_q, w_q, stride, padding)
    n, c, h, w = x_q.shape
    k = w_q.shape[2]
    h_out, w_out = conv_output_size(h, k, stride, padding), conv_output_size(w, k, stride, padding)
    pad = ((0, 0), (0, 0), (padding, padding), (padding, padding))
    xp = np.pad(x_q.astype(np.int32), pad, constant_values=pad_value)  # (N, C, Hp, Wp)
    acc = np.zeros((n, c, h_out, w_out), dtype=np.int32)  # (N, C, Ho, Wo)
    for dy in range(k):
        for dx in range(k):
            rows = slice(dy, dy + stride * (h_out - 1) + 1, stride)
            cols = slice(dx, dx + stride * (w_out - 1) + 1, stride)
            tap = w_q[:, 0, dy, dx].astype(np.int32)[None, :, None, None]  # (1, C, 1, 1)
            acc += xp[:, :, rows, cols] * tap  # (N, C, Ho, Wo)
    return np.ascontiguousarray(acc.transpose(0, 2, 3, 1))  # (N, Ho, Wo, C)


def _depthwise_conv2d_int8_py(xp, w, stride, out):
    """out (N, Ho, Wo, C) int32 from the padded input ``xp`` (N, C, Hp, Wp) and ``w`` (C, k, k)."""
    n, h_out, w_out, c = out.shape
    k = w.shape[1]
    for b in prange(n):
        for ch in range(c):
            for i in range(h_out):
                for j in range(w_out):
                    acc = np.int32(0)
                    for dy in range(k):
                        for dx in range(k):
                            xv = np.int32(xp[b, ch, i * stride + dy, j * stride + dx])
                            # NOTE: |x w| <= 128 * 127 and k * k terms: int32 cannot overflow
                            # for any kernel a real model uses (bounded when a layer is built).
                            acc = np.int32(acc + xv * np.int32(w[ch, dy, dx]))
                    out[b, i, j, ch] = acc


_depthwise_conv2d_int8_kernel = njit(cache=True, parallel=True)(_depthwise_conv2d_int8_py)


def depthwise_conv2d_int8(
    x_q: np.ndarray, w_q: np.ndarray, stride: int = 1, padding: int = 0, pad_value: int = 0
) -> np.ndarray:
    """Numba kernel: int8 (N, C, H, W) and (C, 1, k, k) -> int32 (N, Ho, Wo, C), exact.

    Equal to :func:`depthwise_conv2d_int8_ref` bit for bit; ``pad_value`` is the code the
    padding holds (the input zero point).

    >>> x_q = np.arange(9, dtype=np.int8).reshape(1, 1, 3, 3)
    >>> depthwise_conv2d_int8(x_q, np.ones((1, 1, 2, 2), np.int8))[0, :, :, 0]
    array([[ 8, 12],
           [20, 24]], dtype=int32)
    """
    _check_depthwise(x_q, w_q, stride, padding)
    n, c, h, w = x_q.shape
    k = w_q.shape[2]
    h_out, w_out = conv_output_size(h, k, stride, padding), conv_output_size(w, k, stride, padding)
    pad = ((0, 0), (0, 0), (padding, padding), (padding, padding))
    xp = np.pad(x_q, pad, constant_values=np.int8(pad_value))  # (N, C, Hp, Wp) int8
    out = np.empty((n, h_out, w_out, c), dtype=np.int32)  # (N, Ho, Wo, C)
    w3d = np.ascontiguousarray(w_q.reshape(c, k, k))  # (C, k, k)
    _depthwise_conv2d_int8_kernel(xp, w3d, int(stride), out)
    return out
