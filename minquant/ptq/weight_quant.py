r"""Weight-only quantization of a float model, to measure what rounding the weights costs.

Weights are quantized symmetrically in the narrow signed range $[-(2^{b-1}-1),\ 2^{b-1}-1]$
(as :func:`minquant.ptq.quantize_model` does), per tensor or per output channel (axis 0):

$$s = \frac{\max |w|}{2^{b-1} - 1}, \qquad w_q = \mathrm{clip}(\mathrm{round}(w / s)),
\qquad \hat{w} = s\, w_q.$$

:func:`fake_quantize_weights` puts $\hat{w}$ back into a copy of the model (activations stay
float), so the accuracy it reaches isolates the weight error. Rounding is to nearest (ties to
even) unless integer ``codes`` are given, for example the floor/ceil choices of AdaRound.
"""

import copy

import numpy as np

from minquant import nn
from minquant.quant import calc_qparams, qrange, quantize

#: The layer types whose weights are quantized.
WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)


def weight_layers(model: nn.Sequential) -> list[int]:
    """Indices of the Conv2d and Linear layers of ``model``.

    >>> weight_layers(nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.ReLU()))
    [1]
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model must be an nn.Sequential, got {type(model).__name__}")
    return [i for i, layer in enumerate(model) if isinstance(layer, WEIGHT_LAYERS)]


def weight_scale(w: np.ndarray, num_bits: int, per_channel: bool) -> np.ndarray:
    r"""Symmetric scale $\max|w| / (2^{b-1} - 1)$: shape (1,) per tensor, (out,) per channel.

    >>> weight_scale(np.array([[1.0, -2.54], [0.5, 0.1]]), 8, per_channel=True).round(4)
    array([0.02  , 0.0039], dtype=float32)
    """
    if int(num_bits) != num_bits or not 2 <= num_bits <= 16:
        raise ValueError(f"num_bits must be an int in [2, 16], got {num_bits!r}")
    qmin, qmax = qrange(num_bits, signed=True, narrow_range=True)
    if per_channel:
        flat = w.reshape(w.shape[0], -1)  # (out, rest)
        low, high = flat.min(axis=1), flat.max(axis=1)  # (out,)
    else:
        low, high = w.min(), w.max()
    scale, _ = calc_qparams(low, high, qmin, qmax, symmetric=True)
    return scale


def round_weights(w: np.ndarray, scale: np.ndarray, num_bits: int) -> np.ndarray:
    """Round-to-nearest integer codes of ``w`` for ``scale`` (shape (1,) or (out,)).

    >>> round_weights(np.array([0.3, -0.25, 2.0]), np.array([0.1]), 4).tolist()
    [3, -2, 7]
    """
    qmin, qmax = qrange(num_bits, signed=True, narrow_range=True)
    axis = 0 if scale.size > 1 else None
    zero_point = np.zeros(scale.shape, dtype=np.int64)
    return quantize(w.astype(np.float32), scale, zero_point, qmin, qmax, axis=axis)


def dequantize_weights(w_q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """$\\hat{w} = s\\, w_q$ with ``scale`` broadcast along axis 0, in float32."""
    scale = scale.reshape((-1,) + (1,) * (w_q.ndim - 1))  # (out or 1, 1, ...)
    return (w_q * scale).astype(np.float32)


def fake_quantize_weights(
    model: nn.Sequential,
    num_bits: int,
    per_channel: bool = False,
    codes: dict[int, np.ndarray] | None = None,
    skip: tuple[int, ...] = (),
) -> nn.Sequential:
    """A copy of ``model`` whose Conv2d/Linear weights are replaced by $s\\, w_q$.

    ``codes[i]``, when given, are the integer codes of layer ``i`` (for the same scale);
    otherwise the weights are rounded to nearest. Layers listed in ``skip`` stay float.

    >>> rng = np.random.default_rng(0)
    >>> model = nn.Sequential(nn.Linear(8, 4, rng=rng))
    >>> w4 = fake_quantize_weights(model, num_bits=4)
    >>> len(np.unique(w4[0].weight.data)) <= 15
    True
    """
    quantized = copy.deepcopy(model)
    for i in weight_layers(quantized):
        if i in skip:
            continue
        layer = quantized[i]
        scale = weight_scale(layer.weight.data, num_bits, per_channel)
        if codes is not None and i in codes:
            w_q = codes[i]
        else:
            w_q = round_weights(layer.weight.data, scale, num_bits)
        layer.weight.data = dequantize_weights(w_q, scale)
    return quantized
