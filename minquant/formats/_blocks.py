"""Shared checks and helpers of the block formats: argument validation and fp16 scales."""

import numpy as np


def check_rows(x: np.ndarray, block_size: int, fmt: str) -> np.ndarray:
    """``x`` as a float32 (rows, columns) array whose rows split into blocks of ``block_size``.

    A 1-D ``x`` is one row. Raises ``TypeError`` for a non-float array and ``ValueError`` for
    NaN or infinite values, an empty array, more than 2 dimensions or a row length that is
    not a multiple of the block size (no padding: pad the weight yourself if you must).
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"x must be a float array for {fmt}, got dtype {x.dtype}")
    if x.ndim not in (1, 2):
        raise ValueError(f"x must be 1-D or 2-D (rows, columns) for {fmt}, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"x must not be empty for {fmt}, got shape {x.shape}")
    x = np.atleast_2d(x).astype(np.float32)  # (rows, columns)
    if x.shape[1] % block_size:
        raise ValueError(
            f"x has rows of {x.shape[1]} values, not a multiple of the {fmt} block size "
            f"{block_size}; pad each row to a multiple of {block_size}"
        )
    if not np.isfinite(x).all():
        raise ValueError(f"x must be finite for {fmt}: it contains NaN or Inf")
    return x


def check_data(data: np.ndarray, bytes_per_block: int, fmt: str) -> np.ndarray:
    """``data`` as a uint8 (rows, bytes per row) array made of whole blocks."""
    data = np.asarray(data)
    if data.dtype != np.uint8:
        raise TypeError(f"data must be a uint8 array for {fmt}, got dtype {data.dtype}")
    data = np.atleast_2d(data)  # (rows, bytes per row)
    if data.ndim != 2 or data.shape[1] % bytes_per_block:
        raise ValueError(
            f"data must be (rows, bytes per row) with a multiple of {bytes_per_block} bytes "
            f"per row for {fmt}, got shape {data.shape}"
        )
    return data


def to_fp16_bytes(d: np.ndarray, fmt: str) -> np.ndarray:
    """The little-endian float16 bytes of the float32 scales ``d`` (rounded to nearest even).

    A scale beyond float16's range (65504) would become Inf: that is an error here.
    """
    d = np.asarray(d, dtype=np.float32)
    if np.abs(d).max(initial=0.0) > np.finfo(np.float16).max:
        raise ValueError(
            f"x is too large for {fmt}: a block scale exceeds the float16 maximum 65504"
        )
    # NOTE: `astype(float16)` rounds to nearest even, as llama.cpp's GGML_FP32_TO_FP16.
    return d.astype("<f2").view(np.uint8)  # (..., 2 * blocks)


def from_fp16_bytes(b: np.ndarray) -> np.ndarray:
    """float32 values of little-endian float16 bytes (the inverse of :func:`to_fp16_bytes`)."""
    return np.ascontiguousarray(b).view("<f2").astype(np.float32)


def pack_nibbles_half(q: np.ndarray) -> np.ndarray:
    """Pack 4-bit codes GGUF style: byte ``j`` of a 32-block holds ``q[j] | q[j + 16] << 4``.

    ``q`` is (blocks, 32) of values in [0, 15]; the result is (blocks, 16) uint8.
    """
    q = q.astype(np.uint8)
    half = q.shape[-1] // 2
    return q[..., :half] | (q[..., half:] << np.uint8(4))


def unpack_nibbles_half(qs: np.ndarray) -> np.ndarray:
    """The inverse of :func:`pack_nibbles_half`: (blocks, 16) bytes -> (blocks, 32) codes."""
    low = qs & np.uint8(0x0F)
    high = qs >> np.uint8(4)
    return np.concatenate([low, high], axis=-1)


def round_half_away(v: np.ndarray) -> np.ndarray:
    """Round half away from zero (C's ``roundf``), exactly.

    NOTE: ``floor(|v| + 0.5)`` would be wrong for |v| = 0.49999997, where the float32 sum
    rounds up to 1; the fractional part ``|v| - floor(|v|)`` is exact.
    """
    a = np.abs(v)
    whole = np.floor(a)
    return np.sign(v) * (whole + np.floor(2 * (a - whole)))
