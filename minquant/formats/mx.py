r"""Microscaling (MX) formats: blocks of 32 elements that share one power-of-two scale.

An MX block stores one 8-bit scale $X = 2^{e}$ (the E8M0 format: an exponent and nothing
else) and 32 narrow elements $P_i$; the values are $v_i = X \cdot P_i$. The shared exponent is
chosen from the block's largest magnitude (OCP MX v1.0, section 6.3, "Conversion"):

$$e = \lfloor \log_2 \max_i |v_i| \rfloor - e_{max}^{elem}, \qquad
P_i = \mathrm{cast}_{elem}(v_i / 2^{e})\ \text{(round to nearest even, saturating)},$$

where $e_{max}^{elem}$ is the exponent of the element format's largest normal value: 2 for
FP4 E2M1 (max 6), 8 for FP8 E4M3 (max 448), 15 for FP8 E5M2 (max 57344) and 0 for INT8
(a fixed-point element $q / 64$ with $|q| \le 127$). The largest element then lands in
$[2^{e_{max}}, 2^{e_{max}+1})$: it keeps full precision, and values above the element's
maximum (6.5 in FP4, say) saturate.

::

    E8M0 scale   bit 7 ........ 0     value 2^(e - 127), e = 0..254; 0xFF is NaN
                     e e e e e e e e  (no sign, no mantissa, no zero)

    MX block (33 bytes for 8-bit elements, 17 for FP4):
    byte 0        1       2            32
        [scale] [P_0]   [P_1]   ...   [P_31]          MXFP8 / MXINT8 (one byte each)
        [scale] [P_0 | P_16 << 4] ... [P_15 | P_31 << 4]   MXFP4 in GGUF (element j in the
                                                            low nibble, j + 16 in the high)

Two MXFP4 encoders exist side by side here and they differ only at exact ties:
:func:`mx_quantize` follows the OCP rule (ties to even, oracle ``ml_dtypes``);
:func:`quantize_mxfp4_gguf` reproduces llama.cpp's ``quantize_row_mxfp4_ref`` (the nearest
of the 16 codes, a tie going to the code listed first in its table, i.e. toward zero;
oracle ``gguf``), whose bytes are what a GGUF file holds.

References:

* Open Compute Project, "OCP Microscaling Formats (MX) Specification", v1.0, 2023.
* B. Darvish Rouhani et al., "Microscaling Data Formats for Deep Learning",
  arXiv:2310.10537.
* llama.cpp, ``ggml/src/ggml-quants.c``: ``quantize_row_mxfp4_ref``.
"""

import numpy as np

from minquant.formats import floats
from minquant.formats._blocks import check_data, check_rows

BLOCK_SIZE = 32
#: Element formats of MX and the exponent of their largest normal value.
ELEMENT_EMAX = {"fp4_e2m1": 2, "fp8_e4m3": 8, "fp8_e5m2": 15, "int8": 0}
E8M0_BIAS = 127
E8M0_NAN = 0xFF
#: The block format's name for each element format.
MX_NAMES = {
    "fp4_e2m1": "mxfp4",
    "fp8_e4m3": "mxfp8_e4m3",
    "fp8_e5m2": "mxfp8_e5m2",
    "int8": "mxint8",
}


def encode_e8m0(x: np.ndarray, saturate: bool = False) -> np.ndarray:
    r"""E8M0 bit patterns of positive values: the nearest power of two, $2^{e - 127}$.

    The mantissa is rounded away entirely: a significand of 1.5 or more rounds up to the
    next power of two (ties away from zero, as ``ml_dtypes.float8_e8m0fnu``). There is no
    zero and no sign: 0, negative values and NaN encode as NaN (0xFF); values below
    $2^{-127}$ become $2^{-127}$ (0x00); values of $2^{128}$ or more (after rounding) and
    +Inf are NaN, or $2^{127}$ (0xFE) with ``saturate=True``.

    >>> encode_e8m0(np.array([1.0, 1.4, 1.5, 3.0, 0.25, 0.0])).tolist()
    [127, 127, 128, 129, 125, 255]
    """
    x = floats._as_float("x", x).astype(np.float32).astype(np.float64)  # cast from float32
    with np.errstate(invalid="ignore", divide="ignore"):
        significand, e = np.frexp(np.where(np.isfinite(x) & (x > 0), x, 1.0))  # [0.5, 1)
    # NOTE: x = (2 * significand) * 2^(e - 1); 2 * significand >= 1.5 rounds up.
    exponent = (e - 1) + (significand >= 0.75)
    field = np.maximum(exponent + E8M0_BIAS, 0)  # below 2^-127: the smallest value
    overflow = (field > 254) | (x == np.inf)
    field = np.where(overflow, 254 if saturate else E8M0_NAN, field)
    field = np.where(np.isnan(x) | (x <= 0), E8M0_NAN, field)
    return field.astype(np.uint8)


