r"""Ternary and binary weights: BitNet b1.58, GGUF's TQ2_0 / TQ1_0 packings, XNOR-Net.

**Ternary** (BitNet b1.58): every weight becomes $-1$, $0$ or $+1$ times one scale, the mean
absolute value of the tensor:

$$\gamma = \max\Big(\frac{1}{nm}\sum_{ij} |W_{ij}|,\ 10^{-5}\Big), \qquad
W_q = \mathrm{clip}\big(\mathrm{round}(W \cdot \gamma^{-1}), -1, 1\big), \qquad
\hat{W} = \gamma\,W_q.$$

$\log_2 3 = 1.585$ bits of information per weight; GGUF stores them in two ways (blocks of
256 with a float16 scale ``d`` at the end; code $q + 1 \in \{0, 1, 2\}$):

::

    TQ2_0  (66 bytes, 2.0625 bits/weight): 2 bits per weight, 4 per byte
           byte 32 c + j = q[128 c + j] | q[128 c + 32 + j] << 2 | q[.. + 64] << 4 | q[.. + 96] << 6
    TQ1_0  (54 bytes, 1.6875 bits/weight): 5 trits per byte (3^5 = 243 <= 256)
           bytes  0-31: q[j], q[j+32], q[j+64], q[j+96], q[j+128]       (5 trits each)
           bytes 32-47: q[160+j], q[176+j], ..., q[224+j]             (5 trits each)
           bytes 48-51: q[240+j], q[244+j], q[248+j], q[252+j]        (4 trits each)
           each byte holds ceil(256 v / 243) for the base-3 number v = 81 t0 + 27 t1 + ...

GGUF's reference quantizer picks the block scale as the block's *largest* magnitude
($d = a_{max}$, $q = \mathrm{round}(x / d)$ half away from zero), which suits weights that are
already ternary: for BitNet weights $\gamma W_q$ it gives $d = \gamma$ and the same $W_q$.

**Binary** (XNOR-Net): $\hat{W}_{i,:} = \alpha_i\,\mathrm{sign}(W_{i,:})$ with
$\alpha_i = \frac{1}{n}\sum_j |W_{ij}|$, the per-output-channel mean magnitude (the scale
that minimises $\lVert W_{i,:} - \alpha_i\,\mathrm{sign}(W_{i,:}) \rVert^2$); $\mathrm{sign}(0)=+1$.

References:

* S. Ma et al., "The Era of 1-bit LLMs: All Large Language Models are in 1.58 Bits",
  arXiv:2402.17764 (absmean ternary quantization).
* llama.cpp, ``ggml/src/ggml-quants.c``: ``quantize_row_tq1_0_ref``, ``quantize_row_tq2_0_ref``.
* M. Rastegari et al., "XNOR-Net: ImageNet Classification Using Binary Convolutional
  Neural Networks", ECCV 2016 (arXiv:1603.05279), section 3.1.
"""

import numpy as np

from minquant.formats._blocks import (
    check_data,
    check_rows,
    from_fp16_bytes,
    round_half_away,
    to_fp16_bytes,
)

BLOCK_SIZE = 256
BYTES_PER_BLOCK = {"tq2_0": 66, "tq1_0": 54}
#: BitNet's floor on the absmean scale.
ABSMEAN_EPS = 1e-5
_TRIT_WEIGHTS = np.array([81, 27, 9, 3, 1], dtype=np.uint16)  # most significant first


def ternarize(w: np.ndarray) -> tuple[np.ndarray, np.float32]:
    r"""BitNet b1.58 absmean ternary codes: ``(w_q int8 in {-1, 0, 1}, gamma float32)``.

    ``round`` is half to even (``torch.round``, as the BitNet reference code).

    >>> w_q, gamma = ternarize(np.array([[0.4, -0.05, -1.2, 0.15]]))
    >>> w_q.tolist(), float(gamma)
    ([[1, 0, -1, 0]], 0.45000001788139343)
    """
    w = check_rows(w, 1, "ternary")  # (out, in)
    gamma = np.float32(max(np.float32(np.abs(w).mean(dtype=np.float64)), ABSMEAN_EPS))
    # NOTE: w * (1 / gamma), as the reference `(w * scale).round()` with scale = 1 / gamma.
    w_q = np.clip(np.rint(w * (np.float32(1) / gamma)), -1, 1).astype(np.int8)
    return w_q, gamma


def binarize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """XNOR-Net binary weights: ``(signs int8 in {-1, 1} (out, in), alpha float32 (out,))``.

    >>> signs, alpha = binarize(np.array([[0.5, -1.5, 0.0, 1.0]]))
    >>> signs.tolist(), alpha.tolist()
    ([[1, -1, 1, 1]], [0.75])
    """
    w = check_rows(w, 1, "binary")  # (out, in)
    alpha = np.abs(w).mean(axis=1, dtype=np.float64).astype(np.float32)  # (out,)
    signs = np.where(w >= 0, 1, -1).astype(np.int8)  # NOTE: sign(0) = +1
    return signs, alpha


def quantize_binary(w: np.ndarray) -> np.ndarray:
    """Binary bytes per row: float32 ``alpha`` (4 bytes) then 1 bit per weight (1 = +1).

    Bits are packed 8 per byte, weight ``8 k + i`` in bit ``i`` (little bit order).

    >>> quantize_binary(np.array([[0.5, -1.5, 0.0, 1.0] * 2]))[0].tolist()
    [0, 0, 64, 63, 221]
    """
    signs, alpha = binarize(w)  # (out, in), (out,)
    if signs.shape[1] % 8:
        raise ValueError(f"w has rows of {signs.shape[1]} values, not a multiple of 8 (binary)")
    bits = np.packbits(signs > 0, axis=1, bitorder="little")  # (out, in / 8)
    return np.concatenate([alpha.astype("<f4")[:, None].view(np.uint8), bits], axis=1)


