r"""Exercise 2: per-channel quantization of a convolution weight.

Follows notebook 02 (uniform quantization). The output channels of a trained layer have very
different ranges, so one scale for the whole tensor wastes most codes on the small channels.
Give each output channel $c$ of ``w`` (C_out, C_in, kh, kw) its own symmetric scale:

$$w_q[c] = \mathrm{clip}\big(\mathrm{round}(w[c] / s_c),\ -Q,\ Q\big), \qquad
\hat{w}[c] = s_c\, w_q[c], \qquad Q = 2^{b-1} - 1.$$

This is the TFLite int8 weight scheme: symmetric (zero point 0), narrow range [-127, 127].
Write every function with NumPy only, without calling ``minquant``. Check your work with
``pytest exercises -m ex2``.

References: R. Krishnamoorthi, "Quantizing deep convolutional networks for efficient
inference: A whitepaper", 2018 (arXiv:1806.08342), section 2.3 (per-channel granularity).
"""

import numpy as np

#: float32 machine epsilon, the smallest scale ever returned (as PyTorch).
EPS = np.finfo(np.float32).eps


def per_channel_scale(w: np.ndarray, num_bits: int = 8) -> np.ndarray:
    r"""Exercise 2.1: one symmetric scale per output channel (axis 0) of ``w``.

    $$s_c = \max\Big(\frac{\max_i |w_{c,i}|}{2^{b-1} - 1},\ \epsilon\Big)$$

    where $i$ runs over all the other axes of ``w`` and $\epsilon$ = ``EPS``. Compute in
    float32 (convert ``w`` to float32 first, divide by ``np.float32(2 ** (num_bits - 1) - 1)``):
    the tests compare bit for bit. Return float32 of shape (C_out,).

    Worked example: for ``w`` of shape (2, 1, 1, 2) with channels ``[0.5, -1.27]`` and
    ``[0.0, 0.0]``, and 8 bits: $s_0 = 1.27 / 127 = 0.01$ and $s_1 = \epsilon$ (an all-zero
    channel still gets a positive scale).
    """
    w = np.asarray(w, dtype=np.float32)
    max_abs = np.abs(w).reshape(w.shape[0], -1).max(axis=1)  # (C_out,)
    scale = max_abs / np.float32(2 ** (num_bits - 1) - 1)  # (C_out,)
    return np.maximum(scale, EPS).astype(np.float32)


def quantize_per_channel(w: np.ndarray, scale: np.ndarray, num_bits: int = 8) -> np.ndarray:
    r"""Exercise 2.2: quantize ``w`` with one scale per output channel (axis 0).

    $$w_q[c] = \mathrm{clip}\big(\mathrm{round}(w[c] \cdot s_c^{-1}),\ -Q,\ Q\big),
    \qquad Q = 2^{b-1} - 1$$

    with $s_c^{-1}$ = ``np.float32(1) / scale[c]`` and the product in float32; round half to
    even (``np.rint``). Reshape ``scale`` (C_out,) so that it broadcasts along axis 0 of
    ``w`` (e.g. to (C_out, 1, 1, 1)). Return int8 for ``num_bits <= 8``, else int16, of the
    shape of ``w``.

    Worked example: channels ``[0.5, -1.27]`` and ``[0.02, 0.05]`` with scales
    ``[0.01, 0.02]`` give ``[50, -127]`` and ``[1, 2]`` ($0.05 / 0.02 = 2.5$ rounds to the
    even 2; $0.02 / 0.02 = 1$).
    """
    w = np.asarray(w, dtype=np.float32)
    scale = np.asarray(scale, dtype=np.float32)
    inv_scale = (np.float32(1.0) / scale).reshape(-1, *([1] * (w.ndim - 1)))  # (C_out, 1, ...)
    q_max = 2 ** (num_bits - 1) - 1
    w_q = np.clip(np.rint(w * inv_scale), -q_max, q_max)
    return w_q.astype(np.int8 if num_bits <= 8 else np.int16)


def dequantize_per_channel(w_q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    r"""Exercise 2.3: $\hat{w}[c] = s_c\, w_q[c]$, in float32, with one scale per channel.

    Return float32 of the shape of ``w_q``.

    Worked example: ``w_q`` channels ``[50, -127]`` and ``[1, 2]`` with scales
    ``[0.01, 0.02]`` give ``[0.5, -1.27]`` and ``[0.02, 0.04]`` (to float32 precision).
    """
    w_q = np.asarray(w_q)
    scale = np.asarray(scale, dtype=np.float32).reshape(-1, *([1] * (w_q.ndim - 1)))
    return w_q.astype(np.float32) * scale
