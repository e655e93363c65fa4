r"""Integer-only modules: the inference engine of a post-training quantized model.

Between :class:`Quantize` at the input and :class:`Dequantize` at the output, every module
takes and returns int8 arrays and does integer arithmetic only. A real value is
$r = s\,(q - z)$; weights are symmetric ($z_w = 0$, int8 in $[-127, 127]$, one scale per
output channel or one per tensor), activations are asymmetric per tensor.

For a linear layer $y = W x + b$ (a convolution is the same after im2col), substituting
$r = s (q - z)$ everywhere gives (Jacob et al. 2018, eq. 4 and 7, with $z_w = 0$):

$$y_q = z_y + M \Big(\underbrace{\sum_k w_{q,nk}\, x_{q,k}}_{\text{int8 GEMM}}
\; - \; \underbrace{z_x \sum_k w_{q,nk}}_{\text{precomputed}} \; + \; b_q\Big),
\qquad M = \frac{s_x s_w}{s_y}, \qquad b_q = \mathrm{round}\Big(\frac{b}{s_x s_w}\Big).$$

The sum in brackets is an exact int32 accumulator; the column sums of $W$ and the bias do
not depend on the input, so they are folded into one int32 vector when the model is built.
Only the multiplication by the real number $M$ remains, done by one of the two requantizers
of :mod:`minquant.qnn.requant`, which a layer builds once and calls on every accumulator:

* ``requant="fixedpoint"`` (TFLite/gemmlowp, :class:`~minquant.qnn.requant.FixedPointRequant`):
  $M = M_0 2^{shift}$ with an int32 $M_0$; integer multiply, rounding shift, add $z_y$,
  clamp. No float anywhere. ``rounding`` picks TFLite's single rounding (``"single"``, the
  default) or gemmlowp's double rounding (``"double"``), see
  :func:`minquant.fixedpoint.multiply_by_quantized_multiplier`.
* ``requant="float"`` (PyTorch x86/fbgemm, :class:`~minquant.qnn.requant.FloatRequant`): the
  accumulator is converted to float32 and multiplied by $M$ in float32, with a float bias
  (bit-exact with ``torch.ao`` quantized modules).

A ReLU that follows a layer costs nothing: it is the clamp $y_q \ge z_y$ (0.0 is exactly
the code $z_y$). Max pooling commutes with the (monotone) quantizer, so it runs on int8.

References:

* B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", CVPR 2018 (arXiv:1712.05877).
* TensorFlow Lite ``reference_ops`` (FullyConnected, Conv, per-channel quantization spec).
* PyTorch ``torch.ao.nn.quantized`` Linear/Conv2d on the x86 (fbgemm) engine.
"""

import numpy as np

from minquant import kernels
from minquant.kernels import MAX_K, check_int8, check_k, vnni
from minquant.kernels.vnni_conv import offset_for, pack_conv_weights
from minquant.nn.functional import conv_output_size
from minquant.qnn.qparams import QParams, QuantizedModule
from minquant.qnn.requant import DEFAULT_ROUNDING, requantizer

__all__ = [
    "DIRECT_CONV_MAX_K",
    "QuantizedConv2d",
    "QuantizedFlatten",
    "QuantizedLinear",
    "QuantizedMaxPool2d",
    "QuantizedReLU",
]

#: On the plain path, convolutions with at most this many inputs per output (C * k * k) skip
#: im2col: a direct loop is faster when K is too short to fill the GEMM's vectorised k loop
#: (conv1: K = 9). The SIMD paths run every convolution through the packed GEMM.
DIRECT_CONV_MAX_K = 32


def int8_path(input_qparams: QParams) -> tuple[str, int | None]:
    """The int8 inner loop a layer runs on this machine, and the uint8 offset it needs.

    The one place the integer layers choose: the fastest path of
    :func:`minquant.kernels.vnni.select_path` (the host CPU, or ``MINQUANT_INT8_PATH``) whose
    uint8 operands can hold the layer's input codes (:func:`~minquant.kernels.vnni_conv.offset_for`:
    AVX2 only for 7-bit activations), else ``("plain", None)``. Every path gives the same
    integers.

    >>> int8_path(QParams(scale=1.0, zero_point=0, qmin=-128, qmax=127))[0] in vnni.PATHS
    True
    """
    path = vnni.select_path()
    offset = offset_for(path, input_qparams.qmin, input_qparams.qmax)
    return ("plain", None) if offset is None else (path, offset)