def decode_e8m0(bits: np.ndarray) -> np.ndarray:
    """float32 values $2^{e - 127}$ of E8M0 bit patterns (0xFF is NaN).

    >>> decode_e8m0(np.array([127, 128, 0, 255], dtype=np.uint8))
    array([1.000000e+00, 2.000000e+00, 5.877472e-39,          nan], dtype=float32)
    """
    b = np.asarray(bits)
    if b.dtype != np.uint8:
        raise TypeError(f"bits must be a uint8 array for e8m0, got dtype {b.dtype}")
    value = np.ldexp(1.0, b.astype(np.int64) - E8M0_BIAS)
    return np.where(b == E8M0_NAN, np.nan, value).astype(np.float32)


def _shared_exponent(x: np.ndarray, emax: int) -> np.ndarray:
    """The OCP shared exponent of each block: floor(log2(amax)) - emax, clamped to E8M0."""
    amax = np.abs(x).max(axis=-1)  # (rows, blocks)
    # NOTE: frexp gives floor(log2(amax)) exactly (a float32 log2 can round up just below a
    # power of two). An all-zero block gets the smallest scale, 2^-127 (its elements are 0).
    _, e = np.frexp(np.where(amax > 0, amax, 0.0).astype(np.float64))
    shared = np.where(amax > 0, e - 1 - emax, -E8M0_BIAS)
    return np.clip(shared, -E8M0_BIAS, 127)  # (rows, blocks)


