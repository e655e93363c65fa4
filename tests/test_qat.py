"""Tests of minquant.qat: BatchNorm folding in training, prepare_qat, convert."""

import numpy as np
import pytest

from minquant import nn, ptq, train
from minquant.data import load_mnist
from minquant.fake_quant import FakeQuantize
from minquant.lowbit_qat import TernaryFakeQuantize
from minquant.models import load_pretrained, small_cnn
from minquant.qat import (
    QATConvBn2d,
    QATLinear,
    convert,
    disable_observers,
    fake_quantizers,
    prepare_qat,
)
from minquant.quant import fake_quantize, qrange


def _conv_bn(rng: np.random.Generator) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(3, 4, 3, padding=1, rng=rng)
    bn = nn.BatchNorm2d(4)
    bn.weight.data[...] = rng.uniform(0.5, 1.5, size=4)
    bn.bias.data[...] = rng.normal(size=4)
    bn.running_mean[...] = rng.normal(size=4)
    bn.running_var[...] = rng.uniform(0.5, 2.0, size=4)
    return conv, bn


def test_prepare_qat_places_quantizers_and_copies() -> None:
    model = small_cnn(rng=np.random.default_rng(0))
    before = model.state_dict()
    qat_model = prepare_qat(model, weight_bits=4, act_bits=4)
    kinds = [type(m).__name__ for m in qat_model]
    assert kinds == [
        "FakeQuantize",
        "QATConvBn2d",
        "ReLU",
        "FakeQuantize",
        "MaxPool2d",
        "QATConvBn2d",
        "ReLU",
        "FakeQuantize",
        "MaxPool2d",
        "Flatten",
        "QATLinear",
        "FakeQuantize",
    ]
    assert qat_model.training
    assert len(fake_quantizers(qat_model)) == 7  # 4 activations, 3 weights
    assert (qat_model[1].weight_fake_quant.qmin, qat_model[1].weight_fake_quant.qmax) == (-7, 7)
    assert (qat_model[0].qmin, qat_model[0].qmax) == (0, 15)
    # the float model is untouched, and the QAT model trains its own copy
    qat_model[1].conv.weight.data[...] = 0.0
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_frozen_conv_bn_is_the_folded_convolution() -> None:
    """Frozen statistics: exactly conv(x, fake_quantize(w')) + b' (folding by minquant.ptq)."""
    rng = np.random.default_rng(1)
    conv, bn = _conv_bn(rng)
    folded = ptq.fold_batchnorm(nn.Sequential(conv, bn))[0]
    w_fq = FakeQuantize(4, signed=True, symmetric=True, axis=0, narrow_range=True)
    layer = QATConvBn2d(conv, bn, w_fq, freeze_bn_steps=0)
    x = rng.normal(size=(2, 3, 6, 6)).astype(np.float32)
    y = layer(x)  # training mode, but frozen after 0 steps
    assert layer.bn_frozen
    w = folded.weight.data
    scale = np.abs(w).reshape(4, -1).max(axis=1) / np.float32(7)  # max|w'| / qmax
    np.testing.assert_allclose(w_fq.scale, scale, rtol=1e-6)
    folded.weight.data = fake_quantize(w, w_fq.scale, np.zeros(4, np.int64), -7, 7, axis=0)
    np.testing.assert_allclose(y, folded(x), rtol=1e-5, atol=1e-5)


def _torch_qconfig(torch):
    from torch.ao.quantization import (
        FakeQuantize as TorchFakeQuantize,
    )
    from torch.ao.quantization import (
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
        QConfig,
    )

    weight = TorchFakeQuantize.with_args(
        observer=MovingAveragePerChannelMinMaxObserver,
        averaging_constant=1.0,
        quant_min=-7,
        quant_max=7,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
    )
    act = TorchFakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=15, dtype=torch.quint8
    )
    return QConfig(activation=act, weight=weight)


