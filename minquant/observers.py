r"""Observers: watch real tensors go by, then choose ``scale`` and ``zero_point``.

An observer is called on every calibration batch (``obs(x)`` records statistics and
returns ``x`` unchanged); :meth:`Observer.calculate_qparams` then turns the statistics
into a range $[\alpha, \beta]$ and the range into quantization parameters with
:func:`~minquant.quant.calc_qparams`.

* :class:`MinMaxObserver`, :class:`MovingAverageMinMaxObserver` and their per-channel
  versions reproduce ``torch.ao.quantization``'s observers bit for bit.
* :class:`HistogramObserver` follows PyTorch's L2 range search; :class:`PercentileObserver`,
  :class:`MSEObserver` and :class:`EntropyObserver` clip outliers by other criteria
  (:mod:`minquant.calibration` holds the algorithms).

>>> obs = MinMaxObserver(num_bits=8, signed=False)
>>> _ = obs(np.array([-1.0, 0.5, 3.0]))
>>> obs.min_val, obs.max_val, (obs.qmin, obs.qmax)
(array(-1., dtype=float32), array(3., dtype=float32), (0, 255))
>>> obs.calculate_qparams()
(array([0.01568628], dtype=float32), array([64]))

References: PyTorch ``torch/ao/quantization/observer.py`` (the oracle, version pinned in the
tests); R. Krishnamoorthi, "Quantizing deep convolutional networks for efficient inference:
A whitepaper", 2018 (arXiv:1806.08342); the papers cited in :mod:`minquant.calibration`.
"""

import warnings

import numpy as np

from minquant import calibration
from minquant.quant import _as_float32, _check_qrange, calc_qparams, qrange

__all__ = [
    "EntropyObserver",
    "HistogramObserver",
    "MSEObserver",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "MovingAveragePerChannelMinMaxObserver",
    "Observer",
    "PerChannelMinMaxObserver",
    "PercentileObserver",
]


