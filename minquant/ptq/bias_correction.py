r"""Bias correction: remove the mean output shift that rounding the weights introduces.

With quantized weights $\tilde{W} = W + \varepsilon$ a layer computes
$\tilde{y} = y + \varepsilon x$, and the error has a mean
$\mathbb{E}[\tilde{y} - y] = \varepsilon\, \mathbb{E}[x]$ per output channel that need not be 0:
every later layer sees a shifted input. Subtracting the shift from the bias removes it
(Nagel et al. 2019, section 4.2):

$$\tilde{b} = b - \mathbb{E}[\tilde{y} - y].$$

* **Empirical** (:func:`empirical_bias_correction`): run the float model and the quantized
  model on calibration data and measure the shift of each layer's output channels, layer by
  layer in order, so that each correction sees the already corrected layers before it.
* **Analytic** (:func:`analytic_bias_correction`, data-free): take $\mathbb{E}[x]$ from the
  BatchNorm statistics of the layer before. Its pre-activation is modelled as
  $\mathcal{N}(\mu, \sigma^2)$ per channel ($\mu = \beta$, $\sigma = |\gamma|$), and the mean
  of a normal clipped to $[a, b]$ (ReLU: $[0, \infty)$; ReLU6: $[0, 6]$) is, with
  $\alpha = (a - \mu)/\sigma$, $\beta' = (b - \mu)/\sigma$, $\Phi$ and $\phi$ the standard
  normal CDF and density,

$$\mathbb{E}[\mathrm{clip}(x, a, b)] = a\,\Phi(\alpha) + b\,(1 - \Phi(\beta'))
+ \mu\,(\Phi(\beta') - \Phi(\alpha)) + \sigma\,(\phi(\alpha) - \phi(\beta')).$$

  The first layer (fed by the image) has no statistics and is left alone.

Both return the corrected model and a report: for each layer, the mean over output channels of
$|\mathbb{E}[\tilde{y} - y]|$ before and after, measured on ``X_eval``.

References:

* M. Nagel, M. van Baalen, T. Blankevoort, M. Welling, "Data-Free Quantization Through Weight
  Equalization and Bias Correction", ICCV 2019 (arXiv:1906.04721), section 4.2 and eq. 15-19.
* E. Finkelstein, U. Almog, M. Grobman, "Fighting Quantization Bias With Bias", 2019
  (arXiv:1906.03193): the empirical variant.
"""

import copy
import math
from dataclasses import dataclass

import numpy as np

from minquant import nn
from minquant.ptq.equalize import ACTIVATIONS, WEIGHT_LAYERS, weight_times_constant

CHUNK = 500  # images per forward pass when measuring


@dataclass(frozen=True)
class BiasShift:
    """Mean over output channels of |mean output shift| of layer ``index``, before and after."""

    index: int
    before: float
    after: float


def output_means(model: nn.Sequential, X: np.ndarray) -> dict[int, np.ndarray]:
    """Mean of each Conv2d/Linear output per channel (over N, H, W) on ``X``: {index: (C,)}.

    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, rng=np.random.default_rng(0)))
    >>> output_means(model, np.ones((3, 1, 2, 2), dtype=np.float32))[1].shape
    (2,)
    """
    if len(X) == 0:
        raise ValueError("X is empty: the means need at least one example")
    sums: dict[int, np.ndarray] = {}
    for start in range(0, len(X), CHUNK):
        h = X[start : start + CHUNK]
        for i, layer in enumerate(model):
            h = layer(h)
            if isinstance(layer, WEIGHT_LAYERS):
                axes = (0,) if h.ndim == 2 else (0, 2, 3)
                chunk_mean = h.astype(np.float64).mean(axis=axes)  # (C,)
                sums[i] = sums.get(i, 0.0) + chunk_mean * len(h)
    return {i: total / len(X) for i, total in sums.items()}


def output_shift(
    model_float: nn.Sequential, model_quant: nn.Sequential, X: np.ndarray
) -> dict[int, np.ndarray]:
    r"""$\mathbb{E}[\tilde{y} - y]$ per output channel of every weight layer: {index: (C,)}."""
    means_float = output_means(model_float, X)
    means_quant = output_means(model_quant, X)
    return {i: means_quant[i] - means_float[i] for i in means_float}


def empirical_bias_correction(
    model_float: nn.Sequential,
    model_quant: nn.Sequential,
    X_calib: np.ndarray,
    X_eval: np.ndarray | None = None,
) -> tuple[nn.Sequential, list[BiasShift]]:
    """Correct the biases of ``model_quant`` with output shifts measured on ``X_calib``.

    Both models have the same layers (``model_quant`` with quantized weights, for example from
    :func:`minquant.ptq.weight_quant.fake_quantize_weights`). Layers are corrected in order, each
    after the ones before it. Returns a corrected copy and the shifts on ``X_eval`` (default
    ``X_calib``).

    >>> from minquant.ptq.weight_quant import fake_quantize_weights
    >>> rng = np.random.default_rng(0)
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3, rng=rng), nn.ReLU(), nn.Conv2d(4, 4, 1, rng=rng))
    >>> X = rng.random((32, 1, 6, 6), dtype=np.float32)
    >>> corrected, report = empirical_bias_correction(model, fake_quantize_weights(model, 3), X)
    >>> all(r.after < 1e-5 for r in report)
    True
    """
    _check_pair(model_float, model_quant)
    X_eval = X_calib if X_eval is None else X_eval
    before = output_shift(model_float, model_quant, X_eval)
    corrected = copy.deepcopy(model_quant)
    means_float = output_means(model_float, X_calib)
    for i in sorted(means_float):
        shift = output_means(corrected, X_calib)[i] - means_float[i]  # (C,)
        _subtract_from_bias(corrected[i], shift)
    after = output_shift(model_float, corrected, X_eval)
    return corrected, _report(before, after)


