r"""Weight-only matrix-vector products: packed low-bit weights, float activations.

Generating one token of a language model multiplies a vector by every weight matrix once:
each weight is read from memory once and used for one multiply-add, so the time is the
time to *read the weights*. Storing them in 4 bits instead of 32 reads 8x fewer bytes.
These kernels never build a float copy of the weight: they unpack the codes in registers
and accumulate in float32, one partial sum per group, then scale:

$$y_{b,n} = \sum_{g} s_{n,g} \sum_{i \in g} \big(q_{n,i} - z_{n,g}\big)\, x_{b,i}.$$

Layout (row-major, like ``Linear.weight`` (out, in)): ``packed[n]`` holds row ``n``'s
codes as :func:`pack_weight` writes them: :func:`~minquant.packing.pack_bits` order
(int4: element ``2i`` in the low nibble of byte ``i``), and at 4 and 8 bits
group-interleaved (byte ``j`` of every group, then byte ``j + 1``), so that the SIMD lanes
of the int4 and int8 kernels run across groups: contiguous loads, one partial sum per lane,
no horizontal sum per group. ``scale`` (out, in // g) is float16 (the stored precision,
converted exactly to float32 in the kernel); ``zero_point`` is (out, in // g) or ``None``
(symmetric: 0). Signed codes are two's complement (read through an int8 view at 4 and 8
bits; the 2-7-bit kernel flips each field's sign bit to read offset binary,
$q + 2^{b-1}$, and adds $2^{b-1}$ to the zero point).

Kernels: :mod:`minquant.kernels.gemv_plain` (scalar Numba loops, every bit width, every
machine) and, for int4, :mod:`minquant.kernels.gemv_simd` (explicit vectors: one bitwise
operation, one exact subtraction and one multiply-add per code). The int4 path is
chosen at run time (:func:`select_path`): ``"simd"`` where it can run, else ``"plain"``;
force one with ``path=`` or the environment variable ``MINQUANT_GEMV_PATH``.

Rounding: the result equals :func:`matmul_weight_only_ref` (``dequantize``, then a float32
matmul) up to float32 summation order, bounded by :func:`rounding_bound`, on every path.

References: E. Frantar et al., "GPTQ", ICLR 2023 (its int4 GEMV kernel);
llama.cpp ``ggml_vec_dot_q4_0``; S. Williams et al., "Roofline", CACM 2009.
"""

import os

import numpy as np

from minquant.kernels.gemv_plain import _bits_kernel, _int4_kernel, _int8_kernel
from minquant.kernels.gemv_simd import STEP, int4_simd, simd_available
from minquant.packing import pack_bits, unpack_bits
from minquant.quant import dequantize

#: Bit widths the kernels read (int4 and int8 have dedicated kernels, the rest share one).
KERNEL_BITS = (2, 3, 4, 5, 6, 7, 8)

#: Inner loops of the int4 kernel, fastest first.
PATHS = ("simd", "plain")


def available_paths() -> tuple[str, ...]:
    """The int4 inner loops this machine can run, fastest first (always ends with "plain").

    >>> available_paths()[-1]
    'plain'
    """
    return ("simd", "plain") if simd_available() else ("plain",)


def select_path(path: str | None = None) -> str:
    """``path`` if given, else ``$MINQUANT_GEMV_PATH``, else the fastest available path.

    Raises ValueError for an unknown path or one this machine cannot run.

    >>> select_path("plain")
    'plain'
    """
    path = path or os.environ.get("MINQUANT_GEMV_PATH") or available_paths()[0]
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if path not in available_paths():
        raise ValueError(
            f"path {path!r} cannot run here (available: {available_paths()}; it needs "
            "compiled code and, on x86, the F16C instructions)"
        )
    return path


