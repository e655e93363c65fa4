r"""Rounding to integers: the one lossy step of quantization, named and tie-tested.

Every rounding minquant does goes through one of these functions, so that a tie (a value
exactly halfway between two integers) is broken the way the matched reference breaks it:

* :func:`round_half_even` (``np.rint``, ``torch.round``): PyTorch, ONNX, the default.
* :func:`round_half_away` (C ``round``): TFLite and gemmlowp.
* :func:`fma_float32`: ``a * b + c`` rounded to float32 once, as the fused multiply-add in
  PyTorch's per-tensor quantize kernel does, before the rounding to an integer.

References:

* S. Boldo, G. Melquiond, "Emulation of FMA and correctly rounded sums: proved algorithms
  using rounding to odd", IEEE Trans. Computers 57(4), 2008 (used by :func:`fma_float32`).
"""

import numpy as np

#: Rounding modes understood by :func:`~minquant.quant.quantize` and
#: :func:`~minquant.quant.fake_quantize`.
ROUNDING_MODES = ("half_even", "half_away")


def round_half_even(x: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, ties to even (banker's rounding, ``np.rint``).

    >>> round_half_even(np.array([0.5, 1.5, 2.5, -0.5, -1.5])).tolist()
    [0.0, 2.0, 2.0, -0.0, -2.0]
    """
    return np.rint(x)


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, ties away from zero (C ``round``, TFLite).

    >>> round_half_away(np.array([0.5, 1.5, 2.5, -0.5, -1.5])).tolist()
    [1.0, 2.0, 3.0, -1.0, -2.0]
    """
    # NOTE: floor(|x| + 0.5) is exact for |x| < 2**52 in float64; for float32 inputs the
    # addition is done in float32, which is exact below 2**23 (all values we quantize).
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _round(x: np.ndarray, rounding: str) -> np.ndarray:
    if rounding == "half_even":
        return round_half_even(x)
    if rounding == "half_away":
        return round_half_away(x)
    raise ValueError(f"rounding must be one of {ROUNDING_MODES}, got {rounding!r}")


def fma_float32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    r"""$\mathrm{fl}_{32}(a \cdot b + c)$ rounded once, as a fused multiply-add (FMA) does.

    The product of two float32 numbers is exact in float64 (24 + 24 significand bits fit
    in 53), but the float64 sum may round, and rounding twice (to float64, then to
    float32) can miss by one float32 ulp when the first rounding lands exactly halfway
    between two float32 numbers. Rounding the sum *to odd* first removes the problem
    (Boldo & Melquiond 2008): TwoSum gives the exact error of the float64 sum; when it is
    non-zero and the last significand bit is even, step one float64 ulp towards the
    exact value.

    >>> a, b = np.float32(1 + 2**-12), np.float32(1 + 2**-12)  # a*b = 1 + 2**-11 + 2**-24
    >>> bool(fma_float32(a, b, np.float32(-1.0)) == np.float32(2**-11 + 2**-24))
    True
    >>> bool(a * b - np.float32(1.0) == np.float32(2**-11))  # two roundings lose 2**-24
    True
    """
    a = np.asarray(a, dtype=np.float32).astype(np.float64)
    b = np.asarray(b, dtype=np.float32).astype(np.float64)
    c = np.asarray(c, dtype=np.float32).astype(np.float64)
    product = a * b  # exact in float64
    total = product + c
    # TwoSum (Knuth): err is exactly (product + c) - total.
    c_part = total - product
    err = (product - (total - c_part)) + (c - c_part)
    is_even = (np.asarray(total).view(np.uint64) & 1) == 0
    towards_exact = np.nextafter(total, np.where(err > 0, np.inf, -np.inf))
    total = np.where((err != 0) & is_even, towards_exact, total)
    with np.errstate(over="ignore"):  # beyond float32's range: +-inf, as the FMA gives
        return total.astype(np.float32)
