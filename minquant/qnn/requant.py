r"""Requantization, one idea with two versions: int32 accumulators -> int8 output codes.

A Linear or Conv2d layer accumulates $\sum_k x_{q,k}\, w_{q,nk}$ exactly in int32; what is left
is to bring that sum to the output grid (Jacob et al. 2018, eq. 7, with $z_w = 0$):

$$y_q = \mathrm{clamp}\Big(z_y + M_n \big(\textstyle\sum_k x_{q,k}\, w_{q,nk}
- z_x \sum_k w_{q,nk} + b_{q,n}\big)\Big), \qquad M_n = \frac{s_x\, s_{w,n}}{s_y}.$$

Everything but the accumulator is known when the layer is built, so a requantizer is built
once from (input qparams, weight scales, weight codes, bias, output qparams, fused ReLU) and
then maps accumulators to codes, ``requant(acc) -> int8``. Two versions:

* :class:`FixedPointRequant` (TFLite/gemmlowp, integers only): $M_n = M_0\, 2^{shift}$, the
  bias and the zero-point term folded into one int32 vector;
* :class:`FloatRequant` (PyTorch x86/fbgemm): float32 $M_n$ and a float32 bias, bit-exact with
  ``torch.ao`` quantized modules.

A fused ReLU is the clamp at the code of 0.0, $y_q \ge z_y$; a fused ReLU6 (or a ClippedReLU,
one bound $u_c$ per channel) adds the clamp at the code of its upper bound,
$y_q \le z_y + \mathrm{round}(u_c / s_y)$, as PyTorch's quantized ``relu6`` and TFLite's fused
``RELU6`` activation do.

References:

* B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", CVPR 2018 (arXiv:1712.05877).
* TensorFlow Lite ``reference_ops`` (per-channel quantization spec) and fbgemm
  ``ReQuantizeOutput`` (``OutputProcessing-inl.h``).
"""

from collections.abc import Callable
from functools import partial

import numpy as np

from minquant import fixedpoint
from minquant.kernels.directconv import (
    conv2d_requantize_fixedpoint_trusted,
    conv2d_requantize_float_trusted,
)
from minquant.kernels.requant import (
    float_requant_params,
    requantize_fixedpoint_trusted,
    requantize_float_trusted,
)
from minquant.kernels.vnni import PackedB
from minquant.kernels.vnni_conv import conv2d_packed
from minquant.qnn.qparams import QParams

__all__ = [
    "DEFAULT_ROUNDING",
    "REQUANT_MODES",
    "FixedPointRequant",
    "FloatRequant",
    "requantizer",
]

#: The fixed-point rounding of every layer and model (PTQ, QAT convert): TFLite's single
#: rounding. The kernels and :mod:`minquant.fixedpoint` keep gemmlowp's reference formula
#: (``"double"``) as their default, the formula they teach.
# NOTE: the fake-quant simulation rounds the exact real output once; the single-rounding
# multiply does the same in integers, so the integer model matches it on essentially every
# logit. gemmlowp's two roundings (SRDHM, then RDBPOT) move about one value in 2^(-shift) by
# one step: measured on small_cnn W8A8, 98.6% identical logits (100% with single rounding).
# Both stay within 1 LSB; "double" remains for comparison.
DEFAULT_ROUNDING = "single"

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def _check_accumulator(name: str, bound: int) -> None:
    if bound > INT32_MAX:
        raise ValueError(
            f"{name}: the int32 accumulator could reach {bound:,} > 2^31 - 1 = {INT32_MAX:,} "
            "(K inputs times the widest input code distance from the zero point times the "
            "largest |w_q|, plus the bias); use fewer inputs per output or a narrower range"
        )


def _accumulator_bound(w2d: np.ndarray, x_qp: QParams) -> int:
    # NOTE: both versions compute sum_k (x - z_x) w_q (+ the int32 bias) in int32. Bound it by
    # the widest |x - z_x| the input range allows times the largest |w_q|, so that an overflow
    # is an error when the layer is built, never a silent wrap at run time.
    x_span = max(x_qp.qmax - x_qp.zero_point, x_qp.zero_point - x_qp.qmin)
    return w2d.shape[1] * x_span * int(np.abs(w2d.astype(np.int64)).max(initial=0))


