r"""Convert one calibrated float layer into its integer module (and its fake-quant twin).

Weights are quantized symmetric, narrow range, per output channel or per tensor; activation
ranges come from an unsigned observer (PyTorch's ``quint8`` convention) and are stored as
int8 with the zero point shifted by $2^{b-1}$: the same scale, the same codes minus 128.

Reference: R. Krishnamoorthi, "Quantizing deep convolutional networks for efficient
inference: A whitepaper", 2018 (arXiv:1806.08342).
"""

import copy

import numpy as np

from minquant import nn, observers
from minquant.qnn import (
    QParams,
    QuantizedConv2d,
    QuantizedDepthwiseConv2d,
    QuantizedFlatten,
    QuantizedGlobalAvgPool2d,
    QuantizedLinear,
    QuantizedMaxPool2d,
    QuantizedReLU,
    SimulatedGlobalAvgPool2d,
)
from minquant.qnn.requant import DEFAULT_ROUNDING
from minquant.quant import qrange, quantize

__all__ = ["activation_qparams", "check_bits", "convert_group"]


def check_bits(name: str, bits: int) -> int:
    """``bits`` as an int in [2, 8] (codes stored in int8); errors name the argument ``name``.

    >>> check_bits("weight_bits", 4)
    4
    """
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"{name} must be an int in [2, 8], got {bits!r}")
    if not 2 <= bits <= 8:
        raise ValueError(f"{name} must be in [2, 8] (int8 storage), got {bits}")
    return int(bits)


def activation_qparams(obs: object, act_bits: int) -> QParams:
    r"""int8 :class:`~minquant.qnn.QParams` from an unsigned observer (or fake quantizer).

    Same scale; zero point and range shifted down by $2^{b-1}$ (uint8 codes minus 128).

    >>> obs = observers.MinMaxObserver(num_bits=8)
    >>> _ = obs(np.array([0.0, 2.55]))
    >>> activation_qparams(obs, 8)
    QParams(scale=0.009999999776482582, zero_point=-128, qmin=-128, qmax=127)
    """
    scale, zero_point = obs.calculate_qparams()
    offset = 2 ** (act_bits - 1)
    # NOTE: reduce_range only shapes the observer's scale and zero point (7 bits cover the
    # calibrated range); like PyTorch's x86 modules, outputs still clamp to the full range.
    qmin, qmax = qrange(act_bits, signed=False)
    return QParams(
        scale=float(scale[0]),
        zero_point=int(zero_point[0]) - offset,
        qmin=qmin - offset,
        qmax=qmax - offset,
    )


def _quantize_weight(
    w: np.ndarray, weight_bits: int, per_channel: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric narrow-range weight quantization: (w_q int8, scale (C,) or (1,))."""
    qmin, qmax = qrange(weight_bits, signed=True, narrow_range=True)
    kwargs = dict(num_bits=weight_bits, signed=True, symmetric=True, narrow_range=True)
    if per_channel:
        obs = observers.PerChannelMinMaxObserver(axis=0, **kwargs)
    else:
        obs = observers.MinMaxObserver(**kwargs)
    obs(w)
    scale, zero_point = obs.calculate_qparams()
    axis = 0 if per_channel else None
    w_q = quantize(w, scale, zero_point, qmin, qmax, axis=axis).astype(np.int8)
    return w_q, scale.astype(np.float32)


def convert_group(
    group: list[nn.Module],
    x_qp: QParams,
    y_qp: QParams | None,
    w_info: tuple[np.ndarray, np.ndarray] | None,
    requant: str,
    rounding: str = DEFAULT_ROUNDING,
) -> tuple[object, nn.Module | None]:
    """One step: its integer module and the float module with fake-quantized weights.

    ``group`` is ``[Conv2d|Linear, ReLU|ReLU6|ClippedReLU?]`` or one ReLU/MaxPool2d/
    Flatten/GlobalAvgPool2d; ``x_qp`` and ``y_qp`` quantize its input and output; ``w_info``
    is ``(w_q, w_scale)`` for a Conv2d/Linear (else None). A Conv2d with ``groups`` equal to
    its channels becomes a depthwise convolution. Returns ``(module, sim_layer)``;
    ``sim_layer`` is None for layers that map fake-quantized values to fake-quantized values.
    """
    layer, relu = group[0], len(group) == 2
    upper = _upper_bound(group[1]) if relu else None
    if isinstance(layer, (nn.Conv2d, nn.Linear)):
        w_q, w_scale = w_info
        bias = None if layer.bias is None else layer.bias.data.astype(np.float32)
        gemm_args = (w_q, w_scale, bias, x_qp, y_qp)
        if isinstance(layer, nn.Linear):
            module = QuantizedLinear(*gemm_args, relu, requant, rounding, upper=upper)
        else:
            conv_args = (layer.stride, layer.padding, relu, requant, rounding)
            if getattr(layer, "groups", 1) > 1:
                _check_depthwise(layer)
                module = QuantizedDepthwiseConv2d(*gemm_args, *conv_args, upper=upper)
            else:
                module = QuantizedConv2d(*gemm_args, *conv_args, upper=upper)
        # NOTE: the simulation uses exactly the weights (and int32 bias) the integer model
        # uses, dequantized: w_q * s_w is fake_quantize(w) because z_w = 0.
        sim = copy.deepcopy(layer)
        axis_scale = w_scale.reshape(-1, *[1] * (w_q.ndim - 1))  # (C, 1, ...) or (1, 1, ...)
        sim.weight = nn.Parameter(w_q.astype(np.float32) * axis_scale)
        sim_bias = module.requant.simulated_bias()  # (N,) the bias the integers add
        if sim_bias is not None:
            sim.bias = nn.Parameter(sim_bias)
        return module, sim
    if isinstance(layer, nn.GlobalAvgPool2d):
        # NOTE: the output keeps the input's qparams (PyTorch's convention); the twin rounds
        # the float mean back onto that grid with the integer module's tie rule.
        module = QuantizedGlobalAvgPool2d(x_qp, requant, rounding)
        return module, SimulatedGlobalAvgPool2d(x_qp, requant)
    if isinstance(layer, nn.MaxPool2d):
        return QuantizedMaxPool2d(layer.kernel_size, layer.stride), None
    if isinstance(layer, nn.Flatten):
        return QuantizedFlatten(), None
    return QuantizedReLU(x_qp.zero_point), None


def _upper_bound(activation: nn.Module) -> float | np.ndarray | None:
    """The real upper bound of a fused activation: 6.0 (ReLU6), per channel (ClippedReLU)."""
    if isinstance(activation, nn.ReLU6):
        return 6.0
    if isinstance(activation, nn.ClippedReLU):
        return activation.upper.astype(np.float32)  # (C,)
    return None


def _check_depthwise(layer: nn.Conv2d) -> None:
    if not layer.groups == layer.in_channels == layer.out_channels:
        raise ValueError(
            f"quantize_model: grouped convolutions must be depthwise (groups = in = out "
            f"channels), got {layer!r}"
        )
