"""minquant.ptq.equalize: cross-layer equalization and bias absorption keep the float function."""

import numpy as np
import pytest

from minquant import nn
from minquant.data import load_mnist
from minquant.models import MobileCNNConfig, load_pretrained, mobile_cnn
from minquant.ptq.equalize import (
    Pair,
    absorb_bias,
    cle_scales,
    equalize,
    find_pairs,
    fold_batchnorm,
    input_ranges,
    output_ranges,
    weight_times_constant,
)
from minquant.ptq.weight_quant import fake_quantize_weights


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _randomise_batchnorm(model: nn.Sequential, rng: np.random.Generator) -> nn.Sequential:
    """Spread the channel ranges as training does (log-normal gammas), then eval mode."""
    for layer in model:
        if isinstance(layer, nn.BatchNorm2d):
            c = layer.num_features
            layer.weight.data = rng.lognormal(0.0, 1.5, c).astype(np.float32)
            layer.bias.data = rng.normal(0.0, 1.0, c).astype(np.float32)
            layer.running_mean[:] = rng.normal(0.0, 0.3, c)
            layer.running_var[:] = rng.uniform(0.2, 2.0, c)
    return model.eval()


def test_cle_scales_formula():
    r1, r2 = np.array([8.0, 1.0, 0.0, 2.0]), np.array([2.0, 4.0, 3.0, 0.0])
    s = cle_scales(r1, r2)
    np.testing.assert_allclose(s, [2.0, 0.5, 1.0, 1.0])  # dead channels keep s = 1
    alive = slice(0, 2)
    np.testing.assert_allclose(r1[alive] / s[alive], r2[alive] * s[alive])  # ranges equal
    np.testing.assert_allclose(r1[alive] / s[alive], np.sqrt(r1[alive] * r2[alive]))


def test_pretrained_mobile_cnn_logits_unchanged_and_ranges_equalized():
    model = load_pretrained("mobile_cnn")
    X, _ = load_mnist("test")
    equalized = equalize(model)
    assert not any(isinstance(m, nn.BatchNorm2d | nn.ReLU6) for m in equalized)
    assert _relative_error(equalized(X[:300]), model(X[:300])) <= 1e-4
    # converged: every pair's output and input ranges agree channel by channel
    for pair in find_pairs(equalized):
        np.testing.assert_allclose(
            output_ranges(equalized[pair.first]), input_ranges(equalized[pair.second]), rtol=1e-4
        )
    # and the spread of the depthwise layers' channel ranges shrinks
    folded = fold_batchnorm(model)
    for i, layer in enumerate(equalized):
        if isinstance(layer, nn.Conv2d) and layer.groups > 1:
            before, after = output_ranges(folded[i]), output_ranges(layer)
            assert after.max() / after.min() < before.max() / before.min()


@pytest.mark.parametrize("seed", range(4))
def test_equalize_keeps_the_function_of_random_models(seed):
    rng = np.random.default_rng(seed)
    config = MobileCNNConfig(stem_channels=6, blocks=((12, 1), (8, 2)), num_classes=5)
    model = _randomise_batchnorm(mobile_cnn(rng=rng, config=config), rng)
    X = rng.random((8, 1, 28, 28), dtype=np.float32) * 3
    reference = model(X)
    equalized = equalize(model)
    assert _relative_error(equalized(X), reference) <= 1e-4
    np.testing.assert_array_equal(model(X), reference)  # the input model is untouched


def test_equalize_handles_grouped_convs_maxpool_and_models_without_batchnorm():
    rng = np.random.default_rng(5)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, rng=rng),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 12, 3, groups=3, rng=rng),  # 3 groups, 2 inputs and 4 outputs each
        nn.ReLU(),
        nn.Conv2d(12, 12, 3, groups=12, padding=1, rng=rng),  # depthwise
        nn.ReLU6(),
        nn.GlobalAvgPool2d(),
        nn.Linear(12, 4, rng=rng),
    ).eval()
    model[0].weight.data *= rng.lognormal(0, 2, size=(6, 1, 1, 1)).astype(np.float32)
    model[3].weight.data *= rng.lognormal(0, 2, size=(12, 1, 1, 1)).astype(np.float32)
    assert find_pairs(model) == [Pair(0, 3, (1, 2)), Pair(3, 5, (4,)), Pair(5, 8, (6, 7))]
    X = rng.normal(size=(5, 3, 10, 10)).astype(np.float32)
    equalized = equalize(model)
    assert _relative_error(equalized(X), model(X)) <= 1e-4
    assert isinstance(equalized[6], nn.ClippedReLU)


