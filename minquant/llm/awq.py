r"""AWQ: scale the salient input channels up before rounding, and the activations down.

A few input channels carry much larger activations than the rest; the weights that multiply
them matter most ("salient"). Keeping 1% of them in float recovers most of the rounding
loss (:func:`keep_salient_channels`), but mixed precision is awkward to store. AWQ protects
them with an exact rescaling instead: for a per-channel $s > 0$,

$$y = X W^\top = (X\,\mathrm{diag}(s)^{-1})\,\big(W \mathrm{diag}(s)\big)^\top,$$

and rounding $W \mathrm{diag}(s)$ makes the relative error of a channel scaled up by $s_j$
about $s_j$ times smaller (the group's scale barely moves). AWQ ties $s$ to the mean
activation magnitude $\bar{s}_x = \mathrm{mean}_t |X_{t,j}|$ with one exponent,

$$s = \bar{s}_x^{\,\alpha}, \qquad
\alpha^* = \arg\min_{\alpha \in [0, 1]}
\big\lVert X W^\top - (X \mathrm{diag}(s)^{-1})\, Q\big(W \mathrm{diag}(s)\big)^\top
\big\rVert^2,$$

found on the reference's grid $\alpha = 0, 1/n, \dots, (n-1)/n$ ($\alpha = 0$ is round to
nearest). The division by $s$ is folded into the layer that produces $X$: the previous
RMSNorm weight (q, k, v after ``attn_norm``; gate and up after ``ffn_norm``; ``output``
after ``norm``) or the previous linear layer's rows (``wv`` before ``wo``, ``w3`` before
``w2``), so the float model computes the same function and the quantized model is stored
exactly as RTN stores it. Layers that share an input share $s$ and are searched jointly
(their output errors add up).

The second half of AWQ is the **clipping search** (:func:`awq_clip`): after scaling, the
weights of each row and group are clipped to $\pm r \max|w|$ before rounding, with the
ratio $r \in \{1, 0.95, \dots, 0.55\}$ that minimises the group's output error on the
calibration inputs. On ``tiny_lm`` it does most of AWQ's work (docs/results.md).

Reference: J. Lin, J. Tang, H. Tang, S. Yang, W.-M. Chen, W.-C. Wang, G. Xiao, X. Dang,
C. Gan, S. Han, "AWQ: Activation-aware Weight Quantization for LLM Compression and
Acceleration", MLSys 2024 (arXiv:2306.00978); code: github.com/mit-han-lab/llm-awq
(``awq/quantize/auto_scale.py``, ``auto_clip.py``, ``pre_quant.py``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np

from minquant.llm.layer_inputs import check_layer
from minquant.llm.weight_only import (
    MODEL_QUANTIZERS,
    _linear_inputs,
    quantize_rtn,
    quantize_weights,
)
from minquant.nn import Linear, Module, RMSNorm, TransformerLM
from minquant.quant import dequantize


def activation_magnitude(X: np.ndarray) -> np.ndarray:
    r"""$\bar{s}_x$: the mean $|X|$ of each input channel, (in,) float64.

    >>> activation_magnitude(np.array([[1.0, -4.0], [-3.0, 0.0]])).tolist()
    [2.0, 2.0]
    """
    return np.mean(np.abs(np.asarray(X, dtype=np.float64)), axis=0)  # (in,)


def rtn_weight(w: np.ndarray, bits: int, group_size: int, symmetric: bool = False) -> np.ndarray:
    """Round to nearest per group, dequantized: $Q(w)$ (out, in) float32."""
    codes, scale, zero_point = quantize_rtn(w, bits, group_size, symmetric)
    zero_point = np.zeros(scale.shape, np.int64) if zero_point is None else zero_point
    return dequantize(codes, scale, zero_point, axis=1, group_size=group_size)  # (out, in)


def scales_for(s_x: np.ndarray, alpha: float) -> np.ndarray:
    r"""$s = \bar{s}_x^\alpha$, floored at $10^{-4}$ and normalised by $\sqrt{\max s \min s}$.

    The normalisation (as the reference) keeps the scaled weights near their original size.

    >>> np.round(scales_for(np.array([1.0, 4.0]), 0.5), 6).tolist()  # 1/sqrt(2), sqrt(2)
    [0.707107, 1.414214]
    """
    s = np.maximum(np.asarray(s_x, np.float64) ** alpha, 1e-4)  # (in,)
    return s / math.sqrt(s.max() * s.min())


def awq_search(
    w: np.ndarray,
    X: np.ndarray,
    bits: int,
    group_size: int | None,
    n_grid: int = 20,
    symmetric: bool = False,
    forward: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    r"""The grid $\alpha_k = k / n$, $k < n$, and the output error of each: ``(alphas, errors)``.

    ``errors[k]`` is $\lVert X W^\top - (X/s)\, Q(W s)^\top \rVert^2$ (float64) with
    $s$ = :func:`scales_for` ``(s_x, alphas[k])``; ``errors[0]`` is round to nearest's.
    ``forward(w_hat)``, when given, is the output of a larger block (attention, MLP) whose
    layers use the weight ``w_hat`` in place of ``w``: its error replaces the layer's.
    """
    group = check_layer(w, X, group_size)
    if n_grid < 2:
        raise ValueError(f"n_grid must be >= 2 (alpha = 0 and one more), got {n_grid}")
    w = np.asarray(w, np.float32)  # (out, in)
    X = np.asarray(X, np.float64)  # (N, in)
    s_x = activation_magnitude(X)  # (in,)
    if forward is None:

        def forward(w_hat: np.ndarray) -> np.ndarray:
            return X @ w_hat.T.astype(np.float64)  # (N, out)

    y = forward(w)
    # NOTE: k / n for k < n, as the reference (llm-awq ``auto_scale``): alpha = 1 is left out.
    alphas = np.arange(n_grid) / n_grid  # (n_grid,)
    errors = np.zeros(n_grid)
    for k, alpha in enumerate(alphas):
        s = scales_for(s_x, alpha)  # (in,)
        # NOTE: w * s is rounded to float32, as the folded weight is stored.
        w_hat = rtn_weight((w * s).astype(np.float32), bits, group, symmetric) / s  # (out, in)
        errors[k] = np.sum((np.asarray(y, np.float64) - forward(w_hat)) ** 2)
    return alphas, errors


def awq_scales(
    w: np.ndarray,
    X: np.ndarray,
    bits: int,
    group_size: int | None,
    n_grid: int = 20,
    symmetric: bool = False,
) -> np.ndarray:
    r"""AWQ's per-input-channel scales $s$ (in,): quantize ``w * s``, feed ``X / s``.

    Stack the weights of layers that share the input ``X`` (rows) to search them jointly.

    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((512, 64)) * np.where(np.arange(64) < 2, 20.0, 1.0)  # 2 hot
    >>> w = rng.standard_normal((32, 64))
    >>> s = awq_scales(w, X, bits=3, group_size=32)
    >>> bool(s[:2].min() > s[2:].max())  # the salient channels are scaled up
    True
    >>> def error(w_hat):
    ...     return np.sum((X @ (w - w_hat).T) ** 2)
    >>> bool(error(rtn_weight(w * s, 3, 32) / s) < error(rtn_weight(w, 3, 32)))
    True
    """
    alphas, errors = awq_search(w, X, bits, group_size, n_grid, symmetric)
    return scales_for(activation_magnitude(X), alphas[int(np.argmin(errors))])


def awq_pairs(model: TransformerLM) -> list[tuple[Module, list[Linear], Module]]:
    """``(producer, consumers, block)``: who makes the consumers' shared input, whose output counts.

    The producer is an RMSNorm (its weight absorbs $1/s$) or a Linear (its rows do); the
    search minimises the error of ``block``'s output (the attention for q, k, v; the MLP for
    gate and up; the layer itself otherwise), as the reference does.
    """
    pairs: list[tuple[Module, list[Linear], Module]] = []
    for block in model.layers:
        attn, mlp = block.attn, block.mlp
        pairs.append((block.attn_norm, [attn.wq, attn.wk, attn.wv], attn))
        pairs.append((attn.wv, [attn.wo], attn.wo))  # wo's input channel j is value channel j
        pairs.append((block.ffn_norm, [mlp.w1, mlp.w3], mlp))
        pairs.append((mlp.w3, [mlp.w2], mlp.w2))  # w2's input is silu(w1 x) * (w3 x)
    pairs.append((model.norm, [model.output], model.output))
    return pairs


def block_forward(
    block: Module, consumers: list[Linear], x: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    """``forward(w_hat)``: ``block(x)`` with the consumers' stacked weight set to ``w_hat``."""
    originals = [layer.weight.data for layer in consumers]
    splits = np.cumsum([len(w) for w in originals])[:-1]

    def forward(w_hat: np.ndarray) -> np.ndarray:
        for layer, piece in zip(consumers, np.split(w_hat, splits), strict=True):
            layer.weight.data = np.asarray(piece, np.float32)
        try:
            return np.asarray(block(x), np.float64).reshape(-1)
        finally:
            for layer, w in zip(consumers, originals, strict=True):
                layer.weight.data = w

    return forward


