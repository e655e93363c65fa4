r"""Post-training quantization: fold BatchNorm, calibrate, convert to an integer-only model.

The pipeline, for a trained float ``Sequential``:

1. **Fold BatchNorm** into the convolution before it (eval mode is a per-channel affine map):
   $$w' = w \cdot \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}}, \qquad
   b' = (b - \mu)\,\frac{\gamma}{\sqrt{\sigma^2 + \epsilon}} + \beta.$$
2. **Fuse** each Conv2d/Linear with the ReLU after it (the ReLU becomes the output clamp).
3. **Calibrate**: run the float model on ``X_calib`` (in batches) and let an observer record
   the range of the input and of every Conv2d/Linear output.
4. **Convert**: quantize the weights (symmetric, narrow range, per channel or per tensor),
   turn each layer into a module of :mod:`minquant.qnn` and precompute everything that does
   not depend on the input (int32 bias, zero-point correction, fixed-point multipliers).

Activations use PyTorch's ``quint8`` convention for calibration (observers run unsigned) and
are stored as int8 with the zero point shifted by $2^{b-1}$: the same scale, the same codes
minus 128, and the same arithmetic.

References:

* B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", CVPR 2018 (arXiv:1712.05877), section 3.2 (folding).
* R. Krishnamoorthi, "Quantizing deep convolutional networks for efficient inference:
  A whitepaper", 2018 (arXiv:1806.08342).
"""

import copy

import numpy as np

from minquant import nn, observers
from minquant.fixedpoint import ROUNDING_MODES
from minquant.qmodel import QuantizedModel, Step
from minquant.qnn import (
    REQUANT_MODES,
    QParams,
    QuantizedConv2d,
    QuantizedFlatten,
    QuantizedLinear,
    QuantizedMaxPool2d,
    QuantizedReLU,
)
from minquant.quant import qrange, quantize

__all__ = [
    "OBSERVERS",
    "SUPPORTED_LAYERS",
    "QuantizedModel",
    "Step",
    "activation_qparams",
    "check_bits",
    "check_sequential",
    "convert_group",
    "fold_batchnorm",
    "quantize_model",
]

#: Activation observers by name (the weights always use a min/max observer).
OBSERVERS = {
    "minmax": "MinMaxObserver",
    "moving_average": "MovingAverageMinMaxObserver",
    "histogram": "HistogramObserver",
    "percentile": "PercentileObserver",
    "mse": "MSEObserver",
    "entropy": "EntropyObserver",
}

#: Layers that :func:`quantize_model` converts (after BatchNorm folding).
SUPPORTED_LAYERS = (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.Flatten)

CALIBRATION_BATCH = 500


