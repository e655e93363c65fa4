r"""Fixed-point requantization: a real multiplier applied with integer arithmetic only.

An int8 layer accumulates $\sum a_q b_q$ in int32 at scale $s_{in} s_w$; its output must be at
scale $s_{out}$, so the accumulator is multiplied by the real number

$$M = \frac{s_{in}\, s_w}{s_{out}} = M_0 \cdot 2^{\,shift - 31}, \qquad
M_0 \in [2^{30}, 2^{31}).$$

$M_0$ (``multiplier``) is an int32 and ``shift`` a small int, so that
$y = \mathrm{round}(x \cdot M)$ needs one 32x32 -> 64-bit multiply and one rounding shift:

$$y = \mathrm{RDBPOT}\big(\mathrm{SRDHM}(x \cdot 2^{\max(shift, 0)},\ M_0),\
\max(-shift, 0)\big).$$

Everything here is vectorised over int32 NumPy arrays with int64 intermediates, and reproduces
the reference code bit for bit, including its two roundings (see the NOTEs).

TFLite also has a single-rounding variant (built with ``TFLITE_SINGLE_ROUNDING``): one 64-bit
product and one rounding shift,

$$y = \Big\lfloor \frac{x\,M_0}{2^{31 - shift}} + \frac12 \Big\rfloor,$$

which is the exact product $x M$ rounded to the nearest integer (ties toward $+\infty$).
The two-step reference rounds an intermediate result first, so about one value in
$2^{-shift}$ lands one step away from the single-rounded one.

References:

* B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", CVPR 2018 (arXiv:1712.05877), section 2.2.
* gemmlowp ``fixedpoint/fixedpoint.h`` (``SaturatingRoundingDoublingHighMul``,
  ``RoundingDivideByPOT``) and TensorFlow Lite ``quantization_util.cc``
  (``QuantizeMultiplier``) and ``common.h``/``common.cc`` (``MultiplyByQuantizedMultiplier``,
  both the gemmlowp double-rounding and the ``TFLITE_SINGLE_ROUNDING`` variants).
"""

import numpy as np

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

#: Rounding variants of :func:`multiply_by_quantized_multiplier`.
FIXEDPOINT_ROUNDINGS = ("double", "single")


