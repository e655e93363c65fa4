r"""Exercise 5: fixed-point requantization, as TFLite and gemmlowp do it.

Follows notebook 04 (integer arithmetic). An int8 layer accumulates in int32 at scale
$s_{in} s_w$; to produce its int8 output at scale $s_{out}$ it must multiply the accumulator
by the real number $M = s_{in} s_w / s_{out}$, with integers only:

$$M = M_0 \cdot 2^{\,shift - 31}, \quad M_0 \in [2^{30}, 2^{31}), \qquad
y = \mathrm{RDBPOT}\big(\mathrm{SRDHM}(x \cdot 2^{\max(shift, 0)},\ M_0),\
\max(-shift, 0)\big).$$

Work on int64 NumPy arrays internally and return int32. Do not call ``minquant.fixedpoint``.
Check your work with ``pytest exercises -m ex5``.

References: B. Jacob et al., CVPR 2018 (arXiv:1712.05877), section 2.2; gemmlowp
``fixedpoint/fixedpoint.h``; TensorFlow Lite ``quantization_util.cc`` and ``common.h``.
"""

import numpy as np

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def quantize_multiplier(real_multiplier: float) -> tuple[int, int]:
    r"""Exercise 5.1: split $M \ge 0$ into an int32 ``multiplier`` $M_0$ and a ``shift``.

    $$M = q \cdot 2^{shift},\ q \in [0.5, 1) \ (\texttt{np.frexp}), \qquad
    M_0 = \mathrm{round\_half\_away}(q \cdot 2^{31})$$

    so that $M \approx M_0 \cdot 2^{shift - 31}$. Two corner cases:

    * $q$ close to 1 can round up to $M_0 = 2^{31}$, which is not an int32: then halve $M_0$
      and add 1 to ``shift``;
    * a ``shift`` below -31 cannot be applied: return ``(0, 0)`` (as for $M = 0$).

    Return two Python ints.

    Worked examples: $0.5 = 0.5 \cdot 2^0$ gives ``(2**30, 0)``; $3 = 0.75 \cdot 2^2$ gives
    ``(3 * 2**29, 2)``; $0.0123 = 0.7872 \cdot 2^{-6}$ gives ``(1690499128, -6)``.
    """
    q, shift = np.frexp(np.float64(real_multiplier))
    # NOTE: q * 2**31 is exact in float64; floor(. + 0.5) rounds half away for q >= 0.
    multiplier = int(np.floor(q * 2.0**31 + 0.5))
    shift = int(shift)
    if multiplier == 2**31:
        multiplier //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return multiplier, shift


def saturating_rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    r"""Exercise 5.2: the high 32 bits of $2ab$, rounded (gemmlowp's ``SRDHM``).

    $$\mathrm{SRDHM}(a, b) = \mathrm{trunc}\Big(\frac{ab + \nu}{2^{31}}\Big), \qquad
    \nu = \begin{cases} 2^{30} & ab \ge 0 \\ 1 - 2^{30} & ab < 0 \end{cases}$$

    where ``trunc`` is C's integer division (rounds toward zero; NumPy's ``>>`` and ``//``
    round toward minus infinity, so handle negative numerators yourself). The only product
    that does not fit is $(-2^{31}) \cdot (-2^{31})$: return $2^{31} - 1$ for it. ``a`` and
    ``b`` are int32 values (arrays or scalars that broadcast); compute $ab$ in int64.
    Return int32.

    Worked examples: ``SRDHM(3, 2**30)`` $= \mathrm{trunc}((3 \cdot 2^{30} + 2^{30}) / 2^{31})
    = 2$; ``SRDHM(-3, 2**30)`` $= \mathrm{trunc}((-3 \cdot 2^{30} + 1 - 2^{30}) / 2^{31})
    = -1$ (the tie $-1.5$ rounds up); ``SRDHM(-2**31, -2**31)`` $= 2^{31} - 1$.
    """
    a = np.asarray(a).astype(np.int64)
    b = np.asarray(b).astype(np.int64)
    ab = a * b  # |ab| <= 2**62: exact in int64
    nudge = np.where(ab >= 0, 2**30, 1 - 2**30)
    num = ab + nudge
    high = np.where(num >= 0, num >> 31, -((-num) >> 31))  # C division: toward zero
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    return np.where(overflow, INT32_MAX, high).astype(np.int32)


def rounding_divide_by_pot(x: np.ndarray, exponent: int) -> np.ndarray:
    r"""Exercise 5.3: $x / 2^{e}$ rounded to nearest, ties away from zero (``RDBPOT``).

    $$\mathrm{RDBPOT}(x, e) = (x \gg e) + [\, r > t \,], \qquad r = x \,\&\, (2^e - 1),
    \qquad t = \lfloor (2^e - 1) / 2 \rfloor + [x < 0]$$

    with ``>>`` the arithmetic (flooring) shift, ``&`` the bitwise and on two's complement
    and $[\cdot]$ 1 if true else 0. ``x`` holds int32 values, ``0 <= exponent <= 31``.
    Return int32.

    Worked example: ``RDBPOT([5, -5, 6, -6, 7, -7], 1)`` is ``[3, -3, 3, -3, 4, -4]``:
    $\pm 2.5$ and $\pm 3.5$ are ties and go away from zero.
    """
    x = np.asarray(x).astype(np.int64)
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return ((x >> exponent) + (remainder > threshold)).astype(np.int32)


def multiply_by_quantized_multiplier(acc: np.ndarray, multiplier: int, shift: int) -> np.ndarray:
    r"""Exercise 5.4: $\mathrm{round}(x \cdot M_0 \cdot 2^{shift - 31})$ with integers only.

    $$y = \mathrm{RDBPOT}\big(\mathrm{SRDHM}(x \cdot 2^{\max(shift, 0)},\ M_0),\
    \max(-shift, 0)\big)$$

    using your functions of 5.2 and 5.3. ``acc`` holds int32 accumulators; a left shift
    that would overflow int32 is a ``ValueError``. Return int32.

    Worked example: $M = 0.25$ is ``(2**30, -1)``; ``[10, -10, 6, -6]`` give
    ``[3, -3, 2, -2]`` ($\pm 2.5$ and $\pm 1.5$ round away from zero).
    """
    x = np.asarray(acc).astype(np.int64)
    left_shift, right_shift = max(shift, 0), max(-shift, 0)
    x_shifted = x << left_shift
    if x_shifted.size and (x_shifted.min() < INT32_MIN or x_shifted.max() > INT32_MAX):
        raise ValueError(f"acc * 2**{left_shift} overflows int32")
    high = saturating_rounding_doubling_high_mul(x_shifted, multiplier)
    return rounding_divide_by_pot(high, right_shift)
