r"""Exercise 1: uniform (affine) quantization.

Follows notebooks 00-02 (the photograph analogy, number formats, uniform quantization).
A real tensor ``x`` is stored as integers ``x_q`` in ``[qmin, qmax]`` plus a ``scale`` and a
``zero_point``:

$$x_q = \mathrm{clip}\big(\mathrm{round}(x / s) + z,\ q_{min},\ q_{max}\big), \qquad
\hat{x} = s\,(x_q - z).$$

Write every function with NumPy only: do not call ``minquant`` (the tests make the library's
versions raise while your code runs). Check your work with ``pytest exercises -m ex1``.

References: B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", CVPR 2018 (arXiv:1712.05877), section 2.1.
"""

import numpy as np

#: float32 machine epsilon, the smallest scale ever returned (as PyTorch).
EPS = np.finfo(np.float32).eps


def qrange(num_bits: int, signed: bool, narrow_range: bool = False) -> tuple[int, int]:
    r"""Exercise 1.1: the integer range ``(qmin, qmax)`` of a ``num_bits`` quantizer.

    $$[q_{min}, q_{max}] = [-2^{b-1},\ 2^{b-1} - 1] \text{ (signed)}, \qquad
    [0,\ 2^b - 1] \text{ (unsigned)}.$$

    ``narrow_range=True`` drops the lowest code, so that signed int8 becomes the symmetric
    [-127, 127] used for TFLite weights. Return two Python ints.

    Worked examples: ``qrange(8, signed=True)`` is ``(-128, 127)``; ``qrange(8, False)`` is
    ``(0, 255)``; ``qrange(4, True)`` is ``(-8, 7)``; ``qrange(8, True, narrow_range=True)`` is
    ``(-127, 127)``.
    """
    raise NotImplementedError("Exercise 1.1: qrange")


def calc_qparams(
    min_val: float, max_val: float, qmin: int, qmax: int, symmetric: bool = False
) -> tuple[np.float32, int]:
    r"""Exercise 1.2: ``(scale, zero_point)`` mapping ``[min_val, max_val]`` onto ``[qmin, qmax]``.

    First widen the range so that it holds 0 (then 0.0 is exactly representable), with
    $m^- = \min(\text{min\_val}, 0)$ and $m^+ = \max(\text{max\_val}, 0)$:

    $$\text{affine: } s = \max\Big(\frac{m^+ - m^-}{q_{max} - q_{min}},\ \epsilon\Big), \qquad
    z = \mathrm{clip}\big(q_{min} - \mathrm{round}(m^- / s),\ q_{min},\ q_{max}\big)$$

    $$\text{symmetric: } s = \max\Big(\frac{\max(-m^-,\ m^+)}{(q_{max} - q_{min}) / 2},\
    \epsilon\Big), \qquad z = 0$$

    with $\epsilon$ = ``EPS``, the float32 machine epsilon. Do all the arithmetic in
    float32 (convert ``min_val`` and ``max_val`` with ``np.float32`` first): PyTorch does, and
    the tests compare bit for bit. ``round`` is round-half-to-even (``np.rint``).
    Return ``scale`` as ``np.float32`` and ``zero_point`` as a Python int.

    Raise ``ValueError`` when ``min_val > max_val``, when either is NaN or infinite, and when
    ``symmetric=True`` is asked for an unsigned range (``qmin >= 0``).

    Worked examples:

    * ``calc_qparams(-1.0, 3.0, 0, 255)``: $s = 4 / 255 = 0.015686275$ and
      $z = 0 - \mathrm{round}(-1 / s) = \mathrm{round}(63.75) = 64$.
    * ``calc_qparams(-1.0, 3.0, -128, 127, symmetric=True)``: $s = 3 / 127.5 = 0.023529412$,
      $z = 0$.
    * ``calc_qparams(0.5, 2.0, 0, 255)``: the range becomes [0, 2], so $s = 2/255$, $z = 0$.
    """
    raise NotImplementedError("Exercise 1.2: calc_qparams")


def quantize(x: np.ndarray, scale: float, zero_point: int, qmin: int, qmax: int) -> np.ndarray:
    r"""Exercise 1.3: quantize a real tensor to integers in ``[qmin, qmax]``.

    $$x_q = \mathrm{clip}\big(\mathrm{round}(x \cdot s^{-1}) + z,\ q_{min},\ q_{max}\big)$$

    Convert ``x`` to float32, take the reciprocal $s^{-1}$ = ``np.float32(1) /
    np.float32(scale)`` and multiply in float32 (as PyTorch's fake quantization does); round
    half to even (``np.rint``), add the zero point *after* rounding, then clip. Return an
    int32 array of the shape of ``x``.

    Worked example: with $s = 0.5$, $z = 2$ and $[0, 255]$, the values
    ``[-1.0, 0.0, 0.25, 0.75, 3.0, 100.0]`` become $x/s$ = ``[-2, 0, 0.5, 1.5, 6, 200]``,
    rounded ``[-2, 0, 0, 2, 6, 200]`` (ties go to the even neighbour), plus $z$:
    ``[0, 2, 2, 4, 8, 202]``.
    """
    raise NotImplementedError("Exercise 1.3: quantize")


def dequantize(x_q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    r"""Exercise 1.4: map integers back to reals, $\hat{x} = s\,(x_q - z)$, in float32.

    Subtract the zero point in integers (``x_q`` may be uint8: subtract in a wider type),
    convert to float32, multiply by ``np.float32(scale)``. Return float32.

    Worked example: ``dequantize([0, 2, 3, 8], 0.5, 2)`` is ``[-1.0, 0.0, 0.5, 3.0]``.
    """
    raise NotImplementedError("Exercise 1.4: dequantize")