def clipped_normal_mean(mean: np.ndarray, std: np.ndarray, low: float, high: float) -> np.ndarray:
    r"""$\mathbb{E}[\mathrm{clip}(x, a, b)]$ for $x \sim \mathcal{N}(\mu, \sigma^2)$ (see the top).

    ``high`` may be ``inf`` (ReLU) and may be an array (a per-channel bound).

    >>> clipped_normal_mean(np.array([0.0]), np.array([1.0]), 0.0, np.inf).round(6)  # 1/sqrt(2 pi)
    array([0.398942])
    """
    mean = np.asarray(mean, dtype=np.float64)
    high = np.asarray(high, dtype=np.float64)
    std = np.maximum(np.asarray(std, dtype=np.float64), 1e-12)
    alpha = (low - mean) / std
    beta = (high - mean) / std
    cdf_a, cdf_b = _normal_cdf(alpha), _normal_cdf(beta)
    pdf_a, pdf_b = _normal_pdf(alpha), _normal_pdf(beta)
    # NOTE: b * (1 - Phi(beta)) would be inf * 0 = nan for an unbounded ReLU; the tail is 0.
    upper_tail = np.where(np.isinf(high), 0.0, high) * (1.0 - cdf_b)
    return low * cdf_a + upper_tail + mean * (cdf_b - cdf_a) + std * (pdf_a - pdf_b)


def expected_inputs(model: nn.Sequential) -> dict[int, np.ndarray]:
    r"""$\mathbb{E}[x]$ per input channel of each weight layer, from BatchNorm statistics.

    Only for layers whose input is one ReLU-like activation (and global average pooling)
    of a layer carrying ``output_mean``/``output_std`` (see
    :func:`minquant.ptq.equalize.fold_batchnorm`).
    """
    layers = list(model)
    expected = {}
    for j, layer in enumerate(layers):
        if not isinstance(layer, WEIGHT_LAYERS):
            continue
        i = j - 1
        while i >= 0 and isinstance(layers[i], (*ACTIVATIONS, nn.GlobalAvgPool2d)):
            i -= 1
        acts = [m for m in layers[i + 1 : j] if isinstance(m, ACTIVATIONS)]
        if i < 0 or len(acts) != 1 or not hasattr(layers[i], "output_mean"):
            continue
        act = acts[0]
        high = {nn.ReLU: np.inf, nn.ReLU6: 6.0}.get(type(act))
        high = act.upper.astype(np.float64) if high is None else high
        expected[j] = clipped_normal_mean(layers[i].output_mean, layers[i].output_std, 0.0, high)
    return expected


def analytic_bias_correction(
    model_float: nn.Sequential,
    model_quant: nn.Sequential,
    X_eval: np.ndarray | None = None,
) -> tuple[nn.Sequential, list[BiasShift]]:
    r"""Correct ``model_quant``'s biases by $\varepsilon\,\mathbb{E}[x]$ from BatchNorm statistics.

    ``model_float`` must carry the statistics (from :func:`minquant.ptq.equalize.fold_batchnorm`
    or :func:`minquant.ptq.equalize.equalize`). No data is needed; ``X_eval``, when given, is only
    used to measure the shifts for the report (an empty report without it).
    """
    _check_pair(model_float, model_quant)
    corrected = copy.deepcopy(model_quant)
    for j, mean_in in expected_inputs(model_float).items():
        # NOTE: border pixels of a padded convolution see fewer taps than eps E[x] assumes;
        # the analytic estimate ignores that (as the paper does), the empirical one does not.
        eps = corrected[j].weight.data.astype(np.float64) - model_float[j].weight.data
        _subtract_from_bias(corrected[j], weight_times_constant(corrected[j], mean_in, w=eps))
    if X_eval is None:
        return corrected, []
    before = output_shift(model_float, model_quant, X_eval)
    after = output_shift(model_float, corrected, X_eval)
    return corrected, _report(before, after)


# --- helpers ----------------------------------------------------------------------------------


def _check_pair(model_float: nn.Sequential, model_quant: nn.Sequential) -> None:
    kinds_float = [type(m) for m in model_float]
    kinds_quant = [type(m) for m in model_quant]
    if kinds_float != kinds_quant:
        raise ValueError(
            "model_float and model_quant must have the same layers, got "
            f"{[k.__name__ for k in kinds_float]} and {[k.__name__ for k in kinds_quant]}"
        )


def _subtract_from_bias(layer: nn.Module, shift: np.ndarray) -> None:
    if layer.bias is None:
        layer.bias = nn.Parameter(np.zeros(shift.shape), dtype=layer.weight.data.dtype)
    layer.bias.data = (layer.bias.data - shift).astype(layer.weight.data.dtype)


def _report(before: dict[int, np.ndarray], after: dict[int, np.ndarray]) -> list[BiasShift]:
    return [
        BiasShift(i, float(np.abs(before[i]).mean()), float(np.abs(after[i]).mean()))
        for i in sorted(before)
    ]


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * (1.0 + erf(np.asarray(z) / math.sqrt(2.0)))


def _normal_pdf(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
