r"""The scalar weight-only GEMV kernels: plain Numba loops that LLVM vectorises as it can.

These are the kernels every machine runs (and the only ones under ``NUMBA_DISABLE_JIT=1``):
int4 and int8 on the group-interleaved layout of :func:`minquant.kernels.gemv.pack_weight`,
the 2-7-bit widths on the :func:`~minquant.packing.pack_bits` order. Each keeps one float32
partial sum per lane of a row and applies the float16 scales once per row:

$$y_{b,n} = \sum_{l} s_{n,g(l)} \sum_{i \in l} \big(q_{n,i} - z_{n,g(l)}\big)\, x_{b,i}.$$

:mod:`minquant.kernels.gemv_simd` computes the int4 case with explicit vectors instead.
"""

import numpy as np
from numba import njit, prange

#: 2^(e - 25) for the float16 exponent field e = 0..31 (e = 0 reads as 1: subnormals).
_HALF_POW2 = np.array([2.0 ** (max(e, 1) - 25) for e in range(32)], dtype=np.float32)


@njit(cache=True)
def _half_to_float(h):
    r"""A positive finite float16 bit pattern (uint16) as float32, exactly and branch-free.

    $v = (2^{10} [e > 0] + m) \cdot 2^{\max(e, 1) - 25}$ with exponent field $e$ and
    mantissa $m$: the implicit leading 1 of normal numbers, none for subnormals. Both
    factors are exact in float32, so is their product. The sign bit is ignored (scales
    are positive; :func:`matmul_weight_only` checks).
    """
    bits = np.int32(h)
    exponent = (bits >> 10) & 0x1F
    mantissa = (bits & 0x3FF) + (1024 if exponent > 0 else 0)
    return np.float32(mantissa) * _HALF_POW2[exponent]


# NOTE: "reassoc" lets LLVM reorder the float32 sums across SIMD lanes and "contract" fuse
# multiply-adds; rounding_bound holds for any order. No other fast-math flag (NaN and Inf in
# x still propagate).
FASTMATH = {"reassoc", "contract"}

#: Output rows per parallel task (each task allocates its small per-row buffers once).
ROW_BLOCK = 16


@njit(cache=True)
def _split_nibbles(byte, flip):
    """(low, high) nibble of ``byte ^ flip`` as float32 (see _int4_kernel)."""
    # NOTE: split in float32 (exact below 2^24): t = 16 high + low, high = floor(t / 16).
    # Integer shifts and masks would be widened to int64 by Numba (half the SIMD lanes).
    t = np.float32(byte ^ flip)
    high = np.floor(t * np.float32(0.0625))
    return t - np.float32(16.0) * high, high