class _Requant:
    """What both versions share: the output clamp, and the arrays they hold."""

    name = ""

    def __init__(
        self,
        input_qparams: QParams,
        output_qparams: QParams,
        relu: bool,
        upper: float | np.ndarray | None = None,
    ) -> None:
        self.input_qparams, self.output_qparams = input_qparams, output_qparams
        y_qp = output_qparams
        if upper is not None and not relu:
            raise ValueError("upper (a bounded ReLU's upper bound) needs relu=True")
        # NOTE: ReLU is the clamp at the code of 0.0; the observer saw only y >= 0, so this
        # is usually qmin already, but the clamp makes the fusion exact in every case.
        self.qmin = max(y_qp.qmin, y_qp.zero_point) if relu else y_qp.qmin
        self.qmax = y_qp.qmax
        # A bounded ReLU: one scalar bound joins the kernel's clamp; per-channel bounds
        # (ClippedReLU) are a second clamp after it, min(clamp(v), u_c) = clamp to min(.., u_c).
        self.upper_q = None if upper is None else self._upper_codes(upper)  # (N,) or (1,)
        if self.upper_q is not None:
            self.qmax = min(self.qmax, int(self.upper_q.max()))
            if np.all(self.upper_q >= self.qmax):
                self.upper_q = None
        # NOTE: checked here, once: the kernels below are called without their own checks.
        self._clamp = (int(y_qp.zero_point), int(self.qmin), int(self.qmax))
        self._pad_value = int(input_qparams.zero_point)

    def _upper_codes(self, upper: float | np.ndarray) -> np.ndarray:
        """The codes of the upper bounds (the rounding is each version's), clipped to range."""
        raise NotImplementedError

    def _clamp_upper(self, y_q: np.ndarray, axis: int) -> np.ndarray:
        """The per-channel upper clamp (ClippedReLU) along ``axis`` of ``y_q``, if any."""
        if self.upper_q is None:
            return y_q
        shape = [1] * y_q.ndim
        shape[axis] = -1
        return np.minimum(y_q, self.upper_q.astype(np.int8).reshape(shape))

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-channel arrays ``__call__`` reads."""
        raise NotImplementedError

    def conv2d_packed(
        self, x_q: np.ndarray, packed: PackedB, kernel_size: int, stride: int, padding: int,
        path: str, offset: int,
    ) -> np.ndarray:  # fmt: skip
        """The convolution fused with the packed SIMD GEMM and this requantization.

        int8 (N, O, Ho, Wo); see :func:`minquant.kernels.vnni_conv.conv2d_packed`.
        """
        y_q = conv2d_packed(
            x_q, packed, kernel_size, stride, padding, self._pad_value, path, offset, self.name,
            self._fused_args(),
        )  # fmt: skip
        return self._clamp_upper(y_q, axis=1)

    def _fused_args(self) -> tuple:
        """The operands of the fused kernels, in the order of ``conv2d_packed``'s kernel."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"requant={self.name!r}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


