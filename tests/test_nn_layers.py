"""minquant.nn layers: forward and backward against torch.nn, finite differences, bad input."""

import itertools

import numpy as np
import pytest

from minquant import nn

TOL = {np.float64: 1e-10, np.float32: 1e-5}


def _torch():
    return pytest.importorskip("torch")


def _to_torch(torch, layer: nn.Module, dtype):
    """The torch.nn twin of a minquant layer, with the same weights and buffers."""
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    if isinstance(layer, nn.Linear):
        twin = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    elif isinstance(layer, nn.Conv2d):
        twin = torch.nn.Conv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            groups=layer.groups,
            bias=layer.bias is not None,
        )
    elif isinstance(layer, nn.BatchNorm2d):
        twin = torch.nn.BatchNorm2d(layer.num_features, eps=layer.eps, momentum=layer.momentum)
    elif isinstance(layer, nn.MaxPool2d):
        twin = torch.nn.MaxPool2d(layer.kernel_size, stride=layer.stride)
    elif isinstance(layer, nn.ReLU):
        twin = torch.nn.ReLU()
    elif isinstance(layer, nn.ReLU6):
        twin = torch.nn.ReLU6()
    elif isinstance(layer, nn.GlobalAvgPool2d):
        twin = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    elif isinstance(layer, nn.Flatten):
        twin = torch.nn.Flatten()
    else:
        raise TypeError(type(layer))
    twin = twin.to(tdtype)
    state = {k: torch.from_numpy(v.copy()) for k, v in layer.state_dict().items()}
    if isinstance(layer, nn.BatchNorm2d):
        state["num_batches_tracked"] = torch.tensor(0)
    twin.load_state_dict(state)
    twin.train(layer.training)
    return twin


def _check_against_torch(layer: nn.Module, x: np.ndarray, rng: np.random.Generator) -> None:
    """Forward output, input gradient, parameter gradients and buffers equal torch's."""
    torch = _torch()
    dtype = x.dtype.type
    tol = TOL[dtype]
    layer.to(dtype)
    twin = _to_torch(torch, layer, dtype)
    x_t = torch.from_numpy(x.copy()).requires_grad_(True)
    y_t = twin(x_t)
    y = layer(x)
    assert y.dtype == x.dtype
    np.testing.assert_allclose(y, y_t.detach().numpy(), rtol=tol, atol=tol)
    grad_out = rng.normal(size=y.shape).astype(dtype)
    y_t.backward(torch.from_numpy(grad_out))
    dx = layer.backward(grad_out)
    assert dx.shape == x.shape and dx.dtype == x.dtype
    np.testing.assert_allclose(dx, x_t.grad.numpy(), rtol=tol, atol=tol)
    torch_params = dict(twin.named_parameters())
    for name, p in layer.named_parameters():
        np.testing.assert_allclose(p.grad, torch_params[name].grad.numpy(), rtol=tol, atol=tol)
    torch_buffers = dict(twin.named_buffers())
    for name, buf in layer.named_buffers():
        np.testing.assert_allclose(buf, torch_buffers[name].numpy(), rtol=tol, atol=tol)


DTYPES = [np.float64, np.float32]


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(dtype, batch, bias):
    rng = np.random.default_rng(batch)
    in_features, out_features = rng.integers(1, 20, size=2)
    layer = nn.Linear(int(in_features), int(out_features), bias=bias, rng=rng)
    x = rng.normal(size=(batch, in_features)).astype(dtype)
    _check_against_torch(layer, x, rng)


CONV_CASES = list(itertools.product([1, 7], [1, 2], [0, 1], [1, 2, 3]))


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("batch", "stride", "padding", "kernel_size"), CONV_CASES)
def test_conv2d_matches_torch(dtype, batch, stride, padding, kernel_size):
    rng = np.random.default_rng([batch, stride, padding, kernel_size])
    c_in, c_out = (int(c) for c in rng.integers(1, 6, size=2))
    h, w = (int(s) for s in rng.integers(kernel_size, 10, size=2))
    layer = nn.Conv2d(c_in, c_out, kernel_size, stride, padding, bias=batch == 7, rng=rng)
    x = rng.normal(size=(batch, c_in, h, w)).astype(dtype)
    _check_against_torch(layer, x, rng)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("batch", "kernel_size", "stride"), list(itertools.product([1, 7], [2, 3], [None, 1, 2]))
)
def test_maxpool2d_matches_torch(dtype, batch, kernel_size, stride):
    rng = np.random.default_rng([batch, kernel_size, stride or 0])
    h, w = (int(s) for s in rng.integers(kernel_size, 12, size=2))
    x = rng.normal(size=(batch, 3, h, w)).astype(dtype)
    _check_against_torch(nn.MaxPool2d(kernel_size, stride), x, rng)