def awq_scale_model(
    model: TransformerLM,
    X_calib: np.ndarray,
    bits: int,
    group_size: int | None,
    n_grid: int = 20,
    symmetric: bool = False,
) -> tuple[TransformerLM, list[tuple[str, list[str], np.ndarray]]]:
    """A float copy of ``model`` with AWQ's scales folded in (the same function), and the plan.

    The plan lists ``(producer name, consumer names, s)``: the consumers' input columns were
    multiplied by ``s`` and the producer's output divided by it.

    Every search uses the inputs and weights of the original model; the rescalings are
    exact, so applying them afterwards, in any order, changes no layer's input or output
    beyond float rounding.
    """
    if not isinstance(model, TransformerLM):
        raise ValueError(
            f"AWQ needs to know which layer feeds which: it supports TransformerLM, got "
            f"{type(model).__name__}"
        )
    scaled = copy.deepcopy(model).eval()
    X_calib = np.asarray(X_calib)
    inputs = _linear_inputs(scaled, X_calib)  # id(Linear) -> (tokens, in)
    plan = []
    for producer, consumers, block in awq_pairs(scaled):
        w = np.concatenate([layer.weight.data for layer in consumers], axis=0)  # (sum out, in)
        X = inputs[id(consumers[0])]  # (B*T, in)
        x = X if isinstance(block, Linear) else X.reshape(*X_calib.shape, -1)  # (B, T, in)
        forward = block_forward(block, consumers, x)
        alphas, errors = awq_search(w, X, bits, group_size, n_grid, symmetric, forward)
        s = scales_for(activation_magnitude(X), alphas[int(np.argmin(errors))])
        plan.append((producer, consumers, s))
    for producer, consumers, s in plan:
        for layer in consumers:
            layer.weight.data = (layer.weight.data * s).astype(np.float32)  # (out, in)
        if isinstance(producer, RMSNorm):
            producer.weight.data = (producer.weight.data / s).astype(np.float32)  # (in,)
        else:
            rows = producer.weight.data / s[:, None]  # (in, in_prev): output rows / s
            producer.weight.data = rows.astype(np.float32)
    names = {id(module): name for name, module in scaled.named_modules()}
    return scaled, [(names[id(p)], [names[id(c)] for c in cs], s) for p, cs, s in plan]