class _QuantizedGemm(QuantizedModule):
    """Shared core of Linear and Conv2d: int8 GEMM, then one requantizer (both built here)."""

    def __init__(
        self,
        w_q: np.ndarray,
        w_scale: np.ndarray,
        bias: np.ndarray | None,
        input_qparams: QParams,
        output_qparams: QParams,
        relu: bool,
        requant: str,
        rounding: str,
        upper: float | np.ndarray | None = None,
    ) -> None:
        name = type(self).__name__
        make_requant = requantizer(requant, rounding)
        check_int8(f"{name}: w_q", w_q, ndim=np.ndim(w_q))
        w2d = w_q.reshape(w_q.shape[0], -1)  # (N, K): one row per output channel
        n_out, k = w2d.shape
        check_k(
            k,
            f"{name}: K = {k} inputs per output exceeds {MAX_K}; the int32 accumulator "
            "could overflow",
        )
        w_scale = np.broadcast_to(np.asarray(w_scale, dtype=np.float32), (n_out,))  # (N,)
        self.input_qparams, self.output_qparams = input_qparams, output_qparams
        self.w_scale = w_scale.copy()  # (N,) for export and reports; forward does not read it
        self.relu = bool(relu)
        self.upper = upper  # a fused ReLU6 / ClippedReLU's real upper bound, else None
        self.in_features, self.out_features = k, n_out
        # NOTE: matmul_int8(A, B) reads B through B^T (N, K) with contiguous rows: a (K, N)
        # view of the row-major (N, K) weights is exactly that layout, so no call copies it.
        self.w_t = np.ascontiguousarray(w2d).T  # (K, N) transposed view of the (N, K) rows
        self.requant = make_requant(
            w2d, self.w_scale, bias, input_qparams, output_qparams, relu, upper=upper
        )
        self.int8_path, self.int8_offset = int8_path(input_qparams)
        # The weights once more, packed for the SIMD inner loop (None on the plain path): a
        # cache derived from w_t, which stays the layer's weights (``arrays`` does not list it).
        self.packed = None
        if self.int8_path != "plain":
            self.packed = self._pack(w_q)

    def _pack(self, w_q: np.ndarray) -> vnni.PackedB:
        """The weights as the packed operand B (K, N) of the SIMD GEMM."""
        return vnni.pack_b(np.ascontiguousarray(self.w_t))  # (K, N) in panels

    def arrays(self) -> dict[str, np.ndarray]:
        return {"w_t": self.w_t, **self.requant.arrays()}

    def packed_nbytes(self, weight_bits: int = 8) -> int:
        r"""Bytes with the weight codes packed at ``weight_bits`` bits each, as stored on disk.

        $\lceil N K b / 8 \rceil$ bytes of weights (two 4-bit codes per byte, as
        :func:`minquant.packing.pack_int4`; four 2-bit codes per byte) plus the per-channel
        arrays at their own size. ``nbytes`` counts one int8 byte per code instead: the
        layout the int8 kernels read.

        >>> qp = QParams(scale=1.0, zero_point=0, qmin=-128, qmax=127)
        >>> layer = QuantizedLinear(np.ones((3, 5), np.int8), np.float32([1.0]), None, qp, qp)
        >>> layer.nbytes, layer.packed_nbytes(4), layer.packed_nbytes(2)  # 15 codes + 3 * 9
        (42, 35, 31)
        """
        if isinstance(weight_bits, bool) or not isinstance(weight_bits, (int, np.integer)):
            raise TypeError(f"weight_bits must be an int in [2, 8], got {weight_bits!r}")
        if not 2 <= weight_bits <= 8:
            raise ValueError(f"weight_bits must be in [2, 8], got {weight_bits}")
        qmin, qmax = -(2 ** (weight_bits - 1)), 2 ** (weight_bits - 1) - 1
        w = self.w_t
        if w.size and (w.min() < qmin or w.max() > qmax):
            raise ValueError(
                f"weight codes in [{w.min()}, {w.max()}] do not fit {weight_bits} bits "
                f"([{qmin}, {qmax}])"
            )
        # NOTE: one packed stream per weight tensor; a partly used last byte counts whole.
        weight_bytes = -(-w.size * int(weight_bits) // 8)  # ceil(N K b / 8)
        return weight_bytes + self.nbytes - w.nbytes

    def _gemm_repr(self) -> str:
        y_qp = self.output_qparams
        return (
            f"relu={self.relu}, {self.requant.extra_repr()}, "
            f"out_scale={y_qp.scale:.6g}, out_zero_point={y_qp.zero_point}"
        )


class QuantizedLinear(_QuantizedGemm):
    r"""Integer-only fully connected layer: int8 (N, in) -> int8 (N, out).

    $y_q = \mathrm{clamp}\big(z_y + M\,(x_q W_q^\top - z_x \mathbf{1} W_q^\top + b_q)\big)$,
    see the module docstring. ``w_q`` int8 (out, in), ``w_scale`` (out,) or (1,), ``bias``
    float32 (out,) or None (quantized to int32 at scale $s_x s_w$ for ``"fixedpoint"``).

    >>> w_q = np.array([[1, -2], [3, 4]], dtype=np.int8)
    >>> qp = QParams(scale=1.0, zero_point=0, qmin=-128, qmax=127)
    >>> layer = QuantizedLinear(w_q, np.float32([1.0]), None, qp, qp)
    >>> layer(np.array([[5, 6]], dtype=np.int8))   # [5 - 12, 15 + 24]
    array([[-7, 39]], dtype=int8)
    """

    def __init__(
        self,
        w_q: np.ndarray,
        w_scale: np.ndarray,
        bias: np.ndarray | None,
        input_qparams: QParams,
        output_qparams: QParams,
        relu: bool = False,
        requant: str = "fixedpoint",
        rounding: str = DEFAULT_ROUNDING,
        upper: float | np.ndarray | None = None,
    ) -> None:
        if w_q.ndim != 2:
            raise ValueError(f"QuantizedLinear: w_q must be (out, in), got shape {w_q.shape}")
        super().__init__(
            w_q, w_scale, bias, input_qparams, output_qparams, relu, requant, rounding, upper
        )

    def forward(self, x_q: np.ndarray) -> np.ndarray:
        check_int8("QuantizedLinear: x_q", x_q, ndim=2)
        if x_q.shape[1] != self.in_features:
            raise ValueError(
                f"QuantizedLinear: expected input (N, {self.in_features}), got {x_q.shape}"
            )
        if self.packed is None:
            acc = kernels.matmul_int8(x_q, self.w_t)  # (N, out) int32, exact
        else:
            acc = vnni.matmul_int8_packed(x_q, self.packed, self.int8_path)  # the same integers
        return self.requant(acc)  # (N, out) int8

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, {self._gemm_repr()}"


class QuantizedConv2d(_QuantizedGemm):
    r"""Integer-only 2-D convolution: int8 (N, C, H, W) -> int8 (N, O, H_o, W_o).

    im2col on int8, padding with the input zero point $z_x$ (the code of 0.0, so the padding
    is an exact zero), then the same GEMM and requantization as :class:`QuantizedLinear`
    with $K = C k_h k_w$. ``w_q`` int8 (O, C, k, k).

    >>> w_q = np.ones((1, 1, 2, 2), dtype=np.int8)
    >>> qp = QParams(scale=1.0, zero_point=0, qmin=-128, qmax=127)
    >>> conv = QuantizedConv2d(w_q, np.float32([1.0]), None, qp, qp)
    >>> conv(np.arange(9, dtype=np.int8).reshape(1, 1, 3, 3))[0, 0]
    array([[ 8, 12],
           [20, 24]], dtype=int8)
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
        if w_q.ndim != 4 or w_q.shape[2] != w_q.shape[3]:
            raise ValueError(f"QuantizedConv2d: w_q must be (out, in, k, k), got shape {w_q.shape}")
        super().__init__(
            w_q, w_scale, bias, input_qparams, output_qparams, relu, requant, rounding, upper
        )
        self.in_channels, self.out_channels = w_q.shape[1], w_q.shape[0]
        self.kernel_size, self.stride, self.padding = w_q.shape[2], int(stride), int(padding)

    def forward(self, x_q: np.ndarray) -> np.ndarray:
        check_int8("QuantizedConv2d: x_q", x_q, ndim=4)
        if x_q.shape[1] != self.in_channels:
            raise ValueError(
                f"QuantizedConv2d: expected input (N, {self.in_channels}, H, W), got {x_q.shape}"
            )
        n, _, h, w = x_q.shape
        k, s, p = self.kernel_size, self.stride, self.padding
        h_out, w_out = conv_output_size(h, k, s, p), conv_output_size(w, k, s, p)
        if self.packed is not None:
            # NOTE: im2col (as uint8), SIMD GEMM and requantization fused, one image at a
            # time. Measured on small_cnn (1,000 images, one thread, CPU time): conv1 (K = 9)
            # 25-45 ms against 68-120 ms for the direct loop below, conv2 (K = 144) 16-30 ms
            # against 90-140 ms for im2col + plain GEMM; so every convolution takes it when
            # the CPU has the path (docs/performance.md).
            path, offset = self.int8_path, self.int8_offset
            return self.requant.conv2d_packed(x_q, self.packed, k, s, p, path, offset)
        if self.in_features <= DIRECT_CONV_MAX_K:
            # NOTE: the same integers in one fused pass: no im2col, no int32 array.
            w_q = self.w_t.T.reshape(self.out_channels, self.in_channels, k, k)  # (O, C, k, k)
            return self.requant.conv2d(x_q, w_q, s, p)  # (N, O, Ho, Wo)
        pad_value = self.input_qparams.zero_point
        cols = kernels.im2col_int8(x_q, k, s, p, pad_value)  # (N*Ho*Wo, C*k*k)
        acc = kernels.matmul_int8(cols, self.w_t)  # (N*Ho*Wo, O) int32, exact
        y_q = self.requant(acc)  # (N*Ho*Wo, O) int8
        y_q = y_q.reshape(n, h_out, w_out, self.out_channels)  # (N, Ho, Wo, O)
        return np.ascontiguousarray(y_q.transpose(0, 3, 1, 2))  # (N, O, Ho, Wo)

    def _pack(self, w_q: np.ndarray) -> vnni.PackedB:
        return pack_conv_weights(w_q)  # taps in the fused kernel's (dy, dx, c) order

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, {self._gemm_repr()}"
        )


class QuantizedReLU(QuantizedModule):
    r"""A ReLU that could not be fused: $y_q = \max(x_q, z)$, scale and zero point unchanged.

    >>> QuantizedReLU(zero_point=-5)(np.array([-9, -5, 3], dtype=np.int8))
    array([-5, -5,  3], dtype=int8)
    """

    def __init__(self, zero_point: int) -> None:
        self.zero_point = int(zero_point)

    def forward(self, x_q: np.ndarray) -> np.ndarray:
        return np.maximum(x_q, np.int8(self.zero_point))

    def extra_repr(self) -> str:
        return f"zero_point={self.zero_point}"


class QuantizedMaxPool2d(QuantizedModule):
    r"""Max pooling on int8 codes: $\max_i\, s(q_i - z) = s(\max_i q_i - z)$ for $s > 0$.

    >>> pool = QuantizedMaxPool2d(2)
    >>> pool(np.arange(16, dtype=np.int8).reshape(1, 1, 4, 4))[0, 0]
    array([[ 5,  7],
           [13, 15]], dtype=int8)
    """

    def __init__(self, kernel_size: int, stride: int | None = None) -> None:
        self.kernel_size = int(kernel_size)
        self.stride = self.kernel_size if stride is None else int(stride)

    def forward(self, x_q: np.ndarray) -> np.ndarray:
        check_int8("QuantizedMaxPool2d: x_q", x_q, ndim=4)
        return kernels.maxpool2d_int8(x_q, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class QuantizedFlatten(QuantizedModule):
    """(N, ...) -> (N, features); the codes are unchanged.

    >>> QuantizedFlatten()(np.zeros((2, 3, 4, 4), dtype=np.int8)).shape
    (2, 48)
    """

    def forward(self, x_q: np.ndarray) -> np.ndarray:
        return x_q.reshape(x_q.shape[0], -1)
