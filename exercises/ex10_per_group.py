r"""Exercise 10: per-group quantization of a weight, and 4-bit codes packed two per byte.

Follows notebook 09 (weight-only quantization of a language model). Per-channel
quantization gives each output row of a weight one scale; per-group quantization cuts each
row into groups of $g$ consecutive weights along an axis and gives each *group* its own
scale $s$ and zero point $z$ (a (out, in) weight with ``axis=1, group_size=g`` has qparams
of shape (out, in / g)):

$$x_q = \mathrm{clip}\big(\mathrm{round}(x \cdot s_{\lfloor i/g \rfloor}^{-1}
+ z_{\lfloor i/g \rfloor}),\ q_{min},\ q_{max}\big), \qquad
\hat{x} = s_{\lfloor i/g \rfloor}\,(x_q - z_{\lfloor i/g \rfloor}).$$

A 4-bit code then needs half a byte: two codes share one byte, the first in the low nibble::

    codes   x0  x1  x2  x3  x4
    bytes  [x0 | x1 << 4] [x2 | x3 << 4] [x4 | 0 << 4]

Write every function with NumPy only: do not call ``minquant``'s ``quantize``,
``dequantize``, ``calc_group_qparams`` or its packing functions (the tests make them raise
while your code runs). You may call ``minquant.calc_qparams`` (exercise 1) for the scale and
zero point of a batch of ranges. Check your work with ``pytest exercises -m ex10``; the
tests compare your results with ``mq.quantize(..., axis=, group_size=)``, ``mq.dequantize``
and ``minquant.packing.pack_bits``, bit for bit.

References: T. Dettmers, L. Zettlemoyer, "The case for 4-bit precision: k-bit inference
scaling laws", ICML 2023 (arXiv:2212.09720); ONNX ``INT4`` (two values per byte, first in
the low nibble).
"""

import numpy as np


