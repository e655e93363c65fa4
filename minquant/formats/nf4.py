r"""NF4, the 4-bit NormalFloat of QLoRA, with double quantization of its block scales.

Weights of a trained network are close to normally distributed, so NF4 places its 16
levels at quantiles of $N(0, 1)$ (scaled to $[-1, 1]$, with an exact zero) instead of on an
even grid. Each block of 64 weights is divided by its largest magnitude and each value
takes the nearest level:

$$a_b = \max_{j \in b} |w_j|, \qquad q_j = \arg\min_k \big|\, w_j / a_b - \mathrm{NF4}_k \big|,
\qquad \hat{w}_j = a_b\,\mathrm{NF4}_{q_j}.$$

The float32 scale $a_b$ costs $32 / 64 = 0.5$ bits per weight. **Double quantization**
subtracts the mean of all block scales and quantizes the rest to 8 bits in groups of 256
blocks, each group with a float32 scale of its own: $8/64 + 32/(64 \cdot 256) = 0.127$ bits,
so NF4 costs $4.127$ bits per weight.

::

    NF4 weight (double quantized), one tensor of N weights:
    codes      N / 2 bytes   byte i = q[2i] << 4 | q[2i + 1]   (first value in the high nibble)
    scales_q   N / 64 bytes  int8: round((a_b - mean) / s_g), |.| <= 127
    s_g        4 bytes per group of 256 blocks (float32, max |a_b - mean| / 127)
    mean       4 bytes       float32, the mean of all a_b

NOTE: bitsandbytes quantizes the centred scales with its 8-bit "dynamic" code (a
non-uniform table) instead of the linear int8 used here; the storage, and so the bits per
weight, is the same, but the scale bytes are not bitsandbytes' bytes.

References:

* T. Dettmers et al., "QLoRA: Efficient Finetuning of Quantized LLMs", NeurIPS 2023
  (arXiv:2305.14314), section 3 and appendix E (the NF4 values).
* bitsandbytes, ``functional.py``: ``quantize_4bit`` (``compress_statistics=True``).
"""

from dataclasses import dataclass

import numpy as np

from minquant.formats._blocks import check_data, check_rows

#: The 16 NF4 levels as published (QLoRA appendix E, bitsandbytes ``get_4bit_type``).
NF4_TABLE = np.array(
    [
        -1.0, -0.6961928, -0.5250731, -0.3949175, -0.2844414, -0.1847734, -0.09105004, 0.0,
        0.0795803, 0.1609302, 0.2461123, 0.3379152, 0.4407098, 0.562617, 0.7229568, 1.0,
    ],
    dtype=np.float32,
)  # fmt: skip
BLOCK_SIZE = 64
#: Blocks of 64 whose scales share one float32 second-level scale.
SCALE_GROUP = 256
BYTES_PER_BLOCK = 4 + BLOCK_SIZE // 2  # float32 absmax + 32 bytes of codes


