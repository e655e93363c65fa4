"""Tests of minquant.fake_quant against PyTorch: forward bit for bit, STE masks, LSQ gradients."""

import numpy as np
import pytest

from minquant.fake_quant import FakeQuantize, fake_quantize_with_mask, lsq_backward
from minquant.lowbit_qat import AbsMeanObserver, TernaryFakeQuantize, lsq_init_factor
from minquant.nn import Parameter
from minquant.quant import EPS, fake_quantize, qrange

# (num_bits, signed, symmetric) of the quantizers a QAT model uses, and a few more
CONFIGS = [(8, False, False), (8, True, True), (4, False, False), (4, True, True), (2, True, True)]


def _tie_input(rng: np.random.Generator, scale: float, shape: tuple[int, ...]) -> np.ndarray:
    """Values spread over the range, with a quarter of them exactly on rounding ties."""
    x = rng.normal(0.0, 8 * scale, size=shape).astype(np.float32)  # (like shape)
    ties = (rng.integers(-40, 40, size=shape) + 0.5) * scale  # k + 1/2 steps
    pick = rng.random(shape) < 0.25
    return np.where(pick, ties, x).astype(np.float32)


def test_fake_quantize_with_mask_matches_fake_quantize() -> None:
    rng = np.random.default_rng(0)
    x = _tie_input(rng, 0.25, (500,))
    x_hat, mask = fake_quantize_with_mask(x, 0.25, 3, 0, 15)
    np.testing.assert_array_equal(x_hat, fake_quantize(x, 0.25, 3, 0, 15))
    q = 3 + np.rint(x / np.float32(0.25))
    np.testing.assert_array_equal(mask, (q >= 0) & (q <= 15))


def test_mask_is_taken_after_rounding() -> None:
    # 15.5 rounds (half to even) to 16 > qmax: blocked; 14.5 rounds to 14: passes.
    _, mask = fake_quantize_with_mask(np.array([14.5, 15.5, -0.5, -1.5]), 1.0, 0, 0, 15)
    assert mask.tolist() == [True, False, True, False]


