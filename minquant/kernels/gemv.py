r"""Weight-only matrix-vector products: packed low-bit weights, float activations.

Generating one token of a language model multiplies a vector by every weight matrix once:
each weight is read from memory once and used for one multiply-add, so the time is the
time to *read the weights*. Storing them in 4 bits instead of 32 reads 8x fewer bytes.
These kernels never build a float copy of the weight: each thread takes one output row,
unpacks a group of codes at a time into registers and accumulates in float32:

$$y_{b,n} = \sum_{g} s_{n,g} \sum_{i \in g} \big(q_{n,i} - z_{n,g}\big)\, x_{b,i}.$$

Layout (row-major, like ``Linear.weight`` (out, in)): ``packed[n]`` holds row ``n``'s codes
as :func:`~minquant.packing.pack_bits` writes them (int4: element ``2i`` in the low nibble
of byte ``i``); ``scale`` (out, in // g) is float16 (the stored precision, converted
exactly to float32 in the kernel); ``zero_point`` is (out, in // g) or ``None``
(symmetric: 0). Signed codes are two's complement; the kernel flips each field's sign bit
(``byte ^ 0x88`` for int4) to read them as offset binary, $q + 2^{b-1}$, and adds
$2^{b-1}$ to the zero point.

Rounding: the result equals :func:`matmul_weight_only_ref` (``dequantize``, then a float32
matmul) up to float32 summation order, bounded by :func:`rounding_bound`.

References: E. Frantar et al., "GPTQ", ICLR 2023 (its int4 GEMV kernel);
llama.cpp ``ggml_vec_dot_q4_0``; S. Williams et al., "Roofline", CACM 2009.
"""

import numpy as np
from numba import njit, prange

from minquant.packing import unpack_bits
from minquant.quant import dequantize

#: Bit widths the kernels read (int4 and int8 have dedicated kernels, the rest share one).
KERNEL_BITS = (2, 3, 4, 5, 6, 7, 8)


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
# x still propagate). Slices first, then 0-based indices: LLVM proves them non-negative and
# drops the wraparound check that would otherwise block vectorization.
FASTMATH = {"reassoc", "contract"}


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _int4_kernel(packed, scale_bits, zero_point, z_offset, x_even, x_odd, flip):
    # packed (N, G, g/2) bytes; x_even / x_odd (B, G, g/2): x[2i] and x[2i + 1] per group
    rows, groups, half = packed.shape
    batch = x_even.shape[0]
    has_zero_point = zero_point.shape[0] > 0  # (0, 0) stands for "no zero point"
    y = np.empty((batch, rows), dtype=np.float32)  # (B, N)
    for n in prange(rows):
        for b in range(batch):
            total = np.float32(0.0)
            for g in range(groups):
                z = np.float32(z_offset)
                if has_zero_point:
                    z += np.float32(zero_point[n, g])
                codes = packed[n, g]  # (g/2,) contiguous bytes
                xe = x_even[b, g]  # (g/2,)
                xo = x_odd[b, g]  # (g/2,)
                acc = np.float32(0.0)
                for i in range(half):
                    # NOTE: nibbles split in float32 (exact below 2^24): floor(byte / 16) and
                    # byte - 16 * high keep every SIMD lane 32 bits wide (integer ops on a
                    # byte are widened to int64 by Numba, halving the lanes).
                    byte = np.float32(codes[i] ^ flip)
                    high = np.floor(byte * np.float32(0.0625))
                    low = byte - np.float32(16.0) * high
                    acc += (low - z) * xe[i] + (high - z) * xo[i]
                total += _half_to_float(scale_bits[n, g]) * acc
            y[b, n] = total
    return y


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _int8_kernel(codes, scale_bits, zero_point, z_offset, x, flip):
    # codes (N, G, g) bytes; x (B, G, g)
    rows, groups, group_size = codes.shape
    batch = x.shape[0]
    has_zero_point = zero_point.shape[0] > 0  # (0, 0) stands for "no zero point"
    y = np.empty((batch, rows), dtype=np.float32)  # (B, N)
    for n in prange(rows):
        for b in range(batch):
            total = np.float32(0.0)
            for g in range(groups):
                z = np.float32(z_offset)
                if has_zero_point:
                    z += np.float32(zero_point[n, g])
                row = codes[n, g]  # (g,)
                xs = x[b, g]  # (g,)
                acc = np.float32(0.0)
                for i in range(group_size):
                    acc += (np.float32(row[i] ^ flip) - z) * xs[i]
                total += _half_to_float(scale_bits[n, g]) * acc
            y[b, n] = total
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