@njit(fastmath=FASTMATH, cache=True)
def _scaled_sum(acc, scale):
    r"""$\sum_g s_g \sum_{l \in g} acc_l$ (the lanes of a group are contiguous)."""
    groups = scale.shape[0]
    split = acc.shape[0] // groups  # lanes per group
    total = np.float32(0.0)
    if split == 1:  # NOTE: the common case gets its own loop: a plain dot product, in SIMD
        for g in range(groups):
            total += scale[g] * acc[g]
        return total
    for g in range(groups):
        part = np.float32(0.0)
        for c in range(g * split, (g + 1) * split):
            part += acc[c]
        total += scale[g] * part
    return total


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _int4_kernel(packed, scale_bits, zero_point, z_offset, x_even, x_odd, flip):
    # packed (N, B_lane, L): row n's byte i of every lane, then byte i + 1, ...;
    # x_even / x_odd (B, B_lane, L): the x of the low and high nibbles, in the same order
    rows, lane_bytes, lanes = packed.shape
    batch = x_even.shape[0]
    split = lanes // scale_bits.shape[1]  # lanes per group
    has_zero_point = zero_point.shape[0] > 0  # (0, 0) stands for "no zero point"
    y = np.empty((batch, rows), dtype=np.float32)  # (B, N)
    for block in prange((rows + ROW_BLOCK - 1) // ROW_BLOCK):
        scale = np.empty(scale_bits.shape[1], dtype=np.float32)  # (G,) the row's scales
        z_hi = np.empty(lanes, dtype=np.float32)  # (L,) zero point of the high nibbles
        z_lo = np.empty(lanes, dtype=np.float32)  # (L,) ... of the low nibbles
        acc = np.empty(lanes, dtype=np.float32)  # (L,) one partial sum per lane
        for n in range(block * ROW_BLOCK, min(rows, (block + 1) * ROW_BLOCK)):
            for g in range(scale.shape[0]):
                scale[g] = _half_to_float(scale_bits[n, g])
            if has_zero_point:
                for lane in range(lanes):
                    z_hi[lane] = np.float32(zero_point[n, lane // split])
                    z_lo[lane] = z_hi[lane] + np.float32(z_offset)
            for b in range(batch):
                acc[:] = 0.0
                for i in range(lane_bytes):
                    codes = packed[n, i]  # (L,) byte i of every lane
                    xe = x_even[b, i]  # (L,)
                    xo = x_odd[b, i]  # (L,)
                    # NOTE: the SIMD lanes run across lanes of the row (contiguous bytes,
                    # one partial sum each): no horizontal sum and no scale per group.
                    if has_zero_point:
                        for c in range(lanes):
                            lo, hi = _split_nibbles(codes[c], flip)
                            acc[c] += (lo - z_lo[c]) * xe[c] + (hi - z_hi[c]) * xo[c]
                    else:  # symmetric: the same loop with two loads and a subtraction less
                        for c in range(lanes):
                            lo, hi = _split_nibbles(codes[c], flip)
                            acc[c] += (lo - np.float32(z_offset)) * xe[c] + hi * xo[c]
                y[b, n] = _scaled_sum(acc, scale)
    return y


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _int8_kernel(codes, scale_bits, zero_point, x):
    # codes (N, B_lane, L) int8 or uint8: row n's code i of every lane, then i + 1, ...;
    # x (B, B_lane, L): the x of each code, in the same order
    rows, lane_bytes, lanes = codes.shape
    batch = x.shape[0]
    split = lanes // scale_bits.shape[1]  # lanes per group
    has_zero_point = zero_point.shape[0] > 0  # (0, 0) stands for "no zero point"
    y = np.empty((batch, rows), dtype=np.float32)  # (B, N)
    for block in prange((rows + ROW_BLOCK - 1) // ROW_BLOCK):
        scale = np.empty(scale_bits.shape[1], dtype=np.float32)  # (G,) the row's scales
        z = np.empty(lanes, dtype=np.float32)  # (L,) zero point of each lane
        acc = np.empty(lanes, dtype=np.float32)  # (L,) one partial sum per lane
        for n in range(block * ROW_BLOCK, min(rows, (block + 1) * ROW_BLOCK)):
            for g in range(scale.shape[0]):
                scale[g] = _half_to_float(scale_bits[n, g])
            if has_zero_point:
                for lane in range(lanes):
                    z[lane] = np.float32(zero_point[n, lane // split])
            for b in range(batch):
                acc[:] = 0.0
                for i in range(lane_bytes):
                    row = codes[n, i]  # (L,) code i of every lane
                    xs = x[b, i]  # (L,)
                    if has_zero_point:
                        for c in range(lanes):
                            acc[c] += (np.float32(row[c]) - z[c]) * xs[c]
                    else:
                        for c in range(lanes):
                            acc[c] += np.float32(row[c]) * xs[c]
                y[b, n] = _scaled_sum(acc, scale)
    return y


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _bits_kernel(packed, scale_bits, zero_point, z_offset, x_phases, group_size, nbits, flip):
    # 8 codes fill nbits bytes: read them as one little-endian 64-bit word per unit.
    rows, groups = scale_bits.shape
    batch = x_phases.shape[0]
    units = group_size // 8  # units per group
    mask = np.uint64(2**nbits - 1)
    has_zero_point = zero_point.shape[0] > 0  # (0, 0) stands for "no zero point"
    y = np.zeros((batch, rows), dtype=np.float32)  # (B, N)
    for n in prange(rows):
        for g in range(groups):
            s = _half_to_float(scale_bits[n, g])
            z = np.float32(z_offset)
            if has_zero_point:
                z += np.float32(zero_point[n, g])
            codes = packed[n, g * units * nbits : (g + 1) * units * nbits]
            for b in range(batch):
                acc = np.float32(0.0)
                for u in range(units):
                    word = np.uint64(0)
                    for i in range(nbits):
                        word |= np.uint64(codes[u * nbits + i]) << np.uint64(8 * i)
                    word ^= flip
                    for k in range(8):
                        field = (word >> np.uint64(nbits * k)) & mask
                        acc += (np.float32(field) - z) * x_phases[b, k, g * units + u]
                y[b, n] += s * acc
    return y