def mx_quantize(x: np.ndarray, elem: str) -> tuple[np.ndarray, np.ndarray]:
    """OCP MX quantization of the rows of ``x``: (E8M0 scales, element bit patterns).

    ``elem`` is ``"fp4_e2m1"`` (MXFP4), ``"fp8_e4m3"`` / ``"fp8_e5m2"`` (MXFP8) or ``"int8"``
    (MXINT8). Returns ``scales`` uint8 (rows, columns / 32) and ``codes`` uint8
    (rows, columns): FP bit patterns, or INT8 two's complement bytes.

    >>> scales, codes = mx_quantize(np.array([[6.0, -1.25, 0.3] + [0.0] * 29]), "fp4_e2m1")
    >>> scales.tolist(), codes[0, :3].tolist()  # 6 = 1.5 * 2^2: scale 2^0; -1.25 -> -1
    ([[127]], [7, 10, 1])
    """
    if elem not in ELEMENT_EMAX:
        raise ValueError(f"elem must be one of {sorted(ELEMENT_EMAX)}, got {elem!r}")
    x = check_rows(x, BLOCK_SIZE, MX_NAMES[elem])  # (rows, columns)
    rows, cols = x.shape
    blocks = x.reshape(rows, cols // BLOCK_SIZE, BLOCK_SIZE)  # (rows, blocks, 32)
    shared = _shared_exponent(blocks, ELEMENT_EMAX[elem])  # (rows, blocks)
    # NOTE: dividing by a power of two is exact in float64 (no rounding before the cast).
    scaled = np.ldexp(blocks.astype(np.float64), -shared[..., None])  # (rows, blocks, 32)
    if elem == "int8":
        # NOTE: MXINT8 elements are q / 64; the cast rounds half to even and clamps to the
        # symmetric [-127, 127] (as the microxcaling reference library).
        codes = np.clip(np.rint(scaled * 64), -127, 127).astype(np.int8).view(np.uint8)
    else:
        codes = floats.encode(scaled, elem, saturate=True).astype(np.uint8)
    scales = (shared + E8M0_BIAS).astype(np.uint8)
    return scales, codes.reshape(rows, cols)


def mx_dequantize(scales: np.ndarray, codes: np.ndarray, elem: str) -> np.ndarray:
    """float32 values $2^{e - 127} P_i$ of :func:`mx_quantize`'s output.

    >>> mx_dequantize(np.array([[127]], np.uint8), np.array([[7, 10, 1] + [0] * 29], np.uint8),
    ...               "fp4_e2m1")[0, :3]
    array([ 6. , -1. ,  0.5], dtype=float32)
    """
    if elem not in ELEMENT_EMAX:
        raise ValueError(f"elem must be one of {sorted(ELEMENT_EMAX)}, got {elem!r}")
    codes = np.atleast_2d(codes)  # (rows, columns)
    rows, cols = codes.shape
    if elem == "int8":
        values = codes.view(np.int8).astype(np.float64) / 64
    else:
        values = floats.decode(codes, elem).astype(np.float64)
    scale = decode_e8m0(np.atleast_2d(scales)).astype(np.float64)  # (rows, blocks)
    blocks = values.reshape(rows, cols // BLOCK_SIZE, BLOCK_SIZE) * scale[..., None]
    return blocks.reshape(rows, cols).astype(np.float32)


def quantize_mx_blocks(x: np.ndarray, elem: str) -> np.ndarray:
    """MXFP8 / MXINT8 bytes: per block of 32, one E8M0 byte then 32 element bytes.

    >>> quantize_mx_blocks(np.ones((1, 32)), "fp8_e4m3")[0, :3].tolist()  # 1 = 2^-8 * 2^8
    [119, 120, 120]
    """
    scales, codes = mx_quantize(x, elem)  # (rows, blocks), (rows, columns)
    rows, blocks = scales.shape
    codes = codes.reshape(rows, blocks, BLOCK_SIZE)
    data = np.concatenate([scales[..., None], codes], axis=-1)  # (rows, blocks, 33)
    return data.reshape(rows, blocks * (BLOCK_SIZE + 1))


def dequantize_mx_blocks(data: np.ndarray, elem: str) -> np.ndarray:
    """float32 (rows, columns) values of :func:`quantize_mx_blocks` bytes.

    >>> x = np.linspace(-1, 1, 32, dtype=np.float32)[None]
    >>> x_hat = dequantize_mx_blocks(quantize_mx_blocks(x, "int8"), "int8")  # steps of 2^-6
    >>> round(float(np.abs(x_hat - x).max()), 4), 2.0**-7
    (0.0076, 0.0078125)
    """
    data = check_data(data, BLOCK_SIZE + 1, MX_NAMES[elem])
    rows = data.shape[0]
    blocks = data.reshape(rows, -1, BLOCK_SIZE + 1)  # (rows, blocks, 33)
    codes = blocks[..., 1:].reshape(rows, -1)
    return mx_dequantize(blocks[..., 0], codes, elem)


#: FP4 E2M1 values times 2, in llama.cpp's code order (``kvalues_mxfp4``).
KVALUES_MXFP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.float32)


def quantize_mxfp4_gguf(x: np.ndarray) -> np.ndarray:
    r"""GGUF MXFP4 bytes (17 per block of 32), as llama.cpp's ``quantize_row_mxfp4_ref``.

    The E8M0 exponent is $\lfloor \log_2 a_{max} \rfloor - 2 + 127$ computed in float32
    (``floorf(log2f(amax))``), and each element takes the nearest of the 16 codes; an exact
    tie goes to the code listed first in :data:`KVALUES_MXFP4` (toward zero, and to +0
    rather than -0), where OCP rounds ties to even (see :func:`mx_quantize`).

    >>> # scale 2^0; 1.75 and 2.5 are ties: -> 1.5 (code 3) and 2 (code 4); OCP: 2 and 2
    >>> quantize_mxfp4_gguf(np.array([[1.75, 2.5] + [0.0] * 29 + [4.0]]))[0, :3].tolist()
    [127, 3, 4]
    """
    x = check_rows(x, BLOCK_SIZE, "mxfp4")  # (rows, columns)
    rows, cols = x.shape
    blocks = x.reshape(-1, BLOCK_SIZE)  # (n_blocks, 32)
    amax = np.abs(blocks).max(axis=-1)  # (n_blocks,)
    with np.errstate(divide="ignore"):
        # NOTE: float32 log2, as the C code: for amax just below a large power of two it can
        # round up to the power itself, giving a scale twice the OCP one (kept for the bytes).
        log2_amax = np.floor(np.log2(amax, dtype=np.float32))
    e = np.where(amax > 0, np.clip(log2_amax - 2 + E8M0_BIAS, 0, 254), 0).astype(np.uint8)
    half_scale = decode_e8m0(e) / np.float32(2)  # the codes are 2 * E2M1
    errors = np.abs(half_scale[:, None, None] * KVALUES_MXFP4 - blocks[..., None])
    codes = np.argmin(errors, axis=-1)  # (n_blocks, 32); the first minimum wins ties
    qs = codes[:, :16].astype(np.uint8) | (codes[:, 16:].astype(np.uint8) << np.uint8(4))
    data = np.concatenate([e[:, None], qs], axis=-1)  # (n_blocks, 17)
    return data.reshape(rows, cols // BLOCK_SIZE * 17)


def dequantize_mxfp4_gguf(data: np.ndarray) -> np.ndarray:
    """float32 (rows, columns) values of GGUF MXFP4 bytes.

    >>> x = np.array([[4.0, 0.3, -2.5, 5.5] + [0.0] * 28])
    >>> dequantize_mxfp4_gguf(quantize_mxfp4_gguf(x))[0, :4]
    array([ 4. ,  0.5, -2. ,  6. ], dtype=float32)
    """
    data = check_data(data, 17, "mxfp4")
    rows = data.shape[0]
    blocks = data.reshape(-1, 17)  # (n_blocks, 17)
    half_scale = decode_e8m0(blocks[:, 0]) / np.float32(2)
    codes = np.concatenate([blocks[:, 1:] & np.uint8(0x0F), blocks[:, 1:] >> np.uint8(4)], -1)
    values = half_scale[:, None] * KVALUES_MXFP4[codes]  # (n_blocks, 32)
    return values.reshape(rows, -1).astype(np.float32)
