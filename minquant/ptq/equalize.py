r"""Cross-layer equalization (CLE) and bias absorption: rescale a float model for per-tensor PTQ.

**Why.** After BatchNorm folding, the output channels of one layer can have weight ranges that
differ by orders of magnitude (depthwise convolutions are the classic case): one per-tensor
scale then rounds the small channels to zero. ReLU is positively homogeneous,
$\mathrm{ReLU}(x / s) = \mathrm{ReLU}(x) / s$ for $s > 0$, so for two consecutive layers

$$W^{(2)} f(W^{(1)} x + b^{(1)}) = (W^{(2)} S)\, f(S^{-1} W^{(1)} x + S^{-1} b^{(1)}),
\qquad S = \mathrm{diag}(s),$$

the same function with output channel $i$ of layer 1 divided by $s_i$ and input channel $i$
of layer 2 multiplied by $s_i$. With $r^{(1)}_i$ the range ($\max |\cdot|$) of output channel
$i$ of layer 1 and $r^{(2)}_i$ that of input channel $i$ of layer 2, Nagel et al. (eq. 10)
make both ranges equal to $\sqrt{r^{(1)}_i r^{(2)}_i}$ with

$$s_i = \frac{1}{r^{(2)}_i} \sqrt{r^{(1)}_i r^{(2)}_i}.$$

Pairs are equalized one after the other, and the passes repeat until no scale moves (a layer
between two others belongs to two pairs).

**ReLU6** is not scale-equivariant: $\min(\max(x/s, 0), 6) \ne \min(\max(x, 0), 6)/s$. The
paper replaces ReLU6 by ReLU before equalizing (its Table 1, "Replace ReLU6"), which changes
the float model a little; ``relu6="relu"`` does that. The default ``relu6="clip"`` keeps the
function exact: ReLU6 after a rescaled channel becomes :class:`minquant.nn.ClippedReLU` with
bound $6 / s_i$, since $\min(\max(x/s, 0), 6/s) = \min(\max(x, 0), 6)/s$.

**Bias absorption** (section 4.1.1): when the pre-activation of channel $i$ is almost always
above $c_i = \max(0, \beta_i - 3\gamma_i)$ (BatchNorm's shift and scale), then
$f(x - c) = f(x) - c$ there, and $c$ moves from layer 1's bias into layer 2's:
$b^{(2)} \leftarrow b^{(2)} + W^{(2)} c$. The activations shrink toward 0 (a smaller
activation range to quantize); the function changes only where $x < c_i$.

References:

* M. Nagel, M. van Baalen, T. Blankevoort, M. Welling, "Data-Free Quantization Through Weight
  Equalization and Bias Correction", ICCV 2019 (arXiv:1906.04721), sections 4.1, 4.1.1.
* M. Nagel et al., "A White Paper on Neural Network Quantization", 2021 (arXiv:2106.08295),
  section 4.3.
"""

import copy
from dataclasses import dataclass

import numpy as np

from minquant import nn

#: Layers that carry weights and are equalized in pairs.
WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)
#: Positively homogeneous, channel-wise activations: f(x / s) = f(x) / s (ReLU6 after rescaling).
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.ClippedReLU)
#: Channel-wise layers that commute with a positive per-channel scale.
CHANNELWISE = (nn.MaxPool2d, nn.GlobalAvgPool2d)


@dataclass(frozen=True)
class Pair:
    """Two weight layers ``first`` -> ``second`` joined by the channel-wise layers ``between``."""

    first: int
    second: int
    between: tuple[int, ...]