def test_relu6_replaced_by_relu_as_the_paper():
    model = load_pretrained("mobile_cnn")
    equalized = equalize(model, relu6="relu")
    kinds = {type(m) for m in equalized}
    assert nn.ReLU in kinds and not kinds & {nn.ReLU6, nn.ClippedReLU}
    # the function changes only where an activation exceeded 6: compare with ReLU6 -> ReLU
    folded = fold_batchnorm(model)
    relu_model = nn.Sequential(*[nn.ReLU() if isinstance(m, nn.ReLU6) else m for m in folded])
    X, _ = load_mnist("test")
    assert _relative_error(equalized(X[:200]), relu_model(X[:200])) <= 1e-4


def test_cle_makes_per_tensor_weights_better_on_mobile_cnn():
    model = load_pretrained("mobile_cnn")
    X, _ = load_mnist("test")
    X = X[:300]
    folded, equalized = fold_batchnorm(model), equalize(model)
    reference = folded(X)
    error_rtn = np.mean((fake_quantize_weights(folded, 4)(X) - reference) ** 2)
    error_cle = np.mean((fake_quantize_weights(equalized, 4)(X) - reference) ** 2)
    assert error_cle < 0.5 * error_rtn


def test_absorb_bias_is_exact_where_activations_stay_above_c():
    rng = np.random.default_rng(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 1, rng=rng),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Conv2d(3, 2, 1, rng=rng),
    ).eval()
    model[1].bias.data[:] = [10.0, 0.5, 8.0]  # beta: channels 0 and 2 sit far above 0
    absorbed = absorb_bias(fold_batchnorm(model), num_std=3.0)
    c = absorbed.absorbed[0]
    np.testing.assert_allclose(c, [7.0, 0.0, 5.0], rtol=1e-6)  # max(0, beta - 3 |gamma|)
    X = rng.normal(0, 0.01, size=(4, 2, 3, 3)).astype(np.float32)  # pre-activations near beta
    np.testing.assert_allclose(absorbed(X), model(X), rtol=1e-5, atol=1e-5)
    hidden_before = fold_batchnorm(model)[:2](X)
    hidden_after = absorbed[:2](X)
    assert hidden_after.max() < hidden_before.max() - 4.0  # the activation range shrank


def test_absorb_bias_on_mobile_cnn_skips_padded_layers_and_barely_moves_logits():
    model = load_pretrained("mobile_cnn")
    equalized = equalize(model)
    absorbed = absorb_bias(equalized)
    for first in absorbed.absorbed:
        second = next(p.second for p in find_pairs(absorbed) if p.first == first)
        assert isinstance(absorbed[second], nn.Linear) or absorbed[second].padding == 0
    X, _ = load_mnist("test")
    assert _relative_error(absorbed(X[:300]), equalized(X[:300])) <= 1e-2


def test_weight_times_constant_matches_a_forward_pass_without_padding():
    rng = np.random.default_rng(1)
    conv = nn.Conv2d(6, 9, 3, groups=3, rng=rng).to(np.float64)
    c = rng.normal(size=6)
    x = np.broadcast_to(c[None, :, None, None], (1, 6, 5, 5)).copy()
    y = conv(x) - conv.bias.data[None, :, None, None]  # (1, 9, 3, 3), the same everywhere
    np.testing.assert_allclose(y[0, :, 1, 1], weight_times_constant(conv, c), rtol=1e-12)


def test_bad_arguments():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    with pytest.raises(ValueError, match="relu6 must be 'clip' or 'relu', got 'drop'"):
        equalize(model, relu6="drop")
    with pytest.raises(ValueError, match="max_iterations must be an int >= 1, got 0"):
        equalize(model, max_iterations=0)
    with pytest.raises(TypeError, match=r"model must be an nn\.Sequential, got Conv2d"):
        find_pairs(nn.Conv2d(1, 2, 3))
