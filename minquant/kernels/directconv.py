r"""Fused int8 convolution + requantization: a direct loop, no im2col, no int32 array in memory.

$$y_q[n, o, i, j] = \mathrm{clip}\Big(z_{out} + M_o\big(\textstyle\sum_{c, dy, dx}
x_q[n, c, i s + dy, j s + dx]\, w_q[o, c, dy, dx] + b_q[o]\big),\ q_{min},\ q_{max}\Big)$$

with the per-channel multiplier $M_o$ applied in fixed point or in float32: exactly
the same integers as :func:`minquant.kernels.im2col_int8` -> :func:`minquant.kernels.matmul_int8`
-> requantization (:mod:`minquant.kernels.requant`) -> NCHW, bit for bit, in one parallel pass. No
im2col matrix, no int32 accumulator array and no NHWC -> NCHW transpose ever reach memory: each
work item is one image; for every output row it fills an L1-sized accumulator (Wo, O), then
requantizes it straight into the NCHW output. This pays off when K = C*kh*kw is too short to
fill the GEMM's vectorised k loop (a first convolution layer: K = 9).

As in :mod:`minquant.kernels`, every kernel is plain Python (``_name_py``) compiled with
``njit(cache=True)``, next to a NumPy reference (``_ref``) built from im2col and the exact GEMM.

References:

* J. Zhang, F. Franchetti and T. M. Low, "High Performance Zero-Memory Overhead Direct
  Convolutions", ICML 2018 (arXiv:1809.10170).
* B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", CVPR 2018 (arXiv:1712.05877).
* TensorFlow Lite ``reference_ops`` (Conv) and fbgemm ``ReQuantizeOutput``
  (``OutputProcessing-inl.h``), used by PyTorch's x86 quantized engine.
"""

import numpy as np
from numba import njit, prange

from minquant.fixedpoint import FIXEDPOINT_ROUNDINGS
from minquant.kernels.gemm import MAX_K, check_int8, check_k, matmul_int8_ref
from minquant.kernels.im2col import _conv_geometry, im2col_int8_ref
from minquant.kernels.requant import (
    _check_clamp,
    _check_requant,
    _per_channel,
    _requant_fixedpoint_scalar,
    _requant_float_scalar,
    float_requant_params,
    requantize_fixedpoint_ref,
    requantize_float_ref,
)
from minquant.nn.functional import conv_output_size

__all__ = [
    "conv2d_requantize_fixedpoint",
    "conv2d_requantize_fixedpoint_ref",
    "conv2d_requantize_float",
    "conv2d_requantize_float_ref",
]


def _conv_row_acc(xp, w, b, oy, sh, sw, kh, kw, acc):
    """acc (Wo, O) int32 = output row ``oy`` of image ``b``: $\\sum_{c,dy,dx} x\\, w$.

    ``xp`` is the padded input (N, C, Hp, Wp) int8 and ``w`` the weights (C*kh*kw, O) int32.
    """
    c_in = xp.shape[1]
    w_out, o_dim = acc.shape
    for ox in range(w_out):
        row = acc[ox]  # (O,)
        row[:] = 0
        tap = 0
        for ch in range(c_in):
            for dy in range(kh):
                for dx in range(kw):
                    xv = np.int32(xp[b, ch, oy * sh + dy, ox * sw + dx])
                    # NOTE: the inner loop runs over output channels, contiguous in w and
                    # acc, so LLVM vectorises it with xv broadcast; it stays int32.
                    for o in range(o_dim):
                        row[o] = np.int32(row[o] + xv * w[tap, o])
                    tap += 1


_conv_row_acc_kernel = njit(cache=True)(_conv_row_acc)


