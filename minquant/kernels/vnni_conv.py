r"""Convolution through the packed int8 GEMM of :mod:`minquant.kernels.vnni`, fused per image.

The convolution is im2col, a GEMM and requantization (:mod:`minquant.kernels.im2col`,
:mod:`minquant.kernels.requant`); here the three run one image at a time inside one parallel
loop, so that nothing but the int8 input and output ever reaches memory:

1. **im2col to uint8.** The dot-product instructions multiply uint8 by int8, so every code
   enters shifted, $u = x_q + o$ (``offset`` $o$ = 128 for ``vpdpbusd``; $-q_{min}$ for AVX2,
   whose ``vpmaddubsw`` is exact only for $u \le 127$). The shift is done once per input pixel,
   on a padded copy of the image (padding taps hold $z_x + o$, the shifted zero point); the
   rows of the image's im2col matrix (Ho*Wo, K') are then plain byte copies.
2. **GEMM** on the layer's weights, packed once (:func:`minquant.kernels.vnni.pack_b`), with
   the accumulators starting at $-o \sum_k w_{q,nk}$:

   $$\mathrm{acc}_{pn} = -o \sum_k w_{q,nk} + \sum_k (x_{q,pk} + o)\, w_{q,nk}
   = \sum_k x_{q,pk}\, w_{q,nk},$$

   exactly the raw accumulator of the unfused pipeline (Jacob et al. 2018, eq. 7: the
   zero-point algebra with $z = -o$), which the requantizer then treats as always.
3. **Requantization** of the (Ho*Wo, N') int32 block, still in cache, written straight into
   the NCHW output (no int32 array in memory, no NHWC -> NCHW transpose).

The integers are those of :func:`~minquant.kernels.im2col_int8` ->
:func:`~minquant.kernels.matmul_int8` -> requantization, bit for bit (tested). One kernel per
(inner loop, requantizer) pair: a kernel that merely contains ``vpdpbusd`` cannot be compiled
on a CPU without AVX-512 VNNI, so the two inner loops never share a function.

References:

* K. Goto and R. van de Geijn, "Anatomy of High-Performance Matrix Multiplication",
  ACM TOMS 34(3), 2008 (packing a block of A into a buffer the register tile reads).
* B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", CVPR 2018 (arXiv:1712.05877).
"""

import numpy as np
from numba import njit, prange

from minquant.kernels.requant import _requant_fixedpoint_scalar, _requant_float_scalar
from minquant.kernels.vnni import PackedB, pack_b
from minquant.kernels.vnni_kernels import MR, _tile_avx2, _tile_vnni512
from minquant.nn.functional import conv_output_size

__all__ = ["conv2d_packed", "offset_for", "pack_conv_weights"]


def offset_for(path: str, qmin: int, qmax: int) -> int | None:
    """The shift $o$ that makes int8 codes in [qmin, qmax] valid uint8 operands of ``path``.

    128 for ``"vnni512"``; $-q_{min}$ for ``"avx2"`` when the codes span at most 7 bits (else
    None: ``vpmaddubsw`` could saturate); None for ``"plain"``.

    >>> offset_for("vnni512", -128, 127), offset_for("avx2", -64, 63), offset_for("avx2", -128, 127)
    (128, 64, None)
    """
    if path == "vnni512":
        return 128
    if path == "avx2" and qmax - qmin <= 127:
        return -qmin
    return None


def pack_conv_weights(w_q: np.ndarray) -> PackedB:
    r"""Pack int8 weights (O, C, kh, kw) for :func:`conv2d_packed`: B (K, O), k as (dy, dx, c).

    The kernel reads its im2col rows channels last, so its k runs over (dy, dx, c), not over
    (c, dy, dx) as in :func:`~minquant.kernels.im2col_int8`. A permutation of k changes no
    sum of products, and not the column sums $\sum_k w_{q,nk}$.

    >>> w_q = np.arange(8, dtype=np.int8).reshape(1, 2, 2, 2)  # (O, C, kh, kw)
    >>> packed = pack_conv_weights(w_q)
    >>> packed.b_q[:, 0]  # channel 0 then 1 for each tap (0, 0), (0, 1), (1, 0), (1, 1)
    array([0, 4, 1, 5, 2, 6, 3, 7], dtype=int8)
    """
    w_hwc = w_q.transpose(0, 2, 3, 1).reshape(w_q.shape[0], -1)  # (O, kh*kw*C)
    return pack_b(np.ascontiguousarray(w_hwc.T))  # (K, O) in panels


