r"""Per-layer sensitivity and mixed precision: which layers can afford fewer bits?

**Sensitivity.** Quantize the weights of one layer at a time (all others float, activations
float: weight-only fake quantization, so it takes one float forward pass per measurement) and
record the accuracy and the SQNR of the logits against the float model,

$$\mathrm{SQNR}_{\ell, b} = 10 \log_{10} \frac{\sum z^2}{\sum (z - \hat{z}_{\ell,b})^2}.$$

**Mixed precision.** Model the noise of several quantized layers as independent, so that
their noise powers add (relative to the signal power, $n_{\ell,b} = 10^{-\mathrm{SQNR}_{\ell,b}
/ 10}$). Starting from every layer at the widest bit width, a greedy search repeatedly takes
the one-step reduction (layer $\ell$: $b \to b'$) with the least added noise per byte saved,
$(n_{\ell,b'} - n_{\ell,b}) / (\mathrm{bytes}_{\ell,b} - \mathrm{bytes}_{\ell,b'})$, until
the model fits the byte budget. Each assignment on the way is one point of a bytes vs
accuracy curve, to compare with uniform bit widths (the Pareto plot).

Bytes count what an integer model stores: the weight codes packed at $b$ bits
($\lceil n b / 8 \rceil$ per tensor) plus, per output channel, an int32 bias and a float32
scale (one scale per tensor when ``per_channel=False``).

References:

* Z. Dong et al., "HAWQ: Hessian AWare Quantization of Neural Networks with Mixed-Precision",
  ICCV 2019 (arXiv:1905.03696): per-layer sensitivity decides the bit widths.
* M. Nagel et al., "A White Paper on Neural Network Quantization", 2021 (arXiv:2106.08295),
  section 4.4 (per-layer analysis) and the mixed-precision discussion.
"""

import copy
from dataclasses import dataclass

import numpy as np

from minquant import nn
from minquant.ptq.weight_quant import (
    dequantize_weights,
    round_weights,
    weight_layers,
    weight_scale,
)
from minquant.quant import sqnr

__all__ = [
    "SensitivityRow",
    "greedy_bit_widths",
    "model_nbytes",
    "pareto",
    "quantize_layers",
    "sensitivity",
]


@dataclass(frozen=True)
class SensitivityRow:
    """One measurement: layer ``layer`` (index in the model) quantized alone at ``bits``."""

    layer: int  # index of the Conv2d/Linear in the (BatchNorm-folded) model
    bits: int  # weight bit width of that layer; all other layers stay float
    accuracy: float  # accuracy on the evaluation data, in [0, 1]
    accuracy_drop: float  # float accuracy minus ``accuracy``
    sqnr_db: float  # SQNR of the logits against the float model's, in dB


def quantize_layers(
    model: nn.Sequential, bit_widths: dict[int, int], per_channel: bool = False
) -> nn.Sequential:
    """A copy of ``model`` whose layers ``i`` in ``bit_widths`` hold round-to-nearest weights.

    Symmetric narrow-range codes at ``bit_widths[i]`` bits, per tensor or per channel; the
    other layers (and all activations) stay float.

    >>> rng = np.random.default_rng(0)
    >>> model = nn.Sequential(nn.Linear(8, 4, rng=rng), nn.ReLU(), nn.Linear(4, 2, rng=rng))
    >>> q = quantize_layers(model, {2: 2})
    >>> len(np.unique(q[2].weight.data)) <= 3
    True
    >>> bool(np.all(q[0].weight.data == model[0].weight.data))
    True
    """
    layers = set(weight_layers(model))
    quantized = copy.deepcopy(model).eval()
    for i, bits in bit_widths.items():
        if i not in layers:
            raise ValueError(f"layer {i} is not a Conv2d/Linear of the model (those: {layers})")
        layer = quantized[i]
        scale = weight_scale(layer.weight.data, bits, per_channel)
        w_q = round_weights(layer.weight.data, scale, bits)
        layer.weight = nn.Parameter(dequantize_weights(w_q, scale))
    return quantized


