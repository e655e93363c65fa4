"""Exercise 9: cross-layer equalization of one pair of layers."""

import numpy as np
import pytest

from minquant import nn
from minquant.ptq.equalize import cle_scales, equalize, input_ranges, output_ranges

pytestmark = pytest.mark.ex9


def test_output_ranges_worked_example(ex):
    r = ex.output_ranges(np.array([[1.0, -3.0], [0.5, 2.0]]))
    assert r.dtype == np.float64
    np.testing.assert_array_equal(r, [3.0, 2.0])


def test_input_ranges_worked_examples(ex):
    np.testing.assert_array_equal(ex.input_ranges(np.array([[1.0, -3.0], [0.5, 2.0]])), [1, 3])
    depthwise = np.zeros((2, 1, 3, 3))
    depthwise[0, 0, 1, 2], depthwise[1, 0, 0, 0] = -4.0, 5.0
    np.testing.assert_array_equal(ex.input_ranges(depthwise, groups=2), [4.0, 5.0])


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_ranges_match_minquant(ex, groups):
    rng = np.random.default_rng(groups)
    conv = nn.Conv2d(8, 8, 3, groups=groups, rng=rng)
    np.testing.assert_allclose(ex.output_ranges(conv.weight.data), output_ranges(conv))
    np.testing.assert_allclose(ex.input_ranges(conv.weight.data, groups), input_ranges(conv))


def test_cle_scales_worked_example(ex):
    # sqrt(8 * 2) / 2 = 2, sqrt(1 * 4) / 4 = 0.5, a dead channel keeps 1
    s = ex.cle_scales(np.array([8.0, 1.0, 0.0]), np.array([2.0, 4.0, 3.0]))
    assert s.dtype == np.float64
    np.testing.assert_allclose(s, [2.0, 0.5, 1.0], rtol=1e-15)
    np.testing.assert_array_equal(ex.cle_scales(np.array([2.0]), np.array([0.0])), [1.0])


def test_cle_scales_match_minquant_and_equalize(ex):
    rng = np.random.default_rng(0)
    r1, r2 = rng.uniform(0.01, 10, 50), rng.uniform(0.01, 10, 50)
    s = ex.cle_scales(r1, r2)
    np.testing.assert_allclose(s, cle_scales(r1, r2), rtol=1e-12)
    np.testing.assert_allclose(r1 / s, r2 * s, rtol=1e-12)  # both ranges become equal


def test_equalize_pair_worked_example(ex):
    w1_eq, b1_eq, w2_eq, s = ex.equalize_pair(
        np.array([[8.0], [1.0]]), np.array([4.0, 1.0]), np.array([[2.0, 4.0]])
    )
    np.testing.assert_allclose(s, [2.0, 0.5])
    np.testing.assert_allclose(w1_eq, [[4.0], [2.0]])
    np.testing.assert_allclose(b1_eq, [2.0, 2.0])
    np.testing.assert_allclose(w2_eq, [[4.0, 2.0]])


@pytest.mark.parametrize("depthwise", [False, True])
def test_equalize_pair_keeps_the_function(ex, forbid, depthwise):
    forbid(cle_scales, output_ranges, input_ranges, equalize)
    rng = np.random.default_rng(1)
    first = nn.Conv2d(3, 6, 3, padding=1, rng=rng)
    first.weight.data *= rng.uniform(0.05, 5.0, (6, 1, 1, 1))  # very unequal channels
    groups = 6 if depthwise else 1
    second = nn.Conv2d(6, 6, 3, padding=1, groups=groups, rng=rng)
    model = nn.Sequential(first, nn.ReLU(), second).eval()
    X = rng.normal(size=(4, 3, 8, 8))
    expected = model(X)
    w1, b1, w2, s = ex.equalize_pair(first.weight.data, first.bias.data, second.weight.data, groups)
    assert w1.shape == first.weight.data.shape and w2.shape == second.weight.data.shape
    first.weight.data, first.bias.data, second.weight.data = w1, b1, w2
    np.testing.assert_allclose(model(X), expected, rtol=1e-9, atol=1e-9)
    # the ranges are equal now, channel by channel
    r1 = np.abs(w1).reshape(6, -1).max(axis=1)
    r2 = np.abs(w2).reshape(6, -1).max(axis=1) if depthwise else np.abs(w2).max(axis=(0, 2, 3))
    np.testing.assert_allclose(r1, r2, rtol=1e-12)
    assert s.shape == (6,)


def test_equalize_pair_matches_minquant_equalize(ex):
    rng = np.random.default_rng(2)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, rng=rng), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4, rng=rng)
    ).eval()
    model[0].weight.data *= rng.uniform(0.1, 3.0, (4, 1, 1, 1))
    equalized = equalize(model)
    w1, b1, w2, _ = ex.equalize_pair(
        model[0].weight.data, model[0].bias.data, model[2].weight.data, 4
    )
    np.testing.assert_allclose(w1, equalized[0].weight.data, rtol=1e-6)
    np.testing.assert_allclose(b1, equalized[0].bias.data, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(w2, equalized[2].weight.data, rtol=1e-6)
