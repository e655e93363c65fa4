"""Weight-only models: every Linear replaced, the input model untouched, the method registry."""

import copy

import numpy as np
import pytest

import minquant as mq
from minquant import nn
from minquant.kernels.gemv import rounding_bound
from minquant.llm import weight_only
from minquant.llm.weight_only import WeightOnlyLinear, quantize_rtn, quantize_weights
from minquant.packing import bits_per_weight


def mlp(rng):
    return nn.Sequential(
        nn.Linear(64, 128, rng=rng), nn.ReLU(), nn.Linear(128, 32, rng=rng, bias=False)
    )


class Block(nn.Module):
    """A hand-made module: Linear attributes, a nested module, a Sequential inside."""

    def __init__(self, rng):
        super().__init__()
        self.up = nn.Linear(32, 64, rng=rng)
        self.inner = nn.Module()
        self.inner.proj = nn.Linear(64, 64, rng=rng, bias=False)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(64, 16, rng=rng))

    def forward(self, x):
        return self.head(self.inner.proj(self.up(x)))


def linear_names(model, kind):
    return sorted(name for name, m in model.named_modules() if type(m) is kind)


@pytest.mark.parametrize("make", [mlp, Block])
def test_every_linear_replaced_and_input_untouched(make):
    rng = np.random.default_rng(0)
    model = make(rng)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    names = linear_names(model, nn.Linear)
    qmodel = quantize_weights(model, bits=4, group_size=32)
    assert linear_names(qmodel, WeightOnlyLinear) == names and len(names) >= 2
    assert linear_names(qmodel, nn.Linear) == []
    assert linear_names(model, nn.Linear) == names  # the input model keeps its Linears
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    x = rng.standard_normal((5, model.up.in_features if make is Block else 64))
    x = x.astype(np.float32)
    y, y_q = model(x), qmodel(x)
    assert y.shape == y_q.shape and 15 < mq.sqnr(y, y_q) < 40  # 4 bits: about 20 dB
    # the same model with the dequantized weights put back as floats gives the same output
    simulated = copy.deepcopy(model)
    quantized = dict(qmodel.named_modules())
    for name, module in simulated.named_modules():
        if isinstance(module, nn.Linear):
            module.weight.data = quantized[name].dequantized_weight()
    np.testing.assert_allclose(y_q, simulated(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("rows", [1, 7, 40])  # GEMV kernel (<= 16 rows) and BLAS tiles
def test_forward_equals_dequantize_then_matmul(num_bits, symmetric, rows, monkeypatch):
    monkeypatch.setattr(weight_only, "TILE_ROWS", 48)  # several tiles, a partial last one
    rng = np.random.default_rng(num_bits)
    linear = nn.Linear(128, 100, rng=rng)
    layer = WeightOnlyLinear.from_linear(linear, num_bits, 32, symmetric)
    x = rng.standard_normal((rows, 128)).astype(np.float32)
    w_hat = layer.dequantized_weight()  # (100, 128)
    y = layer(x)
    y_ref = x @ w_hat.T + linear.bias.data
    assert y.dtype == np.float32
    # NOTE: the bias add rounds once more: half an ulp of the result.
    bound = rounding_bound(x, w_hat) + np.spacing(np.abs(y_ref))
    assert np.all(np.abs(y - y_ref) <= bound)
    assert layer(x.reshape(rows, 2, 64).reshape(rows, 128)[None]).shape == (1, rows, 100)


def test_dequantized_weight_is_rtn_per_group():
    """Codes and scales are the public per-group RTN with float16-rounded scales."""
    rng = np.random.default_rng(1)
    linear = nn.Linear(256, 16, rng=rng)
    w = linear.weight.data
    layer = WeightOnlyLinear.from_linear(linear, 4, 64, symmetric=False)
    scale, zero_point = mq.quant.calc_group_qparams(w, 0, 15, 1, 64)
    scale = scale.astype(np.float16).astype(np.float32)
    w_q = mq.quantize(w, scale, zero_point, 0, 15, axis=1, group_size=64)
    expected = mq.dequantize(w_q, scale, zero_point, axis=1, group_size=64)
    np.testing.assert_array_equal(layer.dequantized_weight(), expected)
    np.testing.assert_array_equal(layer.zero_point, zero_point)


@pytest.mark.torch
def test_rtn_codes_match_torch_quantize_per_channel_group():
    pytest.importorskip("torch")
    import torch
    import torch.ao.quantization.fx._decomposed  # registers torch.ops.quantized_decomposed

    w = np.random.default_rng(2).standard_normal((8, 128)).astype(np.float32)
    for symmetric in (True, False):
        codes, scale, zero_point = quantize_rtn(w, 4, 32, symmetric)
        qmin, qmax = weight_only.weight_qrange(4, symmetric)
        zp = np.zeros(scale.shape, np.int64) if zero_point is None else zero_point
        q_torch = torch.ops.quantized_decomposed.quantize_per_channel_group(
            torch.from_numpy(w),
            torch.from_numpy(scale.ravel()),
            torch.from_numpy(zp.ravel()),
            qmin,
            qmax,
            torch.int32,
            32,
        )
        np.testing.assert_array_equal(codes, q_torch.numpy())


def test_no_float_copy_of_the_weight_and_honest_size():
    linear = nn.Linear(512, 64, rng=np.random.default_rng(3))
    layer = WeightOnlyLinear.from_linear(linear, 4, 128, symmetric=True)
    layer(np.ones((1, 512), np.float32))
    layer(np.ones((40, 512), np.float32))
    for name, value in vars(layer).items():
        if isinstance(value, np.ndarray):
            assert value.dtype in (np.uint8, np.float16), name
            assert value.nbytes <= linear.weight.data.nbytes / 8, name
    assert layer.zero_point is None
    assert layer.bits_per_weight() == bits_per_weight(4, 128) == 4.125
    asym = WeightOnlyLinear.from_linear(linear, 3, 64, symmetric=False)
    assert asym.bits_per_weight() == bits_per_weight(3, 64, 16, 8) == 3.375


def test_per_channel_and_error_falls_with_bits():
    rng = np.random.default_rng(4)
    model = mlp(rng)
    x = rng.standard_normal((8, 64)).astype(np.float32)
    errors = [
        mq.mse(model(x), quantize_weights(model, bits=b, group_size=None)(x)) for b in (2, 4, 8)
    ]
    assert errors[0] > errors[1] > errors[2] > 0
    qmodel = quantize_weights(model, bits=8, group_size=None)
    assert qmodel[0].group_size == 64 and qmodel[0].scale.shape == (128, 1)


def test_backward_is_refused():
    layer = WeightOnlyLinear.from_linear(nn.Linear(8, 4, rng=np.random.default_rng(0)), 4, 8)
    with pytest.raises(NotImplementedError, match="inference only"):
        layer.backward(np.ones((1, 4), np.float32))


def test_method_registry_gets_each_layers_calibration_inputs(monkeypatch):
    seen = {}

    def recording_rtn(w, num_bits, group_size, symmetric, X):
        seen[w.shape] = X
        return quantize_rtn(w, num_bits, group_size, symmetric)

    monkeypatch.setitem(weight_only.WEIGHT_QUANTIZERS, "recording", recording_rtn)
    rng = np.random.default_rng(5)
    model = mlp(rng)
    X = rng.standard_normal((6, 64)).astype(np.float32)
    qmodel = quantize_weights(model, bits=4, group_size=32, method="recording", X_calib=X)
    np.testing.assert_array_equal(seen[(128, 64)], X)  # the first layer sees the model input
    hidden = np.maximum(model[0](X), 0)  # (6, 128) the second layer's input
    np.testing.assert_array_equal(seen[(32, 128)], hidden)
    np.testing.assert_array_equal(qmodel(X), quantize_weights(model, bits=4, group_size=32)(X))
    assert type(model[0].forward).__name__ == "method"  # the recorders are gone


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "gptq9"}, ValueError, "method must be one of"),
        ({"bits": 1}, ValueError, r"bits must be an int in \[2, 8\]"),
        ({"bits": 9}, ValueError, r"bits must be an int in \[2, 8\]"),
        ({"group_size": 48}, ValueError, "not divisible by group_size=48"),
        ({"bits": 3, "group_size": 4}, ValueError, "group_size=4 must be a multiple of 8"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        quantize_weights(mlp(np.random.default_rng(0)), **{"group_size": 32, **kwargs})


def test_a_method_must_return_float16_scales(monkeypatch):
    def bad(w, num_bits, group_size, symmetric, X):
        codes, scale, zero_point = quantize_rtn(w, num_bits, group_size, symmetric)
        return codes, scale * np.float32(1 + 2**-20), zero_point

    monkeypatch.setitem(weight_only.WEIGHT_QUANTIZERS, "bad", bad)
    with pytest.raises(ValueError, match="float16 represents exactly"):
        quantize_weights(mlp(np.random.default_rng(0)), method="bad")


def test_wrong_input():
    layer = WeightOnlyLinear.from_linear(nn.Linear(8, 4, rng=np.random.default_rng(0)), 4, 8)
    with pytest.raises(ValueError, match=r"float32 input of shape \(\.\.\., 8\)"):
        layer(np.ones((2, 8)))
    with pytest.raises(ValueError, match=r"float32 input of shape \(\.\.\., 8\)"):
        layer(np.ones((2, 7), np.float32))
