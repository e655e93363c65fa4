r"""GPTQ: round the columns of a weight one at a time and let the later columns absorb the error.

Round to nearest (RTN) rounds every weight independently. GPTQ minimises the layer's output
error on calibration inputs $X$ (tokens, in) instead,

$$\min_{\hat W}\ \lVert W X^\top - \hat W X^\top \rVert_F^2
= \sum_o (w_o - \hat w_o)\, H\, (w_o - \hat w_o)^\top, \qquad H = \tfrac{2}{N} X^\top X,$$

by quantizing input column $q$ and spreading its rounding error over the columns not yet
quantized (the optimal brain surgeon update with the inverse Hessian):

$$\delta = -\frac{w_q - \mathrm{quant}(w_q)}{[H^{-1}]_{qq}}\, (H^{-1})_{q,:}.$$

After column $q$ is gone, the inverse Hessian of the remaining columns is one step of
Gaussian elimination; GPTQ gets all these steps at once as the rows of the **upper Cholesky
factor** $U$ of $H^{-1}$ ($H^{-1} = U^\top U$), so column $q$ uses row $U_{q,q:}$ with
$[H^{-1}]_{qq} \to U_{qq}^2$. Two more ideas make it fast and stable: **lazy batch updates**
(the error of a block of 128 columns is applied to the columns after the block in one matrix
product) and **dampening** ($\lambda = 1\%$ of the mean diagonal added to $H$). **Act-order**
quantizes the columns by decreasing $H_{qq}$ (the most active inputs first, while many
columns are left to absorb their error).

Groups follow the reference implementations: without act-order a group's scale and zero
point are computed from the (already updated) weights when its first column is reached
(IST-DASLab ``gptq.py``); with act-order they are computed once from the original weights
before any update (AutoGPTQ ``static_groups=True``), so each group still covers contiguous
input columns and the layer packs exactly as RTN does (same kernel, same bytes).

References:

* E. Frantar, S. Ashkboos, T. Hoefler, D. Alistarh, "GPTQ: Accurate Post-Training
  Quantization for Generative Pre-trained Transformers", ICLR 2023 (arXiv:2210.17323);
  code: github.com/IST-DASLab/gptq (``gptq.py``, ``fasterquant``).
* E. Frantar, D. Alistarh, "Optimal Brain Compression", NeurIPS 2022 (arXiv:2208.11580).
* AutoGPTQ, ``auto_gptq/quantization/gptq.py`` (``static_groups``).
"""

from __future__ import annotations

import copy

import numpy as np

from minquant.llm.layer_inputs import check_layer, next_stage
from minquant.llm.weight_only import (
    MODEL_QUANTIZERS,
    WEIGHT_QUANTIZERS,
    WeightOnlyLinear,
    scale_to_float16,
    weight_qrange,
)
from minquant.nn import Module
from minquant.quant import calc_group_qparams


def hessian(X: np.ndarray) -> np.ndarray:
    r"""$H = \frac{2}{N} X^\top X$ (in, in) in float64, from inputs ``X`` (N, in).

    >>> hessian(np.array([[1.0, 2.0], [3.0, 0.0]])).tolist()
    [[10.0, 2.0], [2.0, 4.0]]
    """
    X = np.asarray(X, dtype=np.float64)  # (N, in)
    return 2.0 * (X.T @ X) / X.shape[0]  # (in, in)


def damped_hessian(X: np.ndarray, w: np.ndarray, damp: float) -> tuple[np.ndarray, np.ndarray]:
    """``(H + damp * mean(diag H) * I, dead)``; dead inputs (never active) get ``H_qq = 1``.

    ``w`` is zeroed in place on dead columns (their weight never reaches the output), as
    the reference does.
    """
    if not 0 <= damp < 1:
        raise ValueError(f"damp must be in [0, 1), got {damp}")
    H = hessian(X)  # (in, in)
    dead = np.diag(H) == 0  # (in,)
    H[dead, dead] = 1.0
    w[:, dead] = 0.0
    H[np.diag_indices_from(H)] += damp * np.mean(np.diag(H))
    return H, dead