@pytest.mark.torch
@pytest.mark.parametrize("frozen", [False, True])
def test_conv_bn_matches_torch_conv_bn2d(frozen) -> None:
    """Forward, running statistics and every gradient against torch's QAT ConvBn2d."""
    torch = pytest.importorskip("torch")
    from torch.ao.nn.intrinsic.qat import ConvBn2d

    rng = np.random.default_rng(2)
    conv, bn = _conv_bn(rng)
    ref = ConvBn2d(3, 4, 3, padding=1, bias=True, qconfig=_torch_qconfig(torch), freeze_bn=frozen)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(conv.weight.data))
        ref.bias.copy_(torch.tensor(conv.bias.data))
        ref.bn.weight.copy_(torch.tensor(bn.weight.data))
        ref.bn.bias.copy_(torch.tensor(bn.bias.data))
        ref.bn.running_mean.copy_(torch.tensor(bn.running_mean))
        ref.bn.running_var.copy_(torch.tensor(bn.running_var))
    w_fq = FakeQuantize(4, signed=True, symmetric=True, axis=0, narrow_range=True)
    w_fq.observer.averaging_constant = 1.0
    layer = QATConvBn2d(conv, bn, w_fq, freeze_bn_steps=0 if frozen else 100)
    x = rng.normal(size=(4, 3, 6, 6)).astype(np.float32)
    g = rng.normal(size=(4, 4, 6, 6)).astype(np.float32)
    x_t = torch.tensor(x, requires_grad=True)
    y_t = ref(x_t)
    y_t.backward(torch.tensor(g))
    y = layer(x)
    dx = layer.backward(g)
    np.testing.assert_allclose(y, y_t.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.running_mean, ref.bn.running_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(bn.running_var, ref.bn.running_var.numpy(), rtol=1e-5)
    np.testing.assert_allclose(dx, x_t.grad.numpy(), rtol=1e-3, atol=1e-4)
    pairs = [
        (conv.weight.grad, ref.weight.grad),
        (conv.bias.grad, ref.bias.grad),
        (bn.weight.grad, ref.bn.weight.grad),
        (bn.bias.grad, ref.bn.bias.grad),
    ]
    for ours, theirs in pairs:
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-3, atol=1e-3)


