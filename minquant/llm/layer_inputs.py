"""Calibration inputs of linear layers: validation and stage-by-stage capture.

GPTQ quantizes a model sequentially (each layer calibrated on the activations of the model
whose earlier layers are already quantized); :func:`next_stage` records the inputs of the
next layers to quantize without running the rest of the model.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from minquant.nn import Linear, Module
from minquant.quant import check_finite


def check_layer(w: np.ndarray, X: np.ndarray, group_size: int | None) -> int:
    """Validate a weight (out, in) and its inputs (tokens, in); return the group size."""
    w, X = np.asarray(w), np.asarray(X)
    if w.ndim != 2 or w.size == 0:
        raise ValueError(f"w must be a non-empty (out, in) matrix, got shape {w.shape}")
    if X.ndim != 2 or X.shape[1] != w.shape[1] or X.shape[0] == 0:
        raise ValueError(
            f"X must be (tokens, in={w.shape[1]}) with tokens >= 1, got shape {X.shape}"
        )
    check_finite("w", w)
    check_finite("X", X)
    group = w.shape[1] if group_size is None else int(group_size)
    if group < 1 or w.shape[1] % group:
        raise ValueError(
            f"group_size must divide in_features={w.shape[1]}, got group_size={group_size}"
        )
    return group


class _StopForwardError(Exception):
    """Raised inside a forward pass once the inputs of the next stage are recorded."""


def next_stage(model: Module, X_calib: np.ndarray) -> list[tuple[Linear, np.ndarray]]:
    """The next float ``Linear`` layers to quantize, with their inputs (tokens, in).

    Runs ``model`` on ``X_calib`` up to the first float ``Linear`` (every earlier one is
    already quantized, so it sees the quantized model's activations); every later float
    ``Linear`` fed the same input joins the stage (q, k, v; gate and up), and the pass
    stops at the first one fed anything else. Empty when no float ``Linear`` is left.
    """
    stage: list[tuple[Linear, np.ndarray]] = []
    linears = [m for m in model.modules() if type(m) is Linear]

    def recorder(layer: Linear) -> Callable[[np.ndarray], np.ndarray]:
        def forward(x: np.ndarray) -> np.ndarray:
            x2 = np.asarray(x, np.float32).reshape(-1, layer.in_features)  # (tokens, in)
            if stage and not (x2.shape == stage[0][1].shape and np.array_equal(x2, stage[0][1])):
                raise _StopForwardError
            stage.append((layer, x2))
            return Linear.forward(layer, x)

        return forward

    for layer in linears:
        layer.forward = recorder(layer)  # an instance attribute shadows the method
    try:
        model.eval()(X_calib)
    except _StopForwardError:
        pass
    finally:
        for layer in linears:
            del layer.forward
    return stage


def calibration_batch(
    tokens: np.ndarray, num_sequences: int, seq_len: int, rng: np.random.Generator
) -> np.ndarray:
    """``num_sequences`` windows of ``seq_len`` tokens at random offsets, (n, seq_len) int64.

    >>> batch = calibration_batch(np.arange(1000), 4, 8, np.random.default_rng(0))
    >>> batch.shape, bool(np.all(np.diff(batch, axis=1) == 1))
    ((4, 8), True)
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    if len(tokens) < seq_len:
        raise ValueError(f"need at least seq_len={seq_len} tokens, got {len(tokens)}")
    starts = rng.integers(0, len(tokens) - seq_len + 1, size=num_sequences)  # (n,)
    return tokens[starts[:, None] + np.arange(seq_len)]  # (n, seq_len)
