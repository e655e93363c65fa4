"""Exercise 7: folding BatchNorm into the preceding convolution."""

import numpy as np
import pytest

from minquant import models, nn, ptq

pytestmark = pytest.mark.ex7


def random_bn(bn: nn.BatchNorm2d, rng: np.random.Generator) -> None:
    """Give a BatchNorm trained-looking statistics and affine parameters."""
    c = bn.num_features
    bn.weight.data[:] = rng.uniform(0.5, 2.0, c)  # gamma
    bn.bias.data[:] = rng.normal(0.0, 0.5, c)  # beta
    bn.running_mean[:] = rng.normal(0.0, 1.0, c)
    bn.running_var[:] = rng.uniform(0.01, 4.0, c)


def test_bn_affine_worked_example(ex):
    eps = 1e-5
    # a = gamma / sqrt(var + eps) = 2 / sqrt(4) = 1, d = beta - mean * a = 1 - 3 = -2
    a, d = ex.bn_affine(np.array([2.0]), np.array([1.0]), np.array([3.0]), np.array([4 - eps]))
    np.testing.assert_allclose(a, [1.0], rtol=1e-12)
    np.testing.assert_allclose(d, [-2.0], rtol=1e-12)
    assert a.dtype == np.float64 and d.dtype == np.float64


def test_bn_affine_reproduces_batchnorm_eval(ex):
    rng = np.random.default_rng(0)
    bn = nn.BatchNorm2d(6, eps=1e-3)
    random_bn(bn, rng)
    x = rng.normal(size=(4, 6, 5, 5)).astype(np.float32)
    a, d = ex.bn_affine(bn.weight.data, bn.bias.data, bn.running_mean, bn.running_var, bn.eps)
    expected = bn.eval()(x)
    np.testing.assert_allclose(a[:, None, None] * x + d[:, None, None], expected, atol=1e-5)


def test_fold_batchnorm_worked_example(ex):
    eps = 1e-5
    bn = (np.array([2.0]), np.array([1.0]), np.array([3.0]), np.array([4 - eps]))
    w = np.array([[[[1.0, -2.0]]]])
    # a = 1, d = -2 (the bn_affine example): w' = w, b' = 0.5 * 1 - 2 = -1.5
    w_folded, b_folded = ex.fold_batchnorm(w, np.array([0.5]), *bn, eps)
    assert w_folded.dtype == np.float32 and b_folded.dtype == np.float32
    np.testing.assert_allclose(w_folded, w, rtol=1e-6)
    np.testing.assert_allclose(b_folded, [-1.5], rtol=1e-6)
    # no conv bias: b = 0, so b' = d = -2
    np.testing.assert_allclose(ex.fold_batchnorm(w, None, *bn, eps)[1], [-2.0], rtol=1e-6)


@pytest.mark.parametrize("bias", [True, False])
def test_fold_batchnorm_matches_minquant(ex, bias):
    rng = np.random.default_rng(1)
    conv, bn = nn.Conv2d(3, 8, 3, padding=1, bias=bias, rng=rng), nn.BatchNorm2d(8)
    random_bn(bn, rng)
    folded_conv = ptq.fold_batchnorm(nn.Sequential(conv, bn))[0]
    w_folded, b_folded = ex.fold_batchnorm(
        conv.weight.data,
        conv.bias.data if bias else None,
        bn.weight.data,
        bn.bias.data,
        bn.running_mean,
        bn.running_var,
        bn.eps,
    )
    assert w_folded.shape == (8, 3, 3, 3) and b_folded.shape == (8,)
    np.testing.assert_allclose(w_folded, folded_conv.weight.data, rtol=1e-6)
    np.testing.assert_allclose(b_folded, folded_conv.bias.data, rtol=1e-6, atol=1e-7)


def test_fold_model_small_cnn(ex):
    rng = np.random.default_rng(2)
    model = models.small_cnn(rng=rng, c1=4, c2=8)
    for layer in model:
        if isinstance(layer, nn.BatchNorm2d):
            random_bn(layer, rng)
    model.eval()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    folded = ex.fold_model(model)
    kinds = [type(m).__name__ for m in folded]
    assert kinds == [type(m).__name__ for m in ptq.fold_batchnorm(model)]
    assert "BatchNorm2d" not in kinds and kinds.count("Conv2d") == 2
    X = rng.normal(size=(8, 1, 28, 28)).astype(np.float32)
    expected = model(X)
    np.testing.assert_allclose(folded(X), expected, rtol=1e-4, atol=1e-4)
    assert not folded.training
    # the input model is left unchanged
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_fold_model_rejects_a_lone_batchnorm(ex):
    model = nn.Sequential(nn.Flatten(), nn.BatchNorm2d(3))
    with pytest.raises(ValueError):
        ex.fold_model(model)


def test_no_library_shortcut(ex, forbid):
    forbid(ptq.fold_batchnorm)
    rng = np.random.default_rng(3)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, rng=rng), nn.BatchNorm2d(2), nn.ReLU())
    random_bn(model[1], rng)
    X = rng.normal(size=(2, 1, 6, 6)).astype(np.float32)
    expected = model.eval()(X)
    folded = ex.fold_model(model)
    assert [type(m).__name__ for m in folded] == ["Conv2d", "ReLU"]
    np.testing.assert_allclose(folded(X), expected, rtol=1e-5, atol=1e-5)