def fold_batchnorm(model: nn.Sequential) -> nn.Sequential:
    r"""BatchNorm folded into the layer before it, keeping its statistics for later steps.

    Calls :func:`minquant.ptq.fold_batchnorm` (so QAT, PTQ and CLE fold the same way), then
    stores on each folded layer the BatchNorm's view of its output channels,
    ``output_mean`` $= \beta$ and ``output_std`` $= |\gamma|$ (the mean and standard
    deviation of the pre-activation, if it is Gaussian): bias absorption and analytic bias
    correction need them. A model without BatchNorm is copied unchanged (in eval mode).

    >>> rng = np.random.default_rng(0)
    >>> model = nn.Sequential(nn.Conv2d(1, 2, 3, rng=rng), nn.BatchNorm2d(2), nn.ReLU())
    >>> folded = fold_batchnorm(model)
    >>> [type(m).__name__ for m in folded], folded[0].output_std.tolist()
    (['Conv2d', 'ReLU'], [1.0, 1.0])
    """
    from minquant.ptq import fold_batchnorm as fold

    layers = list(_check(model))
    folded = fold(model)
    index = -1  # the index in `folded` of the last layer that was not a BatchNorm
    for layer in layers:
        if not isinstance(layer, nn.BatchNorm2d):
            index += 1
            continue
        folded[index].output_mean = layer.bias.data.astype(np.float64)  # beta, (C,)
        folded[index].output_std = np.abs(layer.weight.data.astype(np.float64))  # |gamma|, (C,)
    return folded


def find_pairs(model: nn.Sequential) -> list[Pair]:
    """Consecutive Conv2d/Linear layers joined only by ReLU-like or channel-wise layers.

    >>> rng = np.random.default_rng(0)
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3, rng=rng), nn.ReLU6(),
    ...                       nn.GlobalAvgPool2d(), nn.Linear(4, 2, rng=rng))
    >>> find_pairs(model)
    [Pair(first=0, second=3, between=(1, 2))]
    """
    layers = list(_check(model))
    pairs = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, WEIGHT_LAYERS):
            continue
        j = i + 1
        while j < len(layers) and isinstance(layers[j], ACTIVATIONS + CHANNELWISE):
            j += 1
        if j < len(layers) and isinstance(layers[j], WEIGHT_LAYERS):
            if _in_channels(layers[j]) == _out_channels(layer):
                pairs.append(Pair(i, j, tuple(range(i + 1, j))))
    return pairs


def output_ranges(layer: nn.Module) -> np.ndarray:
    r"""$r^{(1)}_i = \max |W_{i,\dots}|$ for each output channel $i$: shape (out,)."""
    w = np.abs(layer.weight.data)
    return w.reshape(w.shape[0], -1).max(axis=1)  # (out,)


