r"""SmoothQuant: move the difficulty of quantizing activations into the weights.

A Linear computes $Y = X W^\top$. For any positive $s$ (in,),
$Y = (X\,\mathrm{diag}(s)^{-1})\,(W \mathrm{diag}(s))^\top$: dividing input channel $j$ by
$s_j$ and multiplying weight column $j$ by $s_j$ changes nothing in exact arithmetic. With

$$s_j = \frac{\max_t |X_{tj}|^{\alpha}}{\max_i |W_{ij}|^{1-\alpha}}$$

an outlier channel is divided down and its (small) weight column scaled up: $\alpha = 1$
gives every activation channel the same maximum (all the difficulty in the weights),
$\alpha = 0$ every weight column (all of it in the activations), $\alpha = 0.5$ splits it.
Then *both* quantize well per tensor. The division costs nothing at inference: it is folded
into the weight of the RMSNorm that produces $X$ ($\gamma_j / s_j$), and the Linears that
read that norm (``wq, wk, wv``; ``w1, w3``; ``output``) share one $s$, computed from the
largest magnitude of their concatenated weights.

Reference: G. Xiao, J. Lin, M. Seznec, H. Wu, J. Demouth, S. Han, "SmoothQuant: Accurate and
Efficient Post-Training Quantization for Large Language Models", ICML 2023
(arXiv:2211.10438); the clamps (1e-5) follow the authors' ``smooth.py``.
"""

from __future__ import annotations

import copy

import numpy as np

from minquant.llm.activations import NORM_CONSUMERS, _get, capture_linear_inputs
from minquant.nn import Module

#: Magnitudes and scales are clamped from below by this, as in the reference code.
CLAMP = 1e-5


def smoothquant_scales(X: np.ndarray, w: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    r"""$s_j = \max_t|X_{tj}|^\alpha / \max_i|W_{ij}|^{1-\alpha}$, float32 (in,).

    ``X`` (tokens, in) are calibration inputs, ``w`` (out, in) the weight (several Linears
    reading the same input: their weights stacked along ``out``). Both maxima and ``s`` are
    clamped from below by 1e-5.

    >>> X = np.array([[1.0, 16.0], [-2.0, 4.0]], np.float32)  # (tokens, in): channel 1 is large
    >>> w = np.array([[1.0, 0.25], [0.5, -1.0]], np.float32)  # (out, in)
    >>> smoothquant_scales(X, w, alpha=0.5).tolist()  # sqrt(2 / 1), sqrt(16 / 1)
    [1.4142135381698608, 4.0]
    """
    X, w = np.asarray(X), np.asarray(w)
    if X.ndim != 2 or w.ndim != 2 or X.shape[1] != w.shape[1] or X.shape[0] == 0:
        raise ValueError(
            f"smoothquant_scales: X must be (tokens, in) and w (out, in) with the same in, "
            f"got X {X.shape} and w {w.shape}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothquant_scales: alpha must be in [0, 1], got {alpha}")
    if not (np.isfinite(X).all() and np.isfinite(w).all()):
        raise ValueError("smoothquant_scales: X and w must be finite (NaN or Inf found)")
    x_max = np.maximum(np.abs(X).max(axis=0), CLAMP).astype(np.float64)  # (in,)
    w_max = np.maximum(np.abs(w).max(axis=0), CLAMP).astype(np.float64)  # (in,)
    # NOTE: computed in float64 and rounded once to float32, so the result does not depend on
    # how a platform's float32 pow rounds.
    s = x_max**alpha / w_max ** (1.0 - alpha)  # (in,)
    return np.maximum(s, CLAMP).astype(np.float32)


def fold_smoothing(norm: Module, linears: list[Module], s: np.ndarray) -> None:
    r"""In place: $\gamma \leftarrow \gamma / s$, $W \leftarrow W\,\mathrm{diag}(s)$ per Linear.

    >>> from minquant import nn
    >>> norm, lin = nn.RMSNorm(2), nn.Linear(2, 1, bias=False)
    >>> lin.weight.data[:] = [[1.0, 1.0]]
    >>> fold_smoothing(norm, [lin], np.array([2.0, 0.5], np.float32))
    >>> norm.weight.data.tolist(), lin.weight.data.tolist()
    ([0.5, 2.0], [[2.0, 0.5]])
    """
    s = np.asarray(s, np.float32)  # (in,)
    if s.shape != norm.weight.data.shape or not (s > 0).all():
        raise ValueError(
            f"fold_smoothing: s must be positive with shape {norm.weight.data.shape}, "
            f"got shape {s.shape}"
        )
    norm.weight.data /= s  # (in,)
    for linear in linears:
        linear.weight.data *= s[None, :]  # (out, in)


def smooth_model(model: Module, X_calib: np.ndarray, alpha: float = 0.5) -> Module:
    """A copy of a Llama-style model with SmoothQuant scales folded in (same float function).

    ``X_calib`` (B, T) calibration tokens give each norm's output; every block's
    ``attn_norm`` (-> ``wq, wk, wv``) and ``ffn_norm`` (-> ``w1, w3``), and the final
    ``norm`` (-> ``output``), are smoothed. ``wo`` and ``w2`` have no norm before them and
    are left as they are.

    >>> import minquant as mq
    >>> lm = mq.models.load_pretrained("tiny_lm")
    >>> tokens = mq.data.encode(mq.data.load_text("train")[:256]).reshape(2, 128)
    >>> smooth = smooth_model(lm, tokens, alpha=0.5)
    >>> bool(np.allclose(smooth(tokens), lm(tokens), rtol=1e-4, atol=1e-4))
    True
    """
    out = copy.deepcopy(model).eval()
    inputs = capture_linear_inputs(out, X_calib)
    groups = []
    for i, block in enumerate(out.layers):
        for norm_name, consumers in NORM_CONSUMERS:
            linears = [_get(block, path) for path in consumers]
            groups.append((_get(block, norm_name), linears, f"layers.{i}.{consumers[0]}"))
    groups.append((out.norm, [out.output], "output"))
    for norm, linears, first in groups:
        w = np.concatenate([lin.weight.data for lin in linears], axis=0)  # (sum out, in)
        fold_smoothing(norm, linears, smoothquant_scales(inputs[first], w, alpha))
    return out