@pytest.mark.torch
def test_maxpool2d_ties_send_the_gradient_to_the_first_maximum_as_torch():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, size=(7, 2, 6, 6)).astype(np.float64)  # many ties
    _check_against_torch(nn.MaxPool2d(2), x, rng)
    _check_against_torch(nn.MaxPool2d(3, stride=1), x, rng)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm2d_matches_torch(dtype, batch, training):
    rng = np.random.default_rng([batch, training])
    c = int(rng.integers(1, 6))
    layer = nn.BatchNorm2d(c)
    layer.weight.data = rng.normal(size=c).astype(np.float32)
    layer.bias.data = rng.normal(size=c).astype(np.float32)
    layer.running_mean = rng.normal(size=c).astype(np.float32)
    layer.running_var = rng.uniform(0.5, 2.0, size=c).astype(np.float32)
    layer.train(training)
    x = rng.normal(3.0, 2.0, size=(batch, c, 5, 4)).astype(dtype)
    _check_against_torch(layer, x, rng)


@pytest.mark.torch
def test_batchnorm2d_running_statistics_follow_torch_over_many_steps():
    torch = _torch()
    rng = np.random.default_rng(1)
    layer = nn.BatchNorm2d(4, momentum=0.3).to(np.float64)
    twin = _to_torch(torch, layer, np.float64)
    for _ in range(5):
        x = rng.normal(1.0, 3.0, size=(3, 4, 2, 3))
        layer(x)
        twin(torch.from_numpy(x))
    np.testing.assert_allclose(layer.running_mean, twin.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(layer.running_var, twin.running_var.numpy(), rtol=1e-12)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 7])
def test_relu_and_flatten_match_torch(dtype, batch):
    rng = np.random.default_rng(batch)
    x = rng.normal(size=(batch, 3, 4, 5)).astype(dtype)
    _check_against_torch(nn.ReLU(), x, rng)
    _check_against_torch(nn.Flatten(), x, rng)


@pytest.mark.torch
def test_default_initialisation_has_torch_bounds():
    torch = _torch()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    # NOTE: 256 output channels, so that even the bias has 256 uniform draws: the chance that
    # all of them stay below 0.9 of the bound is 0.9^256 < 1e-11 (with 16 it was 0.8^16 = 3%).
    layer = nn.Conv2d(8, 256, 3, rng=rng)
    twin = torch.nn.Conv2d(8, 256, 3)
    bound = 1 / np.sqrt(8 * 9)  # torch's kaiming_uniform_(a=sqrt(5)) bound
    for mine, theirs in ((layer.weight.data, twin.weight), (layer.bias.data, twin.bias)):
        theirs = theirs.detach().numpy()
        assert np.abs(mine).max() <= bound and np.abs(theirs).max() <= bound
        # both fill the interval: the largest |value| of many uniform draws is close to it
        assert np.abs(mine).max() > 0.9 * bound and np.abs(theirs).max() > 0.9 * bound
    bn = nn.BatchNorm2d(3)
    assert bn.weight.data.tolist() == [1, 1, 1] and bn.bias.data.tolist() == [0, 0, 0]
    assert bn.running_mean.tolist() == [0, 0, 0] and bn.running_var.tolist() == [1, 1, 1]


# --- finite differences: no torch needed ---------------------------------------------------


