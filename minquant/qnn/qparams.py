r"""The edges and the base of an integer-only model: activation qparams, Quantize, Dequantize.

A real activation is stored as int8 codes with one scale $s > 0$ and zero point $z$ per tensor:

$$x_q = \mathrm{clip}\big(\mathrm{rint}(x / s) + z,\ q_{min},\ q_{max}\big), \qquad
\hat{x} = s\,(x_q - z).$$

:class:`QParams` holds $(s, z, q_{min}, q_{max})$; :class:`Quantize` applies the first map at
the input of a model, :class:`Dequantize` the second at its output. Every module in between
(see :mod:`minquant.qnn`) is a :class:`QuantizedModule`: int8 in, int8 out, integers only.

References:

* B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", CVPR 2018 (arXiv:1712.05877), section 2.1.
* PyTorch ``torch.quantize_per_tensor`` and ``torch.ao.nn.quantized`` Quantize/DeQuantize.
"""

from dataclasses import dataclass

import numpy as np

from minquant.kernels.quantize import quantize_per_tensor_int8
from minquant.quant import dequantize

__all__ = ["Dequantize", "QParams", "Quantize", "QuantizedModule"]


@dataclass(frozen=True)
class QParams:
    """Per-tensor quantization of an activation: ``scale``, ``zero_point`` and its range.

    >>> QParams(scale=0.5, zero_point=-128, qmin=-128, qmax=127)
    QParams(scale=0.5, zero_point=-128, qmin=-128, qmax=127)
    """

    scale: float
    zero_point: int
    qmin: int
    qmax: int

    def __post_init__(self) -> None:
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"QParams: scale must be finite and > 0, got {self.scale}")
        if not -128 <= self.qmin <= self.zero_point <= self.qmax <= 127:
            raise ValueError(
                "QParams: need -128 <= qmin <= zero_point <= qmax <= 127 (int8 storage), got "
                f"qmin={self.qmin}, zero_point={self.zero_point}, qmax={self.qmax}"
            )


class QuantizedModule:
    """Base class: ``forward(x_q)`` on integer arrays; ``nbytes`` counts what it stores."""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays that ``forward`` reads (the model's storage)."""
        return {}

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays ``forward`` reads, as held in memory (weight codes in int8)."""
        return sum(a.nbytes for a in self.arrays().values())

    def packed_nbytes(self, weight_bits: int = 8) -> int:
        """Bytes as stored with ``weight_bits``-bit weight codes packed (see subclasses)."""
        return self.nbytes

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


class Quantize(QuantizedModule):
    r"""The input edge: float32 to int8, $x_q = \mathrm{clip}(\mathrm{rint}(x / s) + z)$.

    Same arithmetic as ``torch.quantize_per_tensor`` (see :func:`minquant.quant.quantize`),
    in one parallel pass (:func:`minquant.kernels.quantize.quantize_per_tensor_int8`).

    >>> Quantize(QParams(1 / 255, -128, -128, 127))(np.array([0.0, 0.2, 1.0]))
    array([-128,  -77,  127], dtype=int8)
    """

    def __init__(self, qparams: QParams) -> None:
        self.qparams = qparams

    def forward(self, x: np.ndarray) -> np.ndarray:
        qp = self.qparams
        return quantize_per_tensor_int8(x, qp.scale, qp.zero_point, qp.qmin, qp.qmax)

    def extra_repr(self) -> str:
        qp = self.qparams
        return f"scale={qp.scale:.6g}, zero_point={qp.zero_point}, range=[{qp.qmin}, {qp.qmax}]"


class Dequantize(QuantizedModule):
    r"""The output edge: int8 to float32, $x = s\,(x_q - z)$.

    >>> Dequantize(QParams(0.5, 0, -128, 127))(np.array([-2, 0, 3], dtype=np.int8))
    array([-1. ,  0. ,  1.5], dtype=float32)
    """

    def __init__(self, qparams: QParams) -> None:
        self.qparams = qparams

    def forward(self, x_q: np.ndarray) -> np.ndarray:
        return dequantize(x_q, self.qparams.scale, self.qparams.zero_point)

    def extra_repr(self) -> str:
        return f"scale={self.qparams.scale:.6g}, zero_point={self.qparams.zero_point}"
