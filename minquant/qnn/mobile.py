r"""Integer-only layers of MobileNet-like models: depthwise convolution and global pooling.

**Depthwise convolution** (``groups`` = channels): each output channel $c$ sees only input
channel $c$, through $k^2$ weights. The integer arithmetic is the one of
:class:`~minquant.qnn.QuantizedConv2d` with $K = k^2$:

$$y_q[c] = \mathrm{clamp}\Big(z_y + M_c \big(\textstyle\sum_{dy,dx} x_q w_q[c]
- z_x \sum w_q[c] + b_q[c]\big)\Big), \qquad M_c = \frac{s_x s_{w,c}}{s_y},$$

computed by :func:`minquant.kernels.depthwise_conv2d_int8` and requantized by the same
requantizer objects (:mod:`minquant.qnn.requant`), fused ReLU6 included.

**Global average pooling** keeps the input's scale and zero point (as PyTorch's quantized
``adaptive_avg_pool2d`` does), so only the division by $n = HW$ is left to round:

* ``requant="float"`` (PyTorch, ``adaptive_avg_pool_single_out_frame``): on the unsigned
  codes $u = x_q + 2^{b-1}$, $y_u = \mathrm{rint}(\mathrm{f32}(\sum u) \cdot r)$ with
  $r = \mathrm{f32}(\mathrm{f32}(1 / H) / W)$, half to even;
* ``requant="fixedpoint"`` (TFLite ``reference_integer_ops::Mean``):
  $acc = \sum (x_q - z)$, $acc = \mathrm{MBQM}(acc, M_0, shift)$ for $M = s_x / s_y = 1$, then
  an integer division by $n$ rounded half away from zero, plus $z$.

**Its fake-quant twin** (:class:`SimulatedGlobalAvgPool2d`, what ``QuantizedModel.simulate``
runs) computes the same mean from the dequantized floats and rounds it with the integer
path's tie rule, so that equal input codes give equal output codes (as for max pooling).

References:

* A. Howard et al., "MobileNets", 2017 (arXiv:1704.04861).
* PyTorch ``aten/src/ATen/native/quantized/cpu/AdaptiveAveragePooling.cpp``; TensorFlow
  Lite ``kernels/internal/reference/integer_ops/mean.h``.
"""

import numpy as np

from minquant import fixedpoint, nn
from minquant.kernels import check_int8
from minquant.qnn.qparams import QParams, QuantizedModule
from minquant.qnn.requant import DEFAULT_ROUNDING, requantizer

__all__ = ["QuantizedDepthwiseConv2d", "QuantizedGlobalAvgPool2d", "SimulatedGlobalAvgPool2d"]


