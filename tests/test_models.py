"""minquant.models: architectures and the packaged pretrained weights."""

import numpy as np
import pytest

from minquant import nn
from minquant.data import load_mnist
from minquant.models import load_pretrained, mlp, pretrained_accuracy, small_cnn
from minquant.train import evaluate


def test_small_cnn_architecture():
    model = small_cnn(rng=np.random.default_rng(0), c1=4, c2=6)
    kinds = [type(m) for m in model]
    assert kinds == [
        nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d,
        nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d,
        nn.Flatten, nn.Linear,
    ]  # fmt: skip
    assert model[0].weight.shape == (4, 1, 3, 3) and model[0].padding == 1
    assert model[4].weight.shape == (6, 4, 3, 3) and model[9].weight.shape == (10, 6 * 7 * 7)
    assert model(np.zeros((3, 1, 28, 28), dtype=np.float32)).shape == (3, 10)


def test_models_are_seeded_by_the_rng():
    a = small_cnn(rng=np.random.default_rng(3))
    b = small_cnn(rng=np.random.default_rng(3))
    c = small_cnn(rng=np.random.default_rng(4))
    np.testing.assert_array_equal(a[4].weight.data, b[4].weight.data)
    assert not np.array_equal(a[4].weight.data, c[4].weight.data)


def test_mlp_widths():
    model = mlp(rng=np.random.default_rng(0), hidden=(32, 16), num_classes=5)
    shapes = [p.shape for p in model.parameters()]
    assert shapes == [(32, 784), (32,), (16, 32), (16,), (5, 16), (5,)]


def test_pretrained_small_cnn_reaches_its_recorded_accuracy():
    model = load_pretrained()
    assert not model.training
    X, y = load_mnist("test")
    recorded = pretrained_accuracy()
    assert recorded >= 0.96
    assert evaluate(model, X, y) == recorded


def test_pretrained_small_cnn_matches_torch():
    torch = pytest.importorskip("torch")
    model = load_pretrained()
    c1, c2 = model[0].out_channels, model[4].out_channels
    twin = torch.nn.Sequential(
        torch.nn.Conv2d(1, c1, 3, padding=1), torch.nn.BatchNorm2d(c1), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(c1, c2, 3, padding=1), torch.nn.BatchNorm2d(c2), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(c2 * 49, 10),
    ).eval()  # fmt: skip
    state = {k: torch.from_numpy(v) for k, v in model.state_dict().items()}
    twin.load_state_dict(state, strict=False)  # torch also has num_batches_tracked
    X, _ = load_mnist("test")
    with torch.no_grad():
        expected = twin(torch.from_numpy(X[:200])).numpy()
    np.testing.assert_allclose(model(X[:200]), expected, rtol=1e-4, atol=1e-4)


test_pretrained_small_cnn_matches_torch = pytest.mark.torch(test_pretrained_small_cnn_matches_torch)


def test_unknown_pretrained_name():
    with pytest.raises(
        ValueError, match=r"name must be one of \['small_cnn', 'tiny_lm'\], got 'resnet'"
    ):
        load_pretrained("resnet")
