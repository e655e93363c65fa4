r"""Number formats: element casts (float16 ... FP4, E8M0) and the block formats of LLM weights.

One module per family:

* :mod:`~minquant.formats.floats`: IEEE-style element formats (float32, float16, bfloat16,
  FP8 E4M3 / E5M2, FP4 E2M1): :func:`cast`, :func:`encode`, :func:`decode`, :func:`bit_fields`.
* :mod:`~minquant.formats.mx`: OCP Microscaling (MXFP4, MXFP8, MXINT8) and the E8M0 scale.
* :mod:`~minquant.formats.gguf_blocks`: GGUF's Q8_0, Q4_0, Q4_1, Q5_0, Q5_1.
* :mod:`~minquant.formats.nf4`: QLoRA's NF4 and double quantization.
* :mod:`~minquant.formats.ternary`: BitNet b1.58 ternary (TQ2_0, TQ1_0) and XNOR-Net binary.

Block formats cut each row of a weight (out, in) into blocks along ``in`` and store each
block as bytes; :func:`quantize_blocks` returns uint8 (rows, bytes per row) and
:func:`dequantize_blocks` reads them back. :func:`bits_per_weight` counts the real bytes:

>>> rng = np.random.default_rng(0)
>>> w = rng.normal(size=(4, 64)).astype(np.float32)  # (out, in)
>>> data = quantize_blocks(w, "q4_0")
>>> data.shape, bits_per_weight("q4_0")  # 2 blocks of 18 bytes per row
((4, 36), 4.5)
>>> float(np.abs(dequantize_blocks(data, "q4_0", w.shape) - w).max()) < 0.4
True

:func:`quantize_weight` is the one entry point for a whole weight (out, in): it returns the
bytes and the float32 reconstruction $\hat{w}$ for any name in :data:`WEIGHT_FORMATS`.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from minquant.formats import floats as _floats
from minquant.formats import gguf_blocks, mx, nf4, ternary
from minquant.formats._blocks import check_rows
from minquant.formats.floats import (
    BFLOAT16,
    FLOAT16,
    FLOAT32,
    FLOAT_FORMATS,
    FORMATS,
    FP4_E2M1,
    FP8_E4M3,
    FP8_E5M2,
    HOROWITZ_45NM,
    FloatFormat,
    bit_fields,
    cast,
    get_format,
    int_bits,
)
from minquant.formats.mx import mx_dequantize, mx_quantize
from minquant.formats.nf4 import NF4_TABLE, NF4Weight, quantize_nf4
from minquant.formats.ternary import binarize, ternarize


@dataclass(frozen=True)
class BlockFormat:
    """A block format: ``block_size`` values stored in ``bytes_per_block`` bytes."""

    name: str
    block_size: int  # values per block (along a row)
    bytes_per_block: int  # real storage of one block, scales included
    quantize: Callable[[np.ndarray], np.ndarray]  # (rows, columns) -> uint8 (rows, bytes)
    dequantize: Callable[[np.ndarray], np.ndarray]  # uint8 (rows, bytes) -> float32


def _gguf(name: str) -> BlockFormat:
    return BlockFormat(
        name,
        gguf_blocks.BLOCK_SIZE,
        gguf_blocks.BYTES_PER_BLOCK[name],
        lambda x: gguf_blocks.quantize_gguf(x, name),
        lambda data: gguf_blocks.dequantize_gguf(data, name),
    )


def _mx(name: str, elem: str) -> BlockFormat:
    return BlockFormat(
        name,
        mx.BLOCK_SIZE,
        mx.BLOCK_SIZE + 1,
        lambda x: mx.quantize_mx_blocks(x, elem),
        lambda data: mx.dequantize_mx_blocks(data, elem),
    )


def _tq(name: str) -> BlockFormat:
    return BlockFormat(
        name,
        ternary.BLOCK_SIZE,
        ternary.BYTES_PER_BLOCK[name],
        lambda x: ternary.quantize_tq(x, name),
        lambda data: ternary.dequantize_tq(data, name),
    )


#: Every block format by name.
BLOCK_FORMATS = {
    f.name: f
    for f in (
        _gguf("q8_0"),
        _gguf("q5_1"),
        _gguf("q5_0"),
        _gguf("q4_1"),
        _gguf("q4_0"),
        _mx("mxint8", "int8"),
        _mx("mxfp8_e4m3", "fp8_e4m3"),
        _mx("mxfp8_e5m2", "fp8_e5m2"),
        BlockFormat("mxfp4", mx.BLOCK_SIZE, 17, mx.quantize_mxfp4_gguf, mx.dequantize_mxfp4_gguf),
        BlockFormat(
            "nf4",
            nf4.BLOCK_SIZE,
            nf4.BYTES_PER_BLOCK,
            nf4.quantize_nf4_blocks,
            nf4.dequantize_nf4_blocks,
        ),
        _tq("tq2_0"),
        _tq("tq1_0"),
    )
}
#: Formats whose storage depends on the weight's shape (a per-row or per-tensor part).
SHAPED_FORMATS = ("nf4_dq", "ternary", "binary", "fp8_e4m3", "fp8_e5m2")
#: Every name :func:`quantize_weight` accepts.
WEIGHT_FORMATS = (*BLOCK_FORMATS, *SHAPED_FORMATS)
#: Element formats of :func:`encode` / :func:`decode`.
ELEMENT_FORMATS = (*FLOAT_FORMATS, "e8m0")


def _block_format(fmt: str) -> BlockFormat:
    if fmt not in BLOCK_FORMATS:
        raise ValueError(f"fmt must be one of {sorted(BLOCK_FORMATS)}, got {fmt!r}")
    return BLOCK_FORMATS[fmt]


def encode(x: np.ndarray, fmt: str | FloatFormat, saturate: bool = False) -> np.ndarray:
    """Bit patterns of ``x`` in an element format (see :func:`floats.encode`; ``"e8m0"``:
    :func:`mx.encode_e8m0`). 8-bit and 4-bit formats give uint8.

    >>> encode(np.array([1.0, -0.5, 6.5, 100.0]), "fp4_e2m1").tolist()  # FP4 saturates
    [2, 9, 7, 7]
    >>> encode(np.array([1.0, 448.0, 500.0]), "fp8_e4m3").tolist(), encode(np.array([4.0]), "e8m0")
    ([56, 126, 127], array([129], dtype=uint8))
    """
    if isinstance(fmt, str) and fmt == "e8m0":
        return mx.encode_e8m0(x, saturate)
    if isinstance(fmt, str) and fmt not in FLOAT_FORMATS:
        raise ValueError(f"fmt must be one of {sorted(ELEMENT_FORMATS)}, got {fmt!r}")
    return _floats.encode(x, fmt, saturate)


def decode(bits: np.ndarray, fmt: str | FloatFormat) -> np.ndarray:
    """float32 values of bit patterns of an element format (the inverse of :func:`encode`).

    >>> decode(np.arange(8), "fp4_e2m1").tolist()
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    """
    if isinstance(fmt, str) and fmt == "e8m0":
        bits = np.asarray(bits)
        if (
            not np.issubdtype(bits.dtype, np.integer)
            or bits.min(initial=0) < 0
            or bits.max(initial=0) > 255
        ):
            raise ValueError(f"bits must be integers in [0, 255] for e8m0, got {bits!r}")
        return mx.decode_e8m0(bits.astype(np.uint8))
    if isinstance(fmt, str) and fmt not in FLOAT_FORMATS:
        raise ValueError(f"fmt must be one of {sorted(ELEMENT_FORMATS)}, got {fmt!r}")
    return _floats.decode(bits, fmt)


def quantize_blocks(x: np.ndarray, fmt: str) -> np.ndarray:
    """Bytes of ``x`` (rows, columns) in a block format: uint8 (rows, bytes per row).

    Rows must be whole blocks (a ValueError names the block size otherwise) and finite.

    >>> quantize_blocks(np.zeros((3, 256)), "tq1_0").shape
    (3, 54)
    """
    return _block_format(fmt).quantize(x)


def dequantize_blocks(data: np.ndarray, fmt: str, shape: tuple[int, ...]) -> np.ndarray:
    """float32 values of shape ``shape`` from :func:`quantize_blocks` bytes.

    >>> x = np.array([[0.5, -1.0, 0.25, 0.0] * 8], dtype=np.float32)  # (1, 32)
    >>> dequantize_blocks(quantize_blocks(x, "q8_0"), "q8_0", x.shape)[0, :4]  # d in float16
    array([ 0.50390625, -0.99993896,  0.25195312,  0.        ], dtype=float32)
    """
    block = _block_format(fmt)
    shape = tuple(int(n) for n in np.atleast_1d(shape))
    columns = shape[-1]
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    expected = (rows, columns // block.block_size * block.bytes_per_block)
    if columns % block.block_size or np.shape(data) != expected:
        raise ValueError(
            f"data of shape {np.shape(data)} does not hold a {fmt} tensor of shape {shape} "
            f"(expected data of shape {expected}, rows a multiple of {block.block_size})"
        )
    return block.dequantize(data).reshape(shape)


def weight_nbytes(fmt: str, shape: tuple[int, int]) -> int:
    """Bytes that :func:`quantize_weight` stores for a weight of ``shape`` (out, in).

    >>> weight_nbytes("q8_0", (2, 64)), weight_nbytes("binary", (2, 64))
    (136, 24)
    """
    rows, cols = (int(n) for n in shape)
    if fmt in BLOCK_FORMATS:
        block = BLOCK_FORMATS[fmt]
        return rows * (cols // block.block_size) * block.bytes_per_block
    if fmt == "nf4_dq":
        n_blocks = rows * cols // nf4.BLOCK_SIZE
        return rows * cols // 2 + n_blocks + 4 * -(-n_blocks // nf4.SCALE_GROUP) + 4
    if fmt == "ternary":
        return weight_nbytes("tq2_0", shape)
    if fmt == "binary":
        return rows * (4 + cols // 8)
    if fmt in ("fp8_e4m3", "fp8_e5m2"):
        return rows * (4 + cols)
    raise ValueError(f"fmt must be one of {sorted(WEIGHT_FORMATS)}, got {fmt!r}")


def bits_per_weight(fmt: str, shape: tuple[int, int] | None = None) -> float:
    r"""Storage per weight in bits, $8 \cdot \text{bytes} / \text{values}$, scales included.

    Without ``shape``: one block of a block format; for ``"nf4_dq"`` one group of 256
    blocks (the per-tensor mean left out: QLoRA's 4.127). Formats with a per-row scale
    (``binary``, ``fp8_*``) need ``shape``.

    >>> [bits_per_weight(f) for f in ("q8_0", "q4_0", "mxfp4", "nf4", "tq1_0")]
    [8.5, 4.5, 4.25, 4.5, 1.6875]
    >>> round(bits_per_weight("nf4_dq"), 4), bits_per_weight("binary", (8, 128))
    (4.127, 1.25)
    """
    if shape is not None:
        rows, cols = (int(n) for n in shape)
        return 8 * weight_nbytes(fmt, (rows, cols)) / (rows * cols)
    if fmt in BLOCK_FORMATS:
        return 8 * BLOCK_FORMATS[fmt].bytes_per_block / BLOCK_FORMATS[fmt].block_size
    if fmt == "nf4_dq":
        group = nf4.BLOCK_SIZE * nf4.SCALE_GROUP  # 16384 weights
        return 8 * (weight_nbytes(fmt, (1, group)) - 4) / group
    if fmt == "ternary":
        return bits_per_weight("tq2_0")
    if fmt in SHAPED_FORMATS:
        raise ValueError(f"bits_per_weight({fmt!r}) needs shape: it has a per-row scale")
    raise ValueError(f"fmt must be one of {sorted(WEIGHT_FORMATS)}, got {fmt!r}")


def _quantize_fp8_rows(w: np.ndarray, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-row float32 scale amax / max_value, then the FP8 cast: [scale (4 bytes)][codes]."""
    w = check_rows(w, 1, fmt)  # (out, in)
    max_value = get_format(fmt).max_value
    amax = np.abs(w).max(axis=1, keepdims=True)  # (out, 1)
    scale = np.where(amax > 0, amax / np.float32(max_value), 1).astype(np.float32)
    codes = _floats.encode(w / scale, fmt, saturate=True).astype(np.uint8)  # (out, in)
    data = np.concatenate([scale.astype("<f4").view(np.uint8), codes], axis=1)
    w_hat = (_floats.decode(codes, fmt) * scale).astype(np.float32)
    return data, w_hat


def quantize_weight(w: np.ndarray, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """Store a weight (out, in) in ``fmt``: ``(bytes uint8, w_hat float32 (out, in))``.

    ``w_hat`` is read back from the bytes. ``fmt`` is one of :data:`WEIGHT_FORMATS`: the
    block formats, ``"nf4_dq"`` (NF4 with double quantization; 1-D bytes),
    ``"ternary"`` (BitNet absmean codes stored as TQ2_0), ``"binary"`` (XNOR-Net) and
    ``"fp8_e4m3"`` / ``"fp8_e5m2"`` (a float32 scale per output row).

    >>> w = np.random.default_rng(0).normal(size=(8, 256)).astype(np.float32)
    >>> data, w_hat = quantize_weight(w, "ternary")
    >>> data.nbytes, sorted(np.unique(np.round(w_hat / np.abs(w_hat).max())).tolist())
    (528, [-1.0, 0.0, 1.0])
    """
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"w must be a 2-D weight (out, in), got shape {w.shape}")
    if fmt in BLOCK_FORMATS:
        data = quantize_blocks(w, fmt)
        return data, dequantize_blocks(data, fmt, w.shape)
    if fmt == "nf4_dq":
        q = quantize_nf4(w)
        return q.to_bytes(), q.dequantize()
    if fmt == "ternary":
        w_q, gamma = ternarize(w)
        return quantize_weight(w_q.astype(np.float32) * gamma, "tq2_0")
    if fmt == "binary":
        data = ternary.quantize_binary(w)
        return data, ternary.dequantize_binary(data)
    if fmt in ("fp8_e4m3", "fp8_e5m2"):
        return _quantize_fp8_rows(w, fmt)
    raise ValueError(f"fmt must be one of {sorted(WEIGHT_FORMATS)}, got {fmt!r}")


__all__ = [
    "BFLOAT16",
    "BLOCK_FORMATS",
    "ELEMENT_FORMATS",
    "FLOAT16",
    "FLOAT32",
    "FLOAT_FORMATS",
    "FORMATS",
    "FP4_E2M1",
    "FP8_E4M3",
    "FP8_E5M2",
    "HOROWITZ_45NM",
    "NF4_TABLE",
    "WEIGHT_FORMATS",
    "BlockFormat",
    "FloatFormat",
    "NF4Weight",
    "binarize",
    "bit_fields",
    "bits_per_weight",
    "cast",
    "decode",
    "dequantize_blocks",
    "encode",
    "get_format",
    "int_bits",
    "mx_dequantize",
    "mx_quantize",
    "quantize_blocks",
    "quantize_nf4",
    "quantize_weight",
    "ternarize",
    "weight_nbytes",
]