class Observer:
    r"""Shared machinery: the integer range, the running ``min_val``/``max_val``, the call.

    The integer range is ``qrange(num_bits, signed, narrow_range, reduce_range)``, or
    ``[qmin, qmax]`` when given explicitly (then ``num_bits``, ``signed`` and
    ``narrow_range`` are ignored and ``reduce_range`` halves the given bounds). It must
    hold 0. The range used is available as ``obs.qmin``, ``obs.qmax``.

    The zero point of a *symmetric unsigned* range follows PyTorch: 128 for the default
    8-bit range, ``(qmin + qmax) // 2`` for any other ("customized") range, so an explicit
    ``qmin=0, qmax=255`` gives 127.

    NOTE: unsigned + symmetric + ``reduce_range`` is refused (ValueError). PyTorch's
    min/max observers refuse it too (NotImplementedError), but its HistogramObserver
    accepts it and returns zero point 128 for the range [0, 127], outside the range.
    """

    def __init__(
        self,
        num_bits: int = 8,
        signed: bool = False,
        symmetric: bool = False,
        narrow_range: bool = False,
        reduce_range: bool = False,
        qmin: int | None = None,
        qmax: int | None = None,
    ) -> None:
        if (qmin is None) != (qmax is None):
            raise ValueError(f"give both qmin and qmax or neither, got qmin={qmin}, qmax={qmax}")
        if qmin is None:
            full_qmin, full_qmax = qrange(num_bits, signed, narrow_range)
            customized = num_bits != 8 or narrow_range
        else:
            _check_qrange(qmin, qmax)
            full_qmin, full_qmax = int(qmin), int(qmax)
            customized = True
        if not full_qmin <= 0 <= full_qmax:
            raise ValueError(
                f"the integer range must hold 0, got [{full_qmin}, {full_qmax}] "
                f"(narrow_range=True with signed=False excludes 0)"
            )
        if reduce_range and symmetric and full_qmin >= 0:
            raise ValueError(
                "reduce_range=True is not supported for unsigned symmetric quantization "
                "(the zero point would not fit the reduced range)"
            )
        if reduce_range:
            # NOTE: floor halving, as qrange(..., reduce_range=True) and torch.ao do.
            full_qmin, full_qmax = full_qmin // 2, full_qmax // 2
        self.qmin, self.qmax = full_qmin, full_qmax
        self.symmetric = symmetric
        self.num_bits = int(np.ceil(np.log2(self.qmax - self.qmin + 1)))
        if self.qmin < 0:
            self._symmetric_zero_point = 0
        elif customized:
            self._symmetric_zero_point = (self.qmin + self.qmax) // 2
        else:
            self._symmetric_zero_point = 128
        self.min_val = np.array(np.inf, dtype=np.float32)
        self.max_val = np.array(-np.inf, dtype=np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Record the statistics of ``x`` (NaN/Inf rejected) and return ``x`` unchanged."""
        x_float = _as_float32("x", x)
        if x_float.size > 0:  # NOTE: an empty batch is skipped, as in PyTorch
            self._observe(x_float)
        return x

    def _observe(self, x: np.ndarray) -> None:
        self._set_range(np.minimum(self.min_val, x.min()), np.maximum(self.max_val, x.max()))

    def _set_range(self, min_val: np.ndarray, max_val: np.ndarray) -> None:
        # NOTE: float32 arrays, shape () or (C,), like PyTorch's float32 buffers.
        self.min_val = np.asarray(min_val, dtype=np.float32)
        self.max_val = np.asarray(max_val, dtype=np.float32)

    def _range(self) -> tuple[np.ndarray, np.ndarray]:
        """The range to quantize: ``(min_val, max_val)`` unless a subclass clips it."""
        return self.min_val, self.max_val

    @property
    def observed(self) -> bool:
        return bool(np.all(self.min_val <= self.max_val)) and self.min_val.size > 0

    def calculate_qparams(self) -> tuple[np.ndarray, np.ndarray]:
        """``(scale, zero_point)``: float32 and int64 arrays of shape (1,) or (C,).

        Before any data was seen this warns and returns scale 1 and zero point 0 (PyTorch).
        """
        if not self.observed:
            warnings.warn(
                f"{type(self).__name__} has observed no data; returning scale 1.0, zero_point 0",
                stacklevel=2,
            )
            return np.ones(1, np.float32), np.zeros(1, np.int64)
        lo, hi = self._range()
        return calc_qparams(
            lo,
            hi,
            self.qmin,
            self.qmax,
            self.symmetric,
            symmetric_zero_point=self._symmetric_zero_point,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(qmin={self.qmin}, qmax={self.qmax}, "
            f"symmetric={self.symmetric}, min_val={self.min_val}, max_val={self.max_val})"
        )


class MinMaxObserver(Observer):
    r"""Running minimum and maximum over all batches: $[\min_t \min x_t,\ \max_t \max x_t]$.

    >>> obs = MinMaxObserver(signed=True, symmetric=True)
    >>> _ = obs(np.array([-0.5, 2.0])); _ = obs(np.array([-3.0, 1.0]))
    >>> obs.calculate_qparams()  # 3 / 127.5
    (array([0.02352941], dtype=float32), array([0]))
    """


def _check_averaging_constant(c: float) -> float:
    if not 0.0 < c <= 1.0:
        raise ValueError(f"averaging_constant must be in (0, 1], got {c}")
    return float(c)


class MovingAverageMinMaxObserver(MinMaxObserver):
    r"""Exponential moving average of each batch's min and max (suits activations in QAT).

    The first batch sets the range; then, in float32 as PyTorch,
    $\min \leftarrow \min + c\,(\min x_t - \min)$ and likewise for the max.

    >>> obs = MovingAverageMinMaxObserver(averaging_constant=0.5)
    >>> _ = obs(np.array([0.0, 2.0])); _ = obs(np.array([0.0, 4.0]))
    >>> obs.max_val
    array(3., dtype=float32)
    """

    def __init__(self, averaging_constant: float = 0.01, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.averaging_constant = _check_averaging_constant(averaging_constant)

    def _observe(self, x: np.ndarray) -> None:
        if not self.observed:
            super()._observe(x)
            return
        c = np.float32(self.averaging_constant)
        self._set_range(
            self.min_val + c * (x.min() - self.min_val),
            self.max_val + c * (x.max() - self.max_val),
        )


class PerChannelMinMaxObserver(Observer):
    r"""Running min and max of every slice along ``axis``: one range per channel.

    For weights ``axis=0`` is the output channel of ``Linear.weight`` (out, in) and
    ``Conv2d.weight`` (out, in, kh, kw).

    >>> obs = PerChannelMinMaxObserver(axis=0, signed=True, symmetric=True)
    >>> _ = obs(np.array([[1.0, -0.5], [0.25, 0.1]]))  # (out=2, in=2)
    >>> obs.min_val, obs.max_val
    (array([-0.5,  0.1], dtype=float32), array([1.  , 0.25], dtype=float32))
    """

    def __init__(self, axis: int = 0, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if not isinstance(axis, (int, np.integer)):
            raise TypeError(f"axis must be an int, got {axis!r}")
        self.axis = int(axis)
        self.min_val = np.zeros(0, np.float32)  # (C,) once observed
        self.max_val = np.zeros(0, np.float32)

    def _channel_min_max(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if x.ndim == 0 or not -x.ndim <= self.axis < x.ndim:
            raise ValueError(
                f"axis must be in [{-x.ndim}, {x.ndim - 1}] for x.shape={x.shape}, "
                f"got axis={self.axis}"
            )
        channels = x.shape[self.axis]
        if self.min_val.size and channels != self.min_val.size:
            raise ValueError(
                f"x has {channels} channels along axis={self.axis}, but earlier batches had "
                f"{self.min_val.size}"
            )
        rows = np.moveaxis(x, self.axis, 0).reshape(channels, -1)  # (C, everything else)
        return rows.min(axis=1), rows.max(axis=1)  # (C,), (C,)

    def _observe(self, x: np.ndarray) -> None:
        x_min, x_max = self._channel_min_max(x)
        if not self.observed:
            self._set_range(x_min, x_max)
        else:
            self._set_range(np.minimum(self.min_val, x_min), np.maximum(self.max_val, x_max))


class MovingAveragePerChannelMinMaxObserver(PerChannelMinMaxObserver):
    r"""Per-channel version of :class:`MovingAverageMinMaxObserver`.

    >>> obs = MovingAveragePerChannelMinMaxObserver(averaging_constant=0.5, axis=1)
    >>> _ = obs(np.array([[0.0, 2.0]])); _ = obs(np.array([[0.0, 4.0]]))  # (N=1, C=2)
    >>> obs.max_val
    array([0., 3.], dtype=float32)
    """

    def __init__(self, averaging_constant: float = 0.01, axis: int = 0, **kwargs: object):
        super().__init__(axis=axis, **kwargs)
        self.averaging_constant = _check_averaging_constant(averaging_constant)

    def _observe(self, x: np.ndarray) -> None:
        if not self.observed:
            super()._observe(x)
            return
        x_min, x_max = self._channel_min_max(x)
        c = np.float32(self.averaging_constant)
        self._set_range(
            self.min_val + c * (x_min - self.min_val), self.max_val + c * (x_max - self.max_val)
        )


class _HistogramBase(Observer):
    """Running min/max plus a histogram with ``bins`` bins, widened as new data arrives."""

    #: histogram |x| over [0, max|x|] instead of x over [min_val, max_val]
    absolute = False

    def __init__(self, bins: int = 2048, upsample_rate: int = 16, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if not isinstance(bins, (int, np.integer)) or bins < 2:
            raise ValueError(f"bins must be an int >= 2, got {bins!r}")
        self.bins, self.upsample_rate = int(bins), int(upsample_rate)
        self.histogram: np.ndarray | None = None  # (bins,) counts, float64
        self.hist_min, self.hist_max = 0.0, 0.0

    def _observe(self, x: np.ndarray) -> None:
        super()._observe(x)
        values = np.abs(x) if self.absolute else x
        lo = 0.0 if self.absolute else float(values.min())
        hi = float(values.max())
        if self.histogram is not None:
            lo, hi = min(lo, self.hist_min), max(hi, self.hist_max)
        counts, _ = np.histogram(values, bins=self.bins, range=(lo, hi))  # (bins,)
        if self.histogram is None:
            self.histogram = counts.astype(np.float64)
        elif (lo, hi) == (self.hist_min, self.hist_max):
            self.histogram = self.histogram + counts
        else:
            old = calibration.rebin_histogram(
                self.histogram, self.hist_min, self.hist_max, lo, hi, self.upsample_rate
            )
            self.histogram = old + counts
        self.hist_min, self.hist_max = lo, hi


class HistogramObserver(_HistogramBase):
    r"""PyTorch's ``HistogramObserver``: the range that minimises the L2 quantization error.

    See :func:`~minquant.calibration.l2_range_search`; the search assumes
    $2^{\text{num\_bits}}$ quantization steps, as PyTorch (256 for 8 bits).
    NOTE: ``num_bits`` here is that of the range actually used (128 steps with
    ``reduce_range``, 16 at 4 bits); PyTorch always takes $2^8$ from the 8-bit dtype, so with
    ``reduce_range`` or a narrower custom range the two searches (deliberately) differ.

    >>> rng = np.random.default_rng(0)
    >>> obs = HistogramObserver(); _ = obs(rng.standard_normal(10_000))
    >>> lo, hi = obs._range(); bool(hi - lo < obs.max_val - obs.min_val)  # a tail clipped
    True
    """

    def _range(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = calibration.l2_range_search(
            self.histogram, self.hist_min, self.hist_max, 2**self.num_bits
        )
        return np.float32(lo), np.float32(hi)


class PercentileObserver(_HistogramBase):
    r"""Clip to the ``(100 - percentile)``-th and ``percentile``-th percentiles of the data.

    >>> obs = PercentileObserver(percentile=99.0)
    >>> _ = obs(np.linspace(0.0, 1000.0, 100_001))  # uniform on [0, 1000]
    >>> [round(float(v), 1) for v in obs._range()]
    [10.0, 990.0]
    """

    def __init__(self, percentile: float = 99.99, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = float(percentile)

    def _range(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = calibration.percentile_range(
            self.histogram, self.hist_min, self.hist_max, self.percentile
        )
        return np.float32(lo), np.float32(hi)


class MSEObserver(_HistogramBase):
    r"""The shrunken range whose fake quantization of the data has the least squared error.

    See :func:`~minquant.calibration.mse_range` (``num_candidates`` ranges are tried).

    >>> obs = MSEObserver(num_bits=4, signed=True, symmetric=True)
    >>> _ = obs(np.random.default_rng(0).standard_normal(10_000))
    >>> hi = obs._range()[1]; bool(hi < obs.max_val)  # 4 bits: clipping the tails pays
    True
    """

    def __init__(self, num_candidates: int = 100, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
        self.num_candidates = int(num_candidates)

    def _range(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = calibration.mse_range(
            self.histogram,
            self.hist_min,
            self.hist_max,
            self.qmin,
            self.qmax,
            self.symmetric,
            self.num_candidates,
        )
        return np.float32(lo), np.float32(hi)


class EntropyObserver(_HistogramBase):
    r"""TensorRT's KL-divergence calibration: clip $|x|$ at the threshold $T$ that keeps
    the quantized distribution closest to the original one.

    The number of quantization levels compared is the number of codes that cover
    $[0, T]$: ``qmax - qmin + 1`` for non-negative data (e.g. after ReLU) with an affine
    range, half of it for data of both signs or a symmetric range. The count of the first
    histogram bin (the exact zeros after a ReLU) is flattened before the search, as in
    TensorRT. See :func:`~minquant.calibration.entropy_threshold`.

    >>> obs = EntropyObserver(signed=True, symmetric=True)
    >>> _ = obs(np.random.default_rng(0).laplace(size=100_000))
    >>> lo, hi = obs._range(); bool(-lo == hi < obs.max_val)
    True
    """

    absolute = True

    def _range(self) -> tuple[np.ndarray, np.ndarray]:
        levels = self.qmax - self.qmin + 1
        if self.min_val < 0 or self.symmetric:
            levels //= 2  # a symmetric range spends half its codes on [-T, 0)
        threshold = calibration.entropy_threshold(self.histogram, self.hist_max, levels)
        lo = np.maximum(self.min_val, np.float32(-threshold))
        hi = np.minimum(self.max_val, np.float32(threshold))
        return lo, hi