@njit(cache=True)
def _image_to_rows(x, b, shifted, geometry, xp, a):
    """Rows of image ``b``'s im2col matrix, shifted to uint8: a (Ho*Wo, K') from x (N, C, H, W).

    ``xp`` (H + 2ph, (W + 2pw) C) uint8 is scratch for the shifted, padded image, channels
    last: the kw taps of one kernel row are then kw * C consecutive bytes, and a row of ``a``
    is kh copies of them, taps in (dy, dx, c) order (the packed weights use the same order).
    """
    offset, pad_u8 = shifted
    kh, kw, sh, sw, ph, pw = geometry
    c_in, h, w = x.shape[1], x.shape[2], x.shape[3]
    xp[:] = pad_u8
    for ch in range(c_in):
        for y in range(h):
            for xx in range(w):
                # NOTE: int8 + offset lies in [0, 255] for the offsets of offset_for.
                xp[y + ph, (xx + pw) * c_in + ch] = np.uint8(np.int32(x[b, ch, y, xx]) + offset)
    h_out, w_out = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    span = kw * c_in  # bytes of one kernel row
    a_flat, xp_flat = a.reshape(-1), xp.reshape(-1)
    for oy in range(h_out):
        for ox in range(w_out):
            for dy in range(kh):
                # NOTE: unsigned indices: Numba then skips its negative-index wraparound,
                # and LLVM turns this byte loop into vector copies (4x faster, measured).
                dst = np.uint64((oy * w_out + ox) * a.shape[1] + dy * span)  # a[pixel, dy]
                src = np.uint64((oy * sh + dy) * xp.shape[1] + ox * sw * c_in)  # xp[y, x]
                for t in range(np.uint64(span)):
                    a_flat[dst + t] = xp_flat[src + t]


@njit(cache=True)
def _gemm_image_vnni512(a, b, comp, c):  # pragma: no cover - needs AVX-512 VNNI
    """c (M', N') = a (M', K') uint8 times packed b, one ``vpdpbusd`` tile after another."""
    for p in range(b.shape[0]):
        for i in range(0, a.shape[0], MR):
            _tile_vnni512(a, b, comp, c, i, p)