class FixedPointRequant(_Requant):
    r"""TFLite requantization, integers only: $y_q = \mathrm{clamp}(z_y +
    \mathrm{MBQM}(acc + b'_n, M_{0,n}, shift_n))$ with $b'_n = b_{q,n} - z_x \sum_k w_{q,nk}$.

    The bias is rounded half to even to int32 at scale $s_x s_{w,n}$; ``rounding`` is the
    multiply's, see :func:`minquant.fixedpoint.multiply_by_quantized_multiplier`.

    >>> qp = QParams(scale=1.0, zero_point=0, qmin=-128, qmax=127)
    >>> requant = FixedPointRequant(np.ones((2, 3), np.int8), np.float32([0.5, 0.25]), None, qp, qp)
    >>> requant(np.array([[10, 10]], dtype=np.int32))   # 10 * 0.5, 10 * 0.25 (a tie, up)
    array([[5, 3]], dtype=int8)
    """

    name = "fixedpoint"

    def __init__(
        self,
        w_q: np.ndarray,
        w_scale: np.ndarray,
        bias: np.ndarray | None,
        input_qparams: QParams,
        output_qparams: QParams,
        relu: bool = False,
        rounding: str = DEFAULT_ROUNDING,
        upper: float | np.ndarray | None = None,
    ) -> None:
        super().__init__(input_qparams, output_qparams, relu, upper)
        x_qp, y_qp = input_qparams, output_qparams
        w2d = w_q.reshape(w_q.shape[0], -1)  # (N, K)
        n_out = w2d.shape[0]
        self.rounding = rounding
        self.acc_scale = np.float64(x_qp.scale) * w_scale.astype(np.float64)  # (N,) s_x s_w
        # NOTE: TFLite folds bias and zero-point term into one int32 vector; the bias is
        # rounded half to even (np.rint) from float64.
        bias_q = np.zeros(n_out, np.int64) if bias is None else np.rint(bias / self.acc_scale)
        zp_correction = x_qp.zero_point * w2d.sum(axis=1, dtype=np.int64)  # (N,) z_x sum w_q
        folded = bias_q.astype(np.int64) - zp_correction  # (N,)
        if folded.min() < INT32_MIN or folded.max() > INT32_MAX:
            raise ValueError(
                f"bias / (s_in * s_w) - z_in * sum(w_q) does not fit in int32 "
                f"(range [{folded.min()}, {folded.max()}]); the weight scale is too small"
            )
        bound = _accumulator_bound(w2d, x_qp) + int(np.abs(bias_q).max(initial=0))
        _check_accumulator(type(self).__name__, bound)
        self.bias_q = bias_q.astype(np.int32)  # (N,) kept for the simulation
        self.bias_folded = folded.astype(np.int32)  # (N,)
        real_multiplier = self.acc_scale / np.float64(y_qp.scale)  # (N,) M = s_x s_w / s_y
        multiplier, shift = fixedpoint.quantize_multiplier(real_multiplier)
        self.multiplier = multiplier.astype(np.int32)  # (N,) M0 in [2^30, 2^31)
        self.shift = shift.astype(np.int8)  # (N,) in [-31, 30]: one byte is enough
        # The kernels' operands, converted once: int64 per-channel arrays, the rounding flag.
        self._kernel_args = (
            self.bias_folded.astype(np.int64),
            self.multiplier.astype(np.int64),
            self.shift.astype(np.int64),
        )
        self._single = rounding == "single"

    def arrays(self) -> dict[str, np.ndarray]:
        return {"bias_folded": self.bias_folded, "multiplier": self.multiplier, "shift": self.shift}

    def simulated_bias(self) -> np.ndarray:
        r"""The real bias the integers add, $b_q\, s_x s_w$: float64 (N,), for the simulation."""
        return self.bias_q * self.acc_scale

    def _upper_codes(self, upper: float | np.ndarray) -> np.ndarray:
        # NOTE: TFLite's CalculateActivationRangeQuantized: z + round(u / s) in float32,
        # rounded half away from zero (TfLiteRound).
        y_qp = self.output_qparams
        ratio = np.atleast_1d(np.float32(upper) / np.float32(y_qp.scale))  # (N,) or (1,)
        code = y_qp.zero_point + np.sign(ratio) * np.floor(np.abs(ratio) + 0.5)
        return np.clip(code, y_qp.qmin, y_qp.qmax).astype(np.int64)

    def __call__(self, acc: np.ndarray) -> np.ndarray:
        """int32 (M, N) raw accumulators -> int8 (M, N)."""
        y_q = requantize_fixedpoint_trusted(acc, *self._kernel_args, *self._clamp, self._single)
        return self._clamp_upper(y_q, axis=1)

    def conv2d(self, x_q: np.ndarray, w_q: np.ndarray, stride: int, padding: int) -> np.ndarray:
        """The fused direct convolution with this requantization: int8 (N, O, Ho, Wo)."""
        y_q = conv2d_requantize_fixedpoint_trusted(
            x_q, w_q, *self._kernel_args, (stride, stride), (padding, padding), self._pad_value,
            *self._clamp, self._single,
        )  # fmt: skip
        return self._clamp_upper(y_q, axis=1)

    def _fused_args(self) -> tuple:
        return (*self._kernel_args, *self._clamp, self._single)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rounding={self.rounding!r}"