def _conv2d_requantize_fixedpoint_py(
    xp, w, sh, sw, kh, kw, bias, multiplier, shift, zero_point_out, qmin, qmax, single, out
):
    n, o_dim, h_out, w_out = out.shape
    for b in prange(n):
        acc = np.empty((w_out, o_dim), dtype=np.int32)  # one output row, all channels
        for oy in range(h_out):
            _conv_row_acc_kernel(xp, w, b, oy, sh, sw, kh, kw, acc)
            for o in range(o_dim):
                for ox in range(w_out):
                    out[b, o, oy, ox] = _requant_fixedpoint_scalar(
                        acc[ox, o], bias[o], multiplier[o], shift[o],
                        zero_point_out, qmin, qmax, single,
                    )  # fmt: skip


_conv2d_requantize_fixedpoint_kernel = njit(cache=True, parallel=True)(
    _conv2d_requantize_fixedpoint_py
)


def _conv2d_requantize_float_py(
    xp, w, sh, sw, kh, kw, zp_correction, bias_over_scale, multiplier, zero_point_out, qmin,
    qmax, out,
):  # fmt: skip
    n, o_dim, h_out, w_out = out.shape
    for b in prange(n):
        acc = np.empty((w_out, o_dim), dtype=np.int32)  # one output row, all channels
        for oy in range(h_out):
            _conv_row_acc_kernel(xp, w, b, oy, sh, sw, kh, kw, acc)
            for o in range(o_dim):
                for ox in range(w_out):
                    centred = np.int32(acc[ox, o] - zp_correction[o])
                    out[b, o, oy, ox] = _requant_float_scalar(
                        centred, bias_over_scale[o], multiplier[o], zero_point_out, qmin, qmax
                    )


_conv2d_requantize_float_kernel = njit(cache=True, parallel=True)(_conv2d_requantize_float_py)


def _check_conv(x_q, w_q, stride, padding, pad_value):
    """Check the convolution's arguments; returns the (stride, padding) pairs."""
    check_int8("x_q", x_q, ndim=4)
    check_int8("w_q", w_q, ndim=4)
    if w_q.shape[1] != x_q.shape[1]:
        raise ValueError(f"w_q {w_q.shape} (O, C, kh, kw) does not match x_q {x_q.shape}")
    (kh, kw), strides, paddings, _ = _conv_geometry(x_q, w_q.shape[2:], stride, padding)
    if not -128 <= pad_value <= 127:
        raise ValueError(f"pad_value must be an int8 value in [-128, 127], got {pad_value}")
    k = w_q.shape[1] * kh * kw
    check_k(k, f"K = C*kh*kw = {k} > {MAX_K}: could overflow")
    return strides, paddings


