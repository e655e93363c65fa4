r"""Int4 packing: two 4-bit integers per byte, the real 8x saving over float32 storage.

NumPy has no 4-bit dtype, so a 4-bit tensor quantized with :func:`~minquant.quant.quantize`
still sits in one int8 per value. :func:`pack_int4` stores it as it would be stored on disk
or in memory by a 4-bit kernel, and :func:`unpack_int4` gets the values back.

Reference: ONNX ``INT4``/``UINT4`` types (two 4-bit values per byte, first element in the
low nibble).
"""

import numpy as np

__all__ = ["pack_int4", "unpack_int4"]


def pack_int4(x_q: np.ndarray, signed: bool = True) -> np.ndarray:
    r"""Pack 4-bit integers two per byte: the real 8x saving over float32 storage.

    Element $2i$ goes in the low nibble of byte $i$, element $2i + 1$ in the high nibble
    (the ONNX ``INT4``/``UINT4`` order):

    $$\text{byte}_i = (x_{2i} \bmod 16) + 16\,(x_{2i+1} \bmod 16)$$

    A signed value is stored as its 4-bit two's complement (-1 is ``0xF``). ``x_q`` is
    flattened (C order); an odd count leaves the last high nibble 0. Returns uint8 of
    shape ``(ceil(n / 2),)``; :func:`unpack_int4` needs the original shape back.

    >>> packed = pack_int4(np.array([1, -2, 7], dtype=np.int8))  # 1 | (-2 & 15) << 4 = 0xE1
    >>> [hex(b) for b in packed]
    ['0xe1', '0x7']
    >>> unpack_int4(packed, shape=3)
    array([ 1, -2,  7], dtype=int8)
    """
    x_q = np.asarray(x_q)
    if not np.issubdtype(x_q.dtype, np.integer):
        raise TypeError(f"x_q must be an integer array, got dtype {x_q.dtype}")
    qmin, qmax = (-8, 7) if signed else (0, 15)
    if x_q.size and (x_q.min() < qmin or x_q.max() > qmax):
        raise ValueError(
            f"x_q must lie in [{qmin}, {qmax}] for signed={signed}, "
            f"got values in [{x_q.min()}, {x_q.max()}]"
        )
    nibbles = (x_q.ravel().astype(np.int16) & 0xF).astype(np.uint8)  # (n,) two's complement
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))  # (n + 1,) pad the last high nibble
    low, high = nibbles[0::2], nibbles[1::2]  # (ceil(n/2),) each
    return low | (high << 4)


def unpack_int4(
    packed: np.ndarray, shape: int | tuple[int, ...], signed: bool = True
) -> np.ndarray:
    r"""Inverse of :func:`pack_int4`: bytes back to int8 (signed) or uint8 values of ``shape``.

    A signed nibble $v \in [0, 15]$ means $v - 16$ when $v \ge 8$ (two's complement).

    >>> unpack_int4(np.array([0xE1, 0x07], dtype=np.uint8), shape=(1, 3), signed=False)
    array([[ 1, 14,  7]], dtype=uint8)
    """
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise TypeError(f"packed must be a uint8 array, got dtype {packed.dtype}")
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    count = int(np.prod(shape))
    if packed.ndim != 1 or packed.size != (count + 1) // 2:
        raise ValueError(
            f"packed must have shape ({(count + 1) // 2},) to hold shape={shape}, "
            f"got {packed.shape}"
        )
    nibbles = np.empty(2 * packed.size, dtype=np.int16)  # (2 * nbytes,)
    nibbles[0::2] = packed & 0xF
    nibbles[1::2] = packed >> 4
    values = nibbles[:count]  # (count,) drop the padding nibble
    if signed:
        values = np.where(values >= 8, values - 16, values)
        return values.astype(np.int8).reshape(shape)
    return values.astype(np.uint8).reshape(shape)