class FloatRequant(_Requant):
    r"""PyTorch x86 (fbgemm) requantization in float32: $y_q = \mathrm{clamp}(z_y +
    \mathrm{rint}((\mathrm{f32}(acc - z_x \sum_k w_{q,nk}) + b_n / a_n) \cdot a_n / s_y))$,
    $a_n = \mathrm{f32}(s_x s_{w,n})$; see :func:`minquant.kernels.requantize_float`.

    >>> qp = QParams(scale=1.0, zero_point=0, qmin=-128, qmax=127)
    >>> requant = FloatRequant(np.ones((2, 3), np.int8), np.float32([0.5, 0.25]), None, qp, qp)
    >>> requant(np.array([[10, 10]], dtype=np.int32))   # 10 * 0.5, 10 * 0.25 (a tie, to even)
    array([[5, 2]], dtype=int8)
    """

    name = "float"

    def __init__(
        self,
        w_q: np.ndarray,
        w_scale: np.ndarray,
        bias: np.ndarray | None,
        input_qparams: QParams,
        output_qparams: QParams,
        relu: bool = False,
        upper: float | np.ndarray | None = None,
    ) -> None:
        super().__init__(input_qparams, output_qparams, relu, upper)
        x_qp = input_qparams
        w2d = w_q.reshape(w_q.shape[0], -1)  # (N, K)
        # NOTE: float32 product, as fbgemm's act_times_w_scale; the zero-point term is
        # subtracted in int32 and the float bias is added after conversion to float.
        _check_accumulator(type(self).__name__, _accumulator_bound(w2d, x_qp))
        self.acc_scale = (np.float32(x_qp.scale) * w_scale).astype(np.float32)  # (N,)
        self.bias = None if bias is None else np.asarray(bias, dtype=np.float32)  # (N,)
        zp_correction = x_qp.zero_point * w2d.sum(axis=1, dtype=np.int64)  # (N,) z_x sum w_q
        self.zp_correction = zp_correction.astype(np.int32)  # (N,)
        # The kernels' operands, computed once: float32 b / a and a / s_y per channel.
        out_scale = np.float32(output_qparams.scale)
        empty = np.empty((0, len(self.acc_scale)), np.int32)
        self._kernel_args = float_requant_params(empty, self.bias, self.acc_scale, out_scale)

    def arrays(self) -> dict[str, np.ndarray]:
        named = {
            "bias": self.bias,
            "zp_correction": self.zp_correction,
            "acc_scale": self.acc_scale,
        }
        return {name: a for name, a in named.items() if a is not None}

    def _fused_args(self) -> tuple:
        return (self.zp_correction, *self._kernel_args, *self._clamp)

    def simulated_bias(self) -> None:
        """None: the float32 requantization adds the float bias itself, unchanged."""
        return None

    def _upper_codes(self, upper: float | np.ndarray) -> np.ndarray:
        # NOTE: PyTorch's quantized relu6 clamps at quantize_val(6.0): z + rint(6 * (1 / s))
        # with the inverse scale in float32, rounded half to even.
        y_qp = self.output_qparams
        inv_scale = np.float32(1.0) / np.float32(y_qp.scale)
        code = y_qp.zero_point + np.rint(np.atleast_1d(np.float32(upper)) * inv_scale)  # (N,)
        return np.clip(code, y_qp.qmin, y_qp.qmax).astype(np.int64)

    def __call__(self, acc: np.ndarray) -> np.ndarray:
        """int32 (M, N) raw accumulators -> int8 (M, N); ``acc`` is overwritten."""
        acc -= self.zp_correction  # (M, N) int32, exact: bounded when the layer was built
        y_q = requantize_float_trusted(acc, *self._kernel_args, *self._clamp)
        return self._clamp_upper(y_q, axis=1)

    def conv2d(self, x_q: np.ndarray, w_q: np.ndarray, stride: int, padding: int) -> np.ndarray:
        """The fused direct convolution with this requantization: int8 (N, O, Ho, Wo)."""
        y_q = conv2d_requantize_float_trusted(
            x_q, w_q, self.zp_correction, *self._kernel_args, (stride, stride), (padding, padding),
            self._pad_value, *self._clamp,
        )  # fmt: skip
        return self._clamp_upper(y_q, axis=1)


#: The requantization versions by name, as ``quantize_model(requant=...)`` takes them.
REQUANT_MODES = ("fixedpoint", "float")


def requantizer(
    requant: str = "fixedpoint", rounding: str = DEFAULT_ROUNDING
) -> Callable[..., FixedPointRequant | FloatRequant]:
    """The requantizer class named ``requant`` (``rounding`` bound for ``"fixedpoint"``).

    The one place a name becomes a class; call the result with (w_q, w_scale, bias,
    input_qparams, output_qparams, relu) and optionally ``upper=`` (a bounded ReLU's bound).

    >>> requantizer("float")
    <class 'minquant.qnn.requant.FloatRequant'>
    """
    if rounding not in fixedpoint.FIXEDPOINT_ROUNDINGS:
        raise ValueError(
            f"rounding must be one of {fixedpoint.FIXEDPOINT_ROUNDINGS}, got {rounding!r}"
        )
    versions = {"fixedpoint": partial(FixedPointRequant, rounding=rounding), "float": FloatRequant}
    if requant not in versions:
        raise ValueError(f"requant must be one of {REQUANT_MODES}, got {requant!r}")
    return versions[requant]
