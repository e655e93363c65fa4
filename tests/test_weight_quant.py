"""minquant.ptq.weight_quant: symmetric weight scales and weight-only fake quantization."""

import numpy as np
import pytest

from minquant import nn
from minquant.ptq.weight_quant import (
    fake_quantize_weights,
    round_weights,
    weight_layers,
    weight_scale,
)


def test_scale_and_codes_follow_the_formula():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 3, 3, 3)).astype(np.float32)
    per_tensor = weight_scale(w, 4, per_channel=False)
    np.testing.assert_allclose(per_tensor, [np.abs(w).max() / 7], rtol=1e-6)
    per_channel = weight_scale(w, 6, per_channel=True)
    np.testing.assert_allclose(per_channel, np.abs(w).reshape(5, -1).max(axis=1) / 31, rtol=1e-6)
    w_q = round_weights(w, per_channel, 6)
    expected = np.rint(w / per_channel[:, None, None, None])
    np.testing.assert_array_equal(w_q, expected)
    assert w_q.min() >= -31 and w_q.max() <= 31


def test_fake_quantize_weights_uses_codes_and_skips():
    rng = np.random.default_rng(1)
    model = nn.Sequential(nn.Linear(4, 3, rng=rng), nn.ReLU(), nn.Linear(3, 2, rng=rng))
    assert weight_layers(model) == [0, 2]
    scale = weight_scale(model[0].weight.data, 4, per_channel=False)
    codes = {0: np.ones((3, 4), dtype=np.int8)}
    quantized = fake_quantize_weights(model, 4, codes=codes, skip=(2,))
    np.testing.assert_allclose(quantized[0].weight.data, np.full((3, 4), scale[0]))
    np.testing.assert_array_equal(quantized[2].weight.data, model[2].weight.data)
    with pytest.raises(ValueError, match="num_bits must be an int in"):
        weight_scale(model[0].weight.data, 1, per_channel=False)
