r"""Bit packing: 2- to 8-bit integers stored densely, and what a weight really costs.

NumPy has no 4-bit dtype, so a 4-bit tensor quantized with :func:`~minquant.quant.quantize`
still sits in one int8 per value. :func:`pack_int4` stores it as it would be stored on disk
or in memory by a 4-bit kernel, and :func:`unpack_int4` gets the values back;
:func:`pack_bits` / :func:`unpack_bits` do the same for any width from 2 to 8 bits.
:func:`bits_per_weight` counts the scales and zero points too.

Layout (all widths): a little-endian bit stream. Element $i$ of the flattened tensor
occupies bits $[b\,i,\ b\,(i + 1))$ of the byte string read as one little-endian integer,
so every 8 elements fill exactly $b$ bytes. For $b = 4$ this is the ONNX ``INT4`` order
(element $2i$ in the low nibble of byte $i$); for $b = 2$, element $4i + k$ sits in bits
$2k, 2k + 1$ of byte $i$; for $b = 3$, elements $8j \ldots 8j + 7$ fill bytes
$3j \ldots 3j + 2$, element $8j + k$ in bits $3k \ldots 3k + 2$ of the 24-bit word
$\text{byte}_{3j} + 2^8\,\text{byte}_{3j+1} + 2^{16}\,\text{byte}_{3j+2}$ (so element
$8j + 2$ straddles two bytes). Signed values are stored as $b$-bit two's complement.

Reference: ONNX ``INT4``/``UINT4`` types (two 4-bit values per byte, first element in the
low nibble); the 2-bit layout of DeepLearning.AI's "Quantization in Depth" (four values
per byte, first in the low bits).
"""

import numpy as np

__all__ = ["bits_per_weight", "pack_bits", "pack_int4", "unpack_bits", "unpack_int4"]


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


def _check_bits(num_bits: int) -> int:
    if not isinstance(num_bits, (int, np.integer)) or isinstance(num_bits, bool):
        raise TypeError(f"num_bits must be an int, got {type(num_bits).__name__}")
    if not 2 <= num_bits <= 8:
        raise ValueError(f"num_bits must be in [2, 8] for packing, got {num_bits}")
    return int(num_bits)


def pack_bits(x_q: np.ndarray, num_bits: int, signed: bool = True) -> np.ndarray:
    r"""Pack ``num_bits``-bit integers (2 to 8) densely: 8 values in ``num_bits`` bytes.

    $$\text{stream} = \sum_i (x_i \bmod 2^b)\, 2^{b i}, \qquad
    \text{byte}_k = \lfloor \text{stream} / 2^{8k} \rfloor \bmod 2^8$$

    ``x_q`` is flattened (C order); the result is uint8 of shape ``(ceil(n * b / 8),)``,
    the unused high bits of the last byte 0. ``pack_bits(x_q, 4)`` is :func:`pack_int4`.

    >>> pack_bits(np.array([1, 2, 3, 0, 1]), 2, signed=False)  # 1 + 2*4 + 3*16, then 1
    array([57,  1], dtype=uint8)
    >>> packed = pack_bits(np.array([1, 2, 3, -4, -3, -2, -1, 0]), 3)  # 8 values, 3 bytes
    >>> [hex(b) for b in packed]  # the 24-bit word 0x1f58d1, low byte first
    ['0xd1', '0x58', '0x1f']
    """
    bits = _check_bits(num_bits)
    x_q = np.asarray(x_q)
    if not np.issubdtype(x_q.dtype, np.integer):
        raise TypeError(f"x_q must be an integer array, got dtype {x_q.dtype}")
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if x_q.size and (x_q.min() < qmin or x_q.max() > qmax):
        raise ValueError(
            f"x_q must lie in [{qmin}, {qmax}] for num_bits={bits}, signed={signed}, "
            f"got values in [{x_q.min()}, {x_q.max()}]"
        )
    count = x_q.size
    fields = (x_q.ravel().astype(np.int64) & (2**bits - 1)).astype(np.uint64)  # (n,)
    padded = np.zeros(-(-count // 8) * 8, dtype=np.uint64)  # (8 * units,)
    padded[:count] = fields
    shifts = np.arange(8, dtype=np.uint64) * np.uint64(bits)  # (8,)
    # NOTE: 8 fields of <= 8 bits fill at most 64 bits, so one uint64 word holds a unit.
    words = np.bitwise_or.reduce(padded.reshape(-1, 8) << shifts, axis=1)  # (units,)
    unit_bytes = words.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :bits]  # (units, b)
    return unit_bytes.ravel()[: -(-count * bits // 8)].copy()


def unpack_bits(
    packed: np.ndarray, num_bits: int, shape: int | tuple[int, ...], signed: bool = True
) -> np.ndarray:
    r"""Inverse of :func:`pack_bits`: int8 (signed) or uint8 values of ``shape``.

    A signed field $v \ge 2^{b-1}$ means $v - 2^b$ (two's complement).

    >>> unpack_bits(np.array([0xD1, 0x58, 0x1F], dtype=np.uint8), 3, shape=8)
    array([ 1,  2,  3, -4, -3, -2, -1,  0], dtype=int8)
    """
    bits = _check_bits(num_bits)
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise TypeError(f"packed must be a uint8 array, got dtype {packed.dtype}")
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    count = int(np.prod(shape))
    nbytes = -(-count * bits // 8)
    if packed.ndim != 1 or packed.size != nbytes:
        raise ValueError(
            f"packed must have shape ({nbytes},) to hold shape={shape} at {bits} bits, "
            f"got {packed.shape}"
        )
    units = -(-count // 8)
    unit_bytes = np.zeros((units, 8), dtype=np.uint8)  # (units, 8) zero-padded words
    flat = np.zeros(units * bits, dtype=np.uint8)  # (units * b,)
    flat[:nbytes] = packed
    unit_bytes[:, :bits] = flat.reshape(units, bits)
    words = unit_bytes.view("<u8").ravel()  # (units,)
    shifts = np.arange(8, dtype=np.uint64) * np.uint64(bits)  # (8,)
    fields = (words[:, None] >> shifts) & np.uint64(2**bits - 1)  # (units, 8)
    values = fields.ravel()[:count].astype(np.int16)  # (count,)
    if signed:
        values = np.where(values >= 2 ** (bits - 1), values - 2**bits, values)
        return values.astype(np.int8).reshape(shape)
    return values.astype(np.uint8).reshape(shape)


def bits_per_weight(
    num_bits: int, group_size: int, scale_bits: int = 16, zero_point_bits: int = 0
) -> float:
    r"""What one weight really costs in storage, scales and zero points included.

    $$\text{bpw} = b + \frac{b_{scale} + b_{zero\_point}}{g}$$

    with one scale (and, for an asymmetric quantizer, one zero point) per group of ``g``
    weights. Per-channel quantization is the special case ``g = in_features``.

    >>> bits_per_weight(4, 128)                      # 4-bit, g128, float16 scales
    4.125
    >>> bits_per_weight(4, 64, zero_point_bits=8)    # asymmetric, uint8 zero points
    4.375
    >>> bits_per_weight(2, 32, scale_bits=32, zero_point_bits=2)
    3.0625
    """
    for name, value in (
        ("num_bits", num_bits),
        ("group_size", group_size),
        ("scale_bits", scale_bits),
        ("zero_point_bits", zero_point_bits),
    ):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    return num_bits + (scale_bits + zero_point_bits) / group_size
