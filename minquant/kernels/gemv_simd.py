r"""The int4 weight-only GEMV on explicit SIMD vectors (:mod:`minquant.kernels.gemv_ir`).

Same layout and the same sum as the scalar kernel of :mod:`minquant.kernels.gemv_plain`
(group-interleaved rows, one partial sum per lane, the scales applied once per row), with
the inner loop written in vectors of 16 lanes. Per 16 bytes $b$ of a row (32 codes of
16 lanes), zero-extended to one byte per 32-bit lane:

$$\mathrm{acc}^{\mathrm{lo}} \mathrel{+}= \big[(2^{23} + (b \mathbin{\&} 15))
- (2^{23} + z)\big]\, x^{\mathrm{even}}, \qquad
\mathrm{acc}^{\mathrm{hi}} \mathrel{+}= \big[(2^{23} + (b \mathbin{\&} 240))
- (2^{23} + 16 z)\big]\, x^{\mathrm{odd}},$$

where $2^{23} + f$ is the field $f$ OR-ed into the mantissa of $2^{23}$
(:func:`~minquant.kernels.gemv_ir.field_floats`): one bitwise instruction, one exact float
subtraction and one multiply-add per code, no shift, no sign extension, no int-to-float
conversion. The high nibble is read in place, as $16 q^{\mathrm{hi}}$, so
$\mathrm{acc}^{\mathrm{hi}}$ is 16 times the sum it stands for; at the end of the row,

$$y_n = \sum_l s_l \big(\mathrm{acc}^{\mathrm{lo}}_l
+ \tfrac{1}{16}\,\mathrm{acc}^{\mathrm{hi}}_l\big)$$

with the float16 scales converted in the vector unit. Signed codes are two's complement
nibbles: flipping each nibble's top bit (``b ^ 0x88``, folded into the same bitwise
instruction) reads them as offset binary $q + 8$, and the zero point becomes $z + 8$.

Rounding: $q - z$ is exact (integers below $2^{24}$), and scaling a float32 sum by 16 or
1/16 is exact (a power of two, barring overflow and subnormals), so the result is a float32
sum of the same products as the scalar kernel, in another order: within
:func:`~minquant.kernels.gemv.rounding_bound` of ``dequantize``-then-matmul.

Needs ``lanes % 32 == 0`` (:func:`~minquant.kernels.gemv.interleave_lanes` gives at least 32
lanes: rows of 32 or more groups, or of a power-of-two number of groups of 64 or more codes)
and zero points in uint8; the caller runs the scalar kernel otherwise.
"""

import functools

import numpy as np
from numba import config, njit, prange

from minquant.kernels.gemv_ir import (
    add_f32x16,
    field_floats,
    load_f16x16,
    load_f32x16,
    load_u8x16,
    load_u8x16_f32,
    muladd_f32x16,
    splat_f32x16,
    sub_f32x16,
    sum_f32x16,
    zeros_f32x16,
)

#: Lanes per step of the inner loop: two vectors of 16 (four accumulators in flight).
STEP = 32


@functools.cache
def simd_available() -> bool:
    """Whether the vector kernel can run here: compiled code (not ``NUMBA_DISABLE_JIT``) for
    x86 with the F16C float16 conversion (every CPU with AVX2 has it) or for 64-bit ARM.

    Cached: asking LLVM for the CPU's features takes about 0.5 ms, half a 4096 x 4096 GEMV.
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
    """y (B, N) from packed (N, B_lane * L) uint8, scale_lanes (N, L) float16 bit patterns,
    zero_lanes (1 or N, L) uint8 (z + 8 for signed codes), flip 0x88 (signed) or 0,
    x_even / x_odd (B, B_lane, L) float32: the x of each lane's low and high nibbles."""
    rows = packed.shape[0]
    batch, lane_bytes, lanes = x_even.shape
    row_bytes = lane_bytes * lanes
    one_zero_row = zero_lanes.shape[0] == 1  # symmetric: the same z for every row
    magic = 0x4B000000  # the bit pattern of 2^23
    bits_lo, bits_hi = magic | (flip & 0x0F), magic | (flip & 0xF0)  # flip inside the field
    two23, sixteen, sixteenth = splat_f32x16(2.0**23), splat_f32x16(16.0), splat_f32x16(0.0625)
    y = np.empty((batch, rows), dtype=np.float32)  # (B, N)
    for task in prange(rows):
        n = np.int64(task)
        z_row = np.int64(0) if one_zero_row else n
        for b in range(batch):
            total = zeros_f32x16()
            for c in range(0, lanes, STEP):  # 32 lanes at a time
                z0 = load_u8x16_f32(zero_lanes, z_row * lanes + c)
                z1 = load_u8x16_f32(zero_lanes, z_row * lanes + c + 16)
                zl0, zl1 = add_f32x16(z0, two23), add_f32x16(z1, two23)  # 2^23 + z, exact
                zh0, zh1 = muladd_f32x16(z0, sixteen, two23), muladd_f32x16(z1, sixteen, two23)
                lo0, lo1, hi0, hi1 = zeros_f32x16(), zeros_f32x16(), zeros_f32x16(), zeros_f32x16()
                for j in range(lane_bytes):
                    at_codes = n * row_bytes + j * lanes + c
                    d0, d1 = load_u8x16(packed, at_codes), load_u8x16(packed, at_codes + 16)
                    at = 4 * ((b * lane_bytes + j) * lanes + c)  # byte offset of x[b, j, c]
                    # NOTE: (2^23 + q) - (2^23 + z) = q - z exactly; the high field is 16 q.
                    q = sub_f32x16(field_floats(d0, 0x0F, bits_lo), zl0)
                    lo0 = muladd_f32x16(q, load_f32x16(x_even, at), lo0)
                    q = sub_f32x16(field_floats(d1, 0x0F, bits_lo), zl1)
                    lo1 = muladd_f32x16(q, load_f32x16(x_even, at + 64), lo1)
                    q = sub_f32x16(field_floats(d0, 0xF0, bits_hi), zh0)
                    hi0 = muladd_f32x16(q, load_f32x16(x_odd, at), hi0)
                    q = sub_f32x16(field_floats(d1, 0xF0, bits_hi), zh1)
                    hi1 = muladd_f32x16(q, load_f32x16(x_odd, at + 64), hi1)
                s = 2 * (n * lanes + c)  # byte offset of scale_lanes[n, c]
                part0 = muladd_f32x16(hi0, sixteenth, lo0)  # hi / 16 exact: a power of two
                part1 = muladd_f32x16(hi1, sixteenth, lo1)
                total = muladd_f32x16(part0, load_f16x16(scale_lanes, s), total)
                total = muladd_f32x16(part1, load_f16x16(scale_lanes, s + 32), total)
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