@njit(cache=True)
def _gemm_image_avx2(a, b, comp, c):  # pragma: no cover - needs AVX2
    """c (M', N') = a (M', K') uint8 times packed b, with the ``vpmaddubsw`` tiles."""
    for p in range(b.shape[0]):
        for i in range(0, a.shape[0], MR // 2):
            _tile_avx2(a, b, comp, c, i, p, 0)
            _tile_avx2(a, b, comp, c, i, p, 1)


@njit(cache=True)
def _buffers(x, b_packed, geometry, rows):
    """Per-image scratch: padded image, im2col rows (M', K') and accumulators (M', N')."""
    ph, pw = geometry[4], geometry[5]
    xp = np.empty((x.shape[2] + 2 * ph, (x.shape[3] + 2 * pw) * x.shape[1]), np.uint8)
    rows_pad = rows + (-rows % MR)
    # NOTE: zeros, though any byte would do: the K' - K padding columns meet zero rows of
    # the packed B, and the rows_pad - rows padding rows are computed but never read.
    a = np.zeros((rows_pad, 4 * b_packed.shape[1]), np.uint8)  # (M', K')
    c = np.empty((rows_pad, b_packed.shape[0] * b_packed.shape[2]), np.int32)  # (M', N')
    return xp, a, c


@njit(cache=True)
def _requant_image_fixedpoint(c, requant, out):
    """out (O, Ho*Wo) int8 from the accumulators c (M', N') of one image, fixed point."""
    bias, multiplier, shift, zero_point_out, qmin, qmax, single = requant
    o_dim, rows = out.shape
    tile = np.empty((rows, o_dim), np.int8)  # (Ho*Wo, O): the layout of c
    for r in range(rows):
        # NOTE: the inner loop runs over channels, contiguous in c and in the per-channel
        # arrays, so that LLVM vectorises it; the transpose to (O, Ho*Wo) is a second pass.
        for o in range(o_dim):
            tile[r, o] = _requant_fixedpoint_scalar(
                c[r, o], bias[o], multiplier[o], shift[o], zero_point_out, qmin, qmax, single
            )
    out[:] = tile.T


@njit(cache=True)
def _requant_image_float(c, requant, out):
    """out (O, Ho*Wo) int8 from the accumulators c (M', N') of one image, float32 (fbgemm)."""
    zp_correction, bias_over_scale, multiplier, zero_point_out, qmin, qmax = requant
    o_dim, rows = out.shape
    tile = np.empty((rows, o_dim), np.int8)  # (Ho*Wo, O): the layout of c
    for r in range(rows):
        for o in range(o_dim):  # contiguous, as in _requant_image_fixedpoint
            centred = np.int32(c[r, o] - zp_correction[o])
            tile[r, o] = _requant_float_scalar(
                centred, bias_over_scale[o], multiplier[o], zero_point_out, qmin, qmax
            )
    out[:] = tile.T


# One kernel per (inner loop, requantizer): x (N, C, H, W) int8 -> out (N, O, Ho*Wo) int8.
# ``shifted`` = (offset, padding code + offset) and ``geometry`` = (kh, kw, sh, sw, ph, pw).


@njit(cache=True, parallel=True)
def _conv_vnni512_fixedpoint(x, b_packed, comp, shifted, geometry, requant, out):
    for b in prange(out.shape[0]):  # pragma: no cover - needs AVX-512 VNNI
        xp, a, c = _buffers(x, b_packed, geometry, out.shape[2])
        _image_to_rows(x, b, shifted, geometry, xp, a)
        _gemm_image_vnni512(a, b_packed, comp, c)
        _requant_image_fixedpoint(c, requant, out[b])


@njit(cache=True, parallel=True)
def _conv_vnni512_float(x, b_packed, comp, shifted, geometry, requant, out):
    for b in prange(out.shape[0]):  # pragma: no cover - needs AVX-512 VNNI
        xp, a, c = _buffers(x, b_packed, geometry, out.shape[2])
        _image_to_rows(x, b, shifted, geometry, xp, a)
        _gemm_image_vnni512(a, b_packed, comp, c)
        _requant_image_float(c, requant, out[b])


@njit(cache=True, parallel=True)
def _conv_avx2_fixedpoint(x, b_packed, comp, shifted, geometry, requant, out):
    for b in prange(out.shape[0]):  # pragma: no cover - needs AVX2
        xp, a, c = _buffers(x, b_packed, geometry, out.shape[2])
        _image_to_rows(x, b, shifted, geometry, xp, a)
        _gemm_image_avx2(a, b_packed, comp, c)
        _requant_image_fixedpoint(c, requant, out[b])


@njit(cache=True, parallel=True)
def _conv_avx2_float(x, b_packed, comp, shifted, geometry, requant, out):
    for b in prange(out.shape[0]):  # pragma: no cover - needs AVX2
        xp, a, c = _buffers(x, b_packed, geometry, out.shape[2])
        _image_to_rows(x, b, shifted, geometry, xp, a)
        _gemm_image_avx2(a, b_packed, comp, c)
        _requant_image_float(c, requant, out[b])


_KERNELS = {
    ("vnni512", "fixedpoint"): _conv_vnni512_fixedpoint,
    ("vnni512", "float"): _conv_vnni512_float,
    ("avx2", "fixedpoint"): _conv_avx2_fixedpoint,
    ("avx2", "float"): _conv_avx2_float,
}


def conv2d_packed(
    x_q: np.ndarray,
    packed: PackedB,
    kernel_size: int,
    stride: int,
    padding: int,
    pad_value: int,
    path: str,
    offset: int,
    requant: str,
    requant_args: tuple,
) -> np.ndarray:
    r"""Fused convolution: int8 x_q (N, C, H, W) -> int8 (N, O, Ho, Wo), trusted arguments.

    ``packed`` holds the weights (O, C, k, k) from :func:`pack_conv_weights`; padding
    taps hold ``pad_value`` (the input zero point); ``path`` is ``"vnni512"`` or ``"avx2"``
    with ``offset`` from :func:`offset_for`. ``requant`` names the requantizer and
    ``requant_args`` are its kernel operands: ``"fixedpoint"`` (bias_folded, multiplier,
    shift as int64 (O,), zero_point_out, qmin, qmax, single) or ``"float"`` (zp_correction
    int32 (O,), bias_over_scale and multiplier float32 (O,), zero_point_out, qmin, qmax),
    exactly as :func:`~minquant.kernels.requantize_fixedpoint_trusted` and
    :func:`~minquant.kernels.requantize_float_trusted` take them (the layer checked them).
    """
    n, _, h, w = x_q.shape
    k, s, p = kernel_size, stride, padding
    h_out, w_out = conv_output_size(h, k, s, p), conv_output_size(w, k, s, p)
    # NOTE: the accumulators start at -offset * sum_k w: the offset the rows carry comes
    # back off exactly (int32 arithmetic wraps, and the true sum fits int32).
    comp = (-offset * packed.col_sum.astype(np.int64)).astype(np.int32)  # (N',)
    out = np.empty((n, packed.n, h_out * w_out), dtype=np.int8)  # (N, O, Ho*Wo)
    shifted = (np.int32(offset), np.uint8(pad_value + offset))
    kernel = _KERNELS[path, requant]
    kernel(np.ascontiguousarray(x_q), packed.data, comp, shifted, (k, k, s, s, p, p),
           requant_args, out)  # fmt: skip
    return out.reshape(n, packed.n, h_out, w_out)
