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

import numpy as np

from minquant import nn, observers

# NOTE: the functions equalize, adaround and sensitivity take the names of the submodules
# that define them (mq.ptq.equalize(model) is the function); import other names from the
# submodules directly: from minquant.ptq.equalize import absorb_bias.
from minquant.ptq import bias_correction
from minquant.ptq.adaround import AdaRoundConfig, adaround
from minquant.ptq.convert import (
    _quantize_weight,
    activation_qparams,
    check_bits,
    convert_group,
)
from minquant.ptq.equalize import equalize
from minquant.ptq.fold import (
    FUSED_ACTIVATIONS,
    PLAIN_LAYERS,
    LayerGroup,
    check_sequential,
    fold_batchnorm,
    group_layers,
)
from minquant.ptq.sensitivity import sensitivity
from minquant.qnn.model import QuantConfig, QuantizedModel, Step
from minquant.qnn.requant import DEFAULT_ROUNDING, requantizer

__all__ = [
    "OBSERVERS",
    "PLAIN_LAYERS",
    "AdaRoundConfig",
    "LayerGroup",
    "QuantizedModel",
    "Step",
    "activation_qparams",
    "adaround",
    "bias_correction",
    "check_bits",
    "check_sequential",
    "convert_group",
    "equalize",
    "fold_batchnorm",
    "group_layers",
    "quantize_model",
    "sensitivity",
]

#: Activation observer classes by name (the weights always use a min/max observer).
OBSERVERS = {
    "minmax": observers.MinMaxObserver,
    "moving_average": observers.MovingAverageMinMaxObserver,
    "histogram": observers.HistogramObserver,
    "percentile": observers.PercentileObserver,
    "mse": observers.MSEObserver,
    "entropy": observers.EntropyObserver,
}


CALIBRATION_BATCH = 500


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
    return OBSERVERS[observer](
        num_bits=act_bits, signed=False, symmetric=False, reduce_range=reduce_range
    )


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


def quantize_model(
    model: nn.Sequential,
    X_calib: np.ndarray,
    weight_bits: int = 8,
    act_bits: int = 8,
    per_channel: bool = True,
    observer: str = "minmax",
    requant: str = "fixedpoint",
    reduce_range: bool | None = None,
    rounding: str = DEFAULT_ROUNDING,
    weight_codes: dict[int, np.ndarray] | None = None,
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

    ``weight_codes`` replaces round-to-nearest by chosen integer codes, ``{index: w_q}``
    with ``index`` a layer of the BatchNorm-folded model (``fold_batchnorm(model)``): the
    codes that :func:`minquant.ptq.adaround` learns (``{i: r.w_q}``, computed with the same
    ``weight_bits`` and ``per_channel``, hence the same scales). To apply CLE or bias
    correction, pass the float model they return as ``model``.

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
    requantizer(requant, rounding)  # raises on an unknown name, before any calibration
    if reduce_range is None:
        reduce_range = requant == "float"
    if reduce_range and act_bits < 3:
        raise ValueError(f"reduce_range needs act_bits >= 3, got {act_bits}")
    X_calib = _check_calibration(X_calib)
    grouped = group_layers(list(layers), "quantize_model", activations=FUSED_ACTIVATIONS)
    groups = [g.layers for g in grouped]

    def make_observer() -> object:
        return _activation_observer(observer, act_bits, reduce_range)

    input_obs, group_obs = _calibrate(groups, X_calib, make_observer)
    input_qp = activation_qparams(input_obs, act_bits)
    steps, x_qp = [], input_qp
    for group, obs in zip(groups, group_obs, strict=True):
        y_qp = x_qp if obs is None else activation_qparams(obs, act_bits)
        w_info = None
        if obs is not None:
            w_info = _quantize_weight(group[0].weight.data, weight_bits, per_channel)
            index = next(i for i, layer in enumerate(layers) if layer is group[0])
            if weight_codes is not None and index in weight_codes:
                w_info = (
                    _check_codes(weight_codes[index], w_info[0], index, weight_bits),
                    w_info[1],
                )
        module, sim = convert_group(group, x_qp, y_qp, w_info, requant, rounding)
        steps.append(Step(float_layers=group, module=module, sim_layer=sim, qparams=y_qp))
        x_qp = y_qp
    config = QuantConfig(
        weight_bits=weight_bits,
        act_bits=act_bits,
        per_channel=per_channel,
        observer=observer,
        requant=requant,
        reduce_range=reduce_range,
        rounding=rounding,
    )
    return QuantizedModel(steps, input_qp, layers, config)


def _check_codes(codes: np.ndarray, w_q: np.ndarray, index: int, weight_bits: int) -> np.ndarray:
    """``codes`` as int8 if they fit the layer's weight shape and code range."""
    qmax = 2 ** (weight_bits - 1) - 1
    codes = np.asarray(codes)
    if codes.shape != w_q.shape:
        raise ValueError(
            f"weight_codes[{index}] has shape {codes.shape}, the layer's weight {w_q.shape}"
        )
    if not np.issubdtype(codes.dtype, np.integer):
        raise TypeError(f"weight_codes[{index}] must be integer codes, got {codes.dtype}")
    if codes.size and np.abs(codes.astype(np.int64)).max() > qmax:
        raise ValueError(
            f"weight_codes[{index}] holds codes up to {np.abs(codes).max()} in magnitude; "
            f"{weight_bits}-bit narrow-range codes lie in [-{qmax}, {qmax}]"
        )
    return codes.astype(np.int8)