def group_min_max(x: np.ndarray, axis: int, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    r"""Exercise 10.1: the minimum and maximum of each group of ``group_size`` along ``axis``.

    $$m_{\dots, j, \dots} = \min_{j g \le i < (j + 1) g} x_{\dots, i, \dots}$$

    (and the same with $\max$). Returns two float32 arrays of ``x.shape`` with ``axis``
    replaced by the number of groups ``x.shape[axis] // group_size``. ``axis`` may be
    negative. Raise ``ValueError`` naming ``group_size`` and the length of the axis when
    the axis is not a multiple of ``group_size`` (or ``group_size < 1``).

    Hint: move ``axis`` to the end (``np.moveaxis``), reshape the last axis to
    ``(G, group_size)``, reduce over the last axis, move the group axis back.

    Worked example: ``x = [[-1, 0.5, 2, 4], [3, -3, 0, 1]]``, ``axis=1, group_size=2``
    gives minima ``[[-1, 2], [-3, 0]]`` and maxima ``[[0.5, 4], [3, 1]]``.
    """
    raise NotImplementedError("Exercise 10.1: group_min_max")


def group_qparams(
    x: np.ndarray,
    qmin: int,
    qmax: int,
    axis: int,
    group_size: int,
    symmetric: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Exercise 10.2: one scale and zero point per group (the min/max rule of PyTorch).

    Use your :func:`group_min_max`, then ``mq.calc_qparams(min_val, max_val, qmin, qmax,
    symmetric)`` (you may call it: it takes 1-D arrays of ranges, so flatten the group
    minima and maxima first and reshape its results back). Returns ``scale`` float32 and
    ``zero_point`` int64, both of the shape of the group minima.

    Worked example: ``x = [[-1, 0.5, 2, 4]]``, ``qmin, qmax = -8, 7``, ``axis=1,
    group_size=2``, symmetric: the groups have $\max |x| = 1$ and $4$, so
    $s = 1 / 7.5$ and $4 / 7.5$ (``(qmax - qmin) / 2 = 7.5``) and zero points 0.
    """
    raise NotImplementedError("Exercise 10.2: group_qparams")


def quantize_per_group(
    x: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray,
    qmin: int,
    qmax: int,
    axis: int,
    group_size: int,
) -> np.ndarray:
    r"""Exercise 10.3: $x_q = \mathrm{clip}(\mathrm{round}(x\,s^{-1} + z), q_{min}, q_{max})$.

    ``scale`` and ``zero_point`` have ``x.shape`` with ``axis`` replaced by the number of
    groups; repeat each one ``group_size`` times along ``axis`` (``np.repeat``) so that they
    match ``x``. Then in float32, in this order (PyTorch's per-channel kernel):
    ``inv_scale = np.float32(1) / scale``, ``x * inv_scale + zero_point.astype(np.float32)``
    (multiply, round to float32, then add: no fused multiply-add), ``np.rint`` (round half
    to even), ``np.clip`` to ``[qmin, qmax]``. Return int8 if ``[qmin, qmax]`` fits in
    int8, else uint8 if it fits in uint8, else int16.

    Worked example: ``x = [[0.5, -1, 2, 4]]`` with scales ``[[0.25, 1]]``, zero points
    ``[[0, 0]]``, ``qmin, qmax = -8, 7``, ``axis=1, group_size=2``: group 0 divides by 0.25,
    group 1 by 1, giving ``[[2, -4, 2, 4]]`` (int8).
    """
    raise NotImplementedError("Exercise 10.3: quantize_per_group")


def dequantize_per_group(
    x_q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int, group_size: int
) -> np.ndarray:
    r"""Exercise 10.4: $\hat{x} = s\,(x_q - z)$ per group, in float32.

    Repeat ``scale`` and ``zero_point`` as in :func:`quantize_per_group`; compute
    ``x_q - zero_point`` in int64 (no overflow for uint8 codes), convert to float32, then
    multiply by the float32 scale (one rounding).

    Worked example: codes ``[[1, 2, 1, 2]]``, scales ``[[0.5, 2]]``, zero points
    ``[[0, 1]]``, ``axis=1, group_size=2`` give ``[[0.5, 1, 0, 2]]``.
    """
    raise NotImplementedError("Exercise 10.4: dequantize_per_group")


def pack_int4(x_q: np.ndarray) -> np.ndarray:
    r"""Exercise 10.5: 4-bit codes two per byte, the first in the low nibble.

    $$\text{byte}_i = (x_{2i} \bmod 16) + 16\,(x_{2i+1} \bmod 16)$$

    ``x_q`` holds integers in $[-8, 7]$ (signed, stored as 4-bit two's complement: -1 is
    ``0xF``, i.e. ``x & 0xF``) or in $[0, 15]$. Flatten it (C order); an odd count gets a
    0 high nibble in the last byte. Return uint8 of shape ``(ceil(n / 2),)``. Raise
    ``ValueError`` naming ``x_q`` if a value lies outside $[-8, 15]$.

    Worked example: ``[1, -2, 7]``: byte 0 is ``1 | (-2 & 15) << 4 = 1 | 14 << 4 = 0xE1``,
    byte 1 is ``7``.
    """
    raise NotImplementedError("Exercise 10.5: pack_int4")


def unpack_int4(packed: np.ndarray, count: int, signed: bool = True) -> np.ndarray:
    r"""Exercise 10.6: the inverse of :func:`pack_int4`: ``count`` codes from the bytes.

    Low nibble ``packed & 0xF`` first, then the high nibble ``packed >> 4``. When
    ``signed``, a nibble $v \ge 8$ means $v - 16$ and the result is int8; otherwise the
    nibbles are returned as uint8. Raise ``ValueError`` naming ``packed`` unless it is
    uint8 of shape ``((count + 1) // 2,)``.

    Worked example: ``[0xE1, 0x07]`` with ``count=3`` gives ``[1, -2, 7]`` signed and
    ``[1, 14, 7]`` unsigned.
    """
    raise NotImplementedError("Exercise 10.6: unpack_int4")