def _conv_buffers(x_q, w_q, stride, padding, pad_value):
    """Padded input (N, C, Hp, Wp), int32 weights (C*kh*kw, O) and the int8 output."""
    kh, kw = w_q.shape[2:]
    (sh, sw), (ph, pw) = stride, padding
    h_out = conv_output_size(x_q.shape[2], kh, sh, ph)
    w_out = conv_output_size(x_q.shape[3], kw, sw, pw)
    xp = np.pad(x_q, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    w = np.ascontiguousarray(w_q.reshape(w_q.shape[0], -1).T, dtype=np.int32)  # (K, O)
    out = np.empty((x_q.shape[0], w_q.shape[0], h_out, w_out), dtype=np.int8)  # (N, O, Ho, Wo)
    return xp, w, (kh, kw), (sh, sw), out


def _conv_via_gemm(x_q, w_q, stride, padding, pad_value):
    """Reference accumulator: im2col, exact GEMM; int32 (N*Ho*Wo, O) and the NCHW shape."""
    cols = im2col_int8_ref(x_q, w_q.shape[2:], stride, padding, pad_value)  # (N*Ho*Wo, K)
    acc = matmul_int8_ref(cols, w_q.reshape(w_q.shape[0], -1).T)  # (N*Ho*Wo, O)
    _, _, _, (h_out, w_out) = _conv_geometry(x_q, w_q.shape[2:], stride, padding)
    return acc, (x_q.shape[0], h_out, w_out, w_q.shape[0])


def conv2d_requantize_fixedpoint_ref(
    x_q, w_q, bias_q, multiplier, shift, stride, padding, pad_value, zero_point_out, qmin, qmax,
    rounding="double",
):  # fmt: skip
    """NumPy reference of :func:`conv2d_requantize_fixedpoint`: im2col, GEMM, requantize."""
    acc, nhwo = _conv_via_gemm(x_q, w_q, stride, padding, pad_value)
    y = requantize_fixedpoint_ref(
        acc, bias_q, multiplier, shift, zero_point_out, qmin, qmax, rounding
    )  # (N*Ho*Wo, O)
    return np.ascontiguousarray(y.reshape(nhwo).transpose(0, 3, 1, 2))  # (N, O, Ho, Wo)


def conv2d_requantize_fixedpoint(
    x_q: np.ndarray,
    w_q: np.ndarray,
    bias_q: np.ndarray | None,
    multiplier: np.ndarray | int,
    shift: np.ndarray | int,
    stride: int | tuple[int, int],
    padding: int | tuple[int, int],
    pad_value: int,
    zero_point_out: int,
    qmin: int,
    qmax: int,
    rounding: str = "double",
) -> np.ndarray:
    r"""Fused int8 convolution and fixed-point requantization, one parallel pass.

    $$y_q[n, o, i, j] = \mathrm{clip}\Big(z_{out} + \mathrm{MBQM}\big(\textstyle\sum_{c, dy, dx}
    x_q[n, c, i s + dy, j s + dx]\, w_q[o, c, dy, dx] + b_q[o]\big),\ q_{min},\ q_{max}\Big)$$

    with the input padded by ``pad_value`` (the input zero point). Equal, bit for bit, to
    :func:`~minquant.kernels.im2col_int8` -> :func:`~minquant.kernels.matmul_int8` ->
    :func:`~minquant.kernels.requantize_fixedpoint` -> NCHW, but
    the int32 accumulators only ever live in one small row buffer per core.
    ``x_q`` int8 (N, C, H, W), ``w_q`` int8 (O, C, kh, kw); returns int8 (N, O, Ho, Wo).

    >>> x_q = np.arange(9, dtype=np.int8).reshape(1, 1, 3, 3)
    >>> w_q = np.ones((1, 1, 2, 2), dtype=np.int8)
    >>> conv2d_requantize_fixedpoint(x_q, w_q, None, 1 << 30, 0, 1, 0, 0, 0, -128, 127)[0, 0]
    array([[ 4,  6],
           [10, 12]], dtype=int8)
    """
    if rounding not in FIXEDPOINT_ROUNDINGS:
        raise ValueError(f"rounding must be one of {FIXEDPOINT_ROUNDINGS}, got {rounding!r}")
    stride, padding = _check_conv(x_q, w_q, stride, padding, pad_value)
    n_out = w_q.shape[0]
    bias_q = _check_requant(np.empty((0, n_out), np.int32), bias_q, "bias_q", np.int64)
    multiplier = _per_channel(multiplier, n_out, "multiplier", np.int64)
    shift = _per_channel(shift, n_out, "shift", np.int64)
    _check_clamp(zero_point_out, qmin, qmax)
    return conv2d_requantize_fixedpoint_trusted(
        x_q, w_q, bias_q, multiplier, shift, stride, padding, pad_value,
        int(zero_point_out), int(qmin), int(qmax), rounding == "single",
    )  # fmt: skip


def conv2d_requantize_fixedpoint_trusted(
    x_q, w_q, bias_q, multiplier, shift, stride, padding, pad_value, zero_point_out, qmin, qmax,
    single,
):  # fmt: skip
    """:func:`conv2d_requantize_fixedpoint` without its checks, for a caller that made them.

    ``stride`` and ``padding`` are pairs; ``bias_q``, ``multiplier``, ``shift`` int64 (O,);
    the clamp as Python ints; ``single`` picks the rounding.
    """
    xp, w, (kh, kw), (sh, sw), out = _conv_buffers(x_q, w_q, stride, padding, pad_value)
    _conv2d_requantize_fixedpoint_kernel(
        xp, w, sh, sw, kh, kw, bias_q, multiplier, shift, zero_point_out, qmin, qmax, single, out
    )
    return out


def conv2d_requantize_float_ref(
    x_q, w_q, zp_correction, bias, acc_scale, out_scale, stride, padding, pad_value,
    zero_point_out, qmin, qmax,
):  # fmt: skip
    """NumPy reference of :func:`conv2d_requantize_float`: im2col, GEMM, requantize."""
    acc, nhwo = _conv_via_gemm(x_q, w_q, stride, padding, pad_value)
    acc = acc - np.asarray(zp_correction, dtype=np.int32)  # (N*Ho*Wo, O)
    y = requantize_float_ref(acc, bias, acc_scale, out_scale, zero_point_out, qmin, qmax)
    return np.ascontiguousarray(y.reshape(nhwo).transpose(0, 3, 1, 2))  # (N, O, Ho, Wo)


def conv2d_requantize_float(
    x_q: np.ndarray,
    w_q: np.ndarray,
    zp_correction: np.ndarray,
    bias: np.ndarray | None,
    acc_scale: np.ndarray | float,
    out_scale: float,
    stride: int | tuple[int, int],
    padding: int | tuple[int, int],
    pad_value: int,
    zero_point_out: int,
    qmin: int,
    qmax: int,
) -> np.ndarray:
    r"""Fused int8 convolution and float32 (PyTorch x86) requantization, one parallel pass.

    The accumulator of :func:`conv2d_requantize_fixedpoint`, minus ``zp_correction`` (int32
    (O,): $z_{in} \sum w_q$), requantized as :func:`~minquant.kernels.requantize_float`.
    Returns int8 (N, O, Ho, Wo), bit-exact with the im2col -> GEMM -> ``requantize_float``
    pipeline.

    >>> x_q = np.arange(9, dtype=np.int8).reshape(1, 1, 3, 3)
    >>> w_q = np.ones((1, 1, 2, 2), dtype=np.int8)
    >>> zp = np.zeros(1, np.int32)
    >>> conv2d_requantize_float(x_q, w_q, zp, None, 0.5, 1.0, 1, 0, 0, 0, -128, 127)[0, 0]
    array([[ 4,  6],
           [10, 12]], dtype=int8)
    """
    stride, padding = _check_conv(x_q, w_q, stride, padding, pad_value)
    n_out = w_q.shape[0]
    empty = np.empty((0, n_out), np.int32)
    bias_over_scale, multiplier = float_requant_params(empty, bias, acc_scale, out_scale)
    zp_correction = _per_channel(zp_correction, n_out, "zp_correction", np.int32)
    _check_clamp(zero_point_out, qmin, qmax)
    return conv2d_requantize_float_trusted(
        x_q, w_q, zp_correction, bias_over_scale, multiplier, stride, padding, pad_value,
        int(zero_point_out), int(qmin), int(qmax),
    )  # fmt: skip


def conv2d_requantize_float_trusted(
    x_q, w_q, zp_correction, bias_over_scale, multiplier, stride, padding, pad_value,
    zero_point_out, qmin, qmax,
):  # fmt: skip
    """:func:`conv2d_requantize_float` without its checks, for a caller that made them.

    ``stride`` and ``padding`` are pairs; ``zp_correction`` int32 (O,); ``bias_over_scale``
    and ``multiplier`` float32 (O,) from ``float_requant_params``; the clamp as Python ints.
    """
    xp, w, (kh, kw), (sh, sw), out = _conv_buffers(x_q, w_q, stride, padding, pad_value)
    _conv2d_requantize_float_kernel(
        xp, w, sh, sw, kh, kw, zp_correction, bias_over_scale, multiplier, zero_point_out, qmin,
        qmax, out,
    )  # fmt: skip
    return out