def _check_operands(x, packed, scale, zero_point, num_bits, group_size, check_values=True):
    """Validate; return x as float32 (B, K) and K."""
    if num_bits not in KERNEL_BITS:
        raise ValueError(f"num_bits must be one of {KERNEL_BITS}, got {num_bits!r}")
    x = np.asarray(x)
    if x.dtype != np.float32 or x.ndim not in (1, 2):
        raise TypeError(f"x must be a float32 (K,) or (B, K) array, got {x.dtype} {x.shape}")
    x2 = np.atleast_2d(x)  # (B, K)
    in_features = x2.shape[1]
    if not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    unit = 2 if num_bits == 4 else 1 if num_bits == 8 else 8
    if group_size % unit or in_features % group_size:
        raise ValueError(
            f"group_size={group_size} must be a multiple of {unit} (whole bytes per group at "
            f"{num_bits} bits) and divide in_features={in_features}"
        )
    rows = packed.shape[0] if np.ndim(packed) == 2 else -1
    if not (isinstance(packed, np.ndarray) and packed.dtype == np.uint8 and packed.ndim == 2):
        raise TypeError(f"packed must be a uint8 (out, in * bits / 8) array, got {packed!r:.80}")
    if packed.shape[1] * 8 != in_features * num_bits:
        raise ValueError(
            f"packed has {packed.shape[1]} bytes per row; in_features={in_features} at "
            f"{num_bits} bits needs {in_features * num_bits // 8}"
        )
    groups = in_features // group_size
    if not isinstance(scale, np.ndarray) or scale.dtype != np.float16:
        raise TypeError(f"scale must be a float16 array, got {getattr(scale, 'dtype', scale)}")
    if scale.shape != (rows, groups):
        raise ValueError(f"scale must have shape {(rows, groups)}, got {scale.shape}")
    if check_values and not np.all(np.isfinite(scale) & (scale > 0)):
        raise ValueError(f"scale must be positive and finite, got {scale[~(scale > 0)][:3]}")
    if zero_point is not None and np.shape(zero_point) != (rows, groups):
        raise ValueError(
            f"zero_point must be None or have shape {(rows, groups)}, got {np.shape(zero_point)}"
        )
    return np.ascontiguousarray(x2), in_features


