r"""AdaRound: learn, weight by weight, whether to round down or up.

Rounding every weight to nearest minimises each weight's own error, not the error of the
layer's *output*. AdaRound keeps the grid ($\hat{w} = s\, w_q$, the same scale) and only
chooses $w_q \in \{\lfloor w/s \rfloor, \lfloor w/s \rfloor + 1\}$, by minimising the
layer-wise reconstruction error on calibration inputs $X$ (Nagel et al. 2020, eq. 21-25):

$$\min_V\ \frac{1}{P}\big\lVert W X - \tilde{W}(V) X \big\rVert_F^2 + \lambda\, f_{reg}(V),
\qquad \tilde{W}(V) = s \cdot \mathrm{clip}\big(\lfloor W / s \rfloor + h(V),\
q_{min}, q_{max}\big),$$

with $P$ the number of output positions, the *rectified sigmoid* soft rounding

$$h(V) = \mathrm{clip}\big(\sigma(V)(\zeta - \gamma) + \gamma,\ 0,\ 1\big), \qquad
\zeta = 1.1,\ \gamma = -0.1,$$

and the regularizer that pushes every $h$ to 0 or 1 as $\beta$ is annealed from 20 to 2:

$$f_{reg}(V) = \sum_{i} 1 - |2 h(V_i) - 1|^{\beta}.$$

The first ``warmup`` fraction of the iterations runs without the regularizer. $V$ starts
where $h(V)$ equals the fractional part of $w / s$ (the soft weight is then the float
weight), and is optimized with :class:`minquant.nn.Adam`. The gradient of the
reconstruction loss with respect to the weight comes from the layer's own ``backward``.
At the end $h(V) \ge 1/2$ (that is, $V \ge 0$) rounds up: the result is an ordinary array of
integer codes for the given scale, usable by any integer model.

References:

* M. Nagel, R. A. Amjad, M. van Baalen, C. Louizos, T. Blankevoort, "Up or Down? Adaptive
  Rounding for Post-Training Quantization", ICML 2020 (arXiv:2004.10568).
* C. Louizos, M. Welling, D. P. Kingma, "Learning Sparse Neural Networks through L0
  Regularization", ICLR 2018 (arXiv:1712.01312): the rectified sigmoid.
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
from minquant.quant import qrange

ZETA, GAMMA = 1.1, -0.1


@dataclass(frozen=True)
class AdaRoundConfig:
    """Optimisation settings of :func:`adaround_layer`."""

    #: Adam steps per layer
    iterations: int = 1000
    #: calibration examples per step
    batch_size: int = 32
    #: weight of the rounding regularizer (lambda in the paper)
    lam: float = 0.01
    #: beta at the end of the warm-up (the regularizer is sharp: only h near 1/2 feels it)
    beta_start: float = 20.0
    #: beta at the last step (a smooth regularizer: every h is pushed to 0 or 1)
    beta_end: float = 2.0
    #: fraction of the steps without the regularizer
    warmup: float = 0.2
    #: Adam learning rate for V
    lr: float = 1e-2


@dataclass(frozen=True)
class AdaRoundResult:
    """Integer codes of one layer and its reconstruction MSE with them and with rounding."""

    w_q: np.ndarray
    mse_adaround: float
    mse_nearest: float


def rectified_sigmoid(V: np.ndarray) -> np.ndarray:
    r"""The rectified sigmoid $h(V) = \mathrm{clip}(\sigma(V)(\zeta - \gamma) + \gamma, 0, 1)$.

    With $\zeta = 1.1$, $\gamma = -0.1$. Unlike $\sigma$ it reaches 0 and 1 exactly (at
    $|V| \approx 2.4$), so a weight can settle.

    >>> rectified_sigmoid(np.array([-5.0, 0.0, 5.0])).tolist()
    [0.0, 0.5, 1.0]
    """
    return np.clip(_sigmoid(V) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def rounding_regularizer(h: np.ndarray, beta: float) -> float:
    r"""$f_{reg} = \sum_i 1 - |2 h_i - 1|^{\beta}$: 0 when every $h$ is 0 or 1.

    >>> rounding_regularizer(np.array([0.0, 1.0, 0.5]), beta=2.0)
    1.0
    """
    return float(np.sum(1.0 - np.abs(2.0 * h - 1.0) ** beta))


def beta_schedule(step: int, config: AdaRoundConfig) -> float | None:
    """Beta at ``step``: None during warm-up, then linear from beta_start to beta_end.

    >>> config = AdaRoundConfig(iterations=10, warmup=0.2)
    >>> [beta_schedule(t, config) for t in (0, 2, 6, 9)]
    [None, 20.0, 11.0, 4.25]
    """
    start = int(config.warmup * config.iterations)
    if step < start:
        return None
    progress = (step - start) / max(config.iterations - start, 1)
    return config.beta_start + (config.beta_end - config.beta_start) * progress


def adaround_layer(
    layer: nn.Module,
    X: np.ndarray,
    scale: np.ndarray,
    num_bits: int,
    config: AdaRoundConfig | None = None,
    rng: np.random.Generator | None = None,
) -> AdaRoundResult:
    """AdaRound codes for one Conv2d/Linear ``layer`` on its calibration inputs ``X``.

    ``scale`` is the weight scale, shape (1,) (per tensor) or (out,) (per channel); codes are
    in the narrow signed range of ``num_bits``. The target is the float layer's output
    (bias included) on ``X``. ``rng`` draws the mini-batches (``None``: seed 0, so the
    result is the same run to run). The layer is not modified.

    >>> rng = np.random.default_rng(0)
    >>> layer = nn.Linear(16, 8, rng=rng)
    >>> X = (rng.normal(size=(256, 16)) @ rng.normal(size=(16, 16))).astype(np.float32)
    >>> scale = np.array([np.abs(layer.weight.data).max() / 7])
    >>> result = adaround_layer(layer, X, scale, 4, AdaRoundConfig(iterations=300), rng)
    >>> result.w_q.dtype, bool(result.mse_adaround < 0.9 * result.mse_nearest)
    (dtype('int8'), True)

    (Correlated inputs, as real activations are: with independent unit-variance inputs
    rounding to nearest is already optimal for the output error, and AdaRound has nothing
    to gain.)
    """
    config = AdaRoundConfig() if config is None else config
    rng = np.random.default_rng(0) if rng is None else rng
    if not isinstance(layer, nn.Conv2d | nn.Linear):
        raise TypeError(f"layer must be an nn.Conv2d or nn.Linear, got {type(layer).__name__}")
    if len(X) == 0:
        raise ValueError("X is empty: AdaRound needs calibration inputs")
    out_channels = layer.weight.shape[0]
    if np.ndim(scale) != 1 or np.size(scale) not in (1, out_channels) or not np.all(scale > 0):
        raise ValueError(
            f"scale must be positive with shape (1,) or ({out_channels},), got {np.shape(scale)}"
        )
    qmin, qmax = qrange(num_bits, signed=True, narrow_range=True)
    work = copy.deepcopy(layer).to(np.float32)
    w = work.weight.data  # (out, ...)
    s = scale.reshape((-1,) + (1,) * (w.ndim - 1)).astype(np.float32)  # (out or 1, 1, ...)
    w_floor = np.floor(w / s)  # (out, ...)
    rest = w / s - w_floor  # in [0, 1)
    # NOTE: V0 makes h(V0) = rest exactly: sigma(V0) = (rest - gamma) / (zeta - gamma), which
    # lies in [1/12, 11/12], so V0 is finite.
    p = (rest - GAMMA) / (ZETA - GAMMA)
    V = nn.Parameter(np.log(p / (1.0 - p)))
    opt = nn.Adam([V], lr=config.lr)
    target = _forward(layer, X)  # (N, out, ...)
    for step in range(config.iterations):
        batch = rng.choice(len(X), size=min(config.batch_size, len(X)), replace=False)
        beta = beta_schedule(step, config)
        lam = 0.0 if beta is None else config.lam
        _, grad = adaround_loss(
            work, V.data, w_floor, s, X[batch], target[batch], lam, beta, qmin, qmax
        )
        opt.zero_grad()
        V.grad[...] = grad
        opt.step()
    w_q = np.clip(w_floor + (V.data >= 0), qmin, qmax).astype(
        np.int8 if num_bits <= 8 else np.int16
    )
    nearest = round_weights(w, scale, num_bits)
    return AdaRoundResult(
        w_q=w_q,
        mse_adaround=reconstruction_mse(layer, X, w_q, scale),
        mse_nearest=reconstruction_mse(layer, X, nearest, scale),
    )


def adaround_loss(
    layer: nn.Module,
    V: np.ndarray,
    w_floor: np.ndarray,
    s: np.ndarray,
    X: np.ndarray,
    target: np.ndarray,
    lam: float,
    beta: float | None,
    qmin: int,
    qmax: int,
) -> tuple[float, np.ndarray]:
    r"""The AdaRound loss at ``V`` and its gradient $\partial L / \partial V$.

    $L = \frac{1}{P}\lVert \tilde{W}(V) X - Y \rVert^2 + \lambda f_{reg}$ (no regularizer
    when ``beta`` is None). ``layer`` is overwritten with the soft weight $\tilde{W}(V)$; its
    ``backward`` gives $\partial L / \partial \tilde{W}$, and the chain rule continues through
    the clip to the code range, the clip of $h$ to $[0, 1]$ and the sigmoid.
    """
    h = rectified_sigmoid(V)
    levels = w_floor + h  # (out, ...), soft codes
    layer.weight.data = (s * np.clip(levels, qmin, qmax)).astype(layer.weight.data.dtype)
    layer.zero_grad()
    y = layer(X)  # (B, out, ...)
    positions = y.size // y.shape[1]
    diff = y - target
    loss = float(np.sum(diff.astype(np.float64) ** 2)) / positions
    layer.backward(2.0 * diff / positions)  # fills d(rec)/dW
    # NOTE: outside [qmin, qmax] the code is clipped and the gradient is 0.
    grad_h = layer.weight.grad * s * ((levels >= qmin) & (levels <= qmax))  # d(rec)/dh
    if beta is not None:
        loss += lam * rounding_regularizer(h, beta)
        u = 2.0 * h - 1.0
        # d/dh (1 - |u|^beta) = -2 beta |u|^(beta - 1) sign(u)
        grad_h = grad_h - lam * 2.0 * beta * np.abs(u) ** (beta - 1.0) * np.sign(u)
    sig = _sigmoid(V)
    unclipped = sig * (ZETA - GAMMA) + GAMMA
    # NOTE: h is clipped to [0, 1]; where the clip is active the gradient is 0.
    dh_dV = sig * (1.0 - sig) * (ZETA - GAMMA) * ((unclipped > 0) & (unclipped < 1))
    return loss, grad_h * dh_dV


def reconstruction_mse(
    layer: nn.Module, X: np.ndarray, w_q: np.ndarray, scale: np.ndarray
) -> float:
    r"""$\frac{1}{\#y}\lVert y - \tilde{y} \rVert^2$: the layer's output with $s\,w_q$ vs float."""
    quantized = copy.deepcopy(layer)
    quantized.weight.data = dequantize_weights(w_q, scale)
    diff = _forward(quantized, X).astype(np.float64) - _forward(layer, X)
    return float(np.mean(diff * diff))


def adaround(
    model: nn.Sequential,
    X_calib: np.ndarray,
    num_bits: int = 4,
    per_channel: bool = True,
    config: AdaRoundConfig | None = None,
    rng: np.random.Generator | None = None,
) -> dict[int, AdaRoundResult]:
    """AdaRound every Conv2d/Linear layer of a float ``model`` (BatchNorm folded), in order.

    Each layer is reconstructed on its inputs in the float model. Returns {index: result};
    ``{i: r.w_q}`` plugs into :func:`minquant.ptq.weight_quant.fake_quantize_weights` as ``codes``
    (with the same ``num_bits`` and ``per_channel``, hence the same scales).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    results = {}
    indices = set(weight_layers(model))
    h = X_calib
    for i, layer in enumerate(model):
        if i in indices:
            scale = weight_scale(layer.weight.data, num_bits, per_channel)
            results[i] = adaround_layer(layer, h, scale, num_bits, config, rng)
        h = _forward(layer, h)
    return results


def _forward(layer: nn.Module, X: np.ndarray, chunk: int = 500) -> np.ndarray:
    return np.concatenate([layer(X[i : i + chunk]) for i in range(0, len(X), chunk)])


def _sigmoid(V: np.ndarray) -> np.ndarray:
    # NOTE: exp(-|V|) never overflows; both branches of the usual formula in one.
    e = np.exp(-np.abs(V))
    return np.where(V >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
