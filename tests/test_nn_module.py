"""minquant.nn.module: parameter discovery, modes, state dicts, Sequential."""

import numpy as np
import pytest

from minquant import nn


def _model(rng: np.random.Generator) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, rng=rng),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * 2 * 2, 3, rng=rng),
    )


def test_parameters_and_names_follow_torch_naming():
    model = _model(np.random.default_rng(0))
    names = [name for name, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "5.weight", "5.bias"]
    assert [name for name, _ in model.named_buffers()] == ["1.running_mean", "1.running_var"]
    assert model.parameters()[0] is model[0].weight
    assert [name for name, _ in model.named_modules()] == ["", "0", "1", "2", "3", "4", "5"]
    assert list(model.children()) == list(model)


def test_state_dict_keys_match_torch():
    torch = pytest.importorskip("torch")
    twin = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3, padding=1),
        torch.nn.BatchNorm2d(2),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 3),
    )
    expected = {k for k in twin.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(_model(np.random.default_rng(0)).state_dict()) == expected


test_state_dict_keys_match_torch = pytest.mark.torch(test_state_dict_keys_match_torch)


def test_state_dict_is_a_copy_and_round_trips():
    rng = np.random.default_rng(0)
    model, other = _model(rng), _model(rng)
    model(rng.normal(size=(4, 1, 4, 4)).astype(np.float32))  # moves the BN running stats
    state = model.state_dict()
    state["0.weight"][...] = 0  # a copy: the model is untouched
    assert model[0].weight.data.any()
    other.load_state_dict(model.state_dict())
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert other[1].running_var.dtype == np.float32


def test_load_state_dict_keeps_array_identity_and_dtype():
    layer = nn.Linear(2, 2)
    weight = layer.weight.data
    layer.load_state_dict({"weight": np.ones((2, 2), dtype=np.float64), "bias": np.zeros(2)})
    assert layer.weight.data is weight and weight.dtype == np.float32 and weight.sum() == 4


def test_load_state_dict_errors_name_the_problem():
    model = _model(np.random.default_rng(0))
    state = model.state_dict()
    missing = {k: v for k, v in state.items() if k != "1.running_var"}
    with pytest.raises(ValueError, match=r"missing keys \['1.running_var'\]"):
        model.load_state_dict(missing)
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\]"):
        model.load_state_dict({**state, "extra": np.zeros(1)})
    wrong = {**state, "5.weight": np.zeros((3, 9))}
    with pytest.raises(ValueError, match=r"'5.weight' has shape \(3, 9\).*expects \(3, 8\)"):
        model.load_state_dict(wrong)
    # nothing was written by the failed loads
    np.testing.assert_array_equal(model[5].weight.data, state["5.weight"])


def test_train_and_eval_reach_every_module():
    model = _model(np.random.default_rng(0))
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_to_float64_casts_parameters_gradients_and_buffers():
    model = _model(np.random.default_rng(0)).to(np.float64)
    arrays = [p.data for p in model.parameters()] + [p.grad for p in model.parameters()]
    arrays += [buf for _, buf in model.named_buffers()]
    assert all(a.dtype == np.float64 for a in arrays)


def test_sequential_indexing_and_backward_order():
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Linear(3, 4, rng=rng), nn.ReLU(), nn.Linear(4, 2, rng=rng))
    assert len(model) == 3 and isinstance(model[-1], nn.Linear)
    head = model[1:]
    assert isinstance(head, nn.Sequential) and len(head) == 2 and head[1] is model[2]
    model[1] = nn.Flatten()
    assert isinstance(model[1], nn.Flatten)
    x = rng.normal(size=(5, 3))
    model.to(np.float64)
    y = model(x)
    dx = model.backward(np.ones_like(y))
    # a Flatten of a 2-D array is the identity: the model is linear, dx = 1 @ W2 @ W1
    expected = np.ones_like(y) @ model[2].weight.data @ model[0].weight.data
    np.testing.assert_allclose(dx, expected, rtol=1e-12)


def test_sequential_rejects_non_modules():
    with pytest.raises(TypeError, match="got int at position 1"):
        nn.Sequential(nn.ReLU(), 3)


def test_repr_shows_the_tree():
    text = repr(_model(np.random.default_rng(0)))
    assert text.startswith("Sequential(\n  (0): Conv2d(1, 2, kernel_size=3")
    assert "(5): Linear(in_features=8, out_features=3, bias=True)" in text


def test_parameter_starts_with_zero_gradient_of_the_same_shape():
    p = nn.Parameter(np.arange(6).reshape(2, 3))
    assert p.data.dtype == np.float32 and p.grad.shape == (2, 3) and not p.grad.any()
