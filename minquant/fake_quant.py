r"""Fake quantization for training: the straight-through estimator and learned step sizes.

A fake quantizer rounds a float tensor onto the grid of a ``num_bits`` integer quantizer and
maps it straight back, so the network *sees* quantization error while it trains in float:

$$\hat{x} = s\,\big(\mathrm{clip}(z + \mathrm{round}(x / s),\ q_{min},\ q_{max}) - z\big).$$

``round`` has zero derivative almost everywhere, so the backward pass pretends it is the
identity (the **straight-through estimator**, STE) inside the clipping range and blocks the
gradient outside it:

$$\frac{\partial L}{\partial x} = \frac{\partial L}{\partial \hat{x}} \cdot
\big[q_{min} \le z + \mathrm{round}(x / s) \le q_{max}\big].$$

With **learned step size quantization** (LSQ) the scale $s$ (and, for an affine quantizer,
the zero point $z$) are trained too. Writing $q = z + \mathrm{round}(x/s)$:

$$\frac{\partial \hat{x}}{\partial s} = \begin{cases}
\hat{x}/s - x/s & q_{min} \le q \le q_{max} \\ q_{min} - z & q < q_{min} \\
q_{max} - z & q > q_{max} \end{cases}, \qquad
\frac{\partial \hat{x}}{\partial z} = \begin{cases} 0 & \text{inside} \\ -s & \text{outside}
\end{cases}$$

each multiplied by the gradient factor $g = 1 / \sqrt{N \cdot q_{max}}$ ($N$ the number of
elements of $x$) that keeps the step-size updates on the scale of the weight updates.

Everything here is bit-exact with PyTorch (``torch.ao.quantization.FakeQuantize``,
``torch.fake_quantize_per_tensor_affine`` / ``_per_channel_affine`` and the learnable
``torch._fake_quantize_learnable_per_tensor_affine`` / ``_per_channel_affine``), including
two details worth knowing:

* the STE mask is taken *after* rounding ($z + \mathrm{round}(x/s)$, zero point added after
  rounding, as in the forward pass);
* PyTorch's learnable backward kernel rounds $z + x/s$ (zero point added *before*
  rounding), and the per-tensor kernel rounds the zero point half up ($\lfloor z + 1/2
  \rfloor$) while the forward pass rounds it half to even. On a tie the two passes can
  disagree; we reproduce both.

References:

* Y. Bengio, N. Léonard, A. Courville, "Estimating or Propagating Gradients Through
  Stochastic Neurons for Conditional Computation", 2013 (arXiv:1308.3432), the STE.
* B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", CVPR 2018 (arXiv:1712.05877).
* S. K. Esser et al., "Learned Step Size Quantization", ICLR 2020 (arXiv:1902.08153).
"""

from collections.abc import Callable

import numpy as np

from minquant.nn.module import Module, Parameter
from minquant.quant import EPS, broadcast_qparams, check_finite, qrange


