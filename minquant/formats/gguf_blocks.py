r"""GGUF's classic block formats: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 (llama.cpp, byte for byte).

Each row is cut into blocks of 32 values; each block stores a float16 scale ``d`` (and, for
the ``_1`` types, a float16 minimum ``m``) followed by its integer codes. Symmetric types
reconstruct $\hat{x}_j = d\,(q_j - 2^{b-1})$, affine ones $\hat{x}_j = d\,q_j + m$:

=====  =======================================  ====================================  =====
type   scale                                    code                                  bytes
=====  =======================================  ====================================  =====
Q8_0   $d = a_{max} / 127$                      $q = \mathrm{round}(x / d)$ (half away)  34
Q4_0   $d = x_{\pm max} / -8$                   $q = \min(15, \lfloor x/d + 8.5 \rfloor)$  18
Q4_1   $d = (\max - \min) / 15$, $m = \min$     $q = \min(15, \lfloor (x-m)/d + 0.5 \rfloor)$  20
Q5_0   $d = x_{\pm max} / -16$                  $q = \min(31, \lfloor x/d + 16.5 \rfloor)$  22
Q5_1   $d = (\max - \min) / 31$, $m = \min$     $q = \min(31, \lfloor (x-m)/d + 0.5 \rfloor)$  24
=====  =======================================  ====================================  =====

$x_{\pm max}$ is the value of largest magnitude *with its sign* (the first one if several):
dividing by $-8$ maps it to code 0, i.e. to $-8 d$ exactly, so Q4_0 spends its one extra
negative level on the block's extreme value. The quotient is computed as $x \cdot (1/d)$ in
float32 with the unrounded float32 ``d``; only the stored ``d`` is rounded to float16.

::

    Q4_0   byte 0-1  2          3          ...  17
           [ d fp16 ][q0 | q16<<4][q1 | q17<<4] ... [q15 | q31<<4]
    Q4_1   [ d ][ m ][16 nibble bytes as Q4_0]
    Q5_0   [ d ][ qh: 4 bytes, bit j = bit 4 of q_j ][16 bytes: low nibbles as Q4_0]
    Q5_1   [ d ][ m ][ qh ][ 16 nibble bytes ]
    Q8_0   [ d ][ q0 ][ q1 ] ... [ q31 ]   (int8)

All multi-byte fields are little-endian. Oracle: the ``gguf`` package (``gguf.quants``),
a NumPy port of llama.cpp's reference quantizers.

References: G. Gerganov et al., llama.cpp / ggml, ``ggml/src/ggml-quants.c``
(``quantize_row_q4_0_ref`` and friends) and ``ggml-common.h`` (the block structs).
"""

import numpy as np

from minquant.formats._blocks import (
    check_data,
    check_rows,
    from_fp16_bytes,
    pack_nibbles_half,
    round_half_away,
    to_fp16_bytes,
    unpack_nibbles_half,
)

BLOCK_SIZE = 32
#: Bytes per block of 32 values.
BYTES_PER_BLOCK = {"q8_0": 34, "q4_0": 18, "q4_1": 20, "q5_0": 22, "q5_1": 24}


def _inverse(d: np.ndarray) -> np.ndarray:
    """1 / d in float32, 0 where d is 0 (an all-zero block gets all-zero codes)."""
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


def _signed_max(blocks: np.ndarray) -> np.ndarray:
    """The value of largest magnitude of each block, with its sign (the first if tied)."""
    i = np.abs(blocks).argmax(axis=-1)[:, None]  # (n_blocks, 1)
    return np.take_along_axis(blocks, i, axis=-1)  # (n_blocks, 1)


def _pack_high_bits(q: np.ndarray) -> np.ndarray:
    """Bit 4 of each of the 32 codes as a little-endian uint32: (n_blocks, 4) bytes."""
    return np.packbits((q >> 4) & 1, axis=-1, bitorder="little")


