r"""Uniform (affine) quantization: the primitives everything else is built on.

A real tensor ``x`` is represented by integers ``x_q`` in ``[qmin, qmax]`` and two parameters,
a positive ``scale`` and an integer ``zero_point``:

$$x_q = \mathrm{clip}\big(\mathrm{round}(x / s) + z,\ q_{min},\ q_{max}\big), \qquad
\hat{x} = s\,(x_q - z).$$

One pair may serve the whole tensor, each channel (``axis``) or each group of ``group_size``
elements along ``axis`` (see :mod:`minquant.granularity`). The rounding functions live in
:mod:`minquant.rounding` and are re-exported here.

References:

* B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", CVPR 2018 (arXiv:1712.05877).
* R. Krishnamoorthi, "Quantizing deep convolutional networks for efficient inference:
  A whitepaper", 2018 (arXiv:1806.08342).
* PyTorch ``torch.ao.quantization`` observers and ``torch.quantize_per_tensor`` /
  ``torch.fake_quantize_per_tensor_affine``, which this module reproduces bit for bit.
"""

import numpy as np

from minquant.granularity import check_axis, expand_groups, group_min_max, qparams_shape

# NOTE: int4 packing lives in minquant.packing and rounding in minquant.rounding;
# re-exported so that `minquant.quant.pack_int4`, `minquant.quant.fma_float32`, ... work.
from minquant.packing import pack_int4 as pack_int4
from minquant.packing import unpack_int4 as unpack_int4
from minquant.rounding import ROUNDING_MODES as ROUNDING_MODES
from minquant.rounding import _round
from minquant.rounding import fma_float32 as fma_float32
from minquant.rounding import round_half_away as round_half_away
from minquant.rounding import round_half_even as round_half_even

#: float32 machine epsilon: the smallest scale an observer ever returns (as PyTorch).
EPS = np.finfo(np.float32).eps

MIN_BITS, MAX_BITS = 2, 16


def qrange(
    num_bits: int = 8,
    signed: bool = True,
    narrow_range: bool = False,
    reduce_range: bool = False,
) -> tuple[int, int]:
    r"""The integer range ``(qmin, qmax)`` of a ``num_bits`` quantizer.

    $$[q_{min}, q_{max}] = [-2^{b-1}, 2^{b-1} - 1] \text{ (signed)}, \quad
    [0, 2^b - 1] \text{ (unsigned)}.$$

    ``narrow_range`` drops the lowest code (int8 becomes the symmetric [-127, 127], as in
    TFLite weights); ``reduce_range`` uses one bit less (PyTorch's x86 setting, which keeps
    the VPMADDUBSW instruction's int16 intermediate from saturating) by halving both bounds,
    rounding down, as PyTorch does.

    >>> qrange(8, signed=True), qrange(8, signed=False), qrange(4, signed=True)
    ((-128, 127), (0, 255), (-8, 7))
    >>> qrange(8, signed=True, narrow_range=True), qrange(8, reduce_range=True)
    ((-127, 127), (-64, 63))
    >>> qrange(8, signed=True, narrow_range=True, reduce_range=True)  # -127 // 2 = -64
    (-64, 63)
    """
    if not isinstance(num_bits, (int, np.integer)) or isinstance(num_bits, bool):
        raise TypeError(f"num_bits must be an int, got {type(num_bits).__name__}")
    if not MIN_BITS <= num_bits <= MAX_BITS:
        raise ValueError(f"num_bits must be in [{MIN_BITS}, {MAX_BITS}], got {num_bits}")
    if reduce_range and num_bits <= MIN_BITS:
        raise ValueError(f"reduce_range needs num_bits > {MIN_BITS}, got {num_bits}")
    bits = int(num_bits)
    if signed:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        qmin, qmax = 0, 2**bits - 1
    if narrow_range:
        qmin += 1
    if reduce_range:
        # NOTE: PyTorch halves both bounds with floor division (calculate_qmin_qmax), so a
        # narrow int8 range [-127, 127] becomes [-64, 63], not [-63, 63]. We do the same.
        qmin, qmax = qmin // 2, qmax // 2
    return qmin, qmax


