"""Exercise 8: fake quantization with the straight-through estimator, then QAT of an MLP."""

import numpy as np
import pytest

import minquant as mq
from minquant import fake_quant, nn, qat, quant
from minquant.data import load_mnist
from minquant.train import evaluate

pytestmark = pytest.mark.ex8


def test_fake_quantize_worked_example(ex):
    # x / s = [-1, 0.5, 1.5, 9] -> q = rint = [-1, 0, 2, 9] (ties to even); 9 > qmax = 3
    x_hat, mask = ex.fake_quantize(np.array([-1.0, 0.5, 1.5, 9.0]), 1.0, 0, -4, 3)
    assert x_hat.dtype == np.float32 and mask.dtype == np.bool_
    assert x_hat.tolist() == [-1.0, 0.0, 2.0, 3.0]
    assert mask.tolist() == [True, True, True, False]
    # zero point 1 is added after rounding: 0.5 -> 1 + rint(0.5) = 1, so x_hat = 0
    x_hat, mask = ex.fake_quantize(np.array([0.5, -2.6]), 1.0, 1, 0, 255)
    assert x_hat.tolist() == [0.0, -1.0]  # -2.6 -> q = 1 - 3 = -2 < 0: clipped to 0, masked
    assert mask.tolist() == [True, False]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("num_bits", "signed"), [(8, False), (8, True), (4, True), (2, False)])
def test_fake_quantize_matches_minquant_bit_for_bit(ex, seed, num_bits, signed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((50, 40)) * rng.uniform(0.1, 10) + rng.normal()).astype(np.float32)
    qmin, qmax = mq.qrange(num_bits, signed=signed)
    # a range narrower than the data, so that some values are clipped and masked
    scale, zero_point = mq.calc_qparams(x.min() / 2, x.max() / 2, qmin, qmax)
    x_hat, mask = ex.fake_quantize(x, float(scale[0]), int(zero_point[0]), qmin, qmax)
    ref_hat, ref_mask = fake_quant.fake_quantize_with_mask(x, scale, zero_point, qmin, qmax)
    np.testing.assert_array_equal(x_hat, ref_hat)
    np.testing.assert_array_equal(mask, ref_mask)
    assert 0 < mask.sum() < mask.size


def test_qat_linear_worked_example(ex):
    layer = ex.QATLinear(3, 1, num_bits=2, rng=np.random.default_rng(0))
    assert isinstance(layer, nn.Linear)
    layer.weight.data[:] = [[1.0, -0.5, 0.2]]
    layer.bias.data[:] = [0.25]
    # s = 1 / 1.5; W / s = [1.5, -0.75, 0.3] -> q = [2, -1, 0]; 2 > qmax = 1 is clipped to 1
    s = np.float32(1.0) / np.float32(1.5)
    x = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    y = layer(x)
    np.testing.assert_allclose(y, [[s * 1 - s * 2 + 0 + 0.25]], rtol=1e-6)
    dx = layer.backward(np.array([[2.0]], dtype=np.float32))
    np.testing.assert_allclose(dx, [[2 * s, -2 * s, 0.0]], rtol=1e-6)
    # dL/dW = g^T x = [2, 4, 6], masked where q was clipped: the first weight gets nothing
    np.testing.assert_allclose(layer.weight.grad, [[0.0, 4.0, 6.0]])
    np.testing.assert_allclose(layer.bias.grad, [2.0])


@pytest.mark.parametrize("num_bits", [8, 4, 3])
def test_qat_linear_matches_minquant(ex, num_bits):
    rng = np.random.default_rng(num_bits)
    layer = ex.QATLinear(20, 7, num_bits=num_bits, rng=rng)
    W, b = layer.weight.data.copy(), layer.bias.data.copy()
    x = rng.normal(size=(5, 20)).astype(np.float32)
    g = rng.normal(size=(5, 7)).astype(np.float32)
    qmin, qmax = mq.qrange(num_bits, signed=True)
    scale, zero_point = mq.calc_qparams(W.min(), W.max(), qmin, qmax, symmetric=True)
    w_hat, mask = fake_quant.fake_quantize_with_mask(W, scale, zero_point, qmin, qmax)
    np.testing.assert_allclose(layer(x), x @ w_hat.T + b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.backward(g), g @ w_hat, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.weight.grad, (g.T @ x) * mask, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.bias.grad, g.sum(axis=0), rtol=1e-5, atol=1e-6)
    # gradients accumulate, as in every minquant.nn layer
    layer(x)
    layer.backward(g)
    np.testing.assert_allclose(layer.bias.grad, 2 * g.sum(axis=0), rtol=1e-5, atol=1e-6)


def test_qat_mlp_learns_with_4_bit_weights(ex):
    X, y = load_mnist("train")
    X_test, y_test = load_mnist("test")
    model = ex.train_qat_mlp(X, y, num_bits=4, rng=np.random.default_rng(0))
    assert not model.training
    qat_layers = [m for m in model if isinstance(m, ex.QATLinear)]
    assert len(qat_layers) == 2 and all(m.num_bits == 4 for m in qat_layers)
    accuracy = evaluate(model, X_test, y_test)
    assert accuracy >= 0.85, f"test accuracy {accuracy:.3f} of the 4-bit QAT MLP"
    # the model computes with 4-bit weights: rebuild it with minquant's fake quantization
    reference = []
    for layer in model:
        if isinstance(layer, ex.QATLinear):
            w = layer.weight.data
            scale, zero_point = mq.calc_qparams(w.min(), w.max(), -8, 7, symmetric=True)
            plain = nn.Linear(layer.in_features, layer.out_features)
            plain.weight.data[:] = quant.fake_quantize(w, scale, zero_point, -8, 7)
            plain.bias.data[:] = layer.bias.data
            assert np.unique(plain.weight.data).size <= 16
            layer = plain
        reference.append(layer)
    X_batch = X_test[:100]
    np.testing.assert_allclose(model(X_batch), nn.Sequential(*reference)(X_batch), atol=1e-4)


def test_no_library_shortcut(ex, forbid):
    forbid(quant.fake_quantize, quant.quantize, quant.calc_qparams)
    forbid(fake_quant.fake_quantize_with_mask, qat.prepare_qat, fake_quant.FakeQuantize.forward)
    x_hat, mask = ex.fake_quantize(np.array([-1.0, 0.5, 1.5, 9.0]), 1.0, 0, -4, 3)
    assert x_hat.tolist() == [-1.0, 0.0, 2.0, 3.0]
    assert mask.tolist() == [True, True, True, False]
    layer = ex.QATLinear(3, 1, num_bits=2, rng=np.random.default_rng(0))
    layer.weight.data[:] = [[1.0, -0.5, 0.2]]
    layer(np.ones((1, 3), dtype=np.float32))
    layer.backward(np.ones((1, 1), dtype=np.float32))
    np.testing.assert_allclose(layer.weight.grad, [[0.0, 1.0, 1.0]])
    rng = np.random.default_rng(0)
    X = rng.normal(size=(32, 1, 4, 4)).astype(np.float32)
    model = ex.train_qat_mlp(X, rng.integers(0, 10, 32), hidden=8, epochs=1, rng=rng)
    assert model(X).shape == (32, 10)
