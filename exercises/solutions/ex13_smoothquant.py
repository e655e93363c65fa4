r"""Exercise 13: SmoothQuant's scales and folding them into the RMSNorm before the Linears.

Follows notebook 12 (activations of a language model). A few input channels of a Linear
carry most of the magnitude, so one per-tensor int8 scale fits them and wastes the codes of
every other channel. SmoothQuant divides input channel $j$ by $s_j$ and multiplies weight
column $j$ by $s_j$, which leaves $Y = X W^\top$ unchanged:

$$Y = \big(X\,\mathrm{diag}(s)^{-1}\big)\big(W\,\mathrm{diag}(s)\big)^\top, \qquad
s_j = \frac{\max_t |X_{tj}|^{\alpha}}{\max_i |W_{ij}|^{1-\alpha}}.$$

The division costs nothing at inference: the RMSNorm that produces $X$ multiplies channel
$j$ by its weight $\gamma_j$, so $\gamma_j / s_j$ does it.

Write the arithmetic with NumPy; do not call ``minquant.llm.smoothquant_scales``,
``fold_smoothing`` or ``smooth_model``. Check your work with ``pytest exercises -m ex13``.

Reference: G. Xiao et al., "SmoothQuant", ICML 2023 (arXiv:2211.10438), section 4 and the
authors' ``smooth.py`` (the clamps).
"""

import numpy as np

from minquant import nn


def smoothquant_scales(X: np.ndarray, w: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    r"""Exercise 13.1: the smoothing factors $s$ (in,) of one group of Linears.

    $$s_j = \max\Big(\frac{a_j^{\alpha}}{b_j^{1-\alpha}},\ 10^{-5}\Big), \qquad
    a_j = \max\big(\max_t |X_{tj}|,\ 10^{-5}\big), \qquad
    b_j = \max\big(\max_i |W_{ij}|,\ 10^{-5}\big).$$

    ``X`` (tokens, in) holds calibration inputs, ``w`` (out, in) the weight (the Linears
    reading the same input stacked along ``out``). Compute the powers in float64 and return
    float32 (in,). Raise ``ValueError`` for ``alpha`` outside [0, 1].

    Worked example: ``X = [[1, 16], [-2, 4]]``, ``w = [[1, 0.25], [0.5, -1]]``, alpha 0.5:
    $a = (2, 16)$, $b = (1, 1)$, $s = (\sqrt 2, 4)$.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothquant_scales: alpha must be in [0, 1], got {alpha}")
    a = np.maximum(np.abs(np.asarray(X)).max(axis=0), 1e-5).astype(np.float64)  # (in,)
    b = np.maximum(np.abs(np.asarray(w)).max(axis=0), 1e-5).astype(np.float64)  # (in,)
    s = a**alpha / b ** (1.0 - alpha)  # (in,)
    return np.maximum(s, 1e-5).astype(np.float32)


def fold_smoothing(
    gamma: np.ndarray, weights: list[np.ndarray], s: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray]]:
    r"""Exercise 13.2: fold $s$ into the RMSNorm weight and the Linear weights that read it.

    $$\gamma'_j = \gamma_j / s_j, \qquad W'_{ij} = W_{ij}\, s_j \quad \text{(every W)}.$$

    ``gamma`` (in,), each weight (out_k, in), ``s`` (in,) positive. Return new float32 arrays
    ``(gamma_folded, [w_folded, ...])`` and leave the arguments unchanged. Raise
    ``ValueError`` if ``s`` has the wrong shape or an entry <= 0.

    Worked example: ``gamma = [1, 1]``, one weight ``[[1, 1]]``, ``s = [2, 0.5]`` gives
    ``[0.5, 2]`` and ``[[2, 0.5]]``.
    """
    gamma = np.asarray(gamma, np.float32)  # (in,)
    s = np.asarray(s, np.float32)  # (in,)
    if s.shape != gamma.shape or not (s > 0).all():
        raise ValueError(f"fold_smoothing: s must be positive with shape {gamma.shape}")
    folded = [np.asarray(w, np.float32) * s[None, :] for w in weights]  # (out_k, in) each
    return gamma / s, folded


def smooth_block(
    block: nn.TransformerBlock, X_attn: np.ndarray, X_ffn: np.ndarray, alpha: float = 0.5
) -> None:
    r"""Exercise 13.3: smooth one Llama block in place (same float function).

    ``X_attn`` (tokens, dim) are the outputs of ``block.attn_norm`` on calibration text (the
    input of ``wq, wk, wv``), ``X_ffn`` those of ``block.ffn_norm`` (the input of ``w1,
    w3``). For each pair, compute $s$ with 13.1 from the stacked weights of the Linears that
    read the norm, then fold it with 13.2 and write the results into ``norm.weight.data`` and
    each ``linear.weight.data``.

    Worked example: with ``alpha = 1`` the smoothed block's ``attn_norm`` outputs on the same
    text have a maximum magnitude of 1 in every channel.
    """
    pairs = [
        (block.attn_norm, [block.attn.wq, block.attn.wk, block.attn.wv], X_attn),
        (block.ffn_norm, [block.mlp.w1, block.mlp.w3], X_ffn),
    ]
    for norm, linears, X in pairs:
        w = np.concatenate([lin.weight.data for lin in linears], axis=0)  # (sum out, in)
        s = smoothquant_scales(X, w, alpha)  # (in,)
        gamma, folded = fold_smoothing(norm.weight.data, [lin.weight.data for lin in linears], s)
        norm.weight.data[:] = gamma
        for lin, w_folded in zip(linears, folded, strict=True):
            lin.weight.data[:] = w_folded
