r"""The int4 weight-only GEMV on explicit SIMD vectors (:mod:`minquant.kernels.gemv_ir`).

Same layout and the same sum as :func:`minquant.kernels.gemv.matmul_weight_only` (group-
interleaved rows, one partial sum per lane, the scales applied once per row), with the
inner loop written in vectors: per 32 bytes of a row (64 codes of 32 lanes),

$$\mathrm{acc}^{\mathrm{lo}}_l \mathrel{+}= (q^{\mathrm{lo}}_l - z_l)\, x^{\mathrm{even}}_l,
\qquad \mathrm{acc}^{\mathrm{hi}}_l \mathrel{+}= (q^{\mathrm{hi}}_l - z_l)\, x^{\mathrm{odd}}_l,$$

with $q^{\mathrm{lo}} = b \mathbin{\&} 15$ and $q^{\mathrm{hi}} = b \gg 4$ split on all 32
bytes at once, $q - z$ subtracted **as int8** (exact), then one int-to-float conversion and
one multiply-add per code. Signed codes are two's complement nibbles: ``b ^ 0x88`` reads
both as offset binary $q + 8$, and the zero point becomes $z + 8$. At the end of the row,
$y_n = \sum_l s_l (\mathrm{acc}^{\mathrm{lo}}_l + \mathrm{acc}^{\mathrm{hi}}_l)$ with the
float16 scales converted in the vector unit.

Rounding: the codes and $q - z$ are exact integers, so the result is a float32 sum of the
same products as the scalar kernel, in another order: within
:func:`~minquant.kernels.gemv.rounding_bound` of ``dequantize``-then-matmul.

Needs ``lanes % 32 == 0`` (:func:`~minquant.kernels.gemv.interleave_lanes` gives at least 32
lanes, so any row of >= 32 groups of an even size, or a multiple of 64 codes); the caller
falls back to the scalar kernel otherwise.
"""

import numpy as np
from numba import config, njit, prange

from minquant.kernels.gemv_ir import (
    add_f32x16,
    float_lanes_0_15,
    float_lanes_16_31,
    high_nibbles,
    load_f16x16,
    load_f32x16,
    load_i8x32,
    low_nibbles,
    muladd_f32x16,
    splat_i8x32,
    sum_f32x16,
    xor_i8x32,
    zeros_f32x16,
)

#: Lanes per vector step: 32 bytes of codes, two F32x16 of each nibble.
STEP = 32


def simd_available() -> bool:
    """Whether the vector kernel can run here: compiled code (not ``NUMBA_DISABLE_JIT``) for
    x86 with the F16C float16 conversion (every CPU with AVX2 has it) or for 64-bit ARM.

    NOTE: without F16C, LLVM turns the float16 conversion into a call to ``__extendhfsf2``,
    which Numba cannot link: the process would abort, so such a CPU runs the scalar kernel.

    >>> isinstance(simd_available(), bool)
    True
    """
    if config.DISABLE_JIT:
        return False
    import llvmlite.binding as llvm

    triple = llvm.get_process_triple()
    if triple.startswith(("x86_64", "i386", "i686")):
        features = config.CPU_FEATURES or llvm.get_host_cpu_features().flatten()
        return "+f16c" in features.split(",")
    return triple.startswith(("aarch64", "arm64"))


@njit(parallel=True, cache=True)
def int4_simd(packed, scale_lanes, zero_lanes, flip, x_even, x_odd):  # pragma: no cover - jit
    """y (B, N) from packed (N, B_lane * L) uint8, scale_lanes (N, L) float16, zero_lanes
    (1 or N, L) uint8 (z + 8 for signed codes), x_even / x_odd (B, B_lane, L) float32."""
    rows = packed.shape[0]
    batch, lane_bytes, lanes = x_even.shape
    row_bytes = lane_bytes * lanes
    flips = splat_i8x32(flip)
    one_zero_row = zero_lanes.shape[0] == 1  # symmetric: the same z for every row
    y = np.empty((batch, rows), dtype=np.float32)  # (B, N)
    for task in prange(rows):
        # NOTE: a prange index may be typed uint64; int64 offsets mixed with it turn float.
        n = np.int64(task)
        z_row = np.int64(0) if one_zero_row else n
        for b in range(batch):
            total = zeros_f32x16()
            for c in range(0, lanes, STEP):  # 32 lanes at a time
                zero = load_i8x32(zero_lanes, z_row * lanes + c)
                lo0, lo1, hi0, hi1 = zeros_f32x16(), zeros_f32x16(), zeros_f32x16(), zeros_f32x16()
                for j in range(lane_bytes):
                    byte = xor_i8x32(load_i8x32(packed, n * row_bytes + j * lanes + c), flips)
                    low, high = low_nibbles(byte, zero), high_nibbles(byte, zero)  # q - z, int8
                    at = 4 * ((b * lane_bytes + j) * lanes + c)  # byte offset of x[b, j, c]
                    lo0 = muladd_f32x16(float_lanes_0_15(low), load_f32x16(x_even, at), lo0)
                    lo1 = muladd_f32x16(float_lanes_16_31(low), load_f32x16(x_even, at + 64), lo1)
                    hi0 = muladd_f32x16(float_lanes_0_15(high), load_f32x16(x_odd, at), hi0)
                    hi1 = muladd_f32x16(float_lanes_16_31(high), load_f32x16(x_odd, at + 64), hi1)
                s = 2 * (n * lanes + c)  # byte offset of scale_lanes[n, c]
                total = muladd_f32x16(add_f32x16(lo0, hi0), load_f16x16(scale_lanes, s), total)
                total = muladd_f32x16(add_f32x16(lo1, hi1), load_f16x16(scale_lanes, s + 32), total)
            y[b, n] = sum_f32x16(total)
    return y


def kernel_asm() -> str:
    """Assembly of :func:`int4_simd` for this CPU (one thread), compiled afresh.

    NOTE: Numba returns no assembly for code loaded from its cache (and keeps a ``prange``
    body in a separate function), so this compiles an uncached serial copy (a few seconds).
    """
    from numba import types

    fresh = njit(int4_simd.py_func)
    u8, u16 = types.Array(types.uint8, 2, "C"), types.Array(types.uint16, 2, "C")
    f32 = types.Array(types.float32, 3, "C")
    sig = (u8, u16, u8, types.int64, f32, f32)
    fresh.compile(sig)
    return fresh.inspect_asm(sig)