def _unpack_high_bits(qh: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_pack_high_bits`: (n_blocks, 32) bits."""
    return np.unpackbits(qh, axis=-1, bitorder="little")


def quantize_gguf(x: np.ndarray, fmt: str) -> np.ndarray:
    """GGUF block bytes of ``x`` (rows, columns): uint8 (rows, columns / 32 * bytes).

    >>> data = quantize_gguf(np.arange(32, dtype=np.float32) - 16, "q4_0")
    >>> data.shape, data[0, :2].view(np.float16), data[0, 2]  # d = -16 / -8; q0=0, q16=8
    ((1, 18), array([2.], dtype=float16), np.uint8(128))
    """
    if fmt not in BYTES_PER_BLOCK:
        raise ValueError(f"fmt must be one of {sorted(BYTES_PER_BLOCK)}, got {fmt!r}")
    x = check_rows(x, BLOCK_SIZE, fmt)  # (rows, columns)
    rows, cols = x.shape
    blocks = x.reshape(-1, BLOCK_SIZE)  # (n_blocks, 32)
    if fmt == "q8_0":
        d = np.abs(blocks).max(axis=-1, keepdims=True) / np.float32(127)  # (n_blocks, 1)
        # NOTE: round half away from zero (roundf), unlike np.rint's half to even.
        q = round_half_away(blocks * _inverse(d)).astype(np.int8).view(np.uint8)
        parts = [to_fp16_bytes(d, fmt), q]
    elif fmt in ("q4_0", "q5_0"):
        levels = 16 if fmt == "q4_0" else 32  # 2^bits
        d = _signed_max(blocks) / np.float32(-levels // 2)  # (n_blocks, 1)
        offset = np.float32(levels // 2 + 0.5)
        # NOTE: trunc(x/d + 8.5) is round half up of x/d + 8 (values are >= 0 here); the
        # extreme value lands on 8.5 - 8 = 0.5 -> 0, the far side may reach 16 -> clamp 15.
        q = np.minimum(np.trunc(blocks * _inverse(d) + offset), levels - 1).astype(np.uint8)
        parts = [to_fp16_bytes(d, fmt)]
        if fmt == "q5_0":
            parts.append(_pack_high_bits(q))
        parts.append(pack_nibbles_half(q & np.uint8(0x0F)))
    else:  # q4_1, q5_1
        levels = 16 if fmt == "q4_1" else 32
        lo = blocks.min(axis=-1, keepdims=True)  # (n_blocks, 1)
        d = (blocks.max(axis=-1, keepdims=True) - lo) / np.float32(levels - 1)
        q = np.trunc((blocks - lo) * _inverse(d) + np.float32(0.5))
        q = np.minimum(q, levels - 1).astype(np.uint8)
        parts = [to_fp16_bytes(d, fmt), to_fp16_bytes(lo, fmt)]
        if fmt == "q5_1":
            parts.append(_pack_high_bits(q))
        parts.append(pack_nibbles_half(q & np.uint8(0x0F)))
    data = np.concatenate(parts, axis=-1)  # (n_blocks, bytes per block)
    return data.reshape(rows, cols // BLOCK_SIZE * BYTES_PER_BLOCK[fmt])


def dequantize_gguf(data: np.ndarray, fmt: str) -> np.ndarray:
    """float32 (rows, columns) values of GGUF block bytes (the inverse of quantize_gguf).

    >>> dequantize_gguf(quantize_gguf(np.array([-8.0, 3.0] + [0.0] * 30), "q4_0"), "q4_0")[0, :2]
    array([-8.,  3.], dtype=float32)
    """
    if fmt not in BYTES_PER_BLOCK:
        raise ValueError(f"fmt must be one of {sorted(BYTES_PER_BLOCK)}, got {fmt!r}")
    data = check_data(data, BYTES_PER_BLOCK[fmt], fmt)
    rows = data.shape[0]
    blocks = data.reshape(-1, BYTES_PER_BLOCK[fmt])  # (n_blocks, bytes per block)
    d = from_fp16_bytes(blocks[:, 0:2])  # (n_blocks, 1)
    if fmt == "q8_0":
        values = blocks[:, 2:].view(np.int8).astype(np.float32) * d
    elif fmt in ("q4_0", "q5_0"):
        q = unpack_nibbles_half(blocks[:, -16:]).astype(np.int8)  # (n_blocks, 32)
        if fmt == "q5_0":
            q |= (_unpack_high_bits(blocks[:, 2:6]) << 4).astype(np.int8)
        half = 8 if fmt == "q4_0" else 16
        values = d * (q - np.int8(half)).astype(np.float32)
    else:  # q4_1, q5_1
        m = from_fp16_bytes(blocks[:, 2:4])  # (n_blocks, 1)
        q = unpack_nibbles_half(blocks[:, -16:])
        if fmt == "q5_1":
            q |= _unpack_high_bits(blocks[:, 4:8]) << 4
        values = d * q.astype(np.float32) + m
    return values.reshape(rows, -1).astype(np.float32)