def inverse_cholesky_upper(H: np.ndarray) -> np.ndarray:
    r"""The upper triangular $U$ with $H^{-1} = U^\top U$ (float64).

    >>> U = inverse_cholesky_upper(np.array([[4.0, 2.0], [2.0, 3.0]]))
    >>> bool(np.allclose(U.T @ U, np.linalg.inv([[4.0, 2.0], [2.0, 3.0]])))
    True
    """
    try:
        L = np.linalg.cholesky(H)  # (in, in) lower, H = L L^T
        eye = np.eye(len(H))
        # NOTE: H^-1 from the triangular factor (as torch.cholesky_inverse), symmetrised.
        L_inv = np.linalg.solve(L, eye)  # (in, in)
        H_inv = L_inv.T @ L_inv
        return np.linalg.cholesky((H_inv + H_inv.T) / 2).T  # (in, in) upper
    except np.linalg.LinAlgError as error:
        raise ValueError(
            "the Hessian X^T X is not positive definite even after dampening: raise damp "
            "or use more calibration tokens"
        ) from error


def group_qparams(
    cols: np.ndarray, qmin: int, qmax: int, symmetric: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row scale (float16-representable float32) and zero point of columns (out, k)."""
    scale, zero_point = calc_group_qparams(cols, qmin, qmax, 0, None, symmetric)  # (out,)
    return scale_to_float16(scale).astype(np.float32), zero_point


def gptq_quantize(
    w: np.ndarray,
    X: np.ndarray,
    bits: int,
    group_size: int | None = None,
    symmetric: bool = False,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """GPTQ codes (out, in), scales (out, in / g) and zero points (``None`` if symmetric).

    The contract of :data:`~minquant.llm.weight_only.WEIGHT_QUANTIZERS` (codes in
    :func:`~minquant.llm.weight_only.weight_qrange`, scales exact in float16); see
    :func:`gptq` for the arguments.
    """
    group = check_layer(w, X, group_size)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    qmin, qmax = weight_qrange(bits, symmetric)
    W = np.array(w, dtype=np.float64)  # (out, in) working copy, updated in place
    H, _ = damped_hessian(X, W, damp)
    out_features, in_features = W.shape
    scale = np.zeros((out_features, in_features // group), np.float32)  # (out, G)
    zero_point = np.zeros((out_features, in_features // group), np.int64)  # (out, G)
    perm = np.arange(in_features)  # (in,) column order
    if act_order:
        perm = np.argsort(-np.diag(H), kind="stable")
        for g in range(in_features // group):  # static groups, from the original weights
            cols = W[:, g * group : (g + 1) * group]
            scale[:, g], zero_point[:, g] = group_qparams(cols, qmin, qmax, symmetric)
    W, H = W[:, perm], H[np.ix_(perm, perm)]  # (out, in), (in, in) in quantization order
    U = inverse_cholesky_upper(H)  # (in, in)
    codes = np.zeros(W.shape, np.int64)  # (out, in), original column order
    for i1 in range(0, in_features, block_size):
        i2 = min(i1 + block_size, in_features)
        W1 = W[:, i1:i2].copy()  # (out, b) the block, updated column by column
        err = np.zeros_like(W1)  # (out, b) scaled errors of the block's columns
        for i in range(i2 - i1):
            col = i1 + i  # position in quantization order
            j = perm[col]  # the column of w being quantized
            g = j // group
            if not act_order and j % group == 0:
                # NOTE: the group's columns past this block have not received the lazy
                # update of the block's earlier columns yet: apply it before taking
                # min/max, so that the groups do not depend on block_size.
                later = W[:, i2 : col + group] - err[:, :i] @ U[i1:col, i2 : col + group]
                cols = np.concatenate([W1[:, i : i + group], later], axis=1)
                scale[:, g], zero_point[:, g] = group_qparams(cols, qmin, qmax, symmetric)
            # NOTE: w / scale in float64, rounded half to even (RTN multiplies by the
            # float32 reciprocal: the two can differ on an exact tie only).
            q = np.clip(np.rint(W1[:, i] / scale[:, g]) + zero_point[:, g], qmin, qmax)  # (out,)
            w_hat = (q - zero_point[:, g]) * scale[:, g].astype(np.float64)  # (out,)
            err[:, i] = (W1[:, i] - w_hat) / U[col, col]
            W1[:, i:] -= np.outer(err[:, i], U[col, col:i2])  # (out, b - i)
            codes[:, j] = q
        W[:, i2:] -= err @ U[i1:i2, i2:]  # the lazy batch update, (out, in - i2)
    return codes, scale, None if symmetric else zero_point


def gptq(
    w: np.ndarray,
    X: np.ndarray,
    bits: int,
    group_size: int | None = None,
    symmetric: bool = False,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
) -> np.ndarray:
    r"""The GPTQ-quantized weight $\hat W$ (out, in) float32 of ``w`` for inputs ``X``.

    ``bits`` in [2, 8]; ``group_size`` input columns share a scale (``None``: one per row);
    ``damp`` is the dampening as a fraction of the mean of $\mathrm{diag}(H)$;
    ``block_size`` columns are updated lazily at once (the result does not depend on it,
    up to float rounding); ``act_order`` quantizes columns by decreasing $H_{qq}$.

    >>> rng = np.random.default_rng(0)
    >>> w = rng.standard_normal((16, 64))
    >>> X = rng.standard_normal((256, 64)) @ rng.standard_normal((64, 64))  # correlated
    >>> w_hat = gptq(w, X, bits=3, group_size=32)
    >>> from minquant.llm.weight_only import quantize_rtn
    >>> from minquant.quant import dequantize
    >>> codes, scale, zero_point = quantize_rtn(w, 3, 32, False)
    >>> w_rtn = dequantize(codes, scale, zero_point, axis=1, group_size=32)
    >>> def error(w_q):
    ...     return np.sum((X @ (w - w_q).T) ** 2)
    >>> bool(error(w_hat) < 0.5 * error(w_rtn))
    True
    """
    group = check_layer(w, X, group_size)
    codes, scale, zero_point = gptq_quantize(
        w, X, bits, group, symmetric, damp, block_size, act_order
    )
    scale = np.repeat(scale, group, axis=1)  # (out, in)
    zero_point = 0 if zero_point is None else np.repeat(zero_point, group, axis=1)
    return ((codes - zero_point) * scale).astype(np.float32)  # (out, in)


QParams = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]


def _gptq_act_order(
    w: np.ndarray, bits: int, group_size: int, symmetric: bool, X: np.ndarray | None
) -> QParams:
    return _gptq(w, bits, group_size, symmetric, X, act_order=True)


def _gptq(
    w: np.ndarray,
    bits: int,
    group_size: int,
    symmetric: bool,
    X: np.ndarray | None,
    act_order: bool = False,
) -> QParams:
    if X is None:
        raise ValueError("method 'gptq' needs calibration inputs: pass X_calib")
    return gptq_quantize(w, X, bits, group_size, symmetric, act_order=act_order)


def quantize_model_gptq(
    model: Module,
    bits: int,
    group_size: int | None,
    symmetric: bool,
    X_calib: np.ndarray | None,
    act_order: bool = False,
) -> Module:
    """A copy of ``model`` quantized by GPTQ layer after layer, in forward order.

    Each stage of layers (see :func:`next_stage`) is calibrated on the activations of the
    model whose earlier layers are already quantized, as in the paper (sequential
    quantization), and is replaced by a :class:`WeightOnlyLinear`.

    ``X_calib`` should hold many tokens of text like the text the model will see: $H$ is
    estimated from them, and GPTQ fits it closely. The paper uses 128 random segments of
    2,048 tokens; for ``tiny_lm``, 128 windows of its 128-token context
    (:func:`~minquant.llm.layer_inputs.calibration_batch`; docs/results.md compares sizes).
    """
    if X_calib is None:
        raise ValueError("method 'gptq' needs calibration inputs: pass X_calib")
    method = "gptq_act_order" if act_order else "gptq"
    qmodel = copy.deepcopy(model)
    while stage := next_stage(qmodel, X_calib):
        for layer, X in stage:
            qlayer = WeightOnlyLinear.from_linear(layer, bits, group_size, symmetric, method, X)
            for module in list(qmodel.modules()):
                for name, child in list(vars(module).items()):
                    if child is layer:
                        setattr(module, name, qlayer)
    return qmodel.eval()


def _quantize_model_gptq_act_order(
    model: Module, bits: int, group_size: int | None, symmetric: bool, X_calib: np.ndarray | None
) -> Module:
    return quantize_model_gptq(model, bits, group_size, symmetric, X_calib, act_order=True)


WEIGHT_QUANTIZERS["gptq"] = _gptq
WEIGHT_QUANTIZERS["gptq_act_order"] = _gptq_act_order
MODEL_QUANTIZERS["gptq"] = quantize_model_gptq
MODEL_QUANTIZERS["gptq_act_order"] = _quantize_model_gptq_act_order
