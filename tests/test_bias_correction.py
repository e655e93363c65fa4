"""minquant.ptq.bias_correction: empirical and analytic removal of the mean output shift."""

import numpy as np
import pytest

from minquant import nn
from minquant.data import load_mnist
from minquant.models import load_pretrained
from minquant.ptq.bias_correction import (
    analytic_bias_correction,
    clipped_normal_mean,
    empirical_bias_correction,
    expected_inputs,
    output_shift,
)
from minquant.ptq.equalize import equalize, fold_batchnorm
from minquant.ptq.weight_quant import fake_quantize_weights


@pytest.mark.parametrize(
    ("mean", "std", "high"),
    [(0.0, 1.0, np.inf), (1.5, 2.0, np.inf), (-2.0, 0.5, np.inf), (3.0, 2.0, 6.0), (7.0, 1.0, 6.0)],
)
def test_clipped_normal_mean_matches_numerical_integration(mean, std, high):
    x = np.linspace(mean - 12 * std, mean + 12 * std, 400_001)  # the oracle: a dense grid
    density = np.exp(-0.5 * ((x - mean) / std) ** 2) / (std * np.sqrt(2 * np.pi))
    expected = np.trapezoid(np.clip(x, 0.0, high) * density, x)
    got = clipped_normal_mean(np.array([mean]), np.array([std]), 0.0, high)
    np.testing.assert_allclose(got, [expected], rtol=1e-7, atol=1e-9)


def _gaussian_model(rng: np.random.Generator) -> nn.Sequential:
    """An identity 1x1 conv + BatchNorm: for X ~ N(0, 1) its output is exactly N(beta, gamma^2)."""
    model = nn.Sequential(
        nn.Conv2d(4, 4, 1, bias=False, rng=rng),
        nn.BatchNorm2d(4),
        nn.ReLU6(),
        nn.Conv2d(4, 6, 1, rng=rng),
    )
    model[0].weight.data = np.eye(4, dtype=np.float32).reshape(4, 4, 1, 1)
    model[1].weight.data = np.array([1.0, 2.0, 0.5, 3.0], dtype=np.float32)  # gamma
    model[1].bias.data = np.array([0.5, 3.0, -0.2, 5.0], dtype=np.float32)  # beta
    return model.eval()


def test_analytic_correction_removes_the_shift_when_the_gaussian_model_holds():
    rng = np.random.default_rng(0)
    folded = fold_batchnorm(_gaussian_model(rng))
    assert list(expected_inputs(folded)) == [2]
    quantized = fake_quantize_weights(folded, 3, skip=(0,))
    X = rng.normal(size=(4000, 4, 4, 4)).astype(np.float32)
    corrected, report = analytic_bias_correction(folded, quantized, X_eval=X)
    last = report[-1]
    assert last.index == 2 and last.before > 0.02
    assert last.after < 0.05 * last.before  # what is left is sampling noise of 64k pixels
    # the first layer (input from the image, no statistics) is not touched
    np.testing.assert_array_equal(corrected[0].weight.data, quantized[0].weight.data)


def test_empirical_correction_zeroes_the_shift_on_its_calibration_data():
    rng = np.random.default_rng(1)
    model = fold_batchnorm(_gaussian_model(rng))
    quantized = fake_quantize_weights(model, 3)
    X = rng.normal(size=(256, 4, 5, 5)).astype(np.float32)
    corrected, report = empirical_bias_correction(model, quantized, X)
    assert [r.index for r in report] == [0, 2]
    for r in report:
        assert r.after <= 1e-5 * max(r.before, 1.0)
    shifts = output_shift(model, corrected, X)
    assert all(np.abs(s).max() < 1e-5 for s in shifts.values())


def test_mobile_cnn_per_tensor_w4_shift_shrinks_on_held_out_data():
    X_train, _ = load_mnist("train")
    X_test, _ = load_mnist("test")
    X_calib = X_train[np.random.default_rng(0).permutation(len(X_train))[:256]]
    model = equalize(load_pretrained("mobile_cnn"))
    quantized = fake_quantize_weights(model, 4)
    _, report = empirical_bias_correction(model, quantized, X_calib, X_eval=X_test[:300])
    assert len(report) == 8
    for r in report:
        assert r.after < r.before


def test_models_must_have_the_same_layers():
    a = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    b = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="must have the same layers"):
        empirical_bias_correction(a, b, np.zeros((1, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="X is empty"):
        empirical_bias_correction(a, a, np.zeros((0, 2), dtype=np.float32))
