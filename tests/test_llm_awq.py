"""AWQ: the folded scales leave the float model unchanged, the search is never worse than RTN."""

import numpy as np
import pytest

import minquant as mq
from minquant.llm.awq import (
    awq_clip,
    awq_clip_model,
    awq_scale_model,
    awq_scales,
    awq_search,
    clip_search,
    keep_salient_channels,
    rtn_weight,
    salient_channels,
    scales_for,
)
from minquant.llm.layer_inputs import calibration_batch
from minquant.llm.weight_only import WeightOnlyLinear, _linear_inputs
from minquant.nn import Linear, ReLU, Sequential


@pytest.fixture(scope="module")
def tiny():
    lm = mq.models.load_pretrained("tiny_lm")
    tokens = mq.data.encode(mq.data.load_text("train"))
    return lm, calibration_batch(tokens, 2, 64, np.random.default_rng(0))


@pytest.fixture(scope="module")
def tiny_scaled(tiny):
    """tiny_lm with AWQ's W3 g128 scales folded in, its plan, and the clipped copy."""
    lm, calib = tiny
    scaled, plan = awq_scale_model(lm, calib, 3, 128)
    return scaled, plan, awq_clip_model(scaled, calib, 3, 128)


def hot_layer(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((512, 64)) * np.where(np.arange(64) % 16 == 3, 15.0, 1.0)
    return rng.standard_normal((24, 64)).astype(np.float32), X


def output_error(w, w_hat, X):
    return float(np.sum((X @ (w - w_hat).T) ** 2))


def test_scales_formula():
    s_x = np.array([0.5, 2.0, 8.0])
    s = scales_for(s_x, 0.5)
    want = np.sqrt(s_x) / np.sqrt(np.sqrt(8.0) * np.sqrt(0.5))
    np.testing.assert_allclose(s, want, rtol=1e-12)
    np.testing.assert_allclose(s.max() * s.min(), 1.0)
    np.testing.assert_array_equal(scales_for(s_x, 0.0), np.ones(3))


def test_search_starts_at_rtn_and_scales_pick_the_minimum():
    w, X = hot_layer()
    alphas, errors = awq_search(w, X, 3, 32, n_grid=11)
    np.testing.assert_allclose(alphas, np.arange(11) / 11)  # as llm-awq: no alpha = 1
    assert errors[0] == pytest.approx(output_error(w, rtn_weight(w, 3, 32), X), rel=1e-6)
    s = awq_scales(w, X, 3, 32, n_grid=11)
    mean_abs = np.abs(X).mean(axis=0)
    best = alphas[np.argmin(errors)]
    np.testing.assert_allclose(s, scales_for(mean_abs, best))
    assert best > 0  # the hot channels are worth protecting
    w_hat = rtn_weight((w * s).astype(np.float32), 3, 32) / s
    assert output_error(w, w_hat, X) == pytest.approx(errors.min(), rel=1e-6)
    assert errors.min() < 0.9 * errors[0]


@pytest.mark.parametrize("group_size", [32, None])
def test_awq_scales_protect_the_salient_channels(group_size):
    w, X = hot_layer(1)
    s = awq_scales(w, X, 3, group_size)
    hot = np.arange(64) % 16 == 3
    assert s[hot].min() > s[~hot].max()


def test_scaled_model_computes_the_same_function(tiny, tiny_scaled):
    lm, calib = tiny
    scaled, plan, _ = tiny_scaled
    assert plan[0][:2] == (
        "layers.0.attn_norm",
        ["layers.0.attn.wq", "layers.0.attn.wk", "layers.0.attn.wv"],
    )
    tokens = calib
    want, got = lm(tokens), scaled(tokens)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    changed = [
        name
        for (name, a), (_, b) in zip(lm.named_modules(), scaled.named_modules(), strict=True)
        if hasattr(a, "weight") and not np.array_equal(a.weight.data, b.weight.data)
    ]
    assert "layers.0.attn_norm" in changed and "layers.0.mlp.w2" in changed
    assert "tok_embeddings" not in changed


def test_awq_is_rtn_of_the_scaled_clipped_model_and_packs_like_rtn(tiny, tiny_scaled):
    lm, calib = tiny
    qlm = mq.llm.quantize_weights(lm, 3, 128, method="awq", X_calib=calib)
    want = mq.llm.quantize_weights(tiny_scaled[2], 3, 128)
    q_layers = dict(qlm.named_modules())
    for name, layer in want.named_modules():
        if isinstance(layer, WeightOnlyLinear):
            np.testing.assert_array_equal(q_layers[name].packed, layer.packed)
            np.testing.assert_array_equal(q_layers[name].scale, layer.scale)
    rtn = mq.llm.quantize_weights(lm, 3, 128)
    assert sum(m.nbytes() for m in rtn.modules() if isinstance(m, WeightOnlyLinear)) == sum(
        m.nbytes() for m in qlm.modules() if isinstance(m, WeightOnlyLinear)
    )


def test_keep_salient_channels(tiny):
    lm, calib = tiny
    fake = keep_salient_channels(lm, calib, 3, 128, fraction=0.01)
    inputs = _linear_inputs(lm, calib)
    layer, faked = lm.layers[1].mlp.w2, fake.layers[1].mlp.w2
    keep = salient_channels(inputs[id(layer)], 0.01)
    assert len(keep) == 4  # ceil(0.01 * 384)
    want = rtn_weight(layer.weight.data, 3, 128)
    want[:, keep] = layer.weight.data[:, keep]
    np.testing.assert_array_equal(faked.weight.data, want)


def test_salient_channels_are_the_largest_mean_magnitudes():
    X = np.array([[1.0, -5.0, 0.5, 3.0], [1.0, 5.0, -0.5, -3.0]])
    assert salient_channels(X, 0.5).tolist() == [1, 3]
    with pytest.raises(ValueError, match="fraction"):
        salient_channels(X, 0.0)


def test_awq_rejects_bad_input():
    w, X = hot_layer()
    with pytest.raises(ValueError, match="n_grid"):
        awq_scales(w, X, 3, 32, n_grid=1)
    with pytest.raises(ValueError, match="group_size must divide"):
        awq_scales(w, X, 3, 48)
    with pytest.raises(ValueError, match="X must be"):
        awq_scales(w, X[:, :10], 3, 32)
    rng = np.random.default_rng(0)
    model = Sequential(Linear(8, 8, rng=rng), ReLU())
    with pytest.raises(ValueError, match="TransformerLM"):
        mq.llm.quantize_weights(model, 4, 8, method="awq", X_calib=np.ones((2, 8), np.float32))
    with pytest.raises(ValueError, match="X_calib"):
        mq.llm.quantize_weights(model, 4, 8, method="awq")


def outlier_layer(seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((12, 64)).astype(np.float32)
    w[np.arange(12), rng.integers(0, 64, 12)] *= 6.0  # one outlier weight per row
    return w, rng.standard_normal((300, 64))


def test_clip_search_against_a_loop_over_rows_and_groups():
    w, X = outlier_layer()
    ratios, errors = clip_search(w, X, 3, 32, n_grid=10, max_shrink=0.5, n_tokens=100)
    np.testing.assert_allclose(ratios, [1.0, 0.9, 0.8, 0.7, 0.6])
    X_used = X[::3]  # 300 // 100: the stride that thins the tokens
    for o in range(w.shape[0]):
        for g in range(2):
            cols = slice(32 * g, 32 * (g + 1))
            group = w[o, cols]
            for k, ratio in enumerate(ratios):
                bound = np.float32(np.abs(group).max() * np.float32(ratio))
                w_hat = rtn_weight(np.clip(group, -bound, bound)[None, :], 3, 32)[0]
                want = np.mean((X_used[:, cols] @ (group - w_hat).astype(np.float64)) ** 2)
                assert errors[k, o, g] == pytest.approx(want, rel=1e-9)
    w_clip = awq_clip(w, X, 3, 32, n_grid=10, max_shrink=0.5)
    _, errors_all = clip_search(w, X, 3, 32, n_grid=10, max_shrink=0.5)
    best = ratios[np.argmin(errors_all, axis=0)]  # (out, G)
    for g in range(2):
        cols = slice(32 * g, 32 * (g + 1))
        bound = np.abs(w[:, cols]).max(axis=1) * best[:, g].astype(np.float32)
        np.testing.assert_array_equal(np.abs(w_clip[:, cols]).max(axis=1), bound)
        kept = np.abs(w[:, cols]) <= bound[:, None]
        np.testing.assert_array_equal(w_clip[:, cols][kept], w[:, cols][kept])


def test_clipping_beats_rtn_when_a_group_has_an_outlier():
    w, X = outlier_layer(1)
    ratios, errors = clip_search(w, X, 3, 32)
    assert ratios[0] == 1.0 and len(ratios) == 10  # 1.0, 0.95, ..., 0.55 as the reference
    assert np.all(errors.min(axis=0) <= errors[0])  # r = 1 (round to nearest) is on the grid
    w_clip = awq_clip(w, X, 3, 32)
    assert np.any(w_clip != w)
    assert output_error(w, rtn_weight(w_clip, 3, 32), X) < 0.95 * output_error(
        w, rtn_weight(w, 3, 32), X
    )


def test_awq_clip_model_clips_all_but_q_and_k(tiny, tiny_scaled):
    _, calib = tiny
    scaled, _, clipped = tiny_scaled
    inputs = _linear_inputs(scaled, calib)  # the unclipped model's inputs, as the search's
    layers = dict(scaled.named_modules())
    n_clipped = 0
    for name, layer in clipped.named_modules():
        if type(layer) is not Linear:
            continue
        w = layers[name].weight.data  # the scaled model is left as it was
        if name.endswith(("attn.wq", "attn.wk")):
            np.testing.assert_array_equal(layer.weight.data, w)
        else:
            want = awq_clip(w, inputs[id(layers[name])], 3, 128)
            np.testing.assert_array_equal(layer.weight.data, want)
            n_clipped += not np.array_equal(want, w)
    assert n_clipped == 21  # 5 of the 7 layers of each of 4 blocks, and the output layer


def test_clip_rejects_bad_input():
    w, X = outlier_layer()
    with pytest.raises(ValueError, match="max_shrink"):
        clip_search(w, X, 3, 32, max_shrink=1.0)
    with pytest.raises(ValueError, match="max_shrink"):
        clip_search(w, X, 3, 32, n_grid=1, max_shrink=0.5)
    with pytest.raises(ValueError, match="group_size must divide"):
        awq_clip(w, X, 3, 48)
