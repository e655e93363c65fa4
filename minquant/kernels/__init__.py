r"""Numba kernels of integer-only inference, each next to the NumPy reference it must equal.

A quantized layer is ``im2col`` (convolutions only) -> int8 GEMM -> requantization:

$$y_q = \mathrm{clip}\Big(z_{out} + \mathrm{round}\big(M_c\,(\textstyle\sum_k x_q w_q + b_q)\big),
\ q_{min},\ q_{max}\Big), \qquad M_c = \frac{s_{in}\, s_{w,c}}{s_{out}}.$$

Requantization comes in two styles: fixed point (TFLite, integers only, see
:mod:`minquant.fixedpoint`) and float32 (PyTorch's x86/fbgemm backend). Every kernel is written
as plain Python (``_name_py``) and compiled with ``njit(cache=True)``: with
``NUMBA_DISABLE_JIT=1`` the very same Python runs, slowly, which is handy for stepping through.
Nothing is compiled at import time; the first call compiles (and caches) each kernel.

One idea per module (the first four re-exported here; the last two imported by name):

* :mod:`minquant.kernels.gemm`: the int8 GEMM with int32 accumulation;
* :mod:`minquant.kernels.im2col`: im2col, max pooling and the convolution geometry;
* :mod:`minquant.kernels.requant`: int32 accumulators -> int8 codes, both styles;
* :mod:`minquant.kernels.directconv`: convolution and requantization fused in one pass;
* :mod:`minquant.kernels.vnni`: the int8 GEMM on the CPU's dot-product instructions (VNNI, AVX2);
* :mod:`minquant.kernels.gemv`: weight-only (int4, int8, 2-7 bit) matrix-vector products
  (scalar kernels in :mod:`~minquant.kernels.gemv_plain`, the int4 one on explicit vectors in
  :mod:`~minquant.kernels.gemv_simd` with its vector types in :mod:`~minquant.kernels.gemv_ir`).

Imported by name instead (the integer layers call them): :mod:`minquant.kernels.vnni` (the int8
GEMM with the CPU's dot-product instructions), :mod:`minquant.kernels.vnni_conv` (a convolution
fused with it) and :mod:`minquant.kernels.quantize` (float32 -> int8 in one pass).

References:

* B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", CVPR 2018 (arXiv:1712.05877).
* TensorFlow Lite ``reference_ops`` (FullyConnected, Conv) and fbgemm
  ``ReQuantizeOutput`` (``OutputProcessing-inl.h``), used by PyTorch's x86 quantized engine.
"""

from minquant.kernels.directconv import (
    conv2d_requantize_fixedpoint,
    conv2d_requantize_fixedpoint_ref,
    conv2d_requantize_float,
    conv2d_requantize_float_ref,
)
from minquant.kernels.gemm import (
    MAX_K,
    check_int8,
    check_k,
    check_matmul_int8,
    matmul_int8,
    matmul_int8_ref,
)
from minquant.kernels.im2col import (
    im2col_int8,
    im2col_int8_ref,
    maxpool2d_int8,
    maxpool2d_int8_ref,
)
from minquant.kernels.requant import (
    requantize_fixedpoint,
    requantize_fixedpoint_ref,
    requantize_float,
    requantize_float_ref,
)

__all__ = [
    "MAX_K",
    "check_int8",
    "check_k",
    "check_matmul_int8",
    "conv2d_requantize_fixedpoint",
    "conv2d_requantize_fixedpoint_ref",
    "conv2d_requantize_float",
    "conv2d_requantize_float_ref",
    "im2col_int8",
    "im2col_int8_ref",
    "matmul_int8",
    "matmul_int8_ref",
    "maxpool2d_int8",
    "maxpool2d_int8_ref",
    "requantize_fixedpoint",
    "requantize_fixedpoint_ref",
    "requantize_float",
    "requantize_float_ref",
]