@pytest.mark.torch
@pytest.mark.parametrize("num_bits, signed, symmetric", CONFIGS)
def test_functional_forward_and_mask_match_torch(num_bits, signed, symmetric) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(num_bits)
    qmin, qmax = qrange(num_bits, signed=signed)
    scale, zero_point = 0.0625, (0 if symmetric else (qmin + qmax) // 2 + 1)
    x = _tie_input(rng, scale, (4, 3, 5, 5))
    x_t = torch.tensor(x, requires_grad=True)
    y_t = torch.fake_quantize_per_tensor_affine(x_t, scale, zero_point, qmin, qmax)
    y_t.backward(torch.ones_like(y_t))
    x_hat, mask = fake_quantize_with_mask(x, scale, zero_point, qmin, qmax)
    np.testing.assert_array_equal(x_hat, y_t.detach().numpy())
    np.testing.assert_array_equal(mask.astype(np.float32), x_t.grad.numpy())


@pytest.mark.torch
@pytest.mark.parametrize("axis", [0, 1])
def test_functional_per_channel_matches_torch(axis) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(axis)
    x = _tie_input(rng, 0.125, (6, 4, 3, 3))
    channels = x.shape[axis]
    scale = np.array([0.125, 0.25, 0.0625, 0.5, 0.125, 1.0][:channels], dtype=np.float32)
    zero_point = rng.integers(0, 4, size=channels)
    x_t = torch.tensor(x, requires_grad=True)
    y_t = torch.fake_quantize_per_channel_affine(
        x_t, torch.tensor(scale), torch.tensor(zero_point, dtype=torch.int32), axis, -8, 7
    )
    y_t.backward(torch.ones_like(y_t))
    x_hat, mask = fake_quantize_with_mask(x, scale, zero_point, -8, 7, axis=axis)
    np.testing.assert_array_equal(x_hat, y_t.detach().numpy())
    np.testing.assert_array_equal(mask.astype(np.float32), x_t.grad.numpy())


@pytest.mark.torch
@pytest.mark.parametrize("num_bits, signed, symmetric", CONFIGS)
def test_module_matches_torch_fake_quantize(num_bits, signed, symmetric) -> None:
    """Several steps of observe + fake-quantize, forward and gradient, bit for bit."""
    torch = pytest.importorskip("torch")
    from torch.ao.quantization import FakeQuantize as TorchFakeQuantize
    from torch.ao.quantization import MovingAverageMinMaxObserver

    qmin, qmax = qrange(num_bits, signed=signed)
    qscheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
    dtype = torch.qint8 if signed else torch.quint8
    ref = TorchFakeQuantize(
        observer=MovingAverageMinMaxObserver,
        quant_min=qmin,
        quant_max=qmax,
        dtype=dtype,
        qscheme=qscheme,
    )
    fq = FakeQuantize(num_bits=num_bits, signed=signed, symmetric=symmetric)
    rng = np.random.default_rng(7)
    for step in range(5):
        x = rng.normal(0.3 * step, 1.0 + step, size=(8, 3, 6, 6)).astype(np.float32)
        if step == 4:
            ref.disable_observer()
            fq.disable_observer()
            x = _tie_input(rng, float(ref.scale[0]), x.shape)
        g = rng.normal(size=x.shape).astype(np.float32)
        x_t = torch.tensor(x, requires_grad=True)
        y_t = ref(x_t)
        y_t.backward(torch.tensor(g))
        y = fq(x)
        np.testing.assert_array_equal(fq.scale, ref.scale.numpy())
        np.testing.assert_array_equal(fq.zero_point, ref.zero_point.numpy())
        np.testing.assert_array_equal(y, y_t.detach().numpy())
        np.testing.assert_array_equal(fq.backward(g), x_t.grad.numpy())


@pytest.mark.torch
def test_module_per_channel_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    from torch.ao.quantization import FakeQuantize as TorchFakeQuantize
    from torch.ao.quantization import MovingAveragePerChannelMinMaxObserver

    ref = TorchFakeQuantize(
        observer=MovingAveragePerChannelMinMaxObserver,
        quant_min=-7,
        quant_max=7,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
    )
    fq = FakeQuantize(num_bits=4, signed=True, symmetric=True, axis=0, narrow_range=True)
    rng = np.random.default_rng(3)
    for _ in range(3):
        w = rng.normal(0.0, 0.2, size=(8, 4, 3, 3)).astype(np.float32)
        g = rng.normal(size=w.shape).astype(np.float32)
        w_t = torch.tensor(w, requires_grad=True)
        y_t = ref(w_t)
        y_t.backward(torch.tensor(g))
        np.testing.assert_array_equal(fq(w), y_t.detach().numpy())
        np.testing.assert_array_equal(fq.scale, ref.scale.numpy())
        np.testing.assert_array_equal(fq.backward(g), w_t.grad.numpy())


def test_switches() -> None:
    fq = FakeQuantize(num_bits=4, signed=False)
    x = np.linspace(0.0, 1.5, 16, dtype=np.float32)
    fq(x)
    fq.disable_observer()
    fq(4 * x)  # not observed: the range stays [0, 1.5]
    assert fq.num_observed == 1
    np.testing.assert_array_equal(fq.scale, np.float32(1.5) / np.float32(15))
    fq.disable_fake_quant()
    np.testing.assert_array_equal(fq(x + 0.01), x + 0.01)
    grad = np.arange(16, dtype=np.float32)
    np.testing.assert_array_equal(fq.backward(grad), grad)
    fq.enable_fake_quant()
    assert not np.array_equal(fq(x + 0.01), x + 0.01)


def _torch_lsq(torch, x, g, scale, zero_point, qmin, qmax, axis, grad_factor):
    x_t = torch.tensor(x, requires_grad=True)
    s_t = torch.tensor(scale, requires_grad=True)
    z_t = torch.tensor(zero_point, requires_grad=True)
    if axis is None:
        y_t = torch._fake_quantize_learnable_per_tensor_affine(
            x_t, s_t, z_t, qmin, qmax, grad_factor
        )
    else:
        y_t = torch._fake_quantize_learnable_per_channel_affine(
            x_t, s_t, z_t, axis, qmin, qmax, grad_factor
        )
    y_t.backward(torch.tensor(g))
    return y_t.detach().numpy(), x_t.grad.numpy(), s_t.grad.numpy(), z_t.grad.numpy()


@pytest.mark.torch
@pytest.mark.parametrize("zero_point", [0.0, 3.0, 2.5, 1.5, -0.5, 16.2])
def test_lsq_backward_per_tensor_matches_torch(zero_point) -> None:
    """Half-integer zero points exercise PyTorch's two zero-point roundings."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(int(10 * zero_point) + 100)
    scale = np.array([0.125], dtype=np.float32)
    z = np.array([zero_point], dtype=np.float32)
    x = _tie_input(rng, 0.125, (16, 3, 7, 7))
    # NOTE: a one-signed upstream gradient keeps the sum well conditioned: PyTorch sums in
    # float32, we sum in float64, and a cancelling sum would differ by more than 1e-6.
    g = rng.uniform(0.1, 1.0, size=x.shape).astype(np.float32)
    grad_factor = 1.0 / np.sqrt(x.size * 15)
    y_t, dx_t, ds_t, dz_t = _torch_lsq(torch, x, g, scale, z, 0, 15, None, grad_factor)
    x_hat, _ = fake_quantize_with_mask(x, scale, np.clip(np.rint(z), 0, 15), 0, 15)
    np.testing.assert_array_equal(x_hat, y_t)
    dx, ds, dz = lsq_backward(g, x, scale, z, 0, 15, None, grad_factor)
    np.testing.assert_array_equal(dx, dx_t)
    np.testing.assert_allclose(ds, ds_t, rtol=1e-6)
    np.testing.assert_allclose(dz, dz_t, rtol=1e-6)


@pytest.mark.torch
def test_lsq_backward_per_channel_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    w = _tie_input(rng, 0.05, (8, 4, 3, 3))
    g = rng.uniform(0.1, 1.0, size=w.shape).astype(np.float32)
    scale = rng.uniform(0.02, 0.08, size=8).astype(np.float32)
    zero_point = np.array([0, 1, -1, 0.5, 1.5, 0, 2, -2], dtype=np.float32)
    grad_factor = 1.0 / np.sqrt(w.size * 7)
    y_t, dx_t, ds_t, dz_t = _torch_lsq(torch, w, g, scale, zero_point, -8, 7, 0, grad_factor)
    z_int = np.clip(np.rint(zero_point), -8, 7).astype(np.int64)
    x_hat, _ = fake_quantize_with_mask(w, scale, z_int, -8, 7, axis=0)
    np.testing.assert_array_equal(x_hat, y_t)
    dx, ds, dz = lsq_backward(g, w, scale, zero_point, -8, 7, 0, grad_factor)
    np.testing.assert_array_equal(dx, dx_t)
    np.testing.assert_allclose(ds, ds_t, rtol=1e-6)
    np.testing.assert_allclose(dz, dz_t, rtol=1e-6, atol=1e-12)


@pytest.mark.torch
@pytest.mark.parametrize("symmetric, axis", [(False, None), (True, None), (True, 0)])
def test_learnable_module_matches_torch(symmetric, axis) -> None:
    """Observer initialises the qparams, then they learn; gradients as PyTorch's module."""
    torch = pytest.importorskip("torch")
    from torch.ao.quantization import (
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
    )
    from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize

    signed = symmetric
    qmin, qmax = qrange(4, signed=signed)
    if axis is None:
        observer, qscheme, channels = MovingAverageMinMaxObserver, torch.per_tensor_affine, -1
        qscheme = torch.per_tensor_symmetric if symmetric else qscheme
    else:
        observer, qscheme = MovingAveragePerChannelMinMaxObserver, torch.per_channel_symmetric
        channels = 6
    kwargs = {"ch_axis": axis} if axis is not None else {}
    ref = _LearnableFakeQuantize(
        observer,
        quant_min=qmin,
        quant_max=qmax,
        channel_len=channels,
        use_grad_scaling=True,
        dtype=torch.qint8 if signed else torch.quint8,
        qscheme=qscheme,
        **kwargs,
    )
    fq = FakeQuantize(num_bits=4, signed=signed, symmetric=symmetric, axis=axis, learnable=True)
    rng = np.random.default_rng(11)
    x0 = rng.normal(0.5, 1.0, size=(6, 5, 4, 4)).astype(np.float32)
    ref(torch.tensor(x0))
    fq(x0)
    ref.enable_param_learning()
    fq.disable_observer()
    # NOTE: PyTorch sums the scale gradient in float32 and we sum in float64; shifting x up
    # (many values clip at qmax) and a one-signed g keep the sum well conditioned, so the
    # two agree to 1e-6 relative (a cancelling sum would not, for either of them).
    x = rng.normal(4.0, 1.0, size=x0.shape).astype(np.float32)
    g = rng.uniform(0.1, 1.0, size=x.shape).astype(np.float32)
    x_t = torch.tensor(x, requires_grad=True)
    y_t = ref(x_t)
    y_t.backward(torch.tensor(g))
    np.testing.assert_array_equal(fq(x), y_t.detach().numpy())
    np.testing.assert_array_equal(fq.backward(g), x_t.grad.numpy())
    np.testing.assert_allclose(fq._scale.grad, ref.scale.grad.numpy(), rtol=1e-6)
    if not symmetric:
        np.testing.assert_allclose(fq._zero_point.grad, ref.zero_point.grad.numpy(), rtol=1e-6)


def test_learnable_scale_driven_to_zero_is_clamped_to_eps() -> None:
    fq = FakeQuantize(num_bits=4, signed=True, symmetric=True, learnable=True)
    fq(np.array([-1.0, 1.0], dtype=np.float32))
    fq.disable_observer()
    fq._scale.data[...] = -0.3  # what a too-large optimizer step can do
    y = fq(np.array([EPS * 3, -1.0], dtype=np.float32))
    assert fq.scale.tolist() == [EPS]
    np.testing.assert_array_equal(y, np.array([3 * EPS, -8 * EPS], dtype=np.float32))


def test_learnable_scale_nan_is_an_error() -> None:
    fq = FakeQuantize(num_bits=4, learnable=True)
    fq(np.ones(4, dtype=np.float32))
    fq.disable_observer()
    fq._scale.data[...] = np.nan
    with pytest.raises(ValueError, match="scale became NaN"):
        fq(np.ones(4, dtype=np.float32))


def test_learnable_parameters_are_trainable() -> None:
    affine = FakeQuantize(num_bits=4, learnable=True)
    symmetric = FakeQuantize(num_bits=4, signed=True, symmetric=True, learnable=True)
    assert len(affine.parameters()) == 2
    assert len(symmetric.parameters()) == 1
    assert all(isinstance(p, Parameter) for p in affine.parameters())
    assert FakeQuantize(num_bits=4).parameters() == []


@pytest.mark.parametrize("num_bits", [1, 17, 0])
def test_num_bits_out_of_range(num_bits) -> None:
    with pytest.raises(ValueError, match="num_bits"):
        FakeQuantize(num_bits=num_bits)


def test_bad_input() -> None:
    with pytest.raises(TypeError, match="num_bits"):
        FakeQuantize(num_bits=4.0)
    with pytest.raises(ValueError, match="axis"):
        FakeQuantize(num_bits=4, axis=-1)
    with pytest.raises(ValueError, match="never observed"):
        FakeQuantize(num_bits=4).calculate_qparams()
    fq = FakeQuantize(num_bits=4)
    with pytest.raises(ValueError, match="finite"):
        fq(np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        FakeQuantize(num_bits=4).backward(np.ones(2))


def _bitnet_weight_quant(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """BitNet b1.58's reference ``weight_quant`` (scale = 1 / mean|w|, round, clamp to
    [-1, 1], divide by the scale), written out in NumPy float32; returns (w_hat, codes)."""
    if axis is None:
        mean = np.float32(np.abs(w).mean(dtype=np.float64))
    else:
        other = tuple(i for i in range(w.ndim) if i != axis)
        mean = np.abs(w).mean(axis=other, keepdims=True, dtype=np.float64).astype(np.float32)
    inv = np.float32(1.0) / mean
    codes = np.clip(np.rint(w * inv), -1, 1)
    return (codes / inv).astype(np.float32), codes


@pytest.mark.parametrize("axis", [None, 0])
def test_ternary_matches_the_bitnet_rule(axis) -> None:
    rng = np.random.default_rng(11)
    w = rng.normal(0.0, 0.2, size=(6, 3, 3, 3)).astype(np.float32)  # (C, C_in, k, k)
    w[2] *= 10.0  # one loud channel: per channel it keeps its own scale
    fq = TernaryFakeQuantize(axis=axis)
    w_hat = fq(w)
    expected, codes = _bitnet_weight_quant(w, axis)
    np.testing.assert_allclose(w_hat, expected, rtol=1e-6, atol=0)
    scale, zero_point = fq.calculate_qparams()
    assert scale.shape == ((1,) if axis is None else (6,)) and np.all(zero_point == 0)
    view = scale if axis is None else scale[:, None, None, None]
    np.testing.assert_array_equal(np.rint(w_hat / view), codes)  # codes in {-1, 0, 1}
    assert set(np.unique(codes)) == {-1.0, 0.0, 1.0}
    assert (fq.qmin, fq.qmax, fq.num_bits) == (-1, 1, 2)


def test_ternary_scale_follows_the_weights_and_backward_is_identity() -> None:
    fq = TernaryFakeQuantize()
    fq(np.array([-1.0, 1.0], dtype=np.float32))
    assert fq.scale.tolist() == [1.0]
    x = np.array([-9.0, -0.2, 0.0, 0.3, 2.0], dtype=np.float32)  # mean |x| = 2.3
    out = fq(x)
    assert fq.scale.tolist() == [np.float32(2.3)]
    assert out.tolist() == (np.array([-1, 0, 0, 0, 1], np.float32) * np.float32(2.3)).tolist()
    g = np.arange(1, 6, dtype=np.float32)
    # BitNet's straight-through estimator: -9 lies beyond the grid and still gets its gradient
    np.testing.assert_array_equal(fq.backward(g), g)
    # the ordinary fake quantizer on the same grid and scale masks it
    masked = FakeQuantize(
        2, signed=True, symmetric=True, narrow_range=True, observer=AbsMeanObserver
    )
    masked(x)
    assert masked.backward(g).tolist() == [0.0, 2.0, 3.0, 4.0, 5.0]


@pytest.mark.parametrize("num_bits", [2, 3, 4, 8])
def test_lsq_init_scale_is_two_mean_abs_over_sqrt_qmax(num_bits) -> None:
    rng = np.random.default_rng(12)
    w = rng.normal(size=(4, 10)).astype(np.float32)  # (out, in)
    qmax = qrange(num_bits, signed=True, narrow_range=False)[1]
    obs = AbsMeanObserver(num_bits, narrow_range=False, axis=0, factor=lsq_init_factor(qmax))
    obs(w)
    scale, zero_point = obs.calculate_qparams()
    expected = [2 * np.mean(np.abs(row)) / np.sqrt(qmax) for row in w.astype(np.float64)]
    np.testing.assert_allclose(scale, expected, rtol=1e-6)
    assert scale.dtype == np.float32 and zero_point.tolist() == [0, 0, 0, 0]
    assert lsq_init_factor(1) == 2.0 and lsq_init_factor(4) == 1.0


def test_abs_mean_observer_edge_cases() -> None:
    obs = AbsMeanObserver(axis=0)
    assert obs.calculate_qparams()[0].tolist() == [1.0]  # never observed: placeholder
    obs(np.zeros((2, 3), np.float32))
    assert obs.calculate_qparams()[0].tolist() == [EPS, EPS]  # all zero: eps, not 0
    with pytest.raises(ValueError, match="signed"):
        AbsMeanObserver(signed=False)
    with pytest.raises(ValueError, match="factor"):
        AbsMeanObserver(factor=0.0)
    with pytest.raises(ValueError, match="empty"):
        AbsMeanObserver()(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="x"):
        AbsMeanObserver()(np.array([np.nan], np.float32))