def clip_search(
    w: np.ndarray,
    X: np.ndarray,
    bits: int,
    group_size: int | None,
    n_grid: int = 20,
    max_shrink: float = 0.5,
    symmetric: bool = False,
    n_tokens: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    r"""The clipping ratios $r_k = 1 - k / n$ and each group's output error, ``(ratios, errors)``.

    For every output channel $o$ and group $g$, the weights are clipped to
    $\pm r_k \max_{j \in g} |w_{oj}|$ before rounding to nearest; ``errors[k, o, g]`` is
    the error of the group's share of the output,
    $\mathrm{mean}_t \big(\sum_{j \in g} X_{tj} (w_{oj} - \hat w_{oj})\big)^2$ (float64),
    for $k = 0, \dots, \lfloor \text{max\_shrink} \cdot n \rfloor - 1$ ($r_0 = 1$ is round
    to nearest). ``n_tokens`` thins the tokens to about that many by a stride, as the
    reference (llm-awq ``auto_clip_layer``: 512, to save GPU memory) does; the default,
    ``None``, uses all of them (on ``tiny_lm`` a few seconds, and a steadier choice of $r$
    from one calibration sample to the next: docs/results.md).
    """
    group = check_layer(w, X, group_size)
    if not 0 < max_shrink < 1 or int(max_shrink * n_grid) < 1:
        raise ValueError(
            f"need 0 < max_shrink < 1 and max_shrink * n_grid >= 1, got {max_shrink=}, {n_grid=}"
        )
    w = np.asarray(w, np.float32)  # (out, in)
    stride = 1 if n_tokens is None else max(1, len(X) // n_tokens)
    X = np.asarray(X, np.float64)[::stride]  # (about n_tokens, in)
    out_features, in_features = w.shape
    n_groups = in_features // group
    w_groups = w.reshape(out_features, n_groups, group)  # (out, G, g)
    max_abs = np.abs(w_groups).max(axis=2, keepdims=True)  # (out, G, 1)
    ratios = 1.0 - np.arange(int(max_shrink * n_grid)) / n_grid  # (n,)
    errors = np.zeros((len(ratios), out_features, n_groups))  # (n, out, G)
    for k, ratio in enumerate(ratios):
        # NOTE: clipped in float32, as the weight is stored; np.clip keeps +-0 and the
        # groups whose max|w| is 0 as they are.
        bound = (max_abs * np.float32(ratio)).astype(np.float32)  # (out, G, 1)
        clipped = np.clip(w_groups, -bound, bound).reshape(out_features, in_features)
        diff = w - rtn_weight(clipped, bits, group, symmetric)  # (out, in)
        for g in range(n_groups):
            cols = slice(g * group, (g + 1) * group)
            partial = X[:, cols] @ diff[:, cols].T.astype(np.float64)  # (tokens, out)
            errors[k, :, g] = np.mean(partial**2, axis=0)
    return ratios, errors


def awq_clip(
    w: np.ndarray,
    X: np.ndarray,
    bits: int,
    group_size: int | None,
    n_grid: int = 20,
    max_shrink: float = 0.5,
    symmetric: bool = False,
    n_tokens: int | None = None,
) -> np.ndarray:
    r"""The clipped weight (out, in) float32: each group of each row in $\pm r^* \max |w|$.

    $r^*$ minimises the group's output error (:func:`clip_search`); round the result to
    nearest. Outliers in a group stretch its scale over codes the other weights never use:
    giving up a little accuracy on the largest weight can buy more on all the others.

    >>> rng = np.random.default_rng(0)
    >>> w = rng.standard_normal((16, 64)).astype(np.float32)
    >>> X = rng.standard_normal((256, 64))
    >>> w_clip = awq_clip(w, X, bits=3, group_size=32)
    >>> def error(w_hat):
    ...     return np.sum((X @ (w - w_hat).T) ** 2)
    >>> bool(error(rtn_weight(w_clip, 3, 32)) < error(rtn_weight(w, 3, 32)))
    True
    """
    group = check_layer(w, X, group_size)
    ratios, errors = clip_search(w, X, bits, group, n_grid, max_shrink, symmetric, n_tokens)
    w = np.asarray(w, np.float32)  # (out, in)
    w_groups = w.reshape(len(w), -1, group)  # (out, G, g)
    best = ratios[np.argmin(errors, axis=0)].astype(np.float32)  # (out, G) first minimum
    bound = np.abs(w_groups).max(axis=2) * best  # (out, G)
    return np.clip(w_groups, -bound[..., None], bound[..., None]).reshape(w.shape)


def awq_clip_model(
    scaled: TransformerLM,
    X_calib: np.ndarray,
    bits: int,
    group_size: int | None,
    symmetric: bool = False,
    n_tokens: int | None = None,
) -> TransformerLM:
    r"""A copy of the scaled model with every Linear but q and k clipped by :func:`awq_clip`.

    Part of the rounding (the clipped float model is not the same function). Every search
    uses the inputs of the unclipped model, as the reference does; q and k are left whole
    (their error reaches the output through $q k^\top$, not through a sum per group).
    """
    clipped = copy.deepcopy(scaled).eval()
    inputs = _linear_inputs(clipped, np.asarray(X_calib))  # id(Linear) -> (tokens, in)
    for name, layer in clipped.named_modules():
        if type(layer) is Linear and not name.endswith(("attn.wq", "attn.wk")):
            w = layer.weight.data  # (out, in)
            group = w.shape[1] if group_size is None else group_size
            X = inputs[id(layer)]  # (tokens, in)
            layer.weight.data = awq_clip(w, X, bits, group, symmetric=symmetric, n_tokens=n_tokens)
    return clipped


def quantize_model_awq(
    model: Module,
    bits: int,
    group_size: int | None,
    symmetric: bool,
    X_calib: np.ndarray | None,
) -> Module:
    """AWQ: fold the searched scales into the float model, clip, round to nearest per group."""
    if X_calib is None:
        raise ValueError("method 'awq' needs calibration inputs: pass X_calib")
    scaled, _ = awq_scale_model(model, X_calib, bits, group_size, symmetric=symmetric)
    clipped = awq_clip_model(scaled, X_calib, bits, group_size, symmetric)
    return quantize_weights(clipped, bits, group_size, "rtn", symmetric)


def salient_channels(X: np.ndarray, fraction: float = 0.01) -> np.ndarray:
    """Indices of the ``ceil(fraction * in)`` input channels of largest mean $|X|$.

    >>> salient_channels(np.array([[1.0, -9.0, 2.0]]), fraction=0.3).tolist()
    [1]
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    s_x = activation_magnitude(X)  # (in,)
    k = math.ceil(fraction * len(s_x))
    return np.sort(np.argsort(-s_x, kind="stable")[:k])


def keep_salient_channels(
    model: Module,
    X_calib: np.ndarray,
    bits: int,
    group_size: int | None,
    fraction: float = 0.01,
    symmetric: bool = False,
) -> Module:
    """A float copy of ``model`` with every Linear rounded to nearest except its salient inputs.

    The weights of the ``fraction`` of input channels with the largest mean activation
    magnitude stay in float (an experiment: such mixed precision does not pack into
    :class:`~minquant.llm.weight_only.WeightOnlyLinear`).
    """
    fake = copy.deepcopy(model).eval()
    inputs = _linear_inputs(fake, X_calib)
    for layer in [m for m in fake.modules() if type(m) is Linear]:
        w = layer.weight.data  # (out, in)
        group = w.shape[1] if group_size is None else group_size
        w_hat = rtn_weight(w, bits, group, symmetric)  # (out, in)
        keep = salient_channels(inputs[id(layer)], fraction)
        w_hat[:, keep] = w[:, keep]
        layer.weight.data = w_hat.astype(np.float32)
    return fake


MODEL_QUANTIZERS["awq"] = quantize_model_awq
