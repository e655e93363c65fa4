r"""What a language model's activations look like: capture every Linear input, measure outliers.

At scale, a few *channels* (input features) of the inputs of a transformer's Linear layers
carry magnitudes far above the rest, in every token (Dettmers et al. 2022). They decide how
activations can be quantized: one per-tensor int8 scale $s = \max|X| / 127$ is set by the
outlier channel and leaves the ordinary channels a handful of codes. The statistics here,
per input channel $j$ of a capture $X$ (tokens, in):

$$m_j = \max_t |X_{tj}|, \qquad \mathrm{med}_j = \mathrm{median}_t |X_{tj}|, \qquad
\kappa = \frac{\mathbb{E}[(x - \mu)^4]}{\sigma^4}$$

(the kurtosis $\kappa$ of all the entries; 3 for a Gaussian, far above for heavy tails), and
the ratio of the largest channel maximum to the median channel maximum, which is what a
per-tensor scale pays.

``tiny_lm`` (870k parameters, 4 layers) shows only mild outliers, as small models do. To see
the effect the methods fix, :func:`inject_outlier_channel` makes a **synthetic** variant: it
multiplies one channel of every RMSNorm weight by a power of two $f$ and divides the matching
input columns of the Linears that read that norm by $f$. The float function is unchanged *to
the bit* (scaling by a power of two is exact in binary floating point, and every product
$x_j w_{ij}$ keeps its value), while the Linear inputs now hold one channel $f$ times larger:
the picture SmoothQuant describes, made by hand, and labelled synthetic wherever it is used.

References:

* T. Dettmers et al., "LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale",
  NeurIPS 2022 (arXiv:2208.07339).
* G. Xiao et al., "SmoothQuant", ICML 2023 (arXiv:2211.10438).
* Y. Bondarenko, M. Nagel, T. Blankevoort, "Quantizable Transformers: Removing Outliers by
  Helping Attention Heads Do Nothing", NeurIPS 2023 (arXiv:2306.12929).
* M. Sun et al., "Massive Activations in Large Language Models", COLM 2024 (arXiv:2402.17762).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from minquant.nn import Linear, Module

#: (norm, the Linears that read its output) inside a Llama block, by attribute path.
NORM_CONSUMERS = (
    ("attn_norm", ("attn.wq", "attn.wk", "attn.wv")),
    ("ffn_norm", ("mlp.w1", "mlp.w3")),
)


def capture_linear_inputs(
    model: Module, tokens: np.ndarray, layer_type: type = Linear
) -> dict[str, np.ndarray]:
    """Run ``model`` once on ``tokens`` (B, T); return every Linear's input (B*T, in) by name.

    The names come in the order the layers ran. ``layer_type`` selects other layers that
    have ``in_features`` (e.g. :class:`~minquant.llm.w8a8.W8A8Linear`).

    >>> import minquant as mq
    >>> lm = mq.models.load_pretrained("tiny_lm")
    >>> X = capture_linear_inputs(lm, mq.data.encode("To be, or not to be")[None])
    >>> X["layers.0.attn.wq"].shape, X["layers.3.mlp.w2"].shape, len(X)
    ((19, 128), (19, 384), 29)
    """
    named = [(n, m) for n, m in model.named_modules() if isinstance(m, layer_type)]
    inputs: dict[str, np.ndarray] = {}

    def recorder(name: str, layer: Linear) -> Callable[[np.ndarray], np.ndarray]:
        def forward(x: np.ndarray) -> np.ndarray:
            inputs[name] = np.asarray(x, np.float32).reshape(-1, layer.in_features).copy()
            return type(layer).forward(layer, x)

        return forward

    for name, layer in named:
        layer.forward = recorder(name, layer)  # an instance attribute shadows the method
    try:
        model.eval()(np.asarray(tokens))
    finally:
        for _, layer in named:
            del layer.forward
    return inputs


@dataclass(frozen=True)
class ActivationStats:
    """Outlier statistics of one capture X (tokens, in); see :func:`activation_stats`."""

    channel_max: np.ndarray  # (in,) max_t |X_tj|
    channel_median: np.ndarray  # (in,) median_t |X_tj|
    kurtosis: float  # of all entries (Pearson: 3 for a Gaussian)
    outlier_ratio: float  # max_j channel_max / median_j channel_max
    top_channels: np.ndarray  # (k,) channels by descending channel_max
    top_tokens: np.ndarray  # (k,) tokens (rows) by descending max_j |X_tj|


def kurtosis(x: np.ndarray) -> float:
    r"""Pearson kurtosis $\mathbb{E}[(x-\mu)^4] / \sigma^4$ of all entries, in float64.

    >>> round(kurtosis(np.random.default_rng(0).standard_normal(200_000)), 1)
    3.0
    """
    x = np.asarray(x, np.float64).reshape(-1)  # (n,)
    if x.size == 0:
        raise ValueError("kurtosis: x is empty")
    d = x - x.mean()  # (n,)
    var = float(np.mean(d * d))
    return 0.0 if var == 0.0 else float(np.mean(d**4) / var**2)


def activation_stats(X: np.ndarray, k: int = 3) -> ActivationStats:
    """Per-channel max and median of |X|, kurtosis, the outlier ratio and the top ``k``.

    >>> X = np.ones((4, 3), np.float32)
    >>> X[:, 1] = 20.0  # one outlier channel, in every token
    >>> s = activation_stats(X, k=1)
    >>> s.channel_max.tolist(), s.outlier_ratio, s.top_channels.tolist()
    ([1.0, 20.0, 1.0], 20.0, [1])
    """
    X = np.asarray(X)
    if X.ndim != 2 or X.size == 0:
        raise ValueError(f"activation_stats: X must be a non-empty 2-D array, got {X.shape}")
    a = np.abs(X.astype(np.float32))  # (tokens, in)
    channel_max = a.max(axis=0)  # (in,)
    channel_median = np.median(a, axis=0).astype(np.float32)  # (in,)
    mid = float(np.median(channel_max))
    ratio = float(channel_max.max() / mid) if mid > 0 else float("inf")
    # NOTE: a stable sort, so ties (and hence the reported channels) are machine-independent.
    top_channels = np.argsort(-channel_max, kind="stable")[:k]  # (k,)
    top_tokens = np.argsort(-a.max(axis=1), kind="stable")[:k]  # (k,)
    return ActivationStats(
        channel_max, channel_median, kurtosis(X), ratio, top_channels, top_tokens
    )


def _get(module: Module, path: str) -> Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def inject_outlier_channel(model: Module, channel: int = 0, factor: float = 32.0) -> Module:
    r"""A copy of a Llama-style model with a **synthetic** outlier channel (same float function).

    For every block, ``attn_norm.weight[channel]`` and ``ffn_norm.weight[channel]`` are
    multiplied by ``factor`` and column ``channel`` of the Linears that read them (``wq, wk,
    wv`` and ``w1, w3``) divided by it: $x_j f \cdot w_{ij} / f = x_j w_{ij}$.

    NOTE: ``factor`` must be a power of two: then both scalings are exact in float32 and the
    model computes exactly the same logits; any other factor would change the last bits.

    >>> import minquant as mq
    >>> lm = mq.models.load_pretrained("tiny_lm")
    >>> lm_out = inject_outlier_channel(lm, channel=5, factor=32.0)
    >>> tokens = mq.data.encode("To be, or not to be")[None]
    >>> bool(np.array_equal(lm(tokens), lm_out(tokens)))  # the float function, to the bit
    True
    >>> X = capture_linear_inputs(lm_out, tokens)["layers.0.attn.wq"]
    >>> int(activation_stats(X).top_channels[0])
    5
    """
    mantissa, _ = np.frexp(factor)
    if not factor > 0 or mantissa != 0.5:
        raise ValueError(f"inject_outlier_channel: factor must be a power of two, got {factor}")
    out = copy.deepcopy(model)
    for block in out.layers:
        for norm_name, consumers in NORM_CONSUMERS:
            norm = _get(block, norm_name)
            if not 0 <= channel < norm.weight.data.shape[0]:
                raise ValueError(
                    f"inject_outlier_channel: channel must be in [0, {norm.dim}), got {channel}"
                )
            norm.weight.data[channel] *= np.float32(factor)
            for path in consumers:
                _get(block, path).weight.data[:, channel] /= np.float32(factor)
    return out.eval()