def dequantize_binary(data: np.ndarray) -> np.ndarray:
    """float32 (out, in) values of :func:`quantize_binary` bytes.

    >>> dequantize_binary(quantize_binary(np.array([[0.5, -1.5, 0.0, 1.0] * 2])))[0, :4]
    array([ 0.75, -0.75,  0.75,  0.75], dtype=float32)
    """
    data = check_data(data, 1, "binary")
    alpha = np.ascontiguousarray(data[:, :4]).view("<f4").astype(np.float32)  # (out, 1)
    signs = np.unpackbits(data[:, 4:], axis=1, bitorder="little").astype(np.float32) * 2 - 1
    return alpha * signs


def quantize_tq(x: np.ndarray, fmt: str) -> np.ndarray:
    """GGUF TQ2_0 / TQ1_0 bytes of ``x`` (rows, columns): uint8 (rows, columns / 256 * bytes).

    >>> w_q, gamma = ternarize(np.linspace(-1, 1, 256, dtype=np.float32)[None])
    >>> quantize_tq(gamma * w_q, "tq2_0").shape, quantize_tq(gamma * w_q, "tq1_0").shape
    ((1, 66), (1, 54))
    """
    if fmt not in BYTES_PER_BLOCK:
        raise ValueError(f"fmt must be one of {sorted(BYTES_PER_BLOCK)}, got {fmt!r}")
    x = check_rows(x, BLOCK_SIZE, fmt)  # (rows, columns)
    rows, cols = x.shape
    blocks = x.reshape(-1, BLOCK_SIZE)  # (n_blocks, 256)
    d = np.abs(blocks).max(axis=-1, keepdims=True)  # (n_blocks, 1)
    with np.errstate(divide="ignore"):
        inv_d = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    q = (round_half_away(blocks * inv_d) + 1).astype(np.uint16)  # (n_blocks, 256) in {0,1,2}
    n = blocks.shape[0]
    if fmt == "tq2_0":
        q = q.reshape(n, 2, 4, 32) << np.array([0, 2, 4, 6], np.uint16)[:, None]
        qs = q.sum(axis=2).reshape(n, 64)  # the 2-bit fields do not overlap: sum = OR
    else:
        first = (q[:, :160].reshape(n, 5, 32) * _TRIT_WEIGHTS[:, None]).sum(axis=1)
        second = (q[:, 160:240].reshape(n, 5, 16) * _TRIT_WEIGHTS[:, None]).sum(axis=1)
        last = (q[:, 240:].reshape(n, 4, 4) * _TRIT_WEIGHTS[:4, None]).sum(axis=1)
        v = np.concatenate([first, second, last], axis=1)  # (n_blocks, 52) in [0, 242]
        # NOTE: store ceil(256 v / 243), the base-3 number as a fraction of 256: decoding
        # then reads each trit off the top with a multiply by 3 (see dequantize_tq).
        qs = (v * 256 + 242) // 243
    data = np.concatenate([qs.astype(np.uint8), to_fp16_bytes(d, fmt)], axis=1)
    return data.reshape(rows, cols // BLOCK_SIZE * BYTES_PER_BLOCK[fmt])


def dequantize_tq(data: np.ndarray, fmt: str) -> np.ndarray:
    """float32 (rows, columns) values of TQ2_0 / TQ1_0 bytes.

    >>> w_q, gamma = ternarize(np.linspace(-1, 1, 256, dtype=np.float32)[None])
    >>> w_hat = dequantize_tq(quantize_tq(gamma * w_q, "tq1_0"), "tq1_0")
    >>> bool(np.all(w_hat == np.float16(gamma) * w_q))
    True
    """
    if fmt not in BYTES_PER_BLOCK:
        raise ValueError(f"fmt must be one of {sorted(BYTES_PER_BLOCK)}, got {fmt!r}")
    data = check_data(data, BYTES_PER_BLOCK[fmt], fmt)
    rows = data.shape[0]
    blocks = data.reshape(-1, BYTES_PER_BLOCK[fmt])  # (n_blocks, bytes)
    n = blocks.shape[0]
    d = from_fp16_bytes(blocks[:, -2:])  # (n_blocks, 1)
    if fmt == "tq2_0":
        shifts = np.array([0, 2, 4, 6], np.uint8)[:, None]
        q = (blocks[:, :64].reshape(n, 2, 1, 32) >> shifts) & np.uint8(3)  # (n, 2, 4, 32)
    else:
        powers = _TRIT_WEIGHTS[::-1].astype(np.uint8)[:, None]  # 1, 3, 9, 27, 81
        # NOTE: uint8 multiplication wraps mod 256: multiplying by 3^k drops the first k
        # trits, and (byte * 3) >> 8 reads the next one off the top.
        first = blocks[:, :32].reshape(n, 1, 32) * powers  # (n, 5, 32)
        second = blocks[:, 32:48].reshape(n, 1, 16) * powers  # (n, 5, 16)
        last = blocks[:, 48:52].reshape(n, 1, 4) * powers[:4]  # (n, 4, 4)
        parts = [first.reshape(n, -1), second.reshape(n, -1), last.reshape(n, -1)]
        scaled = np.concatenate(parts, axis=1)  # (n, 256) in the element order
        q = (scaled.astype(np.uint16) * 3) >> 8
    values = d * (q.reshape(n, BLOCK_SIZE).astype(np.float32) - 1)
    return values.reshape(rows, -1).astype(np.float32)
