r"""Exercise 11: one GGUF Q4_0 block by hand, byte for byte as llama.cpp writes it.

Follows notebook 10 (the number formats of LLMs). A Q4_0 block stores 32 weights in 18
bytes: a float16 scale ``d`` and 32 four-bit codes $q_j \in [0, 15]$, read back as
$\hat{x}_j = d\,(q_j - 8)$:

$$d = \frac{x_{\pm max}}{-8}, \qquad
q_j = \min\big(15,\ \lfloor x_j \cdot d^{-1} + 8.5 \rfloor\big),$$

where $x_{\pm max}$ is the value of largest magnitude *with its sign*. Layout::

    byte  0    1    2              3              ...  17
         [ d (float16, little-endian) ][q0 | q16 << 4][q1 | q17 << 4] ... [q15 | q31 << 4]

Write every function with NumPy only: do not call ``minquant`` (the tests make the library's
GGUF functions raise while your code runs). Check your work with ``pytest exercises -m ex11``;
the tests compare your bytes with ``minquant`` and, where it is installed, with the ``gguf``
package (the Python port of llama.cpp's reference quantizer).

References: llama.cpp, ``ggml/src/ggml-quants.c`` (``quantize_row_q4_0_ref``,
``dequantize_row_q4_0``) and ``ggml-common.h`` (``block_q4_0``).
"""

import numpy as np

BLOCK_SIZE = 32


def q4_0_scale(x: np.ndarray) -> np.float32:
    r"""Exercise 11.1: the float32 scale ``d`` of one block of 32 values.

    $$d = x_{\pm max} / -8$$

    $x_{\pm max}$ is the element of largest absolute value, sign kept; if several share
    that magnitude, take the first (``np.argmax`` of ``np.abs(x)``). Compute in float32:
    ``np.float32(x_pm_max) / np.float32(-8)``. Return a ``np.float32`` (not yet rounded to
    float16: the codes are computed with this float32 ``d``).

    Worked examples: for ``[1.0, -4.0, 3.0, ...zeros]`` the extreme is -4 and
    $d = -4 / -8 = 0.5$; for ``[2.0, -2.0, ...]`` the first, 2, wins: $d = -0.25$. An
    all-zero block has $d = 0$.
    """
    raise NotImplementedError("Exercise 11.1: q4_0_scale")


def q4_0_codes(x: np.ndarray, d: np.float32) -> np.ndarray:
    r"""Exercise 11.2: the 32 codes $q_j = \min(15, \lfloor x_j d^{-1} + 8.5 \rfloor)$.

    Use float32 throughout, in this order: ``inv_d = np.float32(1) / d`` (and ``inv_d = 0``
    when ``d == 0``), then ``x * inv_d + np.float32(8.5)``, then ``np.trunc``, then the
    clamp at 15 (the values are never negative). Return uint8 of shape (32,).

    The $+8.5$ then truncation is "round half up" of $x/d + 8$: a value exactly halfway
    between two levels goes to the upper one. The extreme value maps to $-8 + 8.5 = 0.5$,
    code 0; the far side can reach 16 and is clamped to 15.

    Worked example: with ``d = 1``, the values ``[-8, 7.5, -0.5, 0.5, 2.49]`` give codes
    ``[0, 15, 8, 9, 10]`` (7.5 + 8.5 = 16 clamps to 15; -0.5 + 8.5 = 8; 2.49 + 8.5 = 10.99).
    """
    raise NotImplementedError("Exercise 11.2: q4_0_codes")


def encode_q4_0_block(x: np.ndarray) -> np.ndarray:
    r"""Exercise 11.3: the 18 bytes of the Q4_0 block of ``x`` (32 float values).

    Use your :func:`q4_0_scale` and :func:`q4_0_codes`. Bytes 0-1: ``d`` rounded to float16
    (``np.float16``, round to nearest even), little-endian (``.astype("<f2")`` then
    ``.view(np.uint8)``). Bytes 2-17: byte ``2 + j`` is ``q[j] | (q[j + 16] << 4)``: element
    ``j`` in the low nibble and element ``j + 16`` in the high nibble. Return uint8 (18,).
    Raise ``ValueError`` naming ``x`` if it does not hold exactly 32 finite values.

    Worked example: ``x = np.arange(32) - 16`` (-16 ... 15) has $d = -16 / -8 = 2$: bytes
    0-1 are ``[0, 64]`` (float16 2.0 is 0x4000); element 0 has code 0 and element 16
    (value 0) code 8, so byte 2 is ``0 | 8 << 4 = 128``.
    """
    raise NotImplementedError("Exercise 11.3: encode_q4_0_block")


def decode_q4_0_block(block: np.ndarray) -> np.ndarray:
    r"""Exercise 11.4: the 32 float32 values $\hat{x}_j = d\,(q_j - 8)$ of an 18-byte block.

    Read ``d`` from bytes 0-1 (``block[:2].view("<f2")``, then float32), the low nibbles
    (``byte & 15``) of bytes 2-17 as codes 0-15 and the high nibbles (``byte >> 4``) as
    codes 16-31. Multiply in float32. Raise ``ValueError`` naming ``block`` unless it is
    uint8 of shape (18,).

    Worked example: bytes ``[0, 60] + [0x80] + [0x88] * 15`` (d = float16 0x3C00 = 1.0)
    decode to ``-8`` for element 0 and ``0`` for every other element.
    """
    raise NotImplementedError("Exercise 11.4: decode_q4_0_block")
