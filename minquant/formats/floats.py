r"""Element formats: the bit layouts of float32, float16, bfloat16, FP8, FP4 and int8, simulated.

A binary floating-point number with $E$ exponent bits, $M$ mantissa bits and bias $b$ stores
a sign $s$, an exponent field $e$ and a mantissa field $m$:

$$x = (-1)^s \cdot 2^{e - b} \cdot \Big(1 + \frac{m}{2^M}\Big) \ (e > 0), \qquad
x = (-1)^s \cdot 2^{1 - b} \cdot \frac{m}{2^M} \ (e = 0,\ \text{subnormal}).$$

The exponent buys *range*, the mantissa buys *precision*: between two powers of two there
are always $2^M$ evenly spaced values, so the relative step is $2^{-M}$ everywhere.

:func:`cast` rounds any float tensor onto one of these grids (round to nearest, ties to
even), :func:`encode` / :func:`decode` convert between values and real bit patterns, and
:func:`bit_fields` splits a value into its sign, exponent and mantissa bit strings.

References:

* IEEE 754-2019, "IEEE Standard for Floating-Point Arithmetic" (float32, float16).
* Google Brain bfloat16: float32 with the lower 16 mantissa bits dropped.
* Open Compute Project, "OCP 8-bit Floating Point Specification (OFP8)", rev. 1.0, 2023;
  P. Micikevicius et al., "FP8 Formats for Deep Learning", arXiv:2209.05433 (E4M3, E5M2).
* Open Compute Project, "OCP Microscaling Formats (MX) Specification", v1.0, 2023,
  section 5.3.3 (FP4 E2M1: no Inf, no NaN).
* M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014
  (the 45 nm energy and area figures in :data:`HOROWITZ_45NM`).
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FloatFormat:
    r"""A binary floating-point format: 1 sign bit, ``exponent_bits``, ``mantissa_bits``.

    ``ieee=True`` follows IEEE 754: an all-ones exponent field means infinity (mantissa 0)
    or NaN. ``ieee=False`` is the OCP E4M3 rule: no infinities, and only the all-ones
    pattern ``S.1111.111`` is NaN, so the all-ones exponent still holds normal numbers.
    ``finite_only=True`` (with ``ieee=False``) is the OCP FP4 E2M1 rule: no NaN and no
    infinity at all, every pattern is a number::

        FP4 E2M1   bit  3   2 1   0       value = (-1)^s 2^(e-1) (1 + m/2)    (e > 0)
                        s  e e   m               (-1)^s 0.5 m                (e = 0)
        codes 0..7: 0, 0.5, 1, 1.5, 2, 3, 4, 6; codes 8..15: the same with the sign set

    >>> FP8_E4M3.max_value, FP8_E5M2.max_value, FLOAT16.max_value, FP4_E2M1.max_value
    (448.0, 57344.0, 65504.0, 6.0)
    >>> FP8_E4M3.min_subnormal == 2.0**-9, FLOAT16.epsilon == 2.0**-10
    (True, True)
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    ieee: bool = True  # IEEE 754 specials: all-ones exponent is Inf/NaN
    finite_only: bool = False  # no NaN and no Inf at all (FP4 E2M1); needs ieee=False

    @property
    def bits(self) -> int:
        """Total width in bits (sign + exponent + mantissa)."""
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def max_exponent(self) -> int:
        """The unbiased exponent of the largest finite values."""
        all_ones = 2**self.exponent_bits - 1
        # NOTE: IEEE reserves the all-ones exponent for Inf/NaN; OCP E4M3 does not.
        return (all_ones - 1 if self.ieee else all_ones) - self.bias

    @property
    def max_value(self) -> float:
        r"""The largest finite value, $2^{e_{max}} (2 - 2^{-M})$ (IEEE) or
        $2^{e_{max}} (2 - 2^{1-M})$ (E4M3, whose all-ones mantissa there is NaN)."""
        # NOTE: E4M3 spends its top mantissa on NaN; a finite-only format keeps it.
        top_mantissa = 2**self.mantissa_bits - (1 if self.ieee or self.finite_only else 2)
        return float(np.ldexp(1.0 + top_mantissa / 2**self.mantissa_bits, self.max_exponent))

    @property
    def min_normal(self) -> float:
        r"""The smallest positive normal value, $2^{1 - b}$."""
        return float(np.ldexp(1.0, 1 - self.bias))

    @property
    def min_subnormal(self) -> float:
        r"""The smallest positive value, $2^{1 - b - M}$."""
        return float(np.ldexp(1.0, 1 - self.bias - self.mantissa_bits))

    @property
    def epsilon(self) -> float:
        r"""The gap between 1 and the next value, $2^{-M}$: the relative precision."""
        return float(np.ldexp(1.0, -self.mantissa_bits))

    @property
    def uint_dtype(self) -> np.dtype:
        """The unsigned integer dtype that holds one bit pattern."""
        return np.dtype({4: np.uint8, 8: np.uint8, 16: np.uint16, 32: np.uint32}[self.bits])


