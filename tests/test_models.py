"""minquant.models: architectures and the packaged pretrained weights."""

import numpy as np
import pytest

from minquant import nn
from minquant.data import load_mnist
from minquant.models import (
    MobileCNNConfig,
    load_pretrained,
    mlp,
    mobile_cnn,
    pretrained_accuracy,
    small_cnn,
)
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
    match = r"name must be one of \['mobile_cnn', 'small_cnn', 'tiny_lm'\], got 'resnet'"
    with pytest.raises(ValueError, match=match):
        load_pretrained("resnet")


# --- mobile_cnn -------------------------------------------------------------------------------


def test_mobile_cnn_architecture():
    config = MobileCNNConfig(stem_channels=4, blocks=((6, 1), (8, 2)), num_classes=3)
    model = mobile_cnn(rng=np.random.default_rng(0), config=config)
    block = [nn.Conv2d, nn.BatchNorm2d, nn.ReLU6] * 2
    kinds = [type(m) for m in model]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU6, *block, *block,
                     nn.GlobalAvgPool2d, nn.Linear]  # fmt: skip
    stem, dw1, pw1, dw2 = model[0], model[3], model[6], model[9]
    assert stem.weight.shape == (4, 1, 3, 3) and stem.stride == 2 and stem.bias is None
    assert dw1.groups == 4 and dw1.weight.shape == (4, 1, 3, 3) and dw1.padding == 1
    assert pw1.weight.shape == (6, 4, 1, 1) and pw1.groups == 1
    assert dw2.groups == 6 and dw2.stride == 2
    assert model[-1].weight.shape == (3, 8)
    assert model(np.zeros((2, 1, 28, 28), dtype=np.float32)).shape == (2, 3)


def test_mobile_cnn_config_is_frozen_and_round_trips_through_metadata():
    config = MobileCNNConfig(stem_channels=8, blocks=((16, 2),))
    with pytest.raises(AttributeError):
        config.stem_channels = 4
    assert MobileCNNConfig.from_metadata(config.to_metadata()) == config


def test_pretrained_mobile_cnn_reaches_its_recorded_accuracy():
    model = load_pretrained("mobile_cnn")
    assert not model.training
    assert any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model)
    X, y = load_mnist("test")
    recorded = pretrained_accuracy("mobile_cnn")
    assert recorded >= 0.95
    assert evaluate(model, X, y) == recorded


def _torch_mobile_cnn(torch, config: MobileCNNConfig):
    c = config.stem_channels
    layers = [
        torch.nn.Conv2d(1, c, 3, stride=2, padding=1, bias=False),
        torch.nn.BatchNorm2d(c),
        torch.nn.ReLU6(),
    ]
    for out, stride in config.blocks:
        layers += [
            torch.nn.Conv2d(c, c, 3, stride=stride, padding=1, groups=c, bias=False),
            torch.nn.BatchNorm2d(c),
            torch.nn.ReLU6(),
            torch.nn.Conv2d(c, out, 1, bias=False),
            torch.nn.BatchNorm2d(out),
            torch.nn.ReLU6(),
        ]
        c = out
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(c, 10)]
    return torch.nn.Sequential(*layers)


@pytest.mark.torch
def test_pretrained_mobile_cnn_matches_torch():
    torch = pytest.importorskip("torch")
    model = load_pretrained("mobile_cnn")
    twin = _torch_mobile_cnn(torch, MobileCNNConfig()).eval()
    # NOTE: torch's Sequential has one more module (Flatten), so the Linear's index shifts.
    last = len(model) - 1
    state = {
        (k.replace(f"{last}.", f"{last + 1}.", 1) if k.startswith(f"{last}.") else k): v
        for k, v in model.state_dict().items()
    }
    result = twin.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    assert not result.unexpected_keys
    assert all(k.endswith("num_batches_tracked") for k in result.missing_keys)
    X, _ = load_mnist("test")
    with torch.no_grad():
        expected = twin(torch.from_numpy(X[:200])).numpy()
    np.testing.assert_allclose(model(X[:200]), expected, rtol=1e-4, atol=1e-4)