def check_sequential(model: nn.Module) -> list[nn.Module]:
    """The layers of ``model``; a TypeError unless it is an ``nn.Sequential``.

    >>> [type(m).__name__ for m in check_sequential(nn.Sequential(nn.Flatten(), nn.ReLU()))]
    ['Flatten', 'ReLU']
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model must be an nn.Sequential, got {type(model).__name__}")
    return list(model)


def fold_batchnorm(model: nn.Sequential) -> nn.Sequential:
    r"""A copy of ``model`` in eval mode with every ``Conv2d -> BatchNorm2d`` pair merged.

    $$w' = w \cdot \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}}, \qquad
    b' = (b - \mu)\,\frac{\gamma}{\sqrt{\sigma^2 + \epsilon}} + \beta$$

    (computed in float64, stored in float32). The input model is not modified.

    >>> rng = np.random.default_rng(0)
    >>> model = nn.Sequential(nn.Conv2d(1, 2, 3, rng=rng), nn.BatchNorm2d(2), nn.ReLU())
    >>> model[1].running_mean[:] = [0.5, -1.0]
    >>> folded = fold_batchnorm(model)
    >>> [type(m).__name__ for m in folded]
    ['Conv2d', 'ReLU']
    >>> X = rng.normal(size=(4, 1, 5, 5)).astype(np.float32)
    >>> bool(np.allclose(folded(X), model.eval()(X), atol=1e-5))
    True
    """
    layers = check_sequential(model)
    folded = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, nn.BatchNorm2d):
            folded.append(copy.deepcopy(layer))
            continue
        if not folded or not isinstance(folded[-1], nn.Conv2d):
            raise ValueError(
                f"fold_batchnorm: BatchNorm2d at index {i} must follow a Conv2d, "
                f"got {type(layers[i - 1]).__name__ if i else 'nothing'} before it"
            )
        conv = folded[-1]
        if conv.out_channels != layer.num_features:
            raise ValueError(
                f"fold_batchnorm: BatchNorm2d({layer.num_features}) at index {i} does not "
                f"match the {conv.out_channels} output channels of the Conv2d before it"
            )
        gamma = layer.weight.data.astype(np.float64)  # (C,)
        inv_std = 1.0 / np.sqrt(layer.running_var.astype(np.float64) + layer.eps)  # (C,)
        factor = gamma * inv_std  # (C,)
        w = conv.weight.data.astype(np.float64)  # (C, C_in, k, k)
        b = np.zeros(conv.out_channels) if conv.bias is None else conv.bias.data  # (C,)
        mean = layer.running_mean.astype(np.float64)  # (C,)
        b_folded = (b - mean) * factor + layer.bias.data.astype(np.float64)  # (C,)
        conv.weight = nn.Parameter(w * factor[:, None, None, None])
        conv.bias = nn.Parameter(b_folded)
    return nn.Sequential(*folded).eval()


def _group_layers(layers: list[nn.Module]) -> list[list[nn.Module]]:
    """Split the layer list into steps: ``[Conv2d|Linear, ReLU?]`` pairs and single layers."""
    groups: list[list[nn.Module]] = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, SUPPORTED_LAYERS):
            allowed = ", ".join(t.__name__ for t in (nn.BatchNorm2d, *SUPPORTED_LAYERS))
            raise ValueError(
                f"quantize_model: unsupported layer at index {i}: {layer!r} (supported: {allowed})"
            )
        fusable = groups and isinstance(groups[-1][0], (nn.Conv2d, nn.Linear))
        if isinstance(layer, nn.ReLU) and fusable and len(groups[-1]) == 1:
            groups[-1].append(layer)
        else:
            groups.append([layer])
    return groups


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


def _check_calibration(X_calib: np.ndarray) -> np.ndarray:
    if not isinstance(X_calib, np.ndarray) or not np.issubdtype(X_calib.dtype, np.floating):
        got = X_calib.dtype if isinstance(X_calib, np.ndarray) else type(X_calib).__name__
        raise TypeError(f"X_calib must be a floating-point ndarray, got {got}")
    if X_calib.ndim < 2 or len(X_calib) == 0:
        raise ValueError(f"X_calib is empty (shape {X_calib.shape}): calibration needs data")
    if not np.all(np.isfinite(X_calib)):
        bad = int(np.count_nonzero(~np.isfinite(X_calib)))
        raise ValueError(f"X_calib must be finite, got {bad} NaN/Inf values")
    return X_calib.astype(np.float32, copy=False)


def _activation_observer(observer: str, act_bits: int, reduce_range: bool) -> object:
    # NOTE: observers run in PyTorch's unsigned convention (quint8); the int8 codes are the
    # unsigned codes minus 2^(b-1), which changes neither the scale nor the arithmetic.
    cls = getattr(observers, OBSERVERS[observer])
    return cls(num_bits=act_bits, signed=False, symmetric=False, reduce_range=reduce_range)


def activation_qparams(obs: object, act_bits: int, reduce_range: bool) -> QParams:
    r"""int8 :class:`~minquant.qnn.QParams` from an unsigned observer (or fake quantizer).

    Same scale; zero point and range shifted down by $2^{b-1}$ (uint8 codes minus 128).

    >>> obs = observers.MinMaxObserver(num_bits=8)
    >>> _ = obs(np.array([0.0, 2.55]))
    >>> activation_qparams(obs, 8, reduce_range=False)
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


def _calibrate(
    groups: list[list[nn.Module]], X_calib: np.ndarray, make_observer: object
) -> tuple[object, list[object | None]]:
    """Observe the input and every Conv2d/Linear(+ReLU) output, batch by batch."""
    input_obs = make_observer()
    group_obs = [
        make_observer() if isinstance(g[0], (nn.Conv2d, nn.Linear)) else None for g in groups
    ]
    for start in range(0, len(X_calib), CALIBRATION_BATCH):
        x = X_calib[start : start + CALIBRATION_BATCH]  # (B, ...)
        input_obs(x)
        for group, obs in zip(groups, group_obs, strict=True):
            for layer in group:
                x = layer(x)
            if obs is not None:
                obs(x)
    return input_obs, group_obs


def convert_group(
    group: list[nn.Module],
    x_qp: QParams,
    y_qp: QParams | None,
    w_info: tuple[np.ndarray, np.ndarray] | None,
    requant: str,
    rounding: str = "single",
) -> tuple[object, nn.Module | None]:
    """One step: its integer module and the float module with fake-quantized weights.

    ``group`` is ``[Conv2d|Linear, ReLU?]`` or one ReLU/MaxPool2d/Flatten; ``x_qp`` and
    ``y_qp`` quantize its input and output; ``w_info`` is ``(w_q, w_scale)`` for a
    Conv2d/Linear (else None). Returns ``(module, sim_layer)``; ``sim_layer`` is None for
    layers that map fake-quantized values to fake-quantized values.
    """
    layer, relu = group[0], len(group) == 2
    if isinstance(layer, (nn.Conv2d, nn.Linear)):
        w_q, w_scale = w_info
        bias = None if layer.bias is None else layer.bias.data.astype(np.float32)
        gemm_args = (w_q, w_scale, bias, x_qp, y_qp)
        if isinstance(layer, nn.Conv2d):
            module = QuantizedConv2d(
                *gemm_args, layer.stride, layer.padding, relu, requant, rounding
            )
        else:
            module = QuantizedLinear(*gemm_args, relu, requant, rounding)
        # NOTE: the simulation uses exactly the weights (and int32 bias) the integer model
        # uses, dequantized: w_q * s_w is fake_quantize(w) because z_w = 0.
        sim = copy.deepcopy(layer)
        axis_scale = w_scale.reshape(-1, *[1] * (w_q.ndim - 1))  # (C, 1, ...) or (1, 1, ...)
        sim.weight = nn.Parameter(w_q.astype(np.float32) * axis_scale)
        if requant == "fixedpoint":
            acc_scale = np.float64(x_qp.scale) * module.w_scale  # (N,) s_x s_w, as the module
            sim.bias = nn.Parameter(module.bias_q * acc_scale)
        return module, sim
    if isinstance(layer, nn.MaxPool2d):
        return QuantizedMaxPool2d(layer.kernel_size, layer.stride), None
    if isinstance(layer, nn.Flatten):
        return QuantizedFlatten(), None
    return QuantizedReLU(x_qp.zero_point), None