def matmul_weight_only(
    x: np.ndarray,
    packed: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None,
    num_bits: int,
    group_size: int,
    signed: bool,
    check_values: bool = True,
) -> np.ndarray:
    r"""$y = x\,\hat{W}^\top$ for packed weights $\hat{W}_{n,i} = s_{n,g}(q_{n,i} - z_{n,g})$.

    ``x`` is float32 (K,) or (B, K) (a small batch: each group is unpacked once per row and
    used for all B vectors); ``packed`` (N, K * num_bits / 8) uint8 rows of
    :func:`~minquant.packing.pack_bits` codes; ``scale`` float16 (N, K / group_size);
    ``zero_point`` integer (N, K / group_size) or ``None`` for 0. Returns float32 (N,) or
    (B, N). Numba, parallel over output rows. ``check_values=False`` skips the O(N K / g)
    check that every scale is positive and finite (a caller that validated them once, such
    as :class:`~minquant.llm.weight_only.WeightOnlyLinear`, saves that time per token).

    >>> from minquant.packing import pack_bits
    >>> w_q = np.array([[1, -2, 3, -4], [7, 0, -8, 1]], dtype=np.int8)  # (N, K) = (2, 4)
    >>> packed = pack_bits(w_q, 4).reshape(2, 2)  # (2, 2) bytes
    >>> scale = np.array([[0.5, 1.0], [2.0, 0.25]], dtype=np.float16)  # groups of 2
    >>> # row 0: 0.5 * (1 - 2) + 1.0 * (3 - 4); row 1: 2.0 * (7 + 0) + 0.25 * (-8 + 1)
    >>> matmul_weight_only(np.ones(4, np.float32), packed, scale, None, 4, 2, signed=True)
    array([-1.5 , 12.25], dtype=float32)
    """
    x2, in_features = _check_operands(
        x, packed, scale, zero_point, num_bits, group_size, check_values
    )
    groups = in_features // group_size
    packed = np.ascontiguousarray(packed)
    scale_bits = np.ascontiguousarray(scale).view(np.uint16)  # (N, G) float16 bit patterns
    if zero_point is None:
        zero_point = np.zeros((0, 0), dtype=np.uint8)
    z_offset = 2 ** (num_bits - 1) if signed else 0
    if num_bits == 4:
        flip = np.uint8(0x88 if signed else 0)  # the two nibbles' sign bits
        # NOTE: 3-D views (row, group, byte): the innermost index starts at 0 in every
        # group, so LLVM vectorizes it without wraparound checks or gathers.
        grouped = (-1, groups, group_size // 2)
        x_even = np.ascontiguousarray(x2[:, 0::2]).reshape(grouped)  # (B, G, g/2)
        x_odd = np.ascontiguousarray(x2[:, 1::2]).reshape(grouped)  # (B, G, g/2)
        packed3 = packed.reshape(grouped)  # (N, G, g/2) a view
        y = _int4_kernel(packed3, scale_bits, zero_point, z_offset, x_even, x_odd, flip)
    elif num_bits == 8:
        flip = np.uint8(0x80 if signed else 0)
        grouped = (-1, groups, group_size)
        y = _int8_kernel(
            packed.reshape(grouped), scale_bits, zero_point, z_offset, x2.reshape(grouped), flip
        )
    else:
        sign_bits = sum(1 << (num_bits * k + num_bits - 1) for k in range(8))
        flip = np.uint64(sign_bits if signed else 0)
        batch, in_features = x2.shape
        # NOTE: x_phases[b, k, u] = x[b, 8u + k]: code k of every unit reads a contiguous row.
        x_phases = np.ascontiguousarray(
            x2.reshape(batch, in_features // 8, 8).transpose(0, 2, 1)
        )  # (B, 8, K/8)
        y = _bits_kernel(
            packed, scale_bits, zero_point, z_offset, x_phases, group_size, num_bits, flip
        )
    return y[0] if np.ndim(x) == 1 else y


def matmul_weight_only_ref(
    x: np.ndarray,
    packed: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None,
    num_bits: int,
    group_size: int,
    signed: bool,
) -> np.ndarray:
    """Plain NumPy reference for :func:`matmul_weight_only`: unpack, dequantize, matmul.

    It builds the float32 weight (the copy the kernel avoids), then one float32 matmul.

    >>> from minquant.packing import pack_bits
    >>> packed = pack_bits(np.array([[1, -2, 3, -4]]), 4).reshape(1, 2)
    >>> scale = np.array([[0.5, 1.0]], dtype=np.float16)
    >>> matmul_weight_only_ref(np.ones(4, np.float32), packed, scale, None, 4, 2, True)
    array([-1.5], dtype=float32)
    """
    x2, in_features = _check_operands(x, packed, scale, zero_point, num_bits, group_size)
    rows = packed.shape[0]
    w_q = unpack_bits(packed.ravel(), num_bits, (rows, in_features), signed)  # (N, K)
    if zero_point is None:
        zero_point = np.zeros(scale.shape, dtype=np.int64)
    w_hat = dequantize(w_q, scale.astype(np.float32), zero_point, axis=1, group_size=group_size)
    y = x2 @ w_hat.T  # (B, N) float32
    return y[0] if np.ndim(x) == 1 else y


def rounding_bound(x: np.ndarray, w_hat: np.ndarray) -> np.ndarray:
    r"""How far two float32 evaluations of $x\,\hat{W}^\top$ may differ by rounding alone.

    Any float32 sum of $K$ products, in any order, is within
    $\gamma_K \sum_i |\hat{w}_i x_i|$ of the exact value, $\gamma_K = K u / (1 - K u)$,
    $u = 2^{-24}$ (Higham, *Accuracy and Stability of Numerical Algorithms*, 3.1). The
    reference rounds once more per weight (the dequantized $\hat{w}$) and the kernel once
    more per group (the product by the scale), so their difference is at most
    $2\gamma_{K+2} \sum_i |\hat{w}_i|\,|x_i|$. Returns that bound, float64, shape of $y$.

    >>> float(rounding_bound(np.ones(4, np.float32), np.ones((1, 4), np.float32))[0]) < 1e-5
    True
    """
    x = np.asarray(x, dtype=np.float64)
    w_abs = np.abs(np.asarray(w_hat, dtype=np.float64))  # (N, K)
    k = w_abs.shape[1] + 2
    u = 2.0**-24
    gamma = k * u / (1 - k * u)
    return 2 * gamma * (np.abs(x) @ w_abs.T)