class QuantizedDepthwiseConv2d(QuantizedModule):
    r"""Integer-only depthwise convolution: int8 (N, C, H, W) -> int8 (N, C, H_o, W_o).

    ``w_q`` int8 (C, 1, k, k), ``w_scale`` (C,) or (1,), ``bias`` float32 (C,) or None;
    ``relu`` clamps at the code of 0.0 and ``upper`` (6.0 for ReLU6, or one bound per
    channel) at the code of the upper bound. Padding holds the input zero point.

    >>> qp = QParams(scale=1.0, zero_point=0, qmin=-128, qmax=127)
    >>> conv = QuantizedDepthwiseConv2d(np.ones((2, 1, 2, 2), np.int8), np.float32([1.0]),
    ...                                 None, qp, qp)
    >>> x_q = np.arange(18, dtype=np.int8).reshape(1, 2, 3, 3)
    >>> conv(x_q)[0, 1]     # channel 1 sums its own 2x2 windows only
    array([[44, 48],
           [56, 60]], dtype=int8)
    """

    def __init__(
        self,
        w_q: np.ndarray,
        w_scale: np.ndarray,
        bias: np.ndarray | None,
        input_qparams: QParams,
        output_qparams: QParams,
        stride: int = 1,
        padding: int = 0,
        relu: bool = False,
        requant: str = "fixedpoint",
        rounding: str = DEFAULT_ROUNDING,
        upper: float | np.ndarray | None = None,
    ) -> None:
        make_requant = requantizer(requant, rounding)
        check_int8("QuantizedDepthwiseConv2d: w_q", w_q, ndim=4)
        if w_q.shape[1] != 1 or w_q.shape[2] != w_q.shape[3]:
            raise ValueError(
                f"QuantizedDepthwiseConv2d: w_q must be (C, 1, k, k), got shape {w_q.shape}"
            )
        channels = w_q.shape[0]
        self.w_q = np.ascontiguousarray(w_q)  # (C, 1, k, k)
        self.w_scale = np.broadcast_to(np.asarray(w_scale, np.float32), (channels,)).copy()
        self.input_qparams, self.output_qparams = input_qparams, output_qparams
        self.in_channels = self.out_channels = self.groups = channels
        self.kernel_size, self.stride, self.padding = w_q.shape[2], int(stride), int(padding)
        self.relu, self.upper = bool(relu), upper
        w2d = self.w_q.reshape(channels, -1)  # (C, k*k): one row per output channel
        self.requant = make_requant(
            w2d, self.w_scale, bias, input_qparams, output_qparams, self.relu, upper=upper
        )

    def arrays(self) -> dict[str, np.ndarray]:
        return {"w_q": self.w_q, **self.requant.arrays()}

    def packed_nbytes(self, weight_bits: int = 8) -> int:
        r"""Bytes with the weight codes packed at ``weight_bits`` bits: $\lceil C k^2 b / 8 \rceil$
        plus the per-channel arrays (as :meth:`minquant.qnn.QuantizedConv2d.packed_nbytes`).
        """
        if isinstance(weight_bits, bool) or not isinstance(weight_bits, (int, np.integer)):
            raise TypeError(f"weight_bits must be an int in [2, 8], got {weight_bits!r}")
        if not 2 <= weight_bits <= 8:
            raise ValueError(f"weight_bits must be in [2, 8], got {weight_bits}")
        weight_bytes = -(-self.w_q.size * int(weight_bits) // 8)  # ceil(C k k b / 8)
        return weight_bytes + self.nbytes - self.w_q.nbytes

    def forward(self, x_q: np.ndarray) -> np.ndarray:
        # NOTE: imported here: the Numba kernel compiles on first use, not at import.
        from minquant.kernels.depthwise import depthwise_conv2d_int8

        check_int8("QuantizedDepthwiseConv2d: x_q", x_q, ndim=4)
        if x_q.shape[1] != self.in_channels:
            raise ValueError(
                f"QuantizedDepthwiseConv2d: expected input (N, {self.in_channels}, H, W), "
                f"got {x_q.shape}"
            )
        pad_value = self.input_qparams.zero_point
        acc = depthwise_conv2d_int8(x_q, self.w_q, self.stride, self.padding, pad_value)
        n, h_out, w_out, c = acc.shape  # (N, Ho, Wo, C) int32, exact
        y_q = self.requant(acc.reshape(-1, c))  # (N*Ho*Wo, C) int8
        y_q = y_q.reshape(n, h_out, w_out, c)  # (N, Ho, Wo, C)
        return np.ascontiguousarray(y_q.transpose(0, 3, 1, 2))  # (N, C, Ho, Wo)

    def extra_repr(self) -> str:
        y_qp = self.output_qparams
        return (
            f"{self.in_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, relu={self.relu}, relu_max_code={self.requant.qmax}, "
            f"{self.requant.extra_repr()}, out_scale={y_qp.scale:.6g}, "
            f"out_zero_point={y_qp.zero_point}"
        )


class QuantizedGlobalAvgPool2d(QuantizedModule):
    r"""int8 (N, C, H, W) -> int8 (N, C): the mean of each channel, same scale and zero point.

    See the module docstring for the two roundings (``requant="float"``: PyTorch;
    ``"fixedpoint"``: TFLite). They differ only at ties, half a step apart.

    >>> qp = QParams(scale=0.1, zero_point=-128, qmin=-128, qmax=127)
    >>> x_q = np.array([[[[-128, -127], [-127, -127]]]], dtype=np.int8)   # mean -127.25
    >>> QuantizedGlobalAvgPool2d(qp, "float")(x_q), QuantizedGlobalAvgPool2d(qp)(x_q)
    (array([[-127]], dtype=int8), array([[-127]], dtype=int8))
    """

    def __init__(
        self, qparams: QParams, requant: str = "fixedpoint", rounding: str = DEFAULT_ROUNDING
    ) -> None:
        requantizer(requant, rounding)  # raises on an unknown name or rounding
        self.input_qparams = self.output_qparams = qparams
        self.requant_mode, self.rounding = requant, rounding
        # NOTE: the output keeps the input scale, so M = s_x / s_y = 1 exactly (M0 = 2^30,
        # shift 1): the multiply is exact and only the division by n rounds.
        self.multiplier, self.shift = fixedpoint.quantize_multiplier(1.0)

    def forward(self, x_q: np.ndarray) -> np.ndarray:
        check_int8("QuantizedGlobalAvgPool2d: x_q", x_q, ndim=4)
        qp = self.input_qparams
        n = x_q.shape[2] * x_q.shape[3]
        acc = x_q.sum(axis=(2, 3), dtype=np.int64)  # (N, C) exact
        if self.requant_mode == "float":
            # NOTE: PyTorch averages the unsigned (quint8) codes, reciprocal 1/H then /W in
            # float32, one float32 product, rint (half to even); the offset 2^(b-1) is even
            # except for 1-bit codes, so it comes back out exactly.
            offset = -qp.qmin
            recip = np.float32(np.float32(1.0) / np.float32(x_q.shape[2])) / np.float32(
                x_q.shape[3]
            )
            acc_u = (acc + offset * n).astype(np.float32)  # (N, C) exact below 2^24
            y = np.rint(acc_u * recip).astype(np.int64) - offset  # (N, C)
        else:
            acc = (acc - qp.zero_point * n).astype(np.int32)  # (N, C) sum of (x_q - z)
            acc = fixedpoint.multiply_by_quantized_multiplier(
                acc, self.multiplier, self.shift, self.rounding
            ).astype(np.int64)
            # NOTE: C division truncates toward zero; adding +-n/2 first rounds half away.
            half = n // 2
            rounded = np.where(acc > 0, acc + half, acc - half)  # (N, C)
            y = np.sign(rounded) * (np.abs(rounded) // n) + qp.zero_point
        return np.clip(y, qp.qmin, qp.qmax).astype(np.int8)  # (N, C)

    def extra_repr(self) -> str:
        return f"requant={self.requant_mode!r}, scale={self.input_qparams.scale:.6g}, " + (
            f"zero_point={self.input_qparams.zero_point}"
        )


#: Most pixels a simulated pooling window may hold: the float32 noise of n dequantized
#: inputs, at most $n \cdot 2^{b} \cdot 2^{-24}$ codes, must stay below half a code.
SIM_POOL_MAX_PIXELS = 2**14


class SimulatedGlobalAvgPool2d(nn.Module):
    r"""The fake-quant twin of :class:`QuantizedGlobalAvgPool2d`: float32 (N, C, H, W) -> (N, C).

    The input holds dequantized values $\hat{x} = s\,(q - z)$ (each rounded to float32);
    the output is the mean on the same grid, $s\,(y - z)$, with the code $y$ rounded as the
    integer module rounds it, so both give the same code for the same input codes:

    $$t = \mathrm{rint}\Big(\frac{1}{s}\sum_{h,w} \hat{x}_{h,w}\Big) = \sum (q - z),
    \qquad y = z + \mathrm{round}(t / n),$$

    with ``"fixedpoint"``'s half away from zero (TFLite's Mean) or ``"float"``'s PyTorch
    rounding, $y = q_{min} + \mathrm{rint}(\mathrm{f32}(t + n (z - q_{min})) \cdot r)$,
    $r = \mathrm{f32}(\mathrm{f32}(1/H)/W)$, half to even on the unsigned codes.

    >>> qp = QParams(scale=0.1, zero_point=-128, qmin=-128, qmax=127)
    >>> x = np.float32([[[[0.0, 0.1], [0.1, 0.1]]]])    # codes -128 -127 -127 -127
    >>> SimulatedGlobalAvgPool2d(qp, "float")(x)         # mean code -127.25 -> -127
    array([[0.1]], dtype=float32)
    """

    def __init__(self, qparams: QParams, requant: str = "fixedpoint") -> None:
        super().__init__()
        requantizer(requant)  # raises on an unknown name
        self.qparams, self.requant_mode = qparams, requant

    def forward(self, x: np.ndarray) -> np.ndarray:
        qp = self.qparams
        if not isinstance(x, np.ndarray) or x.ndim != 4:
            got = np.shape(x) if isinstance(x, np.ndarray) else type(x).__name__
            raise ValueError(f"SimulatedGlobalAvgPool2d: expected (N, C, H, W), got {got}")
        n = x.shape[2] * x.shape[3]
        if n > SIM_POOL_MAX_PIXELS:
            raise ValueError(
                f"SimulatedGlobalAvgPool2d: {n} pixels per channel; at most "
                f"{SIM_POOL_MAX_PIXELS} keep the float32 noise below half a code"
            )
        scale = np.float32(qp.scale)
        total = x.sum(axis=(2, 3), dtype=np.float64)  # (N, C) the float32 inputs, summed
        # NOTE: the exact mean of the real values s (q - z) lies on a grid of step s / n, so
        # a float mean rounded directly lands on either side of a tie at random (float32
        # noise: 1-4 % of the pooled values of mobile_cnn differed by 1 code). Each input
        # is s (q - z) within 2^-24 relative, so total / s is within n 2^(b-24) < 1/2 of the
        # integer sum t = sum (q - z): rint recovers t, and the mean t / n is then exact.
        t = np.rint(total / np.float64(scale))  # (N, C) the exact sum of (q - z)
        if self.requant_mode == "float":
            # NOTE: PyTorch rounds the float32 product of the unsigned sum and its float32
            # reciprocal half to even; reproduced here operation by operation, because for
            # n not a power of two (e.g. 6 x 6) the tie is broken by the rounding of r.
            recip = np.float32(np.float32(1.0) / np.float32(x.shape[2])) / np.float32(x.shape[3])
            t_u = (t + n * (qp.zero_point - qp.qmin)).astype(np.float32)  # (N, C) exact
            y = np.rint(t_u * recip) + qp.qmin  # (N, C)
        else:
            # NOTE: TFLite's Mean rounds t / n half away from zero; t / n is exact in float64
            # whenever it is a tie (j + 1/2 is representable), and at least 1/n away otherwise.
            mean = t / n  # (N, C) in codes, relative to z
            y = np.sign(mean) * np.floor(np.abs(mean) + 0.5) + qp.zero_point  # (N, C)
        y = np.clip(y, qp.qmin, qp.qmax)  # (N, C)
        # NOTE: the same float32 operations as fake_quantize, so the values are identical.
        return (y - qp.zero_point).astype(np.float32) * scale  # (N, C) float32
