"""minquant.ptq.adaround: soft rounding, its gradient, and reconstruction no worse than nearest."""

import itertools

import numpy as np
import pytest

from minquant import nn
from minquant.data import load_mnist
from minquant.models import load_pretrained
from minquant.ptq.adaround import (
    AdaRoundConfig,
    adaround,
    adaround_layer,
    adaround_loss,
    beta_schedule,
    rectified_sigmoid,
    rounding_regularizer,
)
from minquant.ptq.equalize import fold_batchnorm
from minquant.ptq.weight_quant import weight_scale

FAST = AdaRoundConfig(iterations=500)  # random layers: small, so more steps are cheap
QUICK = AdaRoundConfig(iterations=200)  # mobile_cnn: eight layers, run twice


def test_rectified_sigmoid_and_regularizer_follow_the_paper():
    V = np.linspace(-6, 6, 101)
    h = rectified_sigmoid(V)
    sigmoid = 1 / (1 + np.exp(-V))
    np.testing.assert_allclose(h, np.clip(sigmoid * 1.2 - 0.1, 0, 1), rtol=1e-12, atol=1e-15)
    assert h.min() == 0.0 and h.max() == 1.0  # reaches both ends, unlike the sigmoid
    h = np.array([0.0, 0.25, 0.5, 1.0])
    assert rounding_regularizer(h, beta=2.0) == pytest.approx(0 + 0.75 + 1 + 0)
    assert rounding_regularizer(h, beta=20.0) == pytest.approx(0 + (1 - 0.5**20) + 1 + 0)


def test_beta_is_annealed_after_the_warm_up():
    config = AdaRoundConfig(iterations=100, warmup=0.2, beta_start=20.0, beta_end=2.0)
    betas = [beta_schedule(t, config) for t in range(100)]
    assert betas[:20] == [None] * 20
    assert betas[20] == 20.0 and betas[-1] == pytest.approx(2.0 + 18.0 / 80)
    assert all(a > b for a, b in itertools.pairwise(betas[20:]))


@pytest.mark.parametrize("kind", ["linear", "conv", "depthwise"])
def test_loss_gradient_matches_finite_differences(kind):
    rng = np.random.default_rng(0)
    if kind == "linear":
        layer, X = nn.Linear(5, 3, rng=rng), rng.normal(size=(6, 5))
    elif kind == "conv":
        layer, X = nn.Conv2d(2, 3, 3, padding=1, rng=rng), rng.normal(size=(2, 2, 4, 4))
    else:
        layer = nn.Conv2d(3, 3, 3, padding=1, groups=3, rng=rng)
        X = rng.normal(size=(2, 3, 4, 4))
    layer.to(np.float64)
    target = layer(X) + rng.normal(0, 0.1, size=layer(X).shape)
    s = np.array([np.abs(layer.weight.data).max() / 3]).reshape((1,) * layer.weight.data.ndim)
    w_floor = np.floor(layer.weight.data / s)
    V = rng.normal(0, 0.8, size=w_floor.shape)  # keeps h away from the clip at 0 and 1
    args = (w_floor, s, X, target, 0.05, 4.0, -3, 3)
    _, grad = adaround_loss(layer, V, *args)
    numeric = np.zeros_like(V)
    for index in np.ndindex(V.shape):
        up, down = V.copy(), V.copy()
        up[index] += 1e-6
        down[index] -= 1e-6
        numeric[index] = adaround_loss(layer, up, *args)[0] - adaround_loss(layer, down, *args)[0]
        numeric[index] /= 2e-6
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


def _correlated(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Inputs whose features are correlated (mixed channels, smooth images), as real ones are.

    # NOTE: with independent unit-variance inputs, E||dW x||^2 = ||dW||^2 and rounding to
    # nearest is already optimal: AdaRound wins through the correlations (the off-diagonal
    # of the Hessian E[x x^T], Nagel et al. 2020, section 3).
    """
    x = rng.normal(size=shape)
    mixing = rng.normal(size=(shape[1], shape[1]))  # (C, C)
    x = np.einsum("dc,nc...->nd...", mixing, x)  # (N, C, ...), channels mixed
    if x.ndim == 4:
        x = np.cumsum(np.cumsum(x, axis=2), axis=3) / shape[2]  # (N, C, H, W), smooth
    return x.astype(np.float32)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("per_channel", [False, True])
def test_random_layers_reconstruct_no_worse_than_nearest(seed, per_channel):
    rng = np.random.default_rng(seed)
    layers = [
        (nn.Linear(24, 12, rng=rng), _correlated(rng, (256, 24))),
        (nn.Conv2d(4, 8, 3, padding=1, rng=rng), _correlated(rng, (64, 4, 6, 6))),
        (nn.Conv2d(8, 8, 3, padding=1, groups=8, rng=rng), _correlated(rng, (64, 8, 6, 6))),
    ]
    for layer, X in layers:
        scale = weight_scale(layer.weight.data, 3, per_channel)
        result = adaround_layer(layer, X, scale, 3, FAST, np.random.default_rng(seed))
        assert result.mse_adaround <= result.mse_nearest
        # only floor or ceil of w / s, inside the narrow 3-bit range
        w_s = layer.weight.data / scale.reshape((-1,) + (1,) * (layer.weight.data.ndim - 1))
        floor = np.floor(w_s)
        assert np.all((result.w_q == floor) | (result.w_q == floor + 1) | (np.abs(w_s) >= 3))
        assert result.w_q.min() >= -3 and result.w_q.max() <= 3


def test_every_mobile_cnn_layer_reconstructs_no_worse_than_nearest_and_is_deterministic():
    model = fold_batchnorm(load_pretrained("mobile_cnn"))
    X_train, _ = load_mnist("train")
    X_calib = X_train[np.random.default_rng(0).permutation(len(X_train))[:128]]
    results = adaround(model, X_calib, num_bits=4, per_channel=True, config=QUICK)
    assert len(results) == 8
    for result in results.values():
        assert result.mse_adaround <= result.mse_nearest
    again = adaround(model, X_calib, num_bits=4, per_channel=True, config=QUICK)
    for i, result in results.items():
        np.testing.assert_array_equal(result.w_q, again[i].w_q)


def test_bad_arguments():
    layer = nn.Linear(3, 2)
    X = np.zeros((4, 3), dtype=np.float32)
    with pytest.raises(TypeError, match=r"layer must be an nn\.Conv2d or nn\.Linear, got ReLU"):
        adaround_layer(nn.ReLU(), X, np.array([0.1]), 4)
    with pytest.raises(ValueError, match=r"scale must be positive with shape \(1,\) or \(2,\)"):
        adaround_layer(layer, X, np.array([0.1, 0.1, 0.1]), 4)
    with pytest.raises(ValueError, match="X is empty"):
        adaround_layer(layer, X[:0], np.array([0.1]), 4)
