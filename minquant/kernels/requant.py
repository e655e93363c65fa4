r"""Requantization kernels: int32 accumulators -> int8 outputs, each next to its NumPy reference.

$$y_q = \mathrm{clip}\Big(z_{out} + \mathrm{round}\big(M_c\,(acc + b)\big),\ q_{min},\ q_{max}\Big),
\qquad M_c = \frac{s_{in}\, s_{w,c}}{s_{out}}.$$

Two styles: fixed point (TFLite, integers only, see :mod:`minquant.fixedpoint`) and float32
(PyTorch's x86/fbgemm backend). As in :mod:`minquant.kernels`, every kernel is plain Python
(``_name_py``) compiled with ``njit(cache=True)`` on first use.

References:

* B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", CVPR 2018 (arXiv:1712.05877).
* TensorFlow Lite ``reference_ops`` and ``MultiplyByQuantizedMultiplier``
  (``kernels/internal/common.h``), and fbgemm ``ReQuantizeOutput``
  (``OutputProcessing-inl.h``), used by PyTorch's x86 quantized engine.
"""

import numpy as np
from numba import njit, prange

from minquant.fixedpoint import FIXEDPOINT_ROUNDINGS, multiply_by_quantized_multiplier


def _check_requant(acc, bias, name, bias_dtype):
    if not isinstance(acc, np.ndarray) or acc.dtype != np.int32 or acc.ndim != 2:
        shape = getattr(acc, "shape", None)
        raise TypeError(
            f"acc must be an int32 (M, N) ndarray, got {getattr(acc, 'dtype', acc)} "
            f"with shape {shape}"
        )
    n = acc.shape[1]
    if bias is None:
        return np.zeros(n, dtype=bias_dtype)
    bias = np.asarray(bias)
    if bias.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {bias.shape}")
    return bias.astype(bias_dtype)


def _per_channel(value, n: int, name: str, dtype) -> np.ndarray:
    value = np.asarray(value)
    if value.ndim == 0:
        value = np.full(n, value)
    if value.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},), got {value.shape}")
    return value.astype(dtype)


def _check_clamp(zero_point_out: int, qmin: int, qmax: int) -> None:
    if not -128 <= qmin <= zero_point_out <= qmax <= 127:
        raise ValueError(
            "need -128 <= qmin <= zero_point_out <= qmax <= 127 for int8 output, got "
            f"qmin={qmin}, zero_point_out={zero_point_out}, qmax={qmax}"
        )


def requantize_fixedpoint_ref(
    acc: np.ndarray,
    bias_q: np.ndarray | None,
    multiplier: np.ndarray | int,
    shift: np.ndarray | int,
    zero_point_out: int,
    qmin: int,
    qmax: int,
    rounding: str = "double",
) -> np.ndarray:
    """NumPy reference of :func:`requantize_fixedpoint`, built on :mod:`minquant.fixedpoint`."""
    bias_q = _check_requant(acc, bias_q, "bias_q", np.int64)
    x = acc.astype(np.int64) + bias_q  # (M, N)
    y = multiply_by_quantized_multiplier(x, multiplier, shift, rounding)
    return np.clip(y.astype(np.int64) + zero_point_out, qmin, qmax).astype(np.int8)  # (M, N)


@njit(cache=True)
def _mbqm_scalar(x, multiplier, shift):
    """multiply_by_quantized_multiplier for one int64 value (gemmlowp's SRDHM then RDBPOT)."""
    x = x << max(shift, 0)
    if x == -(2**31) and multiplier == -(2**31):
        high = 2**31 - 1
    else:
        ab = x * multiplier
        num = ab + (2**30 if ab >= 0 else 1 - 2**30)
        # NOTE: C truncating division by 2**31, written with shifts on |num|.
        high = num >> 31 if num >= 0 else -((-num) >> 31)
    exponent = max(-shift, 0)
    mask = (1 << exponent) - 1
    threshold = (mask >> 1) + (1 if high < 0 else 0)
    return (high >> exponent) + (1 if (high & mask) > threshold else 0)


@njit(cache=True)
def _mbqm_single_scalar(x, multiplier, shift):
    """TFLite's single-rounding multiply for one int64 value: one product, one shift."""
    total_shift = 31 - shift
    # NOTE: >> floors, so the nudge of half a step rounds ties toward +inf.
    return (x * multiplier + (np.int64(1) << (total_shift - 1))) >> total_shift


@njit(cache=True)
def _requant_fixedpoint_scalar(acc, bias, multiplier, shift, zero_point_out, qmin, qmax, single):
    """One int32 accumulator -> one int8 code, fixed point (shared with the fused kernels)."""
    x = np.int64(acc) + bias
    if single:
        y = _mbqm_single_scalar(x, multiplier, shift)
    else:
        y = _mbqm_scalar(x, multiplier, shift)
    return min(max(y + zero_point_out, qmin), qmax)


