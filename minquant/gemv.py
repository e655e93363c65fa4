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


@njit(cache=True)
def _half_to_float(h):
    """A float16 bit pattern (uint16) as float32, exactly (no float16 arithmetic)."""
    bits = np.int64(h)
    sign = np.float32(-1.0) if bits & 0x8000 else np.float32(1.0)
    exponent = (bits >> 10) & 0x1F
    mantissa = bits & 0x3FF
    if exponent == 0:  # zero and subnormals: m * 2^-24
        return sign * np.float32(mantissa) * np.float32(2.0**-24)
    if exponent == 31:
        return sign * np.float32(np.inf) if mantissa == 0 else np.float32(np.nan)
    # NOTE: (1024 + m) < 2^11 and a power of two: both exact in float32, so is the product.
    return sign * np.float32(mantissa + 1024) * np.float32(2.0 ** (exponent - 25))


# NOTE: "reassoc" lets LLVM reorder the float32 sums across SIMD lanes and "contract" fuse
# multiply-adds; rounding_bound holds for any order. No other fast-math flag (NaN and Inf in
# x still propagate). Slices first, then 0-based indices: LLVM proves them non-negative and
# drops the wraparound check that would otherwise block vectorization.
FASTMATH = {"reassoc", "contract"}


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _int4_kernel(packed, scale_bits, zero_point, z_offset, x_even, x_odd, group_size, flip):
    rows, groups = scale_bits.shape
    batch = x_even.shape[0]
    half = group_size // 2  # bytes per group
    zr, zc = zero_point.shape
    y = np.zeros((batch, rows), dtype=np.float32)  # (B, N)
    for n in prange(rows):
        for g in range(groups):
            s = _half_to_float(scale_bits[n, g])
            z = np.float32(zero_point[n % zr, g % zc] + z_offset)
            codes = packed[n, g * half : (g + 1) * half]  # (g/2,) bytes
            for b in range(batch):
                xe = x_even[b, g * half : (g + 1) * half]  # x[2i] of this group
                xo = x_odd[b, g * half : (g + 1) * half]  # x[2i + 1]
                acc = np.float32(0.0)
                for i in range(half):
                    byte = codes[i] ^ flip
                    low = np.float32(byte & 15) - z  # exact small integers
                    high = np.float32(byte >> 4) - z
                    acc += low * xe[i] + high * xo[i]
                y[b, n] += s * acc
    return y


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _int8_kernel(codes, scale_bits, zero_point, z_offset, x, group_size, flip):
    rows, groups = scale_bits.shape
    batch = x.shape[0]
    zr, zc = zero_point.shape
    y = np.zeros((batch, rows), dtype=np.float32)  # (B, N)
    for n in prange(rows):
        for g in range(groups):
            s = _half_to_float(scale_bits[n, g])
            z = np.float32(zero_point[n % zr, g % zc] + z_offset)
            row = codes[n, g * group_size : (g + 1) * group_size]  # (g,)
            for b in range(batch):
                xs = x[b, g * group_size : (g + 1) * group_size]
                acc = np.float32(0.0)
                for i in range(group_size):
                    acc += (np.float32(row[i] ^ flip) - z) * xs[i]
                y[b, n] += s * acc
    return y


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _bits_kernel(packed, scale_bits, zero_point, z_offset, x_phases, group_size, nbits, flip):
    # 8 codes fill nbits bytes: read them as one little-endian 64-bit word per unit.
    rows, groups = scale_bits.shape
    batch = x_phases.shape[0]
    units = group_size // 8  # units per group
    mask = np.uint64(2**nbits - 1)
    zr, zc = zero_point.shape
    y = np.zeros((batch, rows), dtype=np.float32)  # (B, N)
    for n in prange(rows):
        for g in range(groups):
            s = _half_to_float(scale_bits[n, g])
            z = np.float32(zero_point[n % zr, g % zc] + z_offset)
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


def _check_operands(x, packed, scale, zero_point, num_bits, group_size):
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
) -> np.ndarray:
    r"""$y = x\,\hat{W}^\top$ for packed weights $\hat{W}_{n,i} = s_{n,g}(q_{n,i} - z_{n,g})$.

    ``x`` is float32 (K,) or (B, K) (a small batch: each group is unpacked once per row and
    used for all B vectors); ``packed`` (N, K * num_bits / 8) uint8 rows of
    :func:`~minquant.packing.pack_bits` codes; ``scale`` float16 (N, K / group_size);
    ``zero_point`` integer (N, K / group_size) or ``None`` for 0. Returns float32 (N,) or
    (B, N). Numba, parallel over output rows.

    >>> from minquant.packing import pack_bits
    >>> w_q = np.array([[1, -2, 3, -4], [7, 0, -8, 1]], dtype=np.int8)  # (N, K) = (2, 4)
    >>> packed = pack_bits(w_q, 4).reshape(2, 2)  # (2, 2) bytes
    >>> scale = np.array([[0.5, 1.0], [2.0, 0.25]], dtype=np.float16)  # groups of 2
    >>> # row 0: 0.5 * (1 - 2) + 1.0 * (3 - 4); row 1: 2.0 * (7 + 0) + 0.25 * (-8 + 1)
    >>> matmul_weight_only(np.ones(4, np.float32), packed, scale, None, 4, 2, signed=True)
    array([-1.5 , 12.25], dtype=float32)
    """
    x2, _ = _check_operands(x, packed, scale, zero_point, num_bits, group_size)
    scale_bits = np.ascontiguousarray(scale).view(np.uint16)  # (N, G) float16 bit patterns
    if zero_point is None:
        zero_point = np.zeros((1, 1), dtype=np.int64)
    z_offset = 2 ** (num_bits - 1) if signed else 0
    if num_bits == 4:
        flip = np.uint8(0x88 if signed else 0)  # the two nibbles' sign bits
        x_even = np.ascontiguousarray(x2[:, 0::2])  # (B, K/2)
        x_odd = np.ascontiguousarray(x2[:, 1::2])  # (B, K/2)
        y = _int4_kernel(packed, scale_bits, zero_point, z_offset, x_even, x_odd, group_size, flip)
    elif num_bits == 8:
        flip = np.uint8(0x80 if signed else 0)
        y = _int8_kernel(packed, scale_bits, zero_point, z_offset, x2, group_size, flip)
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
