r"""Integer-only modules: the inference engine of a quantized model.

Between :class:`Quantize` at the input and :class:`Dequantize` at the output, every module
takes and returns int8 arrays and does integer arithmetic only. One idea per module:

* :mod:`minquant.qnn.qparams`: :class:`QParams` (scale, zero point, range of an activation),
  the :class:`Quantize` / :class:`Dequantize` edges and the :class:`QuantizedModule` base;
* :mod:`minquant.qnn.requant`: the two requantizers, :class:`FixedPointRequant` (TFLite)
  and :class:`FloatRequant` (PyTorch x86), int32 accumulators -> int8 codes;
* :mod:`minquant.qnn.layers`: :class:`QuantizedLinear`, :class:`QuantizedConv2d` and the
  layers that need no arithmetic (ReLU, max pooling, flatten);
* :mod:`minquant.qnn.mobile`: :class:`QuantizedDepthwiseConv2d` and
  :class:`QuantizedGlobalAvgPool2d` (MobileNet-like models), and the pooling's fake-quant
  twin :class:`SimulatedGlobalAvgPool2d`;
* :mod:`minquant.qnn.model`: :class:`QuantizedModel`, the chain that
  :func:`minquant.ptq.quantize_model` and :func:`minquant.qat.convert` build.
"""

from minquant.qnn.layers import (
    DIRECT_CONV_MAX_K,
    QuantizedConv2d,
    QuantizedFlatten,
    QuantizedLinear,
    QuantizedMaxPool2d,
    QuantizedReLU,
)
from minquant.qnn.mobile import (
    QuantizedDepthwiseConv2d,
    QuantizedGlobalAvgPool2d,
    SimulatedGlobalAvgPool2d,
)
from minquant.qnn.model import QuantizedModel, Step
from minquant.qnn.qparams import Dequantize, QParams, Quantize, QuantizedModule
from minquant.qnn.requant import (
    DEFAULT_ROUNDING,
    REQUANT_MODES,
    FixedPointRequant,
    FloatRequant,
    requantizer,
)

__all__ = [
    "DEFAULT_ROUNDING",
    "DIRECT_CONV_MAX_K",
    "REQUANT_MODES",
    "Dequantize",
    "FixedPointRequant",
    "FloatRequant",
    "QParams",
    "Quantize",
    "QuantizedConv2d",
    "QuantizedDepthwiseConv2d",
    "QuantizedFlatten",
    "QuantizedGlobalAvgPool2d",
    "QuantizedLinear",
    "QuantizedMaxPool2d",
    "QuantizedModel",
    "QuantizedModule",
    "QuantizedReLU",
    "SimulatedGlobalAvgPool2d",
    "Step",
    "requantizer",
]