def int_dtype(qmin: int, qmax: int) -> np.dtype:
    """The smallest NumPy integer dtype that holds every value of ``[qmin, qmax]``.

    >>> int_dtype(-128, 127), int_dtype(0, 255), int_dtype(0, 256), int_dtype(-8, 7)
    (dtype('int8'), dtype('uint8'), dtype('int16'), dtype('int8'))
    """
    _check_qrange(qmin, qmax)
    for dtype in (np.int8, np.uint8, np.int16, np.uint16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= qmin and qmax <= info.max:
            return np.dtype(dtype)
    raise ValueError(f"[qmin, qmax] = [{qmin}, {qmax}] does not fit in int32")


def _check_qrange(qmin: int, qmax: int) -> None:
    for name, q in (("qmin", qmin), ("qmax", qmax)):
        if not isinstance(q, (int, np.integer)) or isinstance(q, bool):
            raise TypeError(f"{name} must be an int, got {q!r} of type {type(q).__name__}")
    if int(qmin) >= int(qmax):
        raise ValueError(f"qmin must be < qmax, got qmin={qmin}, qmax={qmax}")


def calc_qparams(
    min_val: float | np.ndarray,
    max_val: float | np.ndarray,
    qmin: int,
    qmax: int,
    symmetric: bool = False,
    *,
    symmetric_zero_point: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Scale and zero point that map ``[min_val, max_val]`` onto ``[qmin, qmax]``.

    The range is first widened to hold 0 (so that 0.0 is exactly representable:
    zero padding and ReLU outputs stay exact), then, in float32 as PyTorch does:

    $$\text{affine: } s = \max\Big(\frac{\max^+ - \min^-}{q_{max} - q_{min}},
    \epsilon\Big),\ z = \mathrm{clip}\big(q_{min} - \mathrm{round}(\min^- / s)\big)$$

    $$\text{symmetric: } s = \max\Big(\frac{\max(-\min^-, \max^+)}{(q_{max} - q_{min})/2},
    \epsilon\Big),\ z = 0 \text{ (signed) or the middle code (unsigned)}$$

    with $\min^- = \min(\text{min\_val}, 0)$, $\max^+ = \max(\text{max\_val}, 0)$ and
    $\epsilon$ the float32 machine epsilon. The middle code of an unsigned symmetric range
    is 128 for [0, 255] and ``(qmin + qmax) // 2`` otherwise; ``symmetric_zero_point``
    overrides it (the observers use this to reproduce PyTorch, see
    :mod:`minquant.observers`). ``[qmin, qmax]`` must hold 0.
    A never-observed range (``min_val = +inf``, ``max_val = -inf``) gives scale 1 and
    zero point 0. Arrays give per-channel parameters.

    Returns ``(scale, zero_point)``: float32 and int64 arrays of shape (1,) for scalar
    input, else the shape of ``min_val``.

    >>> calc_qparams(-1.0, 3.0, 0, 255)
    (array([0.01568628], dtype=float32), array([64]))
    >>> calc_qparams(-1.0, 3.0, -128, 127, symmetric=True)
    (array([0.02352941], dtype=float32), array([0]))
    >>> calc_qparams(np.array([-1.0, 0.0]), np.array([1.0, 2.5]), 0, 255)
    (array([0.00784314, 0.00980392], dtype=float32), array([127,   0]))
    >>> calc_qparams(0.0, 0.0, 0, 255)  # an all-zero tensor: the smallest scale, eps
    (array([1.1920929e-07], dtype=float32), array([0]))
    """
    _check_qrange(qmin, qmax)
    if not qmin <= 0 <= qmax:
        raise ValueError(
            f"[qmin, qmax] must hold 0 so that 0.0 is exactly representable, got [{qmin}, {qmax}]"
        )
    min_val = np.atleast_1d(np.asarray(min_val, dtype=np.float32))  # (C,)
    max_val = np.atleast_1d(np.asarray(max_val, dtype=np.float32))  # (C,)
    if min_val.shape != max_val.shape or min_val.ndim != 1:
        raise ValueError(
            f"min_val and max_val must be scalars or 1-D arrays of the same shape, "
            f"got shapes {min_val.shape} and {max_val.shape}"
        )
    never_observed = (min_val == np.inf) & (max_val == -np.inf)
    if np.all(never_observed):
        return np.ones(min_val.shape, np.float32), np.zeros(min_val.shape, np.int64)
    check_finite("min_val", min_val)
    check_finite("max_val", max_val)
    if np.any(min_val > max_val):
        raise ValueError(f"min_val must be <= max_val, got min_val={min_val}, max_val={max_val}")

    if np.any(np.float64(max_val) - np.float64(min_val) > np.finfo(np.float32).max):
        raise ValueError(
            f"max_val - min_val must fit in float32 (below 3.4e38), "
            f"got min_val={min_val}, max_val={max_val}"
        )
    zero = np.float32(0.0)
    min_neg = np.minimum(min_val, zero)  # (C,) the range always holds 0
    max_pos = np.maximum(max_val, zero)  # (C,)
    if symmetric:
        # NOTE: (qmax - qmin) / 2 is exact in float32 (e.g. 127.5); the division is float32.
        half_range = np.float32((qmax - qmin) / 2)
        scale = np.maximum(np.maximum(-min_neg, max_pos) / half_range, EPS)  # (C,)
        if symmetric_zero_point is not None:
            middle = int(symmetric_zero_point)
        elif qmin < 0:
            middle = 0
        elif (qmin, qmax) == (0, 255):
            middle = 128
        else:
            middle = (qmin + qmax) // 2
        zero_point = np.full(min_val.shape, middle, dtype=np.int64)  # (C,)
    else:
        scale = np.maximum((max_pos - min_neg) / np.float32(qmax - qmin), EPS)  # (C,)
        # NOTE: the zero point is rounded half-to-even (torch.round), then clipped.
        zero_point = qmin - np.rint(min_neg / scale).astype(np.int64)  # (C,)
        zero_point = np.clip(zero_point, qmin, qmax)
    return scale.astype(np.float32), zero_point.astype(np.int64)


def calc_group_qparams(
    x: np.ndarray,
    qmin: int,
    qmax: int,
    axis: int | None = None,
    group_size: int | None = None,
    symmetric: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`calc_qparams` of each quantization unit of ``x`` (its min/max, see below).

    The unit is the tensor (``axis=None``, shape (1,)), each slice along ``axis``
    (shape ``(x.shape[axis],)``) or each group of ``group_size`` elements along ``axis``
    (``x.shape`` with that axis replaced by the number of groups): exactly the shapes that
    :func:`quantize` takes with the same ``axis`` and ``group_size``.

    >>> w = np.array([[-1.0, 0.5, 2.0, 4.0]])
    >>> calc_group_qparams(w, -8, 7, axis=1, group_size=2, symmetric=True)
    (array([[0.13333334, 0.53333336]], dtype=float32), array([[0, 0]]))
    """
    x = _as_float32("x", x)
    min_val, max_val = group_min_max(x, axis, group_size)  # (qparams shape)
    scale, zero_point = calc_qparams(min_val.ravel(), max_val.ravel(), qmin, qmax, symmetric)
    return scale.reshape(min_val.shape), zero_point.reshape(min_val.shape)


def check_finite(name: str, x: np.ndarray) -> None:
    """Raise ``ValueError`` naming ``name`` if ``x`` holds a NaN or an infinity.

    >>> check_finite("x", np.array([1.0, np.nan]))
    Traceback (most recent call last):
    ...
    ValueError: x must be finite (no NaN/Inf), got values such as [nan]
    """
    if not np.all(np.isfinite(x)):
        bad = np.asarray(x)[~np.isfinite(x)].ravel()[:3]
        raise ValueError(f"{name} must be finite (no NaN/Inf), got values such as {bad}")


def _as_float32(name: str, x: np.ndarray) -> np.ndarray:
    """``x`` as a finite float32 array; real numbers only."""
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    x = x.astype(np.float32)
    check_finite(name, x)
    return x


def broadcast_qparams(
    x: np.ndarray,
    scale: float | np.ndarray,
    zero_point: int | np.ndarray,
    axis: int | None,
    group_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``scale``/``zero_point`` and reshape them to broadcast against ``x``.

    Per tensor (``axis=None``) both become 0-d; per channel they become shape
    ``(1, ..., C, ..., 1)`` with ``C = x.shape[axis]`` in position ``axis``; per group
    (``group_size`` set) they must have :func:`~minquant.granularity.qparams_shape` and are
    repeated ``group_size`` times along ``axis``, giving ``x.shape``.

    >>> scale, zero_point = broadcast_qparams(np.zeros((2, 3)), [0.5, 1.0, 2.0], [0, 1, 2], 1)
    >>> scale.shape, zero_point.shape
    ((1, 3), (1, 3))
    >>> broadcast_qparams(np.zeros((1, 4)), [[0.5, 1.0]], [[0, 1]], 1, group_size=2)[1]
    array([[0, 0, 1, 1]])
    """
    scale = _as_float32("scale", scale)
    if np.any(scale <= 0):
        raise ValueError(f"scale must be > 0, got {scale.ravel()[:3]}")
    zero_point = np.asarray(zero_point)
    if not np.issubdtype(zero_point.dtype, np.integer):
        if np.any(zero_point != np.round(zero_point)):
            raise ValueError(f"zero_point must hold integers, got {zero_point.ravel()[:3]}")
    zero_point = zero_point.astype(np.int64)
    if axis is None:
        if group_size is not None:
            raise ValueError(f"group_size={group_size} needs an axis to group along, got axis=None")
        if scale.size != 1 or zero_point.size != 1:
            raise ValueError(
                f"per-tensor quantization (axis=None) needs one scale and one zero_point, "
                f"got {scale.size} and {zero_point.size}; pass axis= for per-channel"
            )
        return scale.reshape(()), zero_point.reshape(())
    axis = check_axis(axis, x.ndim)
    expected = qparams_shape(x.shape, axis, group_size)
    for name, p in (("scale", scale), ("zero_point", zero_point)):
        if p.shape != expected:
            kind = "per-channel" if group_size is None else f"group_size={group_size}"
            raise ValueError(
                f"{name} must have shape {expected} for x.shape={x.shape}, axis={axis} and "
                f"{kind}, got shape {p.shape}"
            )
    if group_size is not None:
        return expand_groups(scale, axis, group_size), expand_groups(zero_point, axis, group_size)
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    return scale.reshape(shape), zero_point.reshape(shape)


def _check_zero_point(zero_point: np.ndarray, qmin: int, qmax: int) -> None:
    if np.any((zero_point < qmin) | (zero_point > qmax)):
        raise ValueError(
            f"zero_point must lie in [qmin, qmax] = [{qmin}, {qmax}], got {zero_point.ravel()[:3]}"
        )


def quantize(
    x: np.ndarray,
    scale: float | np.ndarray,
    zero_point: int | np.ndarray,
    qmin: int,
    qmax: int,
    axis: int | None = None,
    rounding: str = "half_even",
    group_size: int | None = None,
) -> np.ndarray:
    r"""Quantize a real tensor to integers in ``[qmin, qmax]``.

    $$x_q = \mathrm{clip}\big(\mathrm{round}(x \cdot s^{-1} + z),\ q_{min},\ q_{max}\big)$$

    exactly as ``torch.quantize_per_tensor``/``torch.quantize_per_channel``: the reciprocal
    $s^{-1}$ is taken in float32 and the zero point is added *before* rounding. With
    ``axis`` set, ``scale`` and ``zero_point`` hold one value per slice along that axis;
    with ``group_size`` too, one value per group of ``group_size`` consecutive elements
    along ``axis`` (shape: ``x.shape`` with that axis replaced by the number of groups; the
    arithmetic is the per-channel one, and equals PyTorch's
    ``quantized_decomposed.quantize_per_channel_group``). The result has the smallest
    integer dtype that holds ``[qmin, qmax]``.

    >>> quantize(np.array([-1.0, 0.0, 0.26, 3.0]), 0.5, 2, 0, 255)
    array([0, 2, 3, 8], dtype=uint8)
    >>> w = np.array([[0.5, -1.0], [2.0, 4.0]])
    >>> quantize(w, np.array([0.25, 1.0]), np.array([0, 0]), -128, 127, axis=0)
    array([[ 2, -4],
           [ 2,  4]], dtype=int8)
    >>> w = np.array([[0.5, -1.0, 2.0, 4.0]])  # two groups of 2 along axis 1
    >>> quantize(w, np.array([[0.25, 1.0]]), np.array([[0, 0]]), -8, 7, axis=1, group_size=2)
    array([[ 2, -4,  2,  4]], dtype=int8)
    """
    _check_qrange(qmin, qmax)
    x = _as_float32("x", x)
    scale, zero_point = broadcast_qparams(x, scale, zero_point, axis, group_size)
    _check_zero_point(zero_point, qmin, qmax)
    inv_scale = np.float32(1.0) / scale  # float32, like PyTorch
    if axis is None:
        # NOTE: PyTorch's per-tensor kernel (fbgemm, AVX2) computes x * inv_scale + z with
        # one fused multiply-add, so the sum is rounded once, not twice.
        x_real = fma_float32(x, inv_scale, zero_point.astype(np.float32))
    else:
        # NOTE: the per-channel kernel multiplies, rounds to float32, then adds (no FMA).
        x_real = x * inv_scale + zero_point.astype(np.float32)
    # NOTE: the zero point is added before rounding; fake_quantize adds it after.
    x_q = np.clip(_round(x_real, rounding), qmin, qmax)
    return x_q.astype(int_dtype(qmin, qmax))


def dequantize(
    x_q: np.ndarray,
    scale: float | np.ndarray,
    zero_point: int | np.ndarray,
    axis: int | None = None,
    group_size: int | None = None,
) -> np.ndarray:
    r"""Map integers back to reals: $\hat{x} = s\,(x_q - z)$, in float32.

    ``axis`` and ``group_size`` choose the granularity as in :func:`quantize`.

    >>> dequantize(np.array([0, 2, 3, 8], dtype=np.uint8), 0.5, 2)
    array([-1. ,  0. ,  0.5,  3. ], dtype=float32)
    >>> dequantize(np.array([[1, 2, 1, 2]]), [[0.5, 2.0]], [[0, 1]], axis=1, group_size=2)
    array([[0.5, 1. , 0. , 2. ]], dtype=float32)
    """
    x_q = np.asarray(x_q)
    if not np.issubdtype(x_q.dtype, np.integer):
        raise TypeError(f"x_q must be an integer array, got dtype {x_q.dtype}")
    scale, zero_point = broadcast_qparams(x_q, scale, zero_point, axis, group_size)
    # NOTE: x_q - z is an integer below 2**24, exact in float32; one rounding in the product.
    centered = (x_q.astype(np.int64) - zero_point).astype(np.float32)
    return centered * scale


def fake_quantize(
    x: np.ndarray,
    scale: float | np.ndarray,
    zero_point: int | np.ndarray,
    qmin: int,
    qmax: int,
    axis: int | None = None,
    rounding: str = "half_even",
    group_size: int | None = None,
) -> np.ndarray:
    r"""Quantize then dequantize, staying in float32 (the "simulated" quantizer of QAT).

    $$\hat{x} = s\,\big(\mathrm{clip}(z + \mathrm{round}(x \cdot s^{-1}),
    q_{min}, q_{max}) - z\big)$$

    as ``torch.fake_quantize_per_tensor_affine`` (and ``_per_channel_affine``): the zero
    point is added *after* rounding (``axis`` and ``group_size`` as in :func:`quantize`;
    per group it equals ``torch.fake_quantize_per_channel_affine`` applied to the tensor
    reshaped so that each group is a channel). For an odd zero point this breaks ties differently
    from :func:`quantize`:

    >>> x = np.array([0.5])              # x / scale = 0.5, a tie
    >>> quantize(x, 1.0, 1, 0, 255)      # round(0.5 + 1) = round(1.5) = 2
    array([2], dtype=uint8)
    >>> fake_quantize(x, 1.0, 1, 0, 255) # 1 + round(0.5) = 1 + 0 = 1, so x_hat = 0
    array([0.], dtype=float32)
    """
    _check_qrange(qmin, qmax)
    x = _as_float32("x", x)
    scale, zero_point = broadcast_qparams(x, scale, zero_point, axis, group_size)
    _check_zero_point(zero_point, qmin, qmax)
    inv_scale = np.float32(1.0) / scale
    # NOTE: clip(z + r, qmin, qmax) - z == clip(r, qmin - z, qmax - z); clipping the float
    # first means a huge x * inv_scale never overflows an integer conversion.
    x_q_centered = np.clip(_round(x * inv_scale, rounding), qmin - zero_point, qmax - zero_point)
    # NOTE: via int64, so that rint(-0.3) = -0.0 gives +0.0 as in PyTorch (no negative zero).
    return x_q_centered.astype(np.int64).astype(np.float32) * scale


def mse(x: np.ndarray, x_hat: np.ndarray) -> float:
    r"""Mean squared error $\frac{1}{n}\sum (x - \hat{x})^2$, computed in float64.

    >>> mse(np.array([1.0, 2.0]), np.array([1.0, 2.5]))
    0.125
    """
    x = np.asarray(x, dtype=np.float64)
    x_hat = np.asarray(x_hat, dtype=np.float64)
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {x.shape}, {x_hat.shape}")
    return float(np.mean((x - x_hat) ** 2))


def sqnr(x: np.ndarray, x_hat: np.ndarray) -> float:
    r"""Signal-to-quantization-noise ratio in decibels.

    $$\mathrm{SQNR} = 10 \log_{10} \frac{\sum x^2}{\sum (x - \hat{x})^2}$$

    Each extra bit buys about 6.02 dB. ``inf`` when ``x_hat`` equals ``x``.

    >>> round(sqnr(np.array([1.0, -1.0]), np.array([1.1, -0.9])), 2)
    20.0
    """
    x = np.asarray(x, dtype=np.float64)
    x_hat = np.asarray(x_hat, dtype=np.float64)
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {x.shape}, {x_hat.shape}")
    noise = np.sum((x - x_hat) ** 2)
    if noise == 0:
        return float("inf")
    return float(10.0 * np.log10(np.sum(x**2) / noise))