def sensitivity(
    model: nn.Sequential,
    X: np.ndarray,
    y: np.ndarray,
    bits: tuple[int, ...] = (8, 6, 4, 3, 2),
    per_channel: bool = False,
) -> list[SensitivityRow]:
    """Quantize one layer at a time at each of ``bits``: accuracy and logit SQNR per case.

    ``model`` is a float model in eval mode (fold BatchNorm first to measure the layers an
    integer model has). Cost: one forward pass over ``X`` per (layer, bit width).

    >>> rng = np.random.default_rng(0)
    >>> model = nn.Sequential(nn.Linear(8, 16, rng=rng), nn.ReLU(), nn.Linear(16, 3, rng=rng))
    >>> X = rng.normal(size=(200, 8)).astype(np.float32)
    >>> y = model(X).argmax(1)
    >>> rows = sensitivity(model, X, y, bits=(8, 2))
    >>> [(r.layer, r.bits) for r in rows]
    [(0, 8), (0, 2), (2, 8), (2, 2)]
    >>> all(r.sqnr_db > 30 for r in rows if r.bits == 8)
    True
    """
    _check_bits(bits)
    logits = model(X)  # (N, classes)
    float_acc = float(np.mean(logits.argmax(1) == y))
    rows = []
    for i in weight_layers(model):
        for b in bits:
            out = quantize_layers(model, {i: b}, per_channel)(X)  # (N, classes)
            acc = float(np.mean(out.argmax(1) == y))
            rows.append(SensitivityRow(i, b, acc, float_acc - acc, sqnr(logits, out)))
    return rows


def model_nbytes(model: nn.Sequential, bit_widths: dict[int, int], per_channel: bool) -> int:
    r"""Bytes of the weight layers: codes packed at their bits, int32 biases, float32 scales.

    Layers missing from ``bit_widths`` count as 8-bit.

    >>> model = nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> model_nbytes(model, {0: 4, 2: 2}, per_channel=False)  # 20 + 16 + 4, 2 + 8 + 4
    54
    """
    total = 0
    for i in weight_layers(model):
        w = model[i].weight.data
        bits = bit_widths.get(i, 8)
        out_channels = w.shape[0]
        scales = out_channels if per_channel else 1
        total += -(-w.size * bits // 8) + 4 * out_channels + 4 * scales
    return total


def greedy_bit_widths(
    rows: list[SensitivityRow], model: nn.Sequential, budget: int, per_channel: bool = False
) -> list[dict[int, int]]:
    """Bit widths from the widest down to ``budget`` bytes, one greedy step at a time.

    Returns every assignment on the way (the first is all layers at the widest measured
    bits, the last fits ``budget`` or has every layer at the narrowest). ``rows`` come from
    :func:`sensitivity` on ``model``. See the module docstring for the criterion.

    >>> rows = [SensitivityRow(0, 8, 1, 0, 50.0), SensitivityRow(0, 4, 1, 0, 40.0),
    ...         SensitivityRow(2, 8, 1, 0, 50.0), SensitivityRow(2, 4, 1, 0, 20.0)]
    >>> model = nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 10))
    >>> greedy_bit_widths(rows, model, budget=0)
    [{0: 8, 2: 8}, {0: 4, 2: 8}, {0: 4, 2: 4}]
    """
    noise = {(r.layer, r.bits): 10.0 ** (-r.sqnr_db / 10.0) for r in rows}  # relative power
    options = sorted({r.bits for r in rows}, reverse=True)  # widest first
    layers = sorted({r.layer for r in rows})
    current = {i: options[0] for i in layers}
    path = [dict(current)]
    while model_nbytes(model, current, per_channel) > budget:
        best, best_cost = None, np.inf
        for i in layers:
            step = options.index(current[i]) + 1
            if step == len(options):
                continue
            lower = options[step]
            saved = model_nbytes(model, {**current, i: lower}, per_channel)
            saved = model_nbytes(model, current, per_channel) - saved
            cost = (noise[i, lower] - noise[i, current[i]]) / max(saved, 1)
            if cost < best_cost:
                best, best_cost = (i, lower), cost
        if best is None:
            break
        current[best[0]] = best[1]
        path.append(dict(current))
    return path


def pareto(
    model: nn.Sequential,
    X: np.ndarray,
    y: np.ndarray,
    rows: list[SensitivityRow],
    per_channel: bool = False,
) -> dict[str, list[tuple[int, float]]]:
    """(bytes, accuracy) points: ``"uniform"`` (one bit width for all) and ``"mixed"``.

    The mixed points are the greedy path of :func:`greedy_bit_widths` down to the narrowest
    bit width, each evaluated with all its layers quantized at once (weight-only).
    """
    options = sorted({r.bits for r in rows}, reverse=True)
    layers = sorted({r.layer for r in rows})

    def point(bit_widths: dict[int, int]) -> tuple[int, float]:
        out = quantize_layers(model, bit_widths, per_channel)(X)  # (N, classes)
        return model_nbytes(model, bit_widths, per_channel), float(np.mean(out.argmax(1) == y))

    uniform = [point({i: b for i in layers}) for b in options]
    mixed = [point(bw) for bw in greedy_bit_widths(rows, model, 0, per_channel)]
    return {"uniform": uniform, "mixed": mixed}


def _check_bits(bits: tuple[int, ...]) -> None:
    if not bits or any(isinstance(b, bool) or int(b) != b or not 2 <= b <= 8 for b in bits):
        raise ValueError(f"bits must be a non-empty tuple of ints in [2, 8], got {bits!r}")