def fake_quantize_with_mask(
    x: np.ndarray,
    scale: float | np.ndarray,
    zero_point: int | np.ndarray,
    qmin: int,
    qmax: int,
    axis: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Fake-quantize ``x`` and return the straight-through gradient mask with it.

    $$q = z + \mathrm{round}(x \cdot s^{-1}), \quad \hat{x} = s\,(\mathrm{clip}(q) - z),
    \quad \text{mask} = [q_{min} \le q \le q_{max}]$$

    with $s^{-1}$ taken in float32 and ties rounded half to even: PyTorch's
    ``fake_quantize_per_tensor_affine_cachemask`` (``axis=None``) and
    ``fake_quantize_per_channel_affine_cachemask``. ``x_hat`` equals
    :func:`minquant.quant.fake_quantize`.

    >>> x_hat, mask = fake_quantize_with_mask(np.array([-1.0, 0.5, 1.5, 9.0]), 1.0, 0, -4, 3)
    >>> x_hat.tolist(), mask.tolist()
    ([-1.0, 0.0, 2.0, 3.0], [True, True, True, False])
    """
    x = np.asarray(x, dtype=np.float32)
    check_finite("x", x)
    scale, zero_point = broadcast_qparams(x, scale, zero_point, axis)
    inv_scale = np.float32(1.0) / scale  # float32, like PyTorch
    # NOTE: the zero point is added *after* rounding, and the mask is taken before clipping.
    q = zero_point + np.rint(x * inv_scale).astype(np.int64)  # unclipped codes
    mask = (q >= qmin) & (q <= qmax)
    x_hat = (np.clip(q, qmin, qmax) - zero_point).astype(np.float32) * scale  # float32
    return x_hat, mask


def _channel_view(p: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    """Reshape a per-channel vector (C,) to broadcast along ``axis`` of an ``ndim`` array."""
    if axis is None:
        return p.reshape(())
    shape = [1] * ndim
    shape[axis] = p.size
    return p.reshape(shape)


def lsq_backward(
    grad_out: np.ndarray,
    x: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray,
    qmin: int,
    qmax: int,
    axis: int | None = None,
    grad_factor: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Gradients of LSQ fake quantization with respect to ``x``, ``scale`` and ``zero_point``.

    With $q = \mathrm{round}(z + x \cdot s^{-1})$ (PyTorch's backward kernel: the zero
    point is added *before* rounding) and $g$ = ``grad_out``:

    $$\frac{\partial L}{\partial x} = g\,[q_{min} \le q \le q_{max}], \quad
    \frac{\partial L}{\partial s} = \gamma \sum g \cdot \begin{cases}
    (\hat{x} - x) / s & \text{inside} \\ q_{min} - z & q < q_{min} \\ q_{max} - z & q > q_{max}
    \end{cases}, \quad \frac{\partial L}{\partial z} = \gamma \sum g \cdot
    \begin{cases} 0 & \text{inside} \\ -s & \text{outside} \end{cases}$$

    summed over every axis but ``axis`` ($\gamma$ = ``grad_factor``). ``scale`` and
    ``zero_point`` are float arrays of shape (1,) or (C,). The zero point is rounded as
    PyTorch does: half up and clamped per tensor, half to even and clamped per channel.
    The sums are taken in float64 and returned as float32.

    >>> dx, ds, dz = lsq_backward(np.ones(3), np.array([0.4, 1.0, 9.0]), np.array([1.0]),
    ...                           np.array([0.0]), qmin=-4, qmax=3)
    >>> dx.tolist(), ds.tolist(), dz.tolist()
    ([1.0, 1.0, 0.0], [2.5999999046325684], [-1.0])
    """
    x = np.asarray(x, dtype=np.float32)
    grad_out = np.asarray(grad_out, dtype=np.float32)
    scale = np.asarray(scale, dtype=np.float32).ravel()  # (1,) or (C,)
    zero_point = np.asarray(zero_point, dtype=np.float32).ravel()  # (1,) or (C,)
    if axis is None:
        # NOTE: per tensor, PyTorch rounds the zero point half *up* in backward,
        # int(clamp(z + 0.5)), but half to even in forward.
        z = np.trunc(np.clip(zero_point + np.float32(0.5), qmin, qmax)).astype(np.float32)
        reduce_axes = tuple(range(x.ndim))
    else:
        z = np.clip(np.rint(zero_point), qmin, qmax).astype(np.float32)
        axis = axis % x.ndim
        reduce_axes = tuple(i for i in range(x.ndim) if i != axis)
    s = _channel_view(scale, x.ndim, axis)  # broadcasts against x
    z = _channel_view(z, x.ndim, axis)
    inv_scale = np.float32(1.0) / s
    # NOTE: the zero point is added *before* rounding here (unlike the forward pass).
    q = np.rint(z + x * inv_scale)  # (like x), float32
    below, above = q < qmin, q > qmax
    inside = ~(below | above)
    x_hat = (np.clip(q, qmin, qmax) - z) * s  # (like x)
    grad_factor = np.float32(grad_factor)
    dx = grad_out * inside
    d_scale_inside = grad_out * (x_hat - x) * inv_scale * grad_factor
    d_scale_outside = grad_out * np.where(below, qmin - z, qmax - z) * grad_factor
    d_scale = np.where(inside, d_scale_inside, d_scale_outside)  # (like x)
    d_zero_point = np.where(inside, np.float32(0.0), grad_out * -s * grad_factor)
    d_scale = d_scale.sum(axis=reduce_axes, dtype=np.float64).astype(np.float32).reshape(-1)
    d_zero_point = d_zero_point.sum(axis=reduce_axes, dtype=np.float64)
    return dx.astype(np.float32), d_scale, d_zero_point.astype(np.float32).reshape(-1)


def _default_observer(axis: int | None) -> Callable[..., object]:
    # NOTE: imported here so that the observers module is loaded only when needed.
    from minquant import observers

    if axis is None:
        return observers.MovingAverageMinMaxObserver
    return observers.MovingAveragePerChannelMinMaxObserver


class FakeQuantize(Module):
    r"""Observe, then fake-quantize; backward is the straight-through estimator (or LSQ).

    The module equivalent of ``torch.ao.quantization.FakeQuantize`` (``learnable=False``)
    and ``torch.ao.quantization._LearnableFakeQuantize`` (``learnable=True``, with
    ``use_grad_scaling=True``). Each forward pass in which the observer is enabled records
    the statistics of ``x`` and refreshes ``scale`` and ``zero_point`` from them (by default a
    moving-average min/max observer, per channel along ``axis`` if given); then, if fake
    quantization is enabled, returns

    $$\hat{x} = s\,\big(\mathrm{clip}(z + \mathrm{round}(x / s),\ q_{min},\ q_{max}) - z\big).$$

    ``backward`` multiplies the incoming gradient by the mask $[q_{min} \le z +
    \mathrm{round}(x/s) \le q_{max}]$. With ``learnable=True``, ``scale`` (and, for an affine
    quantizer, ``zero_point``) are :class:`~minquant.nn.Parameter` s that receive the LSQ
    gradients of :func:`lsq_backward` with the factor $1/\sqrt{N q_{max}}$; call
    :meth:`disable_observer` to stop the observer from overwriting them (the observer gives
    the initial values). The observer runs only in training mode (``train()``, the default;
    PyTorch's runs in both modes), so evaluating a model never changes its ranges.
    A learned scale that an optimizer drives to $\le 0$ is **clamped**
    to the float32 machine epsilon on the next forward pass (as PyTorch), and a NaN or
    infinite scale is an error.

    ``observer`` is a class (or any callable) called as
    ``observer(num_bits=..., signed=..., symmetric=..., narrow_range=...)``, plus ``axis=``
    for a per-channel quantizer, returning an object with ``obs(x)`` and
    ``calculate_qparams()``.

    >>> fq = FakeQuantize(num_bits=4, signed=False, symmetric=False)
    >>> fq(np.array([0.0, 0.3, 1.5], dtype=np.float32)).tolist()   # observed range [0, 1.5]
    [0.0, 0.30000001192092896, 1.5]
    >>> fq.scale, fq.zero_point
    (array([0.1], dtype=float32), array([0]))
    >>> fq.backward(np.ones(3, dtype=np.float32)).tolist()
    [1.0, 1.0, 1.0]
    """

    def __init__(
        self,
        num_bits: int = 8,
        signed: bool = False,
        symmetric: bool = False,
        axis: int | None = None,
        observer: Callable[..., object] | None = None,
        learnable: bool = False,
        narrow_range: bool = False,
    ) -> None:
        super().__init__()
        self.qmin, self.qmax = qrange(num_bits, signed=signed, narrow_range=narrow_range)
        if axis is not None and (not isinstance(axis, (int, np.integer)) or axis < 0):
            raise ValueError(f"FakeQuantize: axis must be None or an int >= 0, got {axis!r}")
        self.num_bits, self.signed, self.symmetric = int(num_bits), signed, symmetric
        self.axis, self.learnable, self.narrow_range = axis, learnable, narrow_range
        observer = _default_observer(axis) if observer is None else observer
        kwargs = {
            "num_bits": num_bits,
            "signed": signed,
            "symmetric": symmetric,
            "narrow_range": narrow_range,
        }
        if axis is not None:
            kwargs["axis"] = axis
        self.observer = observer(**kwargs)
        self.observer_enabled = True
        self.fake_quant_enabled = True
        self.num_observed = 0  # forward passes seen by the observer
        # NOTE: the qparams start as PyTorch's placeholders (scale 1, zero point 0) and get
        # their shape, (1,) or (C,), from the first observation.
        if learnable:
            self._scale = Parameter(np.ones(1))
            zero_point = np.zeros(1, dtype=np.float32)
            self._zero_point = zero_point if symmetric else Parameter(zero_point)
        else:
            self._scale = np.ones(1, dtype=np.float32)
            self._zero_point = np.zeros(1, dtype=np.int64)
        self._cache = None

    # --- the quantization parameters ------------------------------------------------------

    @property
    def scale(self) -> np.ndarray:
        """Current scale, float32 of shape (1,) or (C,)."""
        return self._scale.data if self.learnable else self._scale

    @property
    def zero_point(self) -> np.ndarray:
        """Current integer zero point, int64 of shape (1,) or (C,), as used in forward."""
        if not self.learnable:
            return self._zero_point
        z = self._zero_point.data if isinstance(self._zero_point, Parameter) else self._zero_point
        return np.clip(np.rint(z), self.qmin, self.qmax).astype(np.int64)

    def calculate_qparams(self) -> tuple[np.ndarray, np.ndarray]:
        """``(scale, zero_point)`` to quantize with, as ``torch.ao`` ``calculate_qparams()``.

        Raises a ValueError if the quantizer never observed any data and was never trained
        (its parameters would be meaningless placeholders).
        """
        if self.num_observed == 0:
            raise ValueError(
                f"{self._name()}: never observed any data: run forward passes (calibration "
                "or training) with the observer enabled before asking for its qparams"
            )
        return self.scale.copy(), self.zero_point.copy()

    # --- switches, named as in torch.ao.quantization ---------------------------------------

    def enable_observer(self, enabled: bool = True) -> "FakeQuantize":
        self.observer_enabled = bool(enabled)
        return self

    def disable_observer(self) -> "FakeQuantize":
        return self.enable_observer(False)

    def enable_fake_quant(self, enabled: bool = True) -> "FakeQuantize":
        self.fake_quant_enabled = bool(enabled)
        return self

    def disable_fake_quant(self) -> "FakeQuantize":
        return self.enable_fake_quant(False)

    def extra_repr(self) -> str:
        return (
            f"num_bits={self.num_bits}, qmin={self.qmin}, qmax={self.qmax}, "
            f"symmetric={self.symmetric}, axis={self.axis}, learnable={self.learnable}"
        )

    # --- the two passes -------------------------------------------------------------------

    def _observe(self, x: np.ndarray) -> None:
        self.observer(x)
        scale, zero_point = self.observer.calculate_qparams()  # (1,) or (C,)
        self.num_observed += 1
        if not self.learnable:
            self._scale = np.asarray(scale, dtype=np.float32).copy()
            self._zero_point = np.asarray(zero_point, dtype=np.int64).copy()
            return
        # NOTE: new arrays (not in-place copies): the shape may change from (1,) to (C,).
        self._scale.data = np.asarray(scale, dtype=np.float32).copy()
        self._scale.grad = np.zeros_like(self._scale.data)
        zero_point = np.asarray(zero_point, dtype=np.float32).copy()
        if isinstance(self._zero_point, Parameter):
            self._zero_point.data = zero_point
            self._zero_point.grad = np.zeros_like(zero_point)
        else:
            self._zero_point = zero_point

    def _check_scale(self) -> None:
        scale = self._scale.data
        if not np.all(np.isfinite(scale)):
            raise ValueError(f"{self._name()}: the learned scale became NaN or Inf: {scale}")
        # NOTE: a step that drives the scale to <= 0 is clamped to eps, as PyTorch does.
        np.maximum(scale, EPS, out=scale)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.axis is not None and not 0 <= self.axis < x.ndim:
            raise ValueError(f"{self._name()}: axis {self.axis} is out of range for {x.shape}")
        # NOTE: unlike torch.ao, the observer only runs in training mode, so that evaluating
        # a QAT model (model.eval()) never moves its quantization ranges.
        if self.observer_enabled and self.training:
            self._observe(x)
        elif self.learnable:
            self._check_scale()
        if not self.fake_quant_enabled:
            self._cache = ("identity", None)
            return x
        if self.axis is not None and self.num_observed == 0:
            # NOTE: per tensor, the placeholders (scale 1, zero point 0) work as in PyTorch;
            # per channel there is not even a number of channels yet.
            raise ValueError(
                f"{self._name()}: never observed any data, so it has no per-channel qparams; "
                "run a forward pass in training mode with the observer enabled first"
            )
        x_hat, mask = fake_quantize_with_mask(
            x, self.scale, self.zero_point, self.qmin, self.qmax, axis=self.axis
        )
        self._cache = ("lsq", x) if self.learnable else ("ste", mask)
        return x_hat

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        self._need_cache(self._cache)
        kind, saved = self._cache
        if kind == "identity":
            return grad_out
        if kind == "ste":
            return grad_out * saved
        x = saved
        zero_point = self._zero_point
        z = zero_point.data if isinstance(zero_point, Parameter) else zero_point
        # NOTE: PyTorch's grad factor uses the element count of the whole tensor, even per
        # channel, and qmax (not qmax - qmin).
        grad_factor = 1.0 / np.sqrt(x.size * self.qmax)
        dx, d_scale, d_zero_point = lsq_backward(
            grad_out, x, self._scale.data, z, self.qmin, self.qmax, self.axis, grad_factor
        )
        self._scale.grad += d_scale
        if isinstance(zero_point, Parameter):
            zero_point.grad += d_zero_point
        return dx