def nf4_codes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NF4 codes (uint8 in [0, 15], x's shape) and absmax (float32 (rows, blocks)) of x.

    A value halfway between two levels takes the lower one (bitsandbytes compares with
    ``>`` against the midpoints). An all-zero block has absmax 0 and code 7 (the level 0).

    >>> codes, absmax = nf4_codes(np.array([[2.0, -2.0, 0.1, 1.0] + [0.0] * 60]))
    >>> codes[0, :4].tolist(), absmax.tolist()
    ([15, 0, 8, 12], [[2.0]])
    """
    x = check_rows(x, BLOCK_SIZE, "nf4")  # (rows, columns)
    rows, cols = x.shape
    blocks = x.reshape(rows, -1, BLOCK_SIZE)  # (rows, blocks, 64)
    absmax = np.abs(blocks).max(axis=-1)  # (rows, blocks)
    with np.errstate(divide="ignore"):
        inv = np.where(absmax == 0, np.float32(0), np.float32(1) / absmax).astype(np.float32)
    normed = blocks * inv[..., None]  # (rows, blocks, 64) in [-1, 1]
    # NOTE: argmin returns the first of two equal distances: ties go to the lower level.
    codes = np.abs(normed[..., None] - NF4_TABLE).argmin(axis=-1).astype(np.uint8)
    return codes.reshape(rows, cols), absmax


def quantize_nf4_blocks(x: np.ndarray) -> np.ndarray:
    """NF4 bytes without double quantization: per block, float32 absmax then 32 code bytes.

    >>> quantize_nf4_blocks(np.ones((2, 128))).shape  # 2 rows of 2 blocks of 36 bytes
    (2, 72)
    """
    codes, absmax = nf4_codes(x)  # (rows, columns), (rows, blocks)
    rows, n_blocks = absmax.shape
    packed = (codes[:, 0::2] << np.uint8(4)) | codes[:, 1::2]  # (rows, columns / 2)
    packed = packed.reshape(rows, n_blocks, BLOCK_SIZE // 2)
    scale_bytes = absmax.astype("<f4").view(np.uint8).reshape(rows, n_blocks, 4)
    data = np.concatenate([scale_bytes, packed], axis=-1)  # (rows, blocks, 36)
    return data.reshape(rows, n_blocks * BYTES_PER_BLOCK)


def dequantize_nf4_blocks(data: np.ndarray) -> np.ndarray:
    """float32 (rows, columns) values of :func:`quantize_nf4_blocks` bytes.

    >>> dequantize_nf4_blocks(quantize_nf4_blocks(np.array([[2.0, -1.0] + [0.0] * 62])))[0, :2]
    array([ 2.       , -1.0501462], dtype=float32)
    """
    data = check_data(data, BYTES_PER_BLOCK, "nf4")
    rows = data.shape[0]
    blocks = data.reshape(rows, -1, BYTES_PER_BLOCK)  # (rows, blocks, 36)
    absmax = np.ascontiguousarray(blocks[..., :4]).view("<f4")  # (rows, blocks, 1)
    codes = _unpack_codes(blocks[..., 4:])  # (rows, blocks, 64)
    return (NF4_TABLE[codes] * absmax).reshape(rows, -1).astype(np.float32)


def _unpack_codes(packed: np.ndarray) -> np.ndarray:
    """High nibble first: (..., n) bytes -> (..., 2 n) codes."""
    high, low = packed >> np.uint8(4), packed & np.uint8(0x0F)
    return np.stack([high, low], axis=-1).reshape(*packed.shape[:-1], -1)


@dataclass(frozen=True)
class NF4Weight:
    """A double-quantized NF4 tensor (the parts listed in the module docstring)."""

    shape: tuple[int, int]  # (rows, columns) of the original weight
    codes: np.ndarray  # uint8 (N / 2,), two 4-bit codes per byte, high nibble first
    scales_q: np.ndarray  # int8 (N / 64,), the centred block scales, quantized
    group_scales: np.ndarray  # float32 (ceil(N / 64 / 256),)
    mean: np.float32  # the mean of the block scales

    @property
    def nbytes(self) -> int:
        """Bytes of storage: codes, 8-bit scales, group scales and the mean."""
        return self.codes.nbytes + self.scales_q.nbytes + self.group_scales.nbytes + 4

    def to_bytes(self) -> np.ndarray:
        """All parts in one uint8 array of :attr:`nbytes` bytes (little-endian floats)."""
        parts = [
            self.codes,
            self.scales_q.view(np.uint8),
            self.group_scales.astype("<f4").view(np.uint8),
            np.array([self.mean], "<f4").view(np.uint8),
        ]
        return np.concatenate(parts)

    def absmax(self) -> np.ndarray:
        """The dequantized block scales, float32 (N / 64,)."""
        groups = np.repeat(self.group_scales, SCALE_GROUP)[: self.scales_q.size]
        return (self.scales_q.astype(np.float32) * groups + self.mean).astype(np.float32)

    def dequantize(self) -> np.ndarray:
        """The float32 weight $\\hat{w}$, of shape :attr:`shape`."""
        codes = _unpack_codes(self.codes).reshape(-1, BLOCK_SIZE)  # (N / 64, 64)
        w_hat = NF4_TABLE[codes] * self.absmax()[:, None]
        return w_hat.reshape(self.shape).astype(np.float32)


def quantize_nf4(w: np.ndarray) -> NF4Weight:
    """NF4 with double quantization of the block scales (QLoRA's storage).

    >>> rng = np.random.default_rng(0)
    >>> q = quantize_nf4(rng.normal(size=(256, 256)).astype(np.float32))
    >>> q.nbytes, round(8 * q.nbytes / 256**2, 4)  # 32768 + 1024 + 4 * 4 + 4
    (33812, 4.1274)
    """
    codes, absmax = nf4_codes(w)  # (rows, columns), (rows, blocks)
    rows, cols = codes.shape
    flat = codes.reshape(-1)
    packed = (flat[0::2] << np.uint8(4)) | flat[1::2]  # (N / 2,)
    scales = absmax.reshape(-1)  # (N / 64,)
    mean = np.float32(scales.mean(dtype=np.float64))
    centred = scales - mean  # (N / 64,)
    n_groups = -(-scales.size // SCALE_GROUP)
    padded = np.zeros(n_groups * SCALE_GROUP, np.float32)
    padded[: scales.size] = centred
    group_max = np.abs(padded.reshape(n_groups, SCALE_GROUP)).max(axis=1)  # (n_groups,)
    group_scales = np.where(group_max > 0, group_max / np.float32(127), 1).astype(np.float32)
    per_scale = np.repeat(group_scales, SCALE_GROUP)[: scales.size]
    # NOTE: round half to even; |centred| <= group max, so the codes stay within +-127.
    scales_q = np.clip(np.rint(centred / per_scale), -127, 127).astype(np.int8)
    return NF4Weight((rows, cols), packed, scales_q, group_scales, mean)


def nf4_weight_from_bytes(data: np.ndarray, shape: tuple[int, int]) -> NF4Weight:
    """Read back :meth:`NF4Weight.to_bytes` for a weight of ``shape``.

    >>> w = np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32)
    >>> q = quantize_nf4(w)
    >>> bool(np.all(nf4_weight_from_bytes(q.to_bytes(), w.shape).dequantize() == q.dequantize()))
    True
    """
    n = shape[0] * shape[1]
    n_blocks = n // BLOCK_SIZE
    n_groups = -(-n_blocks // SCALE_GROUP)
    data = check_data(np.asarray(data).reshape(1, -1), 1, "nf4_dq")[0]
    expected = n // 2 + n_blocks + 4 * n_groups + 4
    if data.size != expected:
        raise ValueError(f"data must hold {expected} bytes for shape {shape}, got {data.size}")
    codes, rest = data[: n // 2], data[n // 2 :]
    scales_q = rest[:n_blocks].view(np.int8)
    group_scales = rest[n_blocks : n_blocks + 4 * n_groups].view("<f4").astype(np.float32)
    mean = np.float32(rest[-4:].view("<f4")[0])
    return NF4Weight(tuple(shape), codes, scales_q, group_scales, mean)