FLOAT32 = FloatFormat("float32", exponent_bits=8, mantissa_bits=23, bias=127)
FLOAT16 = FloatFormat("float16", exponent_bits=5, mantissa_bits=10, bias=15)
BFLOAT16 = FloatFormat("bfloat16", exponent_bits=8, mantissa_bits=7, bias=127)
FP8_E4M3 = FloatFormat("fp8_e4m3", exponent_bits=4, mantissa_bits=3, bias=7, ieee=False)
FP8_E5M2 = FloatFormat("fp8_e5m2", exponent_bits=5, mantissa_bits=2, bias=15)
FP4_E2M1 = FloatFormat(
    "fp4_e2m1", exponent_bits=2, mantissa_bits=1, bias=1, ieee=False, finite_only=True
)

#: The float formats of notebook 01 by name, widest first.
FORMATS = {f.name: f for f in (FLOAT32, FLOAT16, BFLOAT16, FP8_E4M3, FP8_E5M2)}
#: Every element float format by name (``FORMATS`` plus the 4-bit FP4 E2M1 of MXFP4).
FLOAT_FORMATS = {**FORMATS, FP4_E2M1.name: FP4_E2M1}

#: Energy (pJ) and area (um^2) of one operation in a 45 nm process, as published in
#: M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014.
#: These are that paper's figures, not measurements made by this project.
HOROWITZ_45NM = {
    # operation: (energy_pj, area_um2)
    "8-bit int add": (0.03, 36),
    "32-bit int add": (0.1, 137),
    "16-bit float add": (0.4, 1360),
    "32-bit float add": (0.9, 4184),
    "8-bit int mult": (0.2, 282),
    "32-bit int mult": (3.1, 3495),
    "16-bit float mult": (1.1, 1640),
    "32-bit float mult": (3.7, 7700),
}


def get_format(fmt: str | FloatFormat) -> FloatFormat:
    """Look a format up by name (``"float16"``, ``"fp8_e4m3"``, ...) or pass one through.

    >>> get_format("bfloat16").mantissa_bits
    7
    """
    if isinstance(fmt, FloatFormat):
        return fmt
    if fmt not in FLOAT_FORMATS:
        raise ValueError(f"fmt must be one of {sorted(FLOAT_FORMATS)}, got {fmt!r}")
    return FLOAT_FORMATS[fmt]


def _as_float(name: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name} must be a float array, got dtype {x.dtype}")
    return x.astype(np.float64)


