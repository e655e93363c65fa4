"""Exercise 13: SmoothQuant's scales and their folding, graded against minquant.llm."""

import copy

import numpy as np
import pytest

import minquant as mq
from minquant.llm import smoothquant
from minquant.llm.activations import capture_linear_inputs

pytestmark = pytest.mark.ex13


@pytest.fixture(scope="module")
def lm():
    return mq.models.load_pretrained("tiny_lm")


@pytest.fixture(scope="module")
def tokens():
    return mq.data.encode(mq.data.load_text("train")[:256]).reshape(2, 128)


def test_scales_worked_example(ex):
    X = np.array([[1.0, 16.0], [-2.0, 4.0]], np.float32)
    w = np.array([[1.0, 0.25], [0.5, -1.0]], np.float32)
    s = ex.smoothquant_scales(X, w, alpha=0.5)
    assert s.dtype == np.float32 and s.shape == (2,)
    np.testing.assert_allclose(s, [np.sqrt(2.0), 4.0], rtol=1e-7)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 0.8, 1.0])
def test_scales_match_the_library(ex, alpha):
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((40, 24)) * rng.uniform(0.1, 50, 24)).astype(np.float32)
    X[:, 3] = 0.0  # a dead channel: the clamp decides
    w = rng.standard_normal((16, 24)).astype(np.float32)
    expected = smoothquant.smoothquant_scales(X, w, alpha)
    np.testing.assert_array_equal(ex.smoothquant_scales(X, w, alpha), expected)


def test_scales_reject_alpha_outside_the_unit_interval(ex):
    with pytest.raises(ValueError):
        ex.smoothquant_scales(np.ones((2, 2)), np.ones((2, 2)), alpha=-0.1)


def test_fold_worked_example_and_arguments_untouched(ex):
    gamma, w = np.ones(2, np.float32), np.ones((1, 2), np.float32)
    g2, (w2,) = ex.fold_smoothing(gamma, [w], np.array([2.0, 0.5], np.float32))
    np.testing.assert_array_equal(g2, [0.5, 2.0])
    np.testing.assert_array_equal(w2, [[2.0, 0.5]])
    np.testing.assert_array_equal(gamma, [1.0, 1.0])
    np.testing.assert_array_equal(w, [[1.0, 1.0]])
    with pytest.raises(ValueError):
        ex.fold_smoothing(gamma, [w], np.array([1.0, 0.0], np.float32))
    with pytest.raises(ValueError):
        ex.fold_smoothing(gamma, [w], np.ones(3, np.float32))


def test_fold_keeps_the_product(ex):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 8)).astype(np.float32)
    gamma = rng.uniform(0.5, 2, 8).astype(np.float32)
    w = rng.standard_normal((3, 8)).astype(np.float32)
    s = rng.uniform(0.1, 10, 8).astype(np.float32)
    g2, (w2,) = ex.fold_smoothing(gamma, [w], s)
    np.testing.assert_allclose((x * g2) @ w2.T, (x * gamma) @ w.T, rtol=1e-5, atol=1e-5)


def test_smooth_block_matches_the_library_and_keeps_the_function(ex, lm, tokens, forbid):
    inputs = capture_linear_inputs(lm, tokens)
    mine = copy.deepcopy(lm)
    forbid(smoothquant.smoothquant_scales, smoothquant.fold_smoothing, smoothquant.smooth_model)
    for i, block in enumerate(mine.layers):
        ex.smooth_block(block, inputs[f"layers.{i}.attn.wq"], inputs[f"layers.{i}.mlp.w1"], 0.5)
    np.testing.assert_allclose(mine(tokens), lm(tokens), rtol=1e-4, atol=2e-4)


def test_smooth_block_equals_library_smooth_model(ex, lm, tokens):
    inputs = capture_linear_inputs(lm, tokens)
    mine = copy.deepcopy(lm)
    for i, block in enumerate(mine.layers):
        ex.smooth_block(block, inputs[f"layers.{i}.attn.wq"], inputs[f"layers.{i}.mlp.w1"], 0.7)
    ref = smoothquant.smooth_model(lm, tokens, alpha=0.7)
    for i in range(len(lm.layers)):
        for name in ("attn_norm", "ffn_norm"):
            np.testing.assert_array_equal(
                getattr(mine.layers[i], name).weight.data, getattr(ref.layers[i], name).weight.data
            )
        np.testing.assert_array_equal(
            mine.layers[i].mlp.w3.weight.data, ref.layers[i].mlp.w3.weight.data
        )