def int4_kernel(
    in_features: int, group_size: int, zero_point: np.ndarray | None, signed: bool, path: str
) -> str:
    r"""Which kernel an int4 product runs on ``path``: ``"simd"`` needs a multiple of 32 lanes
    (:func:`interleave_lanes`) and integer zero points with
    $0 \le z + 8 [\text{signed}] \le 255$ (it reads them as uint8); anything else runs
    ``"plain"``.

    >>> int4_kernel(4096, 64, None, True, "simd"), int4_kernel(8, 4, None, True, "simd")
    ('simd', 'plain')
    """
    if path != "simd" or interleave_lanes(in_features, group_size, 4) % STEP:
        return "plain"
    # NOTE: uint8 zero points of unsigned codes (what WeightOnlyLinear stores) need no scan.
    uint8_as_is = zero_point is not None and zero_point.dtype == np.uint8 and not signed
    if zero_point is not None and not np.issubdtype(zero_point.dtype, np.integer):
        return "plain"
    if zero_point is not None and zero_point.size and not uint8_as_is:
        offset = 8 if signed else 0
        low, high = int(zero_point.min()) + offset, int(zero_point.max()) + offset
        if low < 0 or high > 255:
            return "plain"
    return "simd"


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


#: Bit widths stored interleaved (see :func:`pack_weight`); the others keep the
#: :func:`~minquant.packing.pack_bits` row order.
INTERLEAVED_BITS = (4, 8)
#: Groups are cut into equal pieces until a row has at least this many (SIMD lanes).
MIN_LANES = 32