def _as_int64(x: np.ndarray | int, name: str) -> np.ndarray:
    """``x`` as an int64 array after checking that it is integer and fits in int32."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {x.dtype}")
    x = x.astype(np.int64)
    if x.size and (x.min() < INT32_MIN or x.max() > INT32_MAX):
        raise ValueError(f"{name} must fit in int32, got values in [{x.min()}, {x.max()}]")
    return x


def _as_exponent(exponent: np.ndarray | int, name: str, lo: int, hi: int) -> np.ndarray:
    exponent = _as_int64(exponent, name)
    if exponent.size and (exponent.min() < lo or exponent.max() > hi):
        raise ValueError(
            f"{name} must be in [{lo}, {hi}], got values in [{exponent.min()}, {exponent.max()}]"
        )
    return exponent


def quantize_multiplier(
    real_multiplier: float | np.ndarray,
) -> tuple[int, int] | tuple[np.ndarray, np.ndarray]:
    r"""Split a real multiplier into an int32 ``multiplier`` $M_0$ and a power-of-two ``shift``.

    $$M = q \cdot 2^{shift},\ q \in [0.5, 1) \ (\text{frexp}), \qquad
    M_0 = \mathrm{round\_half\_away}(q \cdot 2^{31}),$$

    so that $M \approx M_0 \cdot 2^{shift - 31}$. Returns Python ints for a scalar input and
    int32 arrays of the same shape for an array input (one pair per output channel).

    >>> quantize_multiplier(0.5)
    (1073741824, 0)
    >>> quantize_multiplier(0.0123)
    (1690499128, -6)
    >>> m, s = quantize_multiplier(np.array([0.75, 3.0]))
    >>> m.tolist(), s.tolist()
    ([1610612736, 1610612736], [0, 2])
    """
    real = np.asarray(real_multiplier, dtype=np.float64)
    if not np.all(np.isfinite(real)) or np.any(real < 0):
        raise ValueError(f"real_multiplier must be finite and >= 0, got {real_multiplier!r}")
    q, shift = np.frexp(real)  # q in [0.5, 1), or 0 for real == 0
    # NOTE: q * 2**31 < 2**31 is exact in float64 and so is + 0.5 (33 significant bits):
    # floor(. + 0.5) is TFLite's round-half-away (std::round) for these non-negative values.
    multiplier = np.floor(q * 2.0**31 + 0.5).astype(np.int64)
    shift = shift.astype(np.int64)
    # NOTE: q close to 1 can round up to 2**31, which is not an int32: halve it, shift once more.
    carry = multiplier == 2**31
    multiplier = np.where(carry, multiplier // 2, multiplier)
    shift = np.where(carry, shift + 1, shift)
    # NOTE: a multiplier below 2**-32 would need a right shift past 31 bits: TFLite flushes it
    # to zero (and real == 0 already gives (0, 0) through frexp).
    flush = shift < -31
    multiplier = np.where(flush, 0, multiplier)
    shift = np.where(flush, 0, shift)
    if shift.max(initial=0) > 30:
        raise ValueError(
            f"real_multiplier must be below 2**30 (shift <= 30), got {real_multiplier!r}"
        )
    if real.ndim == 0:
        return int(multiplier), int(shift)
    return multiplier.astype(np.int32), shift.astype(np.int32)


def saturating_rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    r"""The high 32 bits of $2ab$, rounded: gemmlowp's ``SaturatingRoundingDoublingHighMul``.

    $$\mathrm{SRDHM}(a, b) = \Big\lfloor \frac{ab}{2^{31}} + \frac12 \Big\rfloor
    \text{ computed as } \mathrm{trunc}\Big(\frac{ab + \nu}{2^{31}}\Big),\quad
    \nu = \begin{cases} 2^{30} & ab \ge 0 \\ 1 - 2^{30} & ab < 0 \end{cases}$$

    and $\mathrm{SRDHM}(-2^{31}, -2^{31}) = 2^{31} - 1$ (the only product that overflows).

    >>> saturating_rounding_doubling_high_mul(np.int32(3), np.int32(2**30)).item()
    2
    >>> saturating_rounding_doubling_high_mul(np.array([-3, 3, -2**31]), -2**31).tolist()
    [3, -3, 2147483647]
    """
    a = _as_int64(a, "a")
    b = _as_int64(b, "b")
    ab = a * b  # |ab| <= 2**62: exact in int64
    nudge = np.where(ab >= 0, 2**30, 1 - 2**30)
    num = ab + nudge
    # NOTE: C integer division truncates toward zero, NumPy's >> floors; with the nudge above
    # this makes ties round up (+0.5 -> 1, -0.5 -> 0): gemmlowp's asymmetric tie rule.
    high = np.where(num >= 0, num >> 31, -((-num) >> 31))
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    return np.where(overflow, INT32_MAX, high).astype(np.int32)


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray | int) -> np.ndarray:
    r"""$x / 2^{e}$ rounded half away from zero: gemmlowp's ``RoundingDivideByPOT``.

    $$\mathrm{RDBPOT}(x, e) = (x \gg e) + [\, r > t \,], \quad r = x \,\&\, (2^e - 1), \quad
    t = \lfloor (2^e - 1) / 2 \rfloor + [x < 0].$$

    ``exponent`` is in [0, 31] and broadcasts against ``x`` (per-channel exponents along the
    last axis).

    >>> rounding_divide_by_pot(np.array([5, -5, 6, -6, 7, -7]), 1).tolist()
    [3, -3, 3, -3, 4, -4]
    """
    x = _as_int64(x, "x")
    exponent = _as_exponent(exponent, "exponent", 0, 31)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    # NOTE: >> on a negative int64 is an arithmetic (flooring) shift, as in the C reference.
    return ((x >> exponent) + (remainder > threshold)).astype(np.int32)


def multiply_by_quantized_multiplier(
    acc_int32: np.ndarray,
    multiplier: np.ndarray | int,
    shift: np.ndarray | int,
    rounding: str = "double",
) -> np.ndarray:
    r"""Apply $M = M_0 \cdot 2^{shift - 31}$ to int32 accumulators (TFLite's integer requant).

    ``rounding="double"`` (gemmlowp's reference, the default) rounds twice:

    $$y = \mathrm{RDBPOT}\big(\mathrm{SRDHM}(x \cdot 2^{\max(shift,0)},\ M_0),\
    \max(-shift, 0)\big).$$

    ``rounding="single"`` (TFLite's ``TFLITE_SINGLE_ROUNDING``) rounds the exact product once,
    ties toward $+\infty$, with a 64-bit product and an arithmetic (flooring) shift:

    $$y = \big(x M_0 + 2^{30 - shift}\big) \gg (31 - shift)
    = \Big\lfloor x M + \tfrac12 \Big\rfloor.$$

    ``multiplier`` and ``shift`` are scalars or per-channel arrays of shape ``(C,)`` that
    broadcast along the last axis of ``acc_int32`` (e.g. ``(N, C)`` accumulators of a Linear
    layer). Returns an int32 array of the broadcast shape.

    >>> m, s = quantize_multiplier(0.25)
    >>> multiply_by_quantized_multiplier(np.array([10, -10, 6, -6]), m, s).tolist()
    [3, -3, 2, -2]

    Per-channel, and the tie rule at work: $-3 \cdot 0.5 = -1.5$ becomes $-1$ because SRDHM
    rounds ties up (toward $+\infty$), while $3 \cdot 0.5 = 1.5$ becomes 2.

    >>> m, s = quantize_multiplier(np.array([0.5, 2.0]))
    >>> multiply_by_quantized_multiplier(np.array([[3, 3], [-3, -3]]), m, s).tolist()
    [[2, 6], [-1, -6]]

    Double rounding at work: $4 \cdot 0.35 = 1.4$, but SRDHM first rounds $4 \cdot 0.7 = 2.8$
    to 3, and RDBPOT then rounds $3 / 2 = 1.5$ up to 2. Single rounding gives 1.

    >>> m, s = quantize_multiplier(0.35)
    >>> [multiply_by_quantized_multiplier(np.array([4]), m, s, rounding=r).item()
    ...  for r in FIXEDPOINT_ROUNDINGS]
    [2, 1]
    """
    if rounding not in FIXEDPOINT_ROUNDINGS:
        raise ValueError(f"rounding must be one of {FIXEDPOINT_ROUNDINGS}, got {rounding!r}")
    x = _as_int64(acc_int32, "acc_int32")
    multiplier = _as_int64(multiplier, "multiplier")
    shift = _as_exponent(shift, "shift", -31, 30)
    if rounding == "single":
        return _multiply_single_rounding(x, multiplier, shift)
    left_shift = np.maximum(shift, 0)
    right_shift = np.maximum(-shift, 0)
    x_shifted = x << left_shift  # (..., C)
    # NOTE: the C reference computes x * (1 << left_shift) in int32, where overflow is
    # undefined behaviour; here it is an error instead of a silent wrap-around.
    if x_shifted.size and (x_shifted.min() < INT32_MIN or x_shifted.max() > INT32_MAX):
        raise ValueError(
            f"acc_int32 * 2**shift overflows int32 (shift up to {int(left_shift.max())}); "
            "a multiplier above 1 needs smaller accumulators"
        )
    high = saturating_rounding_doubling_high_mul(x_shifted, multiplier)
    return rounding_divide_by_pot(high, right_shift)


def _multiply_single_rounding(
    x: np.ndarray, multiplier: np.ndarray, shift: np.ndarray
) -> np.ndarray:
    """TFLite's single-rounding MultiplyByQuantizedMultiplier on int64 arrays (see above)."""
    if multiplier.size and multiplier.min() < 0:
        raise ValueError(
            f"multiplier must be >= 0 for rounding='single', got {int(multiplier.min())}"
        )
    total_shift = 31 - shift  # in [1, 62]
    # NOTE: |x * M0| < 2**62 and the nudge is at most 2**61, so the sum is exact in int64;
    # >> floors, so adding half of 2**total_shift rounds ties toward +inf (not away from 0).
    nudge = np.int64(1) << (total_shift - 1)
    y = (x * multiplier + nudge) >> total_shift  # (..., C)
    # NOTE: TFLite only DCHECKs that the result fits int32; here it is an error.
    if y.size and (y.min() < INT32_MIN or y.max() > INT32_MAX):
        raise ValueError(
            f"acc_int32 * multiplier overflows int32 (result range [{y.min()}, {y.max()}]); "
            "a multiplier above 1 needs smaller accumulators"
        )
    return y.astype(np.int32)
