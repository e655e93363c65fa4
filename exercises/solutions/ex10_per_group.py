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

import minquant as mq


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
    x = np.asarray(x, dtype=np.float32)
    length = x.shape[axis]
    if group_size < 1 or length % group_size:
        raise ValueError(
            f"group_size must divide the axis length: axis of length {length}, "
            f"group_size={group_size}"
        )
    moved = np.moveaxis(x, axis, -1)  # (..., L)
    groups = moved.reshape(*moved.shape[:-1], length // group_size, group_size)  # (..., G, g)
    min_val = np.moveaxis(groups.min(axis=-1), -1, axis)  # x.shape with L -> G
    max_val = np.moveaxis(groups.max(axis=-1), -1, axis)
    return min_val, max_val


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
    min_val, max_val = group_min_max(x, axis, group_size)  # (qparams shape)
    scale, zero_point = mq.calc_qparams(min_val.ravel(), max_val.ravel(), qmin, qmax, symmetric)
    return scale.reshape(min_val.shape), zero_point.reshape(min_val.shape)


def _expand(p: np.ndarray, axis: int, group_size: int) -> np.ndarray:
    """Each group's parameter repeated ``group_size`` times along ``axis``."""
    return np.repeat(np.asarray(p), group_size, axis=axis)


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
    x = np.asarray(x, dtype=np.float32)
    scale = _expand(np.asarray(scale, np.float32), axis, group_size)  # x.shape
    zero_point = _expand(zero_point, axis, group_size).astype(np.float32)  # x.shape
    inv_scale = np.float32(1) / scale
    x_q = np.clip(np.rint(x * inv_scale + zero_point), qmin, qmax)  # x.shape
    for dtype in (np.int8, np.uint8, np.int16):
        info = np.iinfo(dtype)
        if info.min <= qmin and qmax <= info.max:
            return x_q.astype(dtype)
    raise ValueError(f"[qmin, qmax] = [{qmin}, {qmax}] does not fit in int16")


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
    scale = _expand(np.asarray(scale, np.float32), axis, group_size)  # x_q.shape
    zero_point = _expand(np.asarray(zero_point, np.int64), axis, group_size)  # x_q.shape
    centered = (np.asarray(x_q).astype(np.int64) - zero_point).astype(np.float32)
    return centered * scale


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
    x_q = np.asarray(x_q).ravel()
    if x_q.size and (x_q.min() < -8 or x_q.max() > 15):
        raise ValueError(
            f"x_q must hold 4-bit values in [-8, 15], got values in [{x_q.min()}, {x_q.max()}]"
        )
    nibbles = (x_q.astype(np.int16) & 0xF).astype(np.uint8)  # (n,)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))  # (n + 1,)
    return nibbles[0::2] | (nibbles[1::2] << 4)  # (ceil(n / 2),)


def unpack_int4(packed: np.ndarray, count: int, signed: bool = True) -> np.ndarray:
    r"""Exercise 10.6: the inverse of :func:`pack_int4`: ``count`` codes from the bytes.

    Low nibble ``packed & 0xF`` first, then the high nibble ``packed >> 4``. When
    ``signed``, a nibble $v \ge 8$ means $v - 16$ and the result is int8; otherwise the
    nibbles are returned as uint8. Raise ``ValueError`` naming ``packed`` unless it is
    uint8 of shape ``((count + 1) // 2,)``.

    Worked example: ``[0xE1, 0x07]`` with ``count=3`` gives ``[1, -2, 7]`` signed and
    ``[1, 14, 7]`` unsigned.
    """
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.shape != ((count + 1) // 2,):
        raise ValueError(
            f"packed must be uint8 of shape ({(count + 1) // 2},) for count={count}, "
            f"got {packed.dtype} {packed.shape}"
        )
    nibbles = np.empty(2 * packed.size, dtype=np.int16)  # (2 * bytes,)
    nibbles[0::2] = packed & 0xF
    nibbles[1::2] = packed >> 4
    values = nibbles[:count]  # (count,)
    if signed:
        return np.where(values >= 8, values - 16, values).astype(np.int8)
    return values.astype(np.uint8)