@pytest.mark.torch
def test_qat_linear_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    from torch.ao.nn.qat import Linear as TorchQATLinear

    rng = np.random.default_rng(3)
    linear = nn.Linear(12, 5, rng=rng)
    ref = TorchQATLinear(12, 5, qconfig=_torch_qconfig(torch))
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(linear.weight.data))
        ref.bias.copy_(torch.tensor(linear.bias.data))
    w_fq = FakeQuantize(4, signed=True, symmetric=True, axis=0, narrow_range=True)
    layer = QATLinear(linear, w_fq)
    x = rng.normal(size=(6, 12)).astype(np.float32)
    g = rng.normal(size=(6, 5)).astype(np.float32)
    x_t = torch.tensor(x, requires_grad=True)
    y_t = ref(x_t)
    y_t.backward(torch.tensor(g))
    np.testing.assert_allclose(layer(x), y_t.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.backward(g), x_t.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(linear.weight.grad, ref.weight.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(linear.bias.grad, ref.bias.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def finetuned() -> tuple[nn.Sequential, np.ndarray, np.ndarray]:
    """small_cnn, W4A4 QAT fine-tuned briefly on a subset (a few seconds)."""
    X, y = load_mnist("train")
    rng = np.random.default_rng(0)
    qat_model = prepare_qat(load_pretrained(), weight_bits=4, act_bits=4, freeze_bn_steps=10)
    train.fit(qat_model, X[:1024], y[:1024], epochs=1, batch_size=64, lr=1e-4, rng=rng, quiet=True)
    X_test, y_test = load_mnist("test")
    return qat_model, X_test, y_test


def test_converted_model_agrees_with_qat_model(finetuned) -> None:
    qat_model, X_test, _ = finetuned
    qmodel = convert(qat_model)
    qat_pred = train.predict(qat_model.eval(), X_test).argmax(axis=1)
    int_pred = qmodel(X_test).argmax(axis=1)
    assert np.mean(int_pred == qat_pred) >= 0.995
    assert qmodel.forward_int(X_test[:4]).dtype == np.int8
    assert qmodel.config.weight_bits == 4 and qmodel.config.act_bits == 4


def test_converted_weights_are_the_trained_fake_quantized_weights(finetuned) -> None:
    qat_model, _, _ = finetuned
    qmodel = convert(qat_model)
    w_fold, _ = qat_model[1].folded_weight_bias()
    w_hat = qat_model[1].weight_fake_quant.eval()(w_fold)  # eval: no observation
    qat_model[1].weight_fake_quant.train()
    step = qmodel.steps[0]
    qmin, qmax = qrange(4, signed=True, narrow_range=True)
    assert step.module.w_t.min() >= qmin and step.module.w_t.max() <= qmax
    np.testing.assert_array_equal(step.sim_layer.weight.data, w_hat)


def test_evaluation_does_not_move_the_ranges(finetuned) -> None:
    qat_model, X_test, _ = finetuned
    scales = [fq.scale.copy() for fq in fake_quantizers(qat_model)]
    train.evaluate(qat_model, X_test[:100] * 3.0, np.zeros(100, np.int64))
    for fq, scale in zip(fake_quantizers(qat_model), scales, strict=True):
        np.testing.assert_array_equal(fq.scale, scale)


def test_learnable_qat_trains_scales_and_converts() -> None:
    rng = np.random.default_rng(4)
    X, y = load_mnist("train")
    qat_model = prepare_qat(load_pretrained(), 4, 4, learnable=True, freeze_bn_steps=0)
    qat_model(X[:256])  # the observers initialise the step sizes
    disable_observers(qat_model)
    scales = [fq.scale.copy() for fq in fake_quantizers(qat_model)]
    train.fit(qat_model, X[:256], y[:256], epochs=1, batch_size=64, lr=1e-3, rng=rng, quiet=True)
    assert any(
        not np.array_equal(fq.scale, s)
        for fq, s in zip(fake_quantizers(qat_model), scales, strict=True)
    )
    assert all(np.all(fq.scale > 0) for fq in fake_quantizers(qat_model))
    qmodel = convert(qat_model)
    X_test, _ = load_mnist("test")
    qat_pred = train.predict(qat_model.eval(), X_test[:200]).argmax(axis=1)
    assert np.mean(qmodel(X_test[:200]).argmax(axis=1) == qat_pred) >= 0.99


def test_convert_a_never_trained_model_is_an_error() -> None:
    qat_model = prepare_qat(small_cnn(rng=np.random.default_rng(0)), 4, 4)
    with pytest.raises(ValueError, match="never observed"):
        convert(qat_model)
    with pytest.raises(ValueError, match="never observed"):  # eval mode does not calibrate
        qat_model.eval()(np.zeros((2, 1, 28, 28), np.float32))
    with pytest.raises(ValueError, match="never observed"):
        convert(qat_model)


def test_bad_arguments() -> None:
    model = small_cnn(rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="weight_bits"):
        prepare_qat(model, weight_bits=1)
    with pytest.raises(ValueError, match="act_bits"):
        prepare_qat(model, act_bits=9)
    with pytest.raises(TypeError, match="weight_bits"):
        prepare_qat(model, weight_bits=4.5)
    with pytest.raises(ValueError, match="freeze_bn_steps"):
        prepare_qat(model, freeze_bn_steps=-1)
    with pytest.raises(TypeError, match="Sequential"):
        prepare_qat(model[0])
    with pytest.raises(ValueError, match="must follow a Conv2d"):
        prepare_qat(nn.Sequential(nn.BatchNorm2d(1), nn.Flatten()))
    with pytest.raises(ValueError, match="prepare_qat"):
        convert(nn.Sequential(nn.Flatten()))
    with pytest.raises(ValueError, match="weight_quant must be one of"):
        prepare_qat(model, weight_quant="absmax")
    with pytest.raises(ValueError, match="weight_bits=2 and learnable=False, got weight_bits=4"):
        prepare_qat(model, weight_bits=4, weight_quant="ternary")
    with pytest.raises(ValueError, match="learnable=True"):
        prepare_qat(model, weight_bits=2, weight_quant="ternary", learnable=True)


def _short_finetune(**kwargs: object) -> nn.Sequential:
    """small_cnn at W2A4 fine-tuned on 256 training images (a second or two)."""
    X, y = load_mnist("train")
    qat_model = prepare_qat(load_pretrained(), 2, 4, freeze_bn_steps=2, **kwargs)
    rng = np.random.default_rng(5)
    train.fit(qat_model, X[:256], y[:256], epochs=1, batch_size=64, lr=5e-4, rng=rng, quiet=True)
    # NOTE: the weight scales were observed before the last optimizer step; one more
    # training-mode pass (BatchNorm already frozen) makes them those of the final weights.
    qat_model.train()(X[:64])
    return qat_model.eval()


def _agreement(qat_model: nn.Sequential) -> float:
    X_test, _ = load_mnist("test")
    qmodel = convert(qat_model)
    int_pred = qmodel(X_test).argmax(axis=1)
    assert np.mean(int_pred == qmodel.simulate(X_test).argmax(axis=1)) >= 0.999
    return float(np.mean(int_pred == train.predict(qat_model.eval(), X_test).argmax(axis=1)))


def test_ternary_qat_converts_to_codes_in_minus_one_zero_one() -> None:
    qat_model = _short_finetune(weight_quant="ternary")
    layers = [m for m in qat_model if isinstance(m, (QATConvBn2d, QATLinear))]
    assert all(isinstance(m.weight_fake_quant, TernaryFakeQuantize) for m in layers)
    assert _agreement(qat_model) >= 0.999
    qmodel = convert(qat_model)
    assert qmodel.config.weight_bits == 2
    steps = [step for step in qmodel.steps if step.sim_layer is not None]
    for layer, step in zip(layers, steps, strict=True):
        w_fold, _ = layer.folded_weight_bias()  # (C, ...)
        gamma = np.abs(w_fold.reshape(len(w_fold), -1)).mean(axis=1)  # BitNet absmean, (C,)
        np.testing.assert_allclose(layer.weight_fake_quant.scale, gamma, rtol=1e-6)
        codes = step.module.w_t
        assert codes.dtype == np.int8 and set(np.unique(codes)) == {-1, 0, 1}
        w_hat = layer.weight_fake_quant.eval()(w_fold)  # eval: the scale stays
        np.testing.assert_array_equal(step.sim_layer.weight.data, w_hat)


def test_full_two_bit_grid_uses_code_minus_two() -> None:
    qat_model = _short_finetune(weight_narrow_range=False)
    assert _agreement(qat_model) >= 0.999
    fq = qat_model[1].weight_fake_quant
    assert (fq.qmin, fq.qmax) == (-2, 1)
    w_fold, _ = qat_model[1].folded_weight_bias()  # (C, C_in, k, k)
    max_abs = np.abs(w_fold.reshape(len(w_fold), -1)).max(axis=1)  # (C,)
    # symmetric signed scale, as torch: max|w| / ((qmax - qmin) / 2) = max|w| / 1.5
    np.testing.assert_allclose(fq.scale, max_abs / 1.5, rtol=1e-6)
    codes = convert(qat_model).steps[0].module.w_t
    assert codes.min() == -2 and codes.max() == 1


def test_lsq_weight_scale_is_recomputed_from_the_weights() -> None:
    qat_model = _short_finetune(weight_quant="lsq", weight_narrow_range=False)
    assert _agreement(qat_model) >= 0.999
    layer = qat_model[-2]  # the QATLinear
    w = layer.linear.weight.data  # (10, 1568)
    expected = 2 * np.abs(w).mean(axis=1) / np.sqrt(1)  # qmax = 1
    np.testing.assert_allclose(layer.weight_fake_quant.scale, expected, rtol=1e-6)
