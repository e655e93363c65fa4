"""ptq.sensitivity: one-layer-at-a-time measurements, byte counts and the greedy search."""

import itertools

import numpy as np
import pytest

from minquant import nn
from minquant.ptq.sensitivity import (
    SensitivityRow,
    greedy_bit_widths,
    model_nbytes,
    pareto,
    quantize_layers,
    sensitivity,
)
from minquant.quant import sqnr


@pytest.fixture(scope="module")
def mlp():
    rng = np.random.default_rng(0)
    model = nn.Sequential(
        nn.Linear(12, 32, rng=rng), nn.ReLU(), nn.Linear(32, 32, rng=rng), nn.ReLU(),
        nn.Linear(32, 4, rng=rng),
    ).eval()  # fmt: skip
    X = rng.normal(size=(300, 12)).astype(np.float32)
    return model, X, model(X).argmax(1)


def test_rows_are_one_layer_at_a_time(mlp):
    model, X, y = mlp
    rows = sensitivity(model, X, y, bits=(8, 4, 2))
    assert [(r.layer, r.bits) for r in rows] == [(i, b) for i in (0, 2, 4) for b in (8, 4, 2)]
    for r in rows:
        out = quantize_layers(model, {r.layer: r.bits})(X)
        assert r.sqnr_db == pytest.approx(sqnr(model(X), out))
        assert r.accuracy == pytest.approx(np.mean(out.argmax(1) == y))
        assert r.accuracy_drop == pytest.approx(1.0 - r.accuracy)
    by_layer = {}
    for r in rows:
        by_layer.setdefault(r.layer, []).append(r.sqnr_db)
    # Each bit is worth about 6 dB: 8 bits beat 4 bits beat 2 bits on every layer.
    assert all(a > b > c for a, b, c in by_layer.values())


def test_model_nbytes_counts_packed_codes_biases_and_scales(mlp):
    model, _, _ = mlp
    # weights 384, 1024, 128 codes; 32 + 32 + 4 channels
    expected = (384 * 4 // 8 + 4 * 32 + 4) + (1024 * 2 // 8 + 4 * 32 + 4) + (128 + 4 * 4 + 4)
    assert model_nbytes(model, {0: 4, 2: 2}, per_channel=False) == expected
    per_channel = model_nbytes(model, {0: 4, 2: 2}, per_channel=True)
    assert per_channel == expected + 4 * (31 + 31 + 3)


def test_greedy_path_shrinks_to_the_budget(mlp):
    model, X, y = mlp
    rows = sensitivity(model, X, y, bits=(8, 4, 2))
    budget = model_nbytes(model, {0: 4, 2: 4, 4: 4}, per_channel=False)
    path = greedy_bit_widths(rows, model, budget)
    sizes = [model_nbytes(model, bw, False) for bw in path]
    assert path[0] == {0: 8, 2: 8, 4: 8}
    assert all(a > b for a, b in itertools.pairwise(sizes))
    assert sizes[-1] <= budget < sizes[-2]
    for a, b in itertools.pairwise(path):
        assert sum(a[i] != b[i] for i in a) == 1  # one layer, one step, at a time


def test_pareto_points(mlp):
    model, X, y = mlp
    rows = sensitivity(model, X, y, bits=(8, 2))
    points = pareto(model, X, y, rows)
    assert [b for b, _ in points["uniform"]] == [
        model_nbytes(model, {0: b, 2: b, 4: b}, False) for b in (8, 2)
    ]
    assert points["mixed"][0] == points["uniform"][0]
    assert points["mixed"][-1] == points["uniform"][-1]


def test_errors(mlp):
    model, X, y = mlp
    with pytest.raises(ValueError, match="bits"):
        sensitivity(model, X, y, bits=(9,))
    with pytest.raises(ValueError, match="not a Conv2d/Linear"):
        quantize_layers(model, {1: 4})
    assert SensitivityRow(0, 8, 1.0, 0.0, 40.0).bits == 8