def _requantize_fixedpoint_py(
    acc, bias, multiplier, shift, zero_point_out, qmin, qmax, single, out
):
    m, n = acc.shape
    for i in prange(m):
        for j in range(n):
            out[i, j] = _requant_fixedpoint_scalar(
                acc[i, j], bias[j], multiplier[j], shift[j], zero_point_out, qmin, qmax, single
            )


_requantize_fixedpoint_kernel = njit(cache=True, parallel=True)(_requantize_fixedpoint_py)


def requantize_fixedpoint(
    acc: np.ndarray,
    bias_q: np.ndarray | None,
    multiplier: np.ndarray | int,
    shift: np.ndarray | int,
    zero_point_out: int,
    qmin: int,
    qmax: int,
    rounding: str = "double",
) -> np.ndarray:
    r"""TFLite requantization, integers only: int32 accumulators -> int8 outputs.

    $$y_q = \mathrm{clip}\big(z_{out} + \mathrm{MBQM}(acc + b_q,\ M_{0,c},\ shift_c),\
    q_{min},\ q_{max}\big)$$

    MBQM is :func:`minquant.fixedpoint.multiply_by_quantized_multiplier`, with ``rounding``
    ``"double"`` (gemmlowp's SRDHM then RDBPOT) or ``"single"`` (TFLite's
    ``TFLITE_SINGLE_ROUNDING``: the exact product rounded once).

    ``acc`` int32 (M, N); ``bias_q`` int32 (N,) at scale $s_{in} s_{w,c}$ or None;
    ``multiplier`` and ``shift`` per output channel (N,) or scalars (from
    :func:`minquant.fixedpoint.quantize_multiplier`). A fused ReLU is just
    ``qmin = max(qmin, zero_point_out)``. Returns int8 (M, N).

    >>> acc = np.array([[100, -100, 1000]], dtype=np.int32)
    >>> requantize_fixedpoint(acc, None, 1 << 30, 0, zero_point_out=-3, qmin=-128, qmax=127)
    array([[  47,  -53,  127]], dtype=int8)

    $-99 \cdot 0.25 + 0.5 = -24.25$ and $-98 \cdot 0.25 = -24.5$: a tie, which the single
    rounding sends up (to -24) and the double rounding away from zero (to -25).

    >>> acc = np.array([[-99, -98]], dtype=np.int32)
    >>> m, s = 1 << 30, -1  # M = 0.25
    >>> requantize_fixedpoint(acc, None, m, s, 0, -128, 127, rounding="single")
    array([[-25, -24]], dtype=int8)
    >>> requantize_fixedpoint(acc, None, m, s, 0, -128, 127, rounding="double")
    array([[-25, -25]], dtype=int8)
    """
    if rounding not in FIXEDPOINT_ROUNDINGS:
        raise ValueError(f"rounding must be one of {FIXEDPOINT_ROUNDINGS}, got {rounding!r}")
    bias_q = _check_requant(acc, bias_q, "bias_q", np.int64)
    n = acc.shape[1]
    multiplier = _per_channel(multiplier, n, "multiplier", np.int64)
    shift = _per_channel(shift, n, "shift", np.int64)
    _check_clamp(zero_point_out, qmin, qmax)
    single = rounding == "single"
    clamp = (int(zero_point_out), int(qmin), int(qmax))
    return requantize_fixedpoint_trusted(acc, bias_q, multiplier, shift, *clamp, single)


def requantize_fixedpoint_trusted(
    acc: np.ndarray,
    bias_q: np.ndarray,
    multiplier: np.ndarray,
    shift: np.ndarray,
    zero_point_out: int,
    qmin: int,
    qmax: int,
    single: bool,
) -> np.ndarray:
    """:func:`requantize_fixedpoint` without its checks, for a caller that made them once.

    ``acc`` int32 (M, N); ``bias_q``, ``multiplier``, ``shift`` int64 (N,); the clamp as
    Python ints with ``qmin <= zero_point_out <= qmax`` in int8; ``single`` picks the rounding.
    """
    # NOTE: acc + bias and the left shift are done in int64 and assumed to fit int32, which
    # the caller guarantees (K <= MAX_K, shift <= 0 for M < 1); the reference checks it.
    out = np.empty(acc.shape, dtype=np.int8)  # (M, N)
    _requantize_fixedpoint_kernel(
        acc, bias_q, multiplier, shift, zero_point_out, qmin, qmax, single, out
    )
    return out