def input_ranges(layer: nn.Module) -> np.ndarray:
    r"""$r^{(2)}_j = \max |W_{\cdot, j, \dots}|$ for each input channel $j$: shape (in,).

    For a grouped convolution, input channel $j$ is seen only by the output channels of its
    group (a depthwise convolution: by output channel $j$ alone).

    >>> conv = nn.Conv2d(2, 2, 1, groups=2)
    >>> conv.weight.data[:] = [[[[3.0]]], [[[-5.0]]]]
    >>> input_ranges(conv).tolist()
    [3.0, 5.0]
    """
    w = np.abs(layer.weight.data)
    if isinstance(layer, nn.Linear):
        return w.max(axis=0)  # (in,)
    g = layer.groups
    per_pair = w.reshape(w.shape[0], w.shape[1], -1).max(axis=2)  # (out, in/g)
    per_group = per_pair.reshape(g, w.shape[0] // g, w.shape[1]).max(axis=1)  # (g, in/g)
    return per_group.reshape(-1)  # (in,)


def cle_scales(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    r"""$s_i = \frac{1}{r^{(2)}_i}\sqrt{r^{(1)}_i r^{(2)}_i}$ (1 where either range is 0).

    After dividing channel $i$ of layer 1 by $s_i$ and multiplying it in layer 2 by $s_i$,
    both ranges are $\sqrt{r^{(1)}_i r^{(2)}_i}$.

    >>> cle_scales(np.array([8.0, 1.0, 0.0]), np.array([2.0, 4.0, 3.0])).tolist()
    [2.0, 0.5, 1.0]
    """
    r1 = np.asarray(r1, dtype=np.float64)
    r2 = np.asarray(r2, dtype=np.float64)
    alive = (r1 > 0) & (r2 > 0)
    # NOTE: a dead channel (all-zero weights on either side) keeps s = 1; dividing by its
    # zero range would give inf or nan.
    safe_r2 = np.where(alive, r2, 1.0)
    return np.where(alive, np.sqrt(r1 * r2) / safe_r2, 1.0)


def equalize(
    model: nn.Sequential,
    relu6: str = "clip",
    max_iterations: int = 100,
    tol: float = 1e-6,
) -> nn.Sequential:
    r"""A new model, BatchNorm folded and cross-layer equalized, computing the same function.

    Every :class:`Pair` of :func:`find_pairs` is rescaled with :func:`cle_scales`; the passes
    repeat until every $|\log s_i| <$ ``tol`` (or ``max_iterations`` passes). The arithmetic
    runs in float64 and the result is cast back to float32 once. ``relu6="clip"`` keeps the
    function exact (ReLU6 becomes a per-channel :class:`minquant.nn.ClippedReLU`);
    ``relu6="relu"`` replaces every ReLU6 by ReLU first, as the paper does. The input model
    is not modified. The total scale of each pair's channels is stored on the model as
    ``cle_scales`` (a dict from the pair's first layer index to $s$).

    >>> from minquant.models import mobile_cnn
    >>> model = mobile_cnn(rng=np.random.default_rng(0)).eval()
    >>> X = np.random.default_rng(1).random((4, 1, 28, 28), dtype=np.float32)
    >>> bool(np.allclose(equalize(model)(X), model(X), rtol=1e-4, atol=1e-5))
    True
    """
    if relu6 not in ("clip", "relu"):
        raise ValueError(f"relu6 must be 'clip' or 'relu', got {relu6!r}")
    if int(max_iterations) != max_iterations or max_iterations < 1:
        raise ValueError(f"max_iterations must be an int >= 1, got {max_iterations!r}")
    out = fold_batchnorm(model).to(np.float64)
    layers = list(out)
    if relu6 == "relu":
        layers = [nn.ReLU() if isinstance(m, nn.ReLU6) else m for m in layers]
        out = nn.Sequential(*layers).eval()
    pairs = find_pairs(out)
    total = {pair.first: np.ones(_out_channels(out[pair.first])) for pair in pairs}
    for _ in range(max_iterations):
        largest_step = 0.0
        for pair in pairs:
            s = cle_scales(output_ranges(out[pair.first]), input_ranges(out[pair.second]))
            rescale_pair(out, pair, s)
            total[pair.first] *= s
            largest_step = max(largest_step, float(np.abs(np.log(s)).max()))
        if largest_step < tol:
            break
    out = out.to(np.float32)
    out.cle_scales = total
    return out


def rescale_pair(model: nn.Sequential, pair: Pair, s: np.ndarray) -> None:
    """Divide output channel i of ``pair.first`` by ``s[i]``, multiply it in ``pair.second``.

    In place. Bounded activations between the two are rescaled with the channel (ReLU6
    becomes ClippedReLU), so the function of the model is unchanged.
    """
    first, second = model[pair.first], model[pair.second]
    first.weight.data = first.weight.data / _along(s, 0, first.weight.data.ndim)
    if first.bias is not None:
        first.bias.data = first.bias.data / s
    for name in ("output_mean", "output_std"):
        if hasattr(first, name):
            setattr(first, name, getattr(first, name) / s)
    for index in pair.between:
        layer = model[index]
        if isinstance(layer, nn.ReLU6):
            upper = np.full(s.shape, 6.0) / s  # (C,)
            model[index] = nn.ClippedReLU(upper).to(first.weight.data.dtype)
        elif isinstance(layer, nn.ClippedReLU):
            layer.upper = layer.upper / s
    second.weight.data = _scale_inputs(second, s)


def absorb_bias(model: nn.Sequential, num_std: float = 3.0) -> nn.Sequential:
    r"""A copy with $c = \max(0, \mu - k\sigma)$ moved from each layer's bias into the next's.

    Needs the BatchNorm statistics that :func:`fold_batchnorm` (or :func:`equalize`) keeps
    on each layer (``output_mean`` $\mu$, ``output_std`` $\sigma$), $k$ = ``num_std``. Applies
    to pairs joined by one ReLU-like activation (and channel-wise pooling) whose second
    layer has no padding. ReLU6 or ClippedReLU bounds drop by $c$ too; a channel with
    $c \geq$ its bound is left alone. The function changes only where a pre-activation falls
    below $c_i$ (rare when it is Gaussian: under 0.14% at $k = 3$).

    The absorbed offsets are stored on the model as ``absorbed`` (first layer index -> c).
    """
    out = copy.deepcopy(_check(model)).to(np.float64)
    absorbed = {}
    for pair in find_pairs(out):
        first, second = out[pair.first], out[pair.second]
        acts = [out[i] for i in pair.between if isinstance(out[i], ACTIVATIONS)]
        # NOTE: a padded second layer would see -c in its zero padding: its border outputs
        # would change, so such pairs are skipped.
        padded = isinstance(second, nn.Conv2d) and second.padding > 0
        if len(acts) != 1 or padded or not hasattr(first, "output_mean") or first.bias is None:
            continue
        c = np.maximum(0.0, first.output_mean - num_std * first.output_std)  # (C,)
        act = acts[0]
        if isinstance(act, nn.ReLU6 | nn.ClippedReLU):
            upper = np.full(c.shape, 6.0) if isinstance(act, nn.ReLU6) else act.upper
            c = np.where(c < upper, c, 0.0)
            new_act = nn.ClippedReLU(upper - c).to(np.float64)
            out[_index_of(out, act)] = new_act
        first.bias.data = first.bias.data - c
        first.output_mean = first.output_mean - c
        if second.bias is None:
            second.bias = nn.Parameter(np.zeros(_out_channels(second)), dtype=np.float64)
        second.bias.data = second.bias.data + weight_times_constant(second, c)
        absorbed[pair.first] = c
    out = out.to(np.float32)
    out.absorbed = absorbed
    return out


# --- helpers ----------------------------------------------------------------------------------


def _check(model: nn.Module) -> nn.Sequential:
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model must be an nn.Sequential, got {type(model).__name__}")
    return model


def _index_of(model: nn.Sequential, layer: nn.Module) -> int:
    return next(i for i, m in enumerate(model) if m is layer)


def _out_channels(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _in_channels(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _along(v: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """``v`` reshaped to broadcast along ``axis`` of an ``ndim``-dimensional array."""
    shape = [1] * ndim
    shape[axis] = v.size
    return v.reshape(shape)


def _scale_inputs(layer: nn.Module, s: np.ndarray) -> np.ndarray:
    """The weight of ``layer`` with input channel j multiplied by ``s[j]``."""
    w = layer.weight.data
    if isinstance(layer, nn.Linear):
        return w * s[None, :]  # (out, in)
    g, per_group = layer.groups, w.shape[1]
    w5 = w.reshape(g, w.shape[0] // g, per_group, *w.shape[2:])  # (g, out/g, in/g, k, k)
    s5 = s.reshape(g, 1, per_group, 1, 1)  # input channel j = group * in/g + position
    return (w5 * s5).reshape(w.shape)


def weight_times_constant(
    layer: nn.Module, c: np.ndarray, w: np.ndarray | None = None
) -> np.ndarray:
    r"""$W c$: the output (out,) of ``layer`` without bias for an input constant $c_j$ per channel.

    For an unpadded convolution every output pixel sees all $k \times k$ taps, so this is
    $\sum_{j,u,v} W_{o,j,u,v}\, c_j$ over the input channels of output $o$'s group. ``w``
    replaces the layer's weight (same shape), for example by its quantization error.

    >>> conv = nn.Conv2d(2, 2, 3, groups=2)
    >>> conv.weight.data[:] = 1.0
    >>> weight_times_constant(conv, np.array([1.0, 2.0])).tolist()
    [9.0, 18.0]
    """
    w = layer.weight.data if w is None else w
    if isinstance(layer, nn.Linear):
        return w @ c  # (out,)
    g = layer.groups
    taps = w.reshape(w.shape[0], w.shape[1], -1).sum(axis=2)  # (out, in/g)
    c_groups = c.reshape(g, 1, w.shape[1])  # (g, 1, in/g)
    per_out = taps.reshape(g, w.shape[0] // g, w.shape[1]) * c_groups  # (g, out/g, in/g)
    return per_out.sum(axis=2).reshape(-1)  # (out,)