def quantize_model(
    model: nn.Sequential,
    X_calib: np.ndarray,
    weight_bits: int = 8,
    act_bits: int = 8,
    per_channel: bool = True,
    observer: str = "minmax",
    requant: str = "fixedpoint",
    reduce_range: bool | None = None,
    rounding: str = "single",
) -> QuantizedModel:
    r"""Post-training quantization of a float ``Sequential`` into an integer-only model.

    Weights: int8 codes in $[-(2^{b-1}-1), 2^{b-1}-1]$, symmetric, scale
    $\max|w| / (2^{b-1}-1)$ per output channel (``per_channel=True``) or per tensor.
    Activations: ``act_bits`` asymmetric per tensor, ranges from ``observer`` (one of
    :data:`OBSERVERS`) run on ``X_calib``. ``requant`` is ``"fixedpoint"`` (TFLite) or
    ``"float"`` (PyTorch x86). ``reduce_range`` uses one activation bit less, as PyTorch's
    x86 default: ``None`` means True for ``"float"`` and False for ``"fixedpoint"``.
    ``rounding`` applies to ``"fixedpoint"``: ``"single"`` (TFLite's single-rounding
    multiply, the default) or ``"double"`` (gemmlowp's reference, two roundings), see
    :func:`minquant.fixedpoint.multiply_by_quantized_multiplier`.

    >>> rng = np.random.default_rng(0)
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8, rng=rng), nn.ReLU(),
    ...                       nn.Linear(8, 3, rng=rng))
    >>> X = rng.normal(size=(64, 1, 4, 4)).astype(np.float32)
    >>> qmodel = quantize_model(model, X)
    >>> qmodel.forward_int(X).dtype, qmodel(X).shape
    (dtype('int8'), (64, 3))
    >>> bool(np.all(qmodel(X).argmax(1) == qmodel.simulate(X).argmax(1)))
    True
    """
    layers = fold_batchnorm(model)
    weight_bits = check_bits("weight_bits", weight_bits)
    act_bits = check_bits("act_bits", act_bits)
    if observer not in OBSERVERS:
        raise ValueError(f"observer must be one of {sorted(OBSERVERS)}, got {observer!r}")
    if requant not in REQUANT_MODES:
        raise ValueError(f"requant must be one of {REQUANT_MODES}, got {requant!r}")
    # NOTE: the fake-quant simulation rounds the exact real output once; the single-rounding
    # multiply does the same in integers, so the integer model matches it on essentially
    # every logit. gemmlowp's two roundings (SRDHM, then RDBPOT) move about one value in
    # 2^(-shift) by one step: measured on small_cnn W8A8, 98.6% identical logits (100% with
    # single rounding). Both stay within 1 LSB; "double" remains for comparison.
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"rounding must be one of {ROUNDING_MODES}, got {rounding!r}")
    if reduce_range is None:
        reduce_range = requant == "float"
    if reduce_range and act_bits < 3:
        raise ValueError(f"reduce_range needs act_bits >= 3, got {act_bits}")
    X_calib = _check_calibration(X_calib)
    groups = _group_layers(list(layers))

    def make_observer() -> object:
        return _activation_observer(observer, act_bits, reduce_range)

    input_obs, group_obs = _calibrate(groups, X_calib, make_observer)
    input_qp = activation_qparams(input_obs, act_bits, reduce_range)
    steps, x_qp = [], input_qp
    for group, obs in zip(groups, group_obs, strict=True):
        y_qp = x_qp if obs is None else activation_qparams(obs, act_bits, reduce_range)
        w_info = None
        if obs is not None:
            w_info = _quantize_weight(group[0].weight.data, weight_bits, per_channel)
        module, sim = convert_group(group, x_qp, y_qp, w_info, requant, rounding)
        steps.append(Step(float_layers=group, module=module, sim_layer=sim, qparams=y_qp))
        x_qp = y_qp
    config = dict(
        weight_bits=weight_bits,
        act_bits=act_bits,
        per_channel=per_channel,
        observer=observer,
        requant=requant,
        reduce_range=reduce_range,
        rounding=rounding,
    )
    return QuantizedModel(steps, input_qp, layers, config)