def cast(x: np.ndarray, fmt: str | FloatFormat, saturate: bool = False) -> np.ndarray:
    r"""Round a float tensor to the nearest value of ``fmt`` (ties to even), as float32.

    The value keeps its sign; its magnitude $a$ is rounded on the grid of its binade:

    $$\mathrm{step} = 2^{\max(\lfloor \log_2 a \rfloor,\ 1 - b) - M}, \qquad
    \hat{a} = \mathrm{step} \cdot \mathrm{round}(a / \mathrm{step})$$

    (below the smallest normal all values share the subnormal step). A result above
    ``fmt.max_value`` overflows: to infinity (IEEE formats) or NaN (E4M3) by default, or
    to ``±max_value`` with ``saturate=True`` (the OCP FP8 saturating mode, which also maps
    ±Inf to ±max). NaN stays NaN. ``torch.float8_e4m3fn`` casts saturate,
    ``torch.float8_e5m2`` casts do not. FP4 E2M1 has neither Inf nor NaN: it always
    saturates (as ``ml_dtypes.float4_e2m1fn`` and the OCP MX spec), and NaN input is an error.

    >>> cast(np.array([0.1, 1.0625, 300.0, 465.0]), "fp8_e4m3").tolist()
    [0.1015625, 1.0, 288.0, nan]
    >>> cast(np.array([465.0, -np.inf]), "fp8_e4m3", saturate=True)
    array([ 448., -448.], dtype=float32)
    >>> cast(np.array([1.00390625, 1.01171875]), "bfloat16")  # two ties: to even
    array([1.      , 1.015625], dtype=float32)
    >>> cast(np.array([0.25, 0.75, 2.5, 5.0, 7.0, -np.inf]), "fp4_e2m1")  # ties to even
    array([ 0.,  1.,  2.,  4.,  6., -6.], dtype=float32)
    """
    fmt = get_format(fmt)
    x64 = _as_float("x", x)
    if fmt.finite_only and np.isnan(x64).any():
        raise ValueError(f"x contains NaN, which {fmt.name} cannot represent (it has no NaN)")
    a = np.abs(x64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        _, e = np.frexp(a)  # a = f * 2**e with f in [0.5, 1)
        # NOTE: the exponent of the leading bit is e - 1; below the normal range every value
        # shares the subnormal step, so the exponent is floored at 1 - bias.
        exponent = np.maximum(e - 1, 1 - fmt.bias)
        step = np.ldexp(1.0, exponent - fmt.mantissa_bits)
        # NOTE: a / step is an exact power-of-two scaling in float64 (one rounding only);
        # np.rint rounds half to even, the IEEE default.
        a_hat = np.rint(a / step) * step
        a_hat = np.where(np.isinf(a), np.inf, a_hat)
        overflow = a_hat > fmt.max_value
    if saturate or fmt.finite_only:
        # NOTE: a format without Inf/NaN has nothing to overflow to: it always saturates.
        a_hat = np.where(overflow, fmt.max_value, a_hat)
    else:
        a_hat = np.where(overflow, np.inf if fmt.ieee else np.nan, a_hat)
    return np.copysign(a_hat, x64).astype(np.float32)


def encode(x: np.ndarray, fmt: str | FloatFormat, saturate: bool = False) -> np.ndarray:
    """The bit patterns of ``x`` cast to ``fmt``, as unsigned integers of ``fmt.bits`` bits.

    NaN is encoded as the canonical quiet NaN (sign 0, top mantissa bit set; ``0x7F`` for
    E4M3, whose only NaN mantissa is all ones).

    >>> [hex(v) for v in encode(np.array([1.0, -2.0, 448.0]), "fp8_e4m3")]
    ['0x38', '0xc0', '0x7e']
    >>> hex(encode(np.array(1.0), "float32"))
    '0x3f800000'
    """
    fmt = get_format(fmt)
    v = cast(x, fmt, saturate).astype(np.float64)
    sign = np.signbit(v).astype(np.int64)
    a = np.abs(v)
    nan, inf = np.isnan(a), np.isinf(a)
    finite_a = np.where(nan | inf, 0.0, a)
    _, e = np.frexp(finite_a)
    normal = finite_a >= fmt.min_normal
    exponent_field = np.where(normal, e - 1 + fmt.bias, 0)
    mantissa_unit = np.ldexp(1.0, np.where(normal, e - 1, 1 - fmt.bias) - fmt.mantissa_bits)
    significand = finite_a / mantissa_unit  # exact integer: 2**M + m (normal) or m
    mantissa_field = significand.astype(np.int64) - np.where(normal, 2**fmt.mantissa_bits, 0)
    all_ones = 2**fmt.exponent_bits - 1
    exponent_field = np.where(nan | inf, all_ones, exponent_field)
    nan_mantissa = 2 ** (fmt.mantissa_bits - 1) if fmt.ieee else 2**fmt.mantissa_bits - 1
    mantissa_field = np.where(inf, 0, np.where(nan, nan_mantissa, mantissa_field))
    sign = np.where(nan, 0, sign)
    bits = (
        (sign << (fmt.bits - 1)) | (exponent_field << fmt.mantissa_bits) | mantissa_field
    )  # same shape as x
    return bits.astype(fmt.uint_dtype)


def decode(bits: np.ndarray, fmt: str | FloatFormat) -> np.ndarray:
    """The float32 values of bit patterns of ``fmt`` (the inverse of :func:`encode`).

    >>> decode(np.array([0x38, 0xC0, 0x7E, 0x7F, 0x01]), "fp8_e4m3").tolist()
    [1.0, -2.0, 448.0, nan, 0.001953125]
    >>> decode(np.array([0x7C, 0x7D]), "fp8_e5m2")
    array([inf, nan], dtype=float32)
    """
    fmt = get_format(fmt)
    b = np.asarray(bits)
    if not np.issubdtype(b.dtype, np.integer):
        raise TypeError(f"bits must be an integer array, got dtype {b.dtype}")
    b = b.astype(np.int64)
    if b.size and (b.min() < 0 or b.max() >= 2**fmt.bits):
        raise ValueError(
            f"bits must be in [0, 2**{fmt.bits}) for {fmt.name}, got [{b.min()}, {b.max()}]"
        )
    sign = (b >> (fmt.bits - 1)) & 1
    exponent_field = (b >> fmt.mantissa_bits) & (2**fmt.exponent_bits - 1)
    mantissa_field = b & (2**fmt.mantissa_bits - 1)
    fraction = mantissa_field / 2**fmt.mantissa_bits  # float64, exact
    normal = np.ldexp(1.0 + fraction, exponent_field - fmt.bias)
    subnormal = np.ldexp(fraction, 1 - fmt.bias)
    value = np.where(exponent_field > 0, normal, subnormal)
    top_exponent = exponent_field == 2**fmt.exponent_bits - 1
    if fmt.ieee:
        special = np.where(mantissa_field == 0, np.inf, np.nan)
        value = np.where(top_exponent, special, value)
    elif not fmt.finite_only:
        value = np.where(top_exponent & (mantissa_field == 2**fmt.mantissa_bits - 1), np.nan, value)
    value = np.where(sign == 1, -value, value)
    return value.astype(np.float32)


def bit_fields(x: float, fmt: str | FloatFormat, saturate: bool = False) -> tuple[str, str, str]:
    """Sign, exponent and mantissa bits of the scalar ``x`` cast to ``fmt``, as strings.

    >>> bit_fields(-1.5, "float16")
    ('1', '01111', '1000000000')
    >>> bit_fields(0.1, "fp8_e5m2")
    ('0', '01011', '10')
    """
    fmt = get_format(fmt)
    if np.ndim(x) != 0:
        raise ValueError(f"x must be a scalar, got an array of shape {np.shape(x)}")
    pattern = int(encode(np.float64(x), fmt, saturate))
    text = format(pattern, f"0{fmt.bits}b")
    return text[0], text[1 : 1 + fmt.exponent_bits], text[1 + fmt.exponent_bits :]


def int_bits(x_q: int, num_bits: int = 8) -> str:
    """The two's complement bit string of the integer ``x_q`` in ``num_bits`` bits.

    >>> int_bits(5), int_bits(-1), int_bits(-128), int_bits(-3, num_bits=4)
    ('00000101', '11111111', '10000000', '1101')
    """
    lo, hi = -(2 ** (num_bits - 1)), 2 ** (num_bits - 1) - 1
    if not lo <= int(x_q) <= hi:
        raise ValueError(f"x_q must be in [{lo}, {hi}] for num_bits={num_bits}, got {x_q}")
    return format(int(x_q) & (2**num_bits - 1), f"0{num_bits}b")