def interleave_lanes(in_features: int, group_size: int, num_bits: int) -> int:
    """How many lanes (equal pieces of whole bytes, never across groups) a row is cut into.

    One per group when a row has at least :data:`MIN_LANES` groups; otherwise each group is
    halved while the halves still hold whole bytes, until there are enough.

    >>> interleave_lanes(4096, 64, 4), interleave_lanes(256, 64, 4), interleave_lanes(8, 4, 4)
    (64, 32, 4)
    """
    groups = in_features // group_size
    piece = group_size  # codes per lane
    codes_per_byte = 8 // num_bits
    while groups * (group_size // piece) < MIN_LANES and piece % (2 * codes_per_byte) == 0:
        piece //= 2
    return groups * (group_size // piece)


def pack_weight(w_q: np.ndarray, num_bits: int, group_size: int, signed: bool) -> np.ndarray:
    r"""Codes (N, K) to the byte rows the kernels read, (N, K * num_bits / 8) uint8.

    Each row is first packed by :func:`~minquant.packing.pack_bits` (int4: codes $2j$ and
    $2j+1$ in the low and high nibble of byte $j$). At 4 and 8 bits the row's bytes are then
    **interleaved**: cut into L lanes of B bytes (a lane is a group, or an equal piece of one
    when a row has few groups: :func:`interleave_lanes`), the (L, B) row is stored
    transposed, (B, L): byte $j$ of every lane, then byte $j + 1$ of every lane. A kernel
    reads L consecutive bytes of L different lanes and keeps one partial sum per lane in
    its own SIMD lane: contiguous loads, no horizontal sum per group (llama.cpp's Q4_0
    reorders the nibbles of a block for the same reason).

    >>> w_q = np.arange(-4, 4).reshape(1, 8)  # (N, K) = (1, 8), two groups of 4: 4 lanes
    >>> pack_bits(w_q, 4).tolist()  # bytes (-4, -3) (-2, -1) | (0, 1) (2, 3)
    [220, 254, 16, 50]
    >>> pack_weight(w_q, 4, 4, signed=True).tolist()  # one byte per lane: unchanged
    [[220, 254, 16, 50]]
    >>> w_q = np.arange(128).reshape(1, 128) % 16  # 32 groups of 4 = 32 lanes of 2 bytes
    >>> pack_weight(w_q, 4, 4, signed=False)[0, :4].tolist()  # bytes (0, 1) (4, 5) (8, 9) ...
    [16, 84, 152, 220]
    """
    w_q = np.asarray(w_q)
    rows, in_features = w_q.shape
    packed = pack_bits(w_q, num_bits, signed).reshape(rows, -1)  # (N, K * b / 8)
    if num_bits not in INTERLEAVED_BITS:
        return packed
    lanes = packed.reshape(rows, interleave_lanes(in_features, group_size, num_bits), -1)
    return np.ascontiguousarray(lanes.transpose(0, 2, 1)).reshape(rows, -1)  # (N, B * L)


def unpack_weight(
    packed: np.ndarray, num_bits: int, group_size: int, in_features: int, signed: bool
) -> np.ndarray:
    """The inverse of :func:`pack_weight`: byte rows (N, K * num_bits / 8) to codes (N, K).

    >>> w_q = np.arange(64).reshape(1, 64) % 16
    >>> np.array_equal(unpack_weight(pack_weight(w_q, 4, 32, False), 4, 32, 64, False), w_q)
    True
    """
    rows = packed.shape[0]
    if num_bits in INTERLEAVED_BITS:
        lanes = interleave_lanes(in_features, group_size, num_bits)
        packed = packed.reshape(rows, -1, lanes).transpose(0, 2, 1)  # (N, L, B) pack_bits order
    return unpack_bits(np.ascontiguousarray(packed).ravel(), num_bits, (rows, in_features), signed)


def matmul_weight_only(
    x: np.ndarray,
    packed: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None,
    num_bits: int,
    group_size: int,
    signed: bool,
    check_values: bool = True,
    path: str | None = None,
) -> np.ndarray:
    r"""$y = x\,\hat{W}^\top$ for packed weights $\hat{W}_{n,i} = s_{n,g}(q_{n,i} - z_{n,g})$.

    ``x`` is float32 (K,) or (B, K) (a small batch: each group is unpacked once per row and
    used for all B vectors); ``packed`` (N, K * num_bits / 8) uint8 rows made by
    :func:`pack_weight`; ``scale`` float16 (N, K / group_size); ``zero_point`` integer
    (N, K / group_size) or ``None`` for 0. Returns float32 (N,) or (B, N). Numba, parallel
    over blocks of output rows. ``check_values=False`` skips the O(N K / g) check that every
    scale is positive and finite (a caller that validated them once, such as
    :class:`~minquant.llm.weight_only.WeightOnlyLinear`, saves that time per token).
    ``path`` picks the int4 inner loop (:func:`select_path`, :func:`int4_kernel`); the other
    bit widths always run the scalar kernels.

    >>> w_q = np.array([[1, -2, 3, -4], [7, 0, -8, 1]], dtype=np.int8)  # (N, K) = (2, 4)
    >>> packed = pack_weight(w_q, 4, 2, signed=True)  # (2, 2) bytes
    >>> scale = np.array([[0.5, 1.0], [2.0, 0.25]], dtype=np.float16)  # groups of 2
    >>> # row 0: 0.5 * (1 - 2) + 1.0 * (3 - 4); row 1: 2.0 * (7 + 0) + 0.25 * (-8 + 1)
    >>> matmul_weight_only(np.ones(4, np.float32), packed, scale, None, 4, 2, signed=True)
    array([-1.5 , 12.25], dtype=float32)
    """
    x2, in_features = _check_operands(
        x, packed, scale, zero_point, num_bits, group_size, check_values
    )
    batch = x2.shape[0]
    packed = np.ascontiguousarray(packed)
    scale_bits = np.ascontiguousarray(scale).view(np.uint16)  # (N, G) float16 bit patterns
    zero_point = None if zero_point is None else np.asarray(zero_point)  # (N, G)
    kernel_zero_point = zero_point
    if zero_point is None:
        kernel_zero_point = np.zeros((0, 0), dtype=np.uint8)  # (0, 0) stands for "none"
    # NOTE: signed codes are read through an int8 view (two's complement, sign-extended).
    codes = packed.view(np.int8) if signed else packed
    if num_bits in INTERLEAVED_BITS:
        lanes = interleave_lanes(in_features, group_size, num_bits)
    if num_bits == 4:
        x4 = x2.reshape(batch, lanes, -1, 2)  # (B, L, B_lane, 2): even and odd k
        x_even = np.ascontiguousarray(x4[..., 0].transpose(0, 2, 1))  # (B, B_lane, L)
        x_odd = np.ascontiguousarray(x4[..., 1].transpose(0, 2, 1))  # (B, B_lane, L)
        kernel = int4_kernel(in_features, group_size, zero_point, signed, select_path(path))
    if num_bits == 4 and kernel == "simd":
        split = lanes // scale.shape[1]  # lanes per group
        y = _int4_simd(x_even, x_odd, packed, scale_bits, zero_point, split, signed)  # (B, N)
    elif num_bits == 4:
        # NOTE: flipping the low nibble's sign bit makes int8(byte ^ 0x08) = 16 q_hi + q_lo + 8
        # with the signed high code q_hi: the float split then yields q_hi and q_lo + 8.
        flip = np.int8(0x08) if signed else np.uint8(0)
        z_offset = 8 if signed else 0
        codes3 = codes.reshape(codes.shape[0], -1, lanes)  # (N, B_lane, L) a view
        y = _int4_kernel(codes3, scale_bits, kernel_zero_point, z_offset, x_even, x_odd, flip)
    elif num_bits == 8:
        x3 = np.ascontiguousarray(x2.reshape(batch, lanes, -1).transpose(0, 2, 1))  # (B, B_lane, L)
        codes3 = codes.reshape(codes.shape[0], -1, lanes)  # (N, B_lane, L) a view
        y = _int8_kernel(codes3, scale_bits, kernel_zero_point, x3)
    else:
        sign_bits = sum(1 << (num_bits * k + num_bits - 1) for k in range(8))
        flip = np.uint64(sign_bits if signed else 0)
        z_offset = 2 ** (num_bits - 1) if signed else 0
        # NOTE: x_phases[b, k, u] = x[b, 8u + k]: code k of every unit reads a contiguous row.
        x_phases = np.ascontiguousarray(
            x2.reshape(batch, in_features // 8, 8).transpose(0, 2, 1)
        )  # (B, 8, K/8)
        y = _bits_kernel(
            packed, scale_bits, kernel_zero_point, z_offset, x_phases, group_size, num_bits, flip
        )
    return y[0] if np.ndim(x) == 1 else y


def _int4_simd(x_even, x_odd, packed, scale_bits, zero_point, split, signed):
    """:func:`~minquant.kernels.gemv_simd.int4_simd` with per-lane scales and zero points
    (the stored arrays themselves when a lane is a whole group, ``split == 1``)."""
    lanes = x_even.shape[2]
    scale_lanes = scale_bits if split == 1 else np.repeat(scale_bits, split, axis=1)  # (N, L)
    offset = 8 if signed else 0  # NOTE: b ^ 0x88 reads signed nibbles as q + 8
    if zero_point is None:
        zero_lanes = np.full((1, lanes), offset, dtype=np.uint8)  # (1, L) the same every row
    else:
        zero_lanes = zero_point if split == 1 else np.repeat(zero_point, split, axis=1)  # (N, L)
        if offset or zero_lanes.dtype != np.uint8:
            # NOTE: int4_kernel checked 0 <= z + offset <= 255: exact in uint8.
            zero_lanes = (zero_lanes.astype(np.int16) + offset).astype(np.uint8)
    scale_lanes, zero_lanes = np.ascontiguousarray(scale_lanes), np.ascontiguousarray(zero_lanes)
    return int4_simd(packed, scale_lanes, zero_lanes, 0x88 if signed else 0, x_even, x_odd)


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

    >>> packed = pack_weight(np.array([[1, -2, 3, -4]]), 4, 2, signed=True)
    >>> scale = np.array([[0.5, 1.0]], dtype=np.float16)
    >>> matmul_weight_only_ref(np.ones(4, np.float32), packed, scale, None, 4, 2, True)
    array([-1.5], dtype=float32)
    """
    x2, in_features = _check_operands(x, packed, scale, zero_point, num_bits, group_size)
    w_q = unpack_weight(packed, num_bits, group_size, in_features, signed)  # (N, K)
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
