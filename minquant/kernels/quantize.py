r"""The input edge of an integer model, float32 -> int8 codes, in one parallel pass.

$$x_q = \mathrm{clip}\big(\mathrm{rint}(\mathrm{fma}(x, s^{-1}, z)),\ q_{min},\ q_{max}\big),
\qquad s^{-1} = \mathrm{fl}_{32}(1 / s),$$

the arithmetic of :func:`minquant.quant.quantize` per tensor (and of
``torch.quantize_per_tensor``, whose fbgemm kernel rounds $x s^{-1} + z$ once, as a fused
multiply-add). :func:`minquant.quant.quantize` emulates that FMA in float64 with NumPy (several
passes over the data); here the FMA is the hardware's (LLVM's ``llvm.fma.f32``), one pass,
the same float32 result bit for bit.

Reference: S. Boldo and G. Melquiond, "Emulation of FMA and correctly rounded sums: proved
algorithms using rounding to odd", IEEE Trans. Computers 57(4), 2008 (why an FMA is not a
product and a sum rounded twice).
"""

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from minquant.quant import fma_float32, quantize

__all__ = ["fma_f32", "quantize_per_tensor_int8"]


def fma_f32(a: np.float32, b: np.float32, c: np.float32) -> np.float32:
    r"""$\mathrm{fl}_{32}(a b + c)$ rounded once: in Numba one FMA instruction, in Python NumPy.

    >>> a = np.float32(1 + 2**-12)
    >>> bool(fma_f32(a, a, np.float32(-1.0)) == np.float32(2**-11 + 2**-24))
    True
    """
    return np.float32(fma_float32(a, b, c))


@intrinsic
def _llvm_fma_f32(typingctx, a, b, c):
    """``llvm.fma.f32``: the fused multiply-add, correctly rounded on every CPU."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen


@overload(fma_f32)
def _fma_f32_jit(a, b, c):
    return lambda a, b, c: _llvm_fma_f32(a, b, c)


def _quantize_py(x, inv_scale, zero_point, qmin, qmax, out):
    """out = clip(rint(fma(x, inv_scale, zero_point))); returns the count of NaN/Inf in x."""
    bad = 0
    for i in prange(x.shape[0]):
        v = x[i]
        if not np.isfinite(v):
            bad += 1
        q = np.rint(fma_f32(v, inv_scale, zero_point))  # float32, half to even
        out[i] = np.int8(min(max(q, np.float32(qmin)), np.float32(qmax)))
    return bad


_quantize_kernel = njit(cache=True, parallel=True)(_quantize_py)


def quantize_per_tensor_int8(
    x: np.ndarray, scale: float, zero_point: int, qmin: int, qmax: int
) -> np.ndarray:
    """:func:`minquant.quant.quantize` per tensor, to int8: the same codes, one parallel pass.

    ``qmin <= zero_point <= qmax`` within int8. NaN or Inf in ``x`` raise the ValueError of
    :func:`~minquant.quant.quantize`.

    >>> quantize_per_tensor_int8(np.array([-1.0, 0.0, 0.26, 3.0]), 0.5, -2, -128, 127)
    array([-4, -2, -1,  4], dtype=int8)
    """
    if not -128 <= qmin <= zero_point <= qmax <= 127:
        raise ValueError(
            f"need -128 <= qmin <= zero_point <= qmax <= 127, got {qmin}, {zero_point}, {qmax}"
        )
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be finite and > 0, got {scale}")
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    inv_scale = np.float32(1.0) / np.float32(scale)  # float32, like PyTorch
    out = np.empty(x32.shape, dtype=np.int8)
    bad = _quantize_kernel(
        x32.reshape(-1), inv_scale, np.float32(zero_point), int(qmin), int(qmax), out.reshape(-1)
    )
    if bad:
        return quantize(x, scale, zero_point, qmin, qmax)  # raises, naming what it found
    return out