def float_requant_params(
    acc: np.ndarray, bias: np.ndarray | None, acc_scale: np.ndarray | float, out_scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """float32 per-channel ``bias / acc_scale`` and ``acc_scale / out_scale``, as fbgemm.

    Checked against ``acc`` int32 (M, N) (M may be 0): the arguments of
    :func:`requantize_float_trusted` and of the fused float convolution.
    """
    bias = _check_requant(acc, bias, "bias", np.float32)
    acc_scale = _per_channel(acc_scale, acc.shape[1], "acc_scale", np.float32)
    out_scale = np.float32(out_scale)
    if not (np.all(np.isfinite(acc_scale)) and np.isfinite(out_scale)):
        raise ValueError(f"acc_scale and out_scale must be finite, got {acc_scale}, {out_scale}")
    if not (np.all(acc_scale > 0) and out_scale > 0):
        raise ValueError(f"acc_scale and out_scale must be > 0, got {acc_scale}, {out_scale}")
    if not np.all(np.isfinite(bias)):
        raise ValueError(f"bias must be finite, got {bias}")
    # NOTE: both divisions are float32 / float32, rounded once, as in torch's qlinear
    # (act_times_w_scale / output_scale) and fbgemm's ReQuantizeOutput (bias / act_times_w_scale).
    bias_over_scale = bias / acc_scale  # (N,) float32
    multiplier = acc_scale / out_scale  # (N,) float32
    return bias_over_scale, multiplier


def requantize_float_ref(
    acc: np.ndarray,
    bias: np.ndarray | None,
    acc_scale: np.ndarray | float,
    out_scale: float,
    zero_point_out: int,
    qmin: int,
    qmax: int,
) -> np.ndarray:
    """NumPy reference of :func:`requantize_float` (float32 throughout)."""
    bias_over_scale, multiplier = float_requant_params(acc, bias, acc_scale, out_scale)
    _check_clamp(zero_point_out, qmin, qmax)
    x = acc.astype(np.float32) + bias_over_scale  # (M, N) float32
    y = np.rint(x * multiplier).astype(np.int64) + zero_point_out  # (M, N)
    return np.clip(y, qmin, qmax).astype(np.int8)


@njit(cache=True)
def _requant_float_scalar(acc, bias_over_scale, multiplier, zero_point_out, qmin, qmax):
    """One int32 accumulator -> one int8 code, float32 (shared with the fused kernels)."""
    # NOTE: every step is float32 (int32 -> float32 rounds to nearest for |acc| > 2**24,
    # like cvtdq2ps), and rint rounds half to even, like lrintf / cvtps2dq.
    x = np.float32(acc) + bias_over_scale
    y = np.int64(np.rint(np.float32(x * multiplier))) + zero_point_out
    return min(max(y, qmin), qmax)


def _requantize_float_py(acc, bias_over_scale, multiplier, zero_point_out, qmin, qmax, out):
    m, n = acc.shape
    for i in prange(m):
        for j in range(n):
            out[i, j] = _requant_float_scalar(
                acc[i, j], bias_over_scale[j], multiplier[j], zero_point_out, qmin, qmax
            )


_requantize_float_kernel = njit(cache=True, parallel=True)(_requantize_float_py)


def requantize_float(
    acc: np.ndarray,
    bias: np.ndarray | None,
    acc_scale: np.ndarray | float,
    out_scale: float,
    zero_point_out: int,
    qmin: int,
    qmax: int,
) -> np.ndarray:
    r"""PyTorch x86 (fbgemm) requantization in float32: int32 accumulators -> int8 outputs.

    $$y_q = \mathrm{clip}\Big(\mathrm{rint}\Big(\big(\mathrm{f32}(acc) + \frac{b_c}{a_c}\big)
    \cdot \frac{a_c}{s_{out}}\Big) + z_{out},\ q_{min},\ q_{max}\Big), \qquad
    a_c = s_{in}\, s_{w,c}\ (\text{float32}).$$

    ``acc`` int32 (M, N) with the zero-point terms already removed; ``bias`` float32 (N,) or
    None; ``acc_scale`` float32 (N,) or scalar. Each operation is one float32 operation in
    fbgemm's order, so the result is bit-exact with ``torch.ao.nn.quantized.Linear`` / ``Conv2d``
    (with int8 codes = uint8 codes - 128). Returns int8 (M, N).

    >>> acc = np.array([[100, -100, 1000]], dtype=np.int32)
    >>> requantize_float(acc, None, 0.5, 1.0, zero_point_out=-3, qmin=-128, qmax=127)
    array([[  47,  -53,  127]], dtype=int8)
    """
    bias_over_scale, multiplier = float_requant_params(acc, bias, acc_scale, out_scale)
    _check_clamp(zero_point_out, qmin, qmax)
    clamp = (int(zero_point_out), int(qmin), int(qmax))
    return requantize_float_trusted(acc, bias_over_scale, multiplier, *clamp)


def requantize_float_trusted(
    acc: np.ndarray,
    bias_over_scale: np.ndarray,
    multiplier: np.ndarray,
    zero_point_out: int,
    qmin: int,
    qmax: int,
) -> np.ndarray:
    """:func:`requantize_float` without its checks, for a caller that made them once.

    ``acc`` int32 (M, N); ``bias_over_scale`` and ``multiplier`` float32 (N,), as
    ``float_requant_params`` computes them; the clamp as Python ints.
    """
    out = np.empty(acc.shape, dtype=np.int8)  # (M, N)
    _requantize_float_kernel(acc, bias_over_scale, multiplier, zero_point_out, qmin, qmax, out)
    return out