def _numerical_grad(f, array: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar f() with respect to every entry of ``array``."""
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + eps
        up = f()
        array[index] = saved - eps
        down = f()
        array[index] = saved
        grad[index] = (up - down) / (2 * eps)
    return grad


FD_LAYERS = [
    ("linear", lambda rng: nn.Linear(5, 3, rng=rng), (4, 5)),
    ("conv_s1_p1", lambda rng: nn.Conv2d(2, 3, 3, padding=1, rng=rng), (2, 2, 5, 5)),
    ("conv_s2_p0", lambda rng: nn.Conv2d(2, 3, 3, stride=2, rng=rng), (2, 2, 6, 5)),
    ("maxpool", lambda rng: nn.MaxPool2d(2), (2, 2, 4, 5)),
    ("maxpool_overlap", lambda rng: nn.MaxPool2d(3, stride=1), (2, 1, 5, 5)),
    ("batchnorm", lambda rng: nn.BatchNorm2d(3), (4, 3, 2, 2)),
    ("relu", lambda rng: nn.ReLU(), (3, 4)),
    ("flatten", lambda rng: nn.Flatten(), (2, 3, 2)),
]


@pytest.mark.parametrize(
    ("make", "shape"), [c[1:] for c in FD_LAYERS], ids=[c[0] for c in FD_LAYERS]
)
def test_backward_matches_finite_differences(make, shape):
    rng = np.random.default_rng(0)
    layer = make(rng).to(np.float64)
    x = rng.normal(size=shape)
    weights = rng.normal(size=layer(x).shape)  # L = sum(weights * y)

    def loss() -> float:
        return float(np.sum(weights * layer(x)))

    layer.zero_grad()
    layer(x)
    dx = layer.backward(weights)
    np.testing.assert_allclose(dx, _numerical_grad(loss, x), rtol=1e-6, atol=1e-7)
    for _, p in layer.named_parameters():
        np.testing.assert_allclose(p.grad, _numerical_grad(loss, p.data), rtol=1e-6, atol=1e-7)


def test_backward_accumulates_parameter_gradients():
    rng = np.random.default_rng(0)
    layer = nn.Linear(3, 2, rng=rng)
    x = rng.normal(size=(4, 3)).astype(np.float32)
    grad_out = np.ones((4, 2), dtype=np.float32)
    layer(x)
    layer.backward(grad_out)
    once = layer.weight.grad.copy()
    layer(x)
    layer.backward(grad_out)
    np.testing.assert_allclose(layer.weight.grad, 2 * once, rtol=1e-6)
    layer.zero_grad()
    assert not layer.weight.grad.any()


def test_everything_stays_float32():
    rng = np.random.default_rng(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, rng=rng),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * 3 * 3, 4, rng=rng),
    )
    x = rng.normal(size=(2, 1, 6, 6)).astype(np.float32)
    y = model(x)
    dx = model.backward(np.ones_like(y))
    assert y.dtype == dx.dtype == np.float32
    assert all(p.grad.dtype == np.float32 for p in model.parameters())
    assert model[1].running_var.dtype == np.float32


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layer", "shape", "expected"),
    [
        (nn.Linear(4, 2), (3, 5), "(N, 4)"),
        (nn.Linear(4, 2), (3, 1, 4), "(N, 4)"),
        (nn.Conv2d(3, 2, 3), (2, 1, 8, 8), "(N, 3, H, W)"),
        (nn.Conv2d(3, 2, 3), (3, 8, 8), "(N, 3, H, W)"),
        (nn.Conv2d(1, 2, 5), (1, 1, 4, 8), "H, W + 2*0 >= 5"),
        (nn.BatchNorm2d(4), (2, 3, 5, 5), "(N, 4, H, W)"),
        (nn.MaxPool2d(2), (2, 3, 5), "(N, C, H, W)"),
        (nn.MaxPool2d(3), (2, 3, 2, 5), "H, W >= 3"),
        (nn.Flatten(), (5,), "at least 2 dimensions"),
    ],
    ids=lambda v: str(v).split("(")[0] if isinstance(v, nn.Module) else None,
)
def test_wrong_input_shape_names_the_layer_and_both_shapes(layer, shape, expected):
    x = np.zeros(shape, dtype=np.float32)
    with pytest.raises(ValueError) as info:
        layer(x)
    message = str(info.value)
    assert message.startswith(type(layer).__name__ + "(")
    assert expected in message and str(shape) in message


def test_integer_input_is_a_type_error():
    with pytest.raises(TypeError, match=r"Linear\(in_features=2.*got int64"):
        nn.Linear(2, 2)(np.zeros((1, 2), dtype=np.int64))


def test_batchnorm_training_needs_more_than_one_value_per_channel():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm2d(2)(np.zeros((1, 2, 1, 1), dtype=np.float32))
    nn.BatchNorm2d(2).eval()(np.zeros((1, 2, 1, 1), dtype=np.float32))  # fine in eval mode


@pytest.mark.parametrize(
    "layer",
    [
        nn.Linear(2, 2),
        nn.Conv2d(1, 1, 1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.BatchNorm2d(1),
        nn.Sequential(nn.ReLU()),
    ],
    ids=lambda m: type(m).__name__,
)
def test_backward_before_forward_is_an_error(layer):
    with pytest.raises(RuntimeError, match=r"backward\(\) called before forward\(\)"):
        layer.backward(np.zeros((1, 1, 2, 2), dtype=np.float32))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: nn.Conv2d(1, 1, 0), "kernel_size must be an int >= 1, got 0"),
        (lambda: nn.Conv2d(1, 1, 3, stride=0), "stride must be an int >= 1, got 0"),
        (lambda: nn.Conv2d(1, 1, 3, padding=-1), "padding must be an int >= 0, got -1"),
        (lambda: nn.MaxPool2d(2, stride=1.5), "stride must be an int >= 1, got 1.5"),
    ],
)
def test_bad_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# --- grouped / depthwise convolution, ReLU6, global average pooling ----------------------------

GROUPED_CASES = [
    # (c_in, c_out, groups, kernel_size, stride, padding)
    (4, 4, 4, 3, 1, 1),  # depthwise, MobileNet's 3x3
    (6, 6, 6, 3, 2, 1),  # depthwise, stride 2
    (5, 10, 5, 3, 1, 0),  # depthwise with channel multiplier 2
    (6, 4, 2, 3, 1, 1),  # two groups
    (6, 9, 3, 1, 1, 0),  # grouped pointwise
    (4, 4, 4, 2, 2, 0),  # even kernel, stride 2
]


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize(("c_in", "c_out", "groups", "k", "stride", "padding"), GROUPED_CASES)
def test_grouped_conv2d_matches_torch(dtype, batch, c_in, c_out, groups, k, stride, padding):
    rng = np.random.default_rng([batch, c_in, c_out, groups, k, stride, padding])
    layer = nn.Conv2d(c_in, c_out, k, stride, padding, groups=groups, bias=batch == 7, rng=rng)
    assert layer.weight.shape == (c_out, c_in // groups, k, k)
    h, w = (int(s) for s in rng.integers(k + 1, 11, size=2))
    x = rng.normal(size=(batch, c_in, h, w)).astype(dtype)
    _check_against_torch(layer, x, rng)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 7])
def test_relu6_and_global_avg_pool_match_torch(dtype, batch):
    rng = np.random.default_rng([batch, 6])
    x = rng.normal(2.0, 5.0, size=(batch, 3, 4, 5)).astype(dtype)  # values below 0 and above 6
    x[0, 0, 0, :2] = [0.0, 6.0]  # the kinks: no gradient at either, as torch
    _check_against_torch(nn.ReLU6(), x, rng)
    _check_against_torch(nn.GlobalAvgPool2d(), x, rng)


@pytest.mark.torch
def test_grouped_conv2d_default_initialisation_has_torch_bounds():
    torch = _torch()
    layer = nn.Conv2d(16, 16, 3, groups=16, rng=np.random.default_rng(0))
    twin = torch.nn.Conv2d(16, 16, 3, groups=16)
    bound = 1 / np.sqrt(1 * 9)  # fan-in of one group: 1 channel * 3 * 3
    for mine, theirs in ((layer.weight.data, twin.weight), (layer.bias.data, twin.bias)):
        theirs = theirs.detach().numpy()
        assert mine.shape == theirs.shape
        assert np.abs(mine).max() <= bound and np.abs(theirs).max() <= bound
    # 144 uniform weights fill the interval (the 16 biases are too few to say so reliably)
    assert np.abs(layer.weight.data).max() > 0.9 * bound
    assert np.abs(twin.weight.detach().numpy()).max() > 0.9 * bound


MOBILE_FD_LAYERS = [
    ("depthwise", lambda rng: nn.Conv2d(3, 3, 3, padding=1, groups=3, rng=rng), (2, 3, 4, 5)),
    ("grouped_s2", lambda rng: nn.Conv2d(4, 6, 3, stride=2, groups=2, rng=rng), (2, 4, 6, 5)),
    ("relu6", lambda rng: nn.ReLU6(), (3, 40)),
    ("global_avg_pool", lambda rng: nn.GlobalAvgPool2d(), (2, 3, 3, 4)),
]


@pytest.mark.parametrize(
    ("make", "shape"), [c[1:] for c in MOBILE_FD_LAYERS], ids=[c[0] for c in MOBILE_FD_LAYERS]
)
def test_mobile_layers_backward_matches_finite_differences(make, shape):
    test_backward_matches_finite_differences(make, shape)


def test_depthwise_conv_is_one_filter_per_channel():
    """Each output channel of a depthwise conv is the plain conv of its own input channel."""
    rng = np.random.default_rng(0)
    depthwise = nn.Conv2d(3, 3, 3, padding=1, groups=3, rng=rng).to(np.float64)
    x = rng.normal(size=(2, 3, 5, 5))
    y = depthwise(x)
    for c in range(3):
        single = nn.Conv2d(1, 1, 3, padding=1, rng=rng).to(np.float64)
        single.weight.data[...] = depthwise.weight.data[c : c + 1]
        single.bias.data[...] = depthwise.bias.data[c]
        np.testing.assert_allclose(y[:, c : c + 1], single(x[:, c : c + 1]), rtol=1e-12)


def test_mobile_layers_stay_float32():
    rng = np.random.default_rng(0)
    model = nn.Sequential(
        nn.Conv2d(2, 2, 3, padding=1, groups=2, rng=rng),
        nn.ReLU6(),
        nn.GlobalAvgPool2d(),
        nn.Linear(2, 3, rng=rng),
    )
    x = rng.normal(size=(2, 2, 5, 5)).astype(np.float32)
    y = model(x)
    dx = model.backward(np.ones_like(y))
    assert y.dtype == dx.dtype == np.float32
    assert all(p.grad.dtype == np.float32 for p in model.parameters())


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: nn.Conv2d(4, 4, 3, groups=0), "groups must be an int >= 1, got 0"),
        (
            lambda: nn.Conv2d(4, 6, 3, groups=4),
            r"in_channels \(4\) and out_channels \(6\) must both be divisible by groups \(4\)",
        ),
    ],
)
def test_bad_groups(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_mobile_layers_bad_input():
    with pytest.raises(ValueError, match=r"GlobalAvgPool2d\(\): expected input of shape"):
        nn.GlobalAvgPool2d()(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 4, H, W\)"):
        nn.Conv2d(4, 4, 3, groups=4)(np.zeros((1, 2, 5, 5), dtype=np.float32))
    for layer in (nn.ReLU6(), nn.GlobalAvgPool2d()):
        with pytest.raises(RuntimeError, match=r"backward\(\) called before forward\(\)"):
            layer.backward(np.zeros((1, 1, 2, 2), dtype=np.float32))


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_clipped_relu_matches_torch_clamp_with_per_channel_bounds(dtype):
    torch = _torch()
    rng = np.random.default_rng(11)
    upper = rng.uniform(0.5, 4.0, size=3)
    layer = nn.ClippedReLU(upper).to(dtype)
    x = rng.normal(1.0, 3.0, size=(5, 3, 4, 4)).astype(dtype)
    x_t = torch.from_numpy(x.copy()).requires_grad_(True)
    bound = torch.from_numpy(layer.upper.copy()).reshape(1, 3, 1, 1)
    y_t = torch.clamp(x_t, min=torch.zeros_like(bound), max=bound)
    grad_out = rng.normal(size=x.shape).astype(dtype)
    y_t.backward(torch.from_numpy(grad_out))
    tol = TOL[dtype]
    np.testing.assert_allclose(layer(x), y_t.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.backward(grad_out), x_t.grad.numpy(), rtol=tol, atol=tol)


def test_clipped_relu_at_six_is_relu6_and_scale_equivariant():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 5.0, size=(4, 3, 5)).astype(np.float32)
    np.testing.assert_array_equal(nn.ClippedReLU(np.full(3, 6.0))(x), nn.ReLU6()(x))
    s = np.array([0.5, 2.0, 3.0])
    scaled = nn.ClippedReLU(6.0 / s)(x / s[:, None])  # (4, 3, 5)
    np.testing.assert_allclose(scaled, nn.ReLU6()(x) / s[:, None], rtol=1e-6)
    with pytest.raises(ValueError, match="upper must be a 1-D array of bounds > 0"):
        nn.ClippedReLU(np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 2, ...\)"):
        nn.ClippedReLU(np.ones(2))(np.zeros((1, 3), dtype=np.float32))
