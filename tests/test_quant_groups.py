"""Per-group quantization: reshape-based reference, PyTorch (live and golden), errors."""

import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minquant as mq
from minquant.granularity import group_min_max, num_groups, qparams_shape
from minquant.quant import calc_group_qparams, calc_qparams, dequantize, fake_quantize, quantize

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def torch():
    torch = pytest.importorskip("torch", reason="PyTorch is the oracle for per-group ops")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch.ao.quantization.fx._decomposed  # registers torch.ops.quantized_decomposed
    return torch


# --- the reference: reshape so that each group is a row ------------------------------------


def to_groups(x, axis, group_size):
    """x with ``axis`` moved last and cut into groups: (..., G, g)."""
    moved = np.moveaxis(x, axis, -1)
    return moved.reshape((*moved.shape[:-1], moved.shape[-1] // group_size, group_size))


def from_groups(x_grouped, axis):
    """Inverse of :func:`to_groups`."""
    flat = x_grouped.reshape((*x_grouped.shape[:-2], -1))
    return np.moveaxis(flat, -1, axis)


def per_group_last(p, axis):
    """qparams (x.shape with axis -> G) as (..., G, 1), matching :func:`to_groups`."""
    return np.moveaxis(p, axis, -1)[..., None]


def reference(x, scale, zero_point, qmin, qmax, axis, group_size):
    """quantize, dequantize and fake_quantize written directly on the grouped view."""
    xg = to_groups(x.astype(np.float32), axis, group_size)  # (..., G, g)
    s = per_group_last(scale.astype(np.float32), axis)  # (..., G, 1)
    z = per_group_last(zero_point.astype(np.int64), axis)  # (..., G, 1)
    inv = np.float32(1.0) / s
    q = np.clip(np.rint(xg * inv + z.astype(np.float32)), qmin, qmax).astype(np.int64)
    dq = (q - z).astype(np.float32) * s
    fq = (np.clip(np.rint(xg * inv), qmin - z, qmax - z)).astype(np.int64).astype(np.float32) * s
    return from_groups(q, axis), from_groups(dq, axis), from_groups(fq, axis)


@st.composite
def grouped_cases(draw):
    ndim = draw(st.integers(1, 3))
    axis = draw(st.integers(-ndim, ndim - 1))
    shape = [draw(st.integers(1, 4)) for _ in range(ndim)]
    group_size = draw(st.sampled_from([1, 2, 3, 4, 8, 16]))
    shape[axis] = group_size * draw(st.integers(1, 4))
    num_bits = draw(st.integers(2, 8))
    signed = draw(st.booleans())
    symmetric = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    return tuple(shape), axis, group_size, num_bits, signed, symmetric, seed


@given(grouped_cases())
def test_matches_reshape_reference(case):
    shape, axis, group_size, num_bits, signed, symmetric, seed = case
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 3)).astype(np.float32)
    qmin, qmax = mq.qrange(num_bits, signed)
    scale, zero_point = calc_group_qparams(x, qmin, qmax, axis, group_size, symmetric)
    assert scale.shape == zero_point.shape == qparams_shape(shape, axis, group_size)
    q_ref, dq_ref, fq_ref = reference(x, scale, zero_point, qmin, qmax, axis, group_size)
    x_q = quantize(x, scale, zero_point, qmin, qmax, axis=axis, group_size=group_size)
    assert x_q.dtype == mq.quant.int_dtype(qmin, qmax)
    np.testing.assert_array_equal(x_q, q_ref)
    x_hat = dequantize(x_q, scale, zero_point, axis=axis, group_size=group_size)
    np.testing.assert_array_equal(x_hat, dq_ref)
    x_fq = fake_quantize(x, scale, zero_point, qmin, qmax, axis=axis, group_size=group_size)
    np.testing.assert_array_equal(x_fq, fq_ref)
    assert x_hat.dtype == x_fq.dtype == np.float32


@given(grouped_cases())
def test_calc_group_qparams_is_calc_qparams_of_each_group(case):
    shape, axis, group_size, num_bits, signed, symmetric, seed = case
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    qmin, qmax = mq.qrange(num_bits, signed)
    scale, zero_point = calc_group_qparams(x, qmin, qmax, axis, group_size, symmetric)
    groups = to_groups(x, axis, group_size).reshape(-1, group_size)  # (units, g)
    s_ref, z_ref = calc_qparams(groups.min(axis=1), groups.max(axis=1), qmin, qmax, symmetric)
    np.testing.assert_array_equal(per_group_last(scale, axis).ravel(), s_ref)
    np.testing.assert_array_equal(per_group_last(zero_point, axis).ravel(), z_ref)


def test_one_group_per_row_is_per_channel():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 32)).astype(np.float32)  # (out, in)
    qmin, qmax = mq.qrange(4, signed=True)
    scale, zero_point = calc_group_qparams(w, qmin, qmax, axis=1, group_size=32)  # (6, 1)
    s_ch, z_ch = calc_group_qparams(w, qmin, qmax, axis=0)  # (6,)
    np.testing.assert_array_equal(scale.ravel(), s_ch)
    np.testing.assert_array_equal(zero_point.ravel(), z_ch)
    grouped = quantize(w, scale, zero_point, qmin, qmax, axis=1, group_size=32)
    np.testing.assert_array_equal(grouped, quantize(w, s_ch, z_ch, qmin, qmax, axis=0))


def test_groups_beat_channels_with_an_outlier():
    """The point of groups: an outlier only coarsens its own group."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((16, 256)).astype(np.float32)
    w[:, 3] *= 50.0  # one outlier column
    qmin, qmax = mq.qrange(4, signed=True, narrow_range=True)
    errors = {}
    for group_size in (None, 64):
        axis = 0 if group_size is None else 1
        s, z = calc_group_qparams(w, qmin, qmax, axis, group_size, symmetric=True)
        w_hat = fake_quantize(w, s, z, qmin, qmax, axis=axis, group_size=group_size)
        errors[group_size] = mq.mse(w[:, 64:], w_hat[:, 64:])  # groups without the outlier
    assert errors[64] < errors[None] / 20  # about (50 / 3)^2 / 4 on these data


def test_group_min_max_per_tensor_and_channel():
    x = np.arange(12.0).reshape(3, 4)
    lo, hi = group_min_max(x, None, None)
    assert lo.tolist() == [0.0] and hi.tolist() == [11.0]
    lo, hi = group_min_max(x, 0, None)
    assert lo.tolist() == [0.0, 4.0, 8.0] and hi.tolist() == [3.0, 7.0, 11.0]


# --- PyTorch -----------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("num_bits", [2, 3, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
def test_matches_torch_live(torch, num_bits, signed):
    """quantize_per_channel_group, dequantize_per_channel_group and fake_quantize per channel."""
    ops = torch.ops.quantized_decomposed
    rng = np.random.default_rng(num_bits)
    qmin, qmax = mq.qrange(num_bits, signed)
    for trial in range(20):
        rows, group_size = int(rng.integers(1, 6)), int(rng.choice([2, 8, 16, 32]))
        cols = group_size * int(rng.integers(1, 5))
        w = (rng.standard_normal((rows, cols)) * 10.0 ** rng.uniform(-3, 3)).astype(np.float32)
        scale, zero_point = calc_group_qparams(w, qmin, qmax, 1, group_size, trial % 2 == 0)
        st_, zt = torch.from_numpy(scale.ravel()), torch.from_numpy(zero_point.ravel())
        q_torch = ops.quantize_per_channel_group(
            torch.from_numpy(w), st_, zt, qmin, qmax, torch.int32, group_size
        ).numpy()
        x_q = quantize(w, scale, zero_point, qmin, qmax, axis=1, group_size=group_size)
        np.testing.assert_array_equal(x_q, q_torch)
        dq_torch = ops.dequantize_per_channel_group(
            torch.from_numpy(q_torch), st_, zt, qmin, qmax, torch.int32, group_size, torch.float32
        ).numpy()
        np.testing.assert_array_equal(
            dequantize(x_q, scale, zero_point, axis=1, group_size=group_size), dq_torch
        )
        fq_torch = torch.fake_quantize_per_channel_affine(
            torch.from_numpy(w.reshape(-1, group_size)), st_, zt.int(), 0, qmin, qmax
        ).numpy()
        x_fq = fake_quantize(w, scale, zero_point, qmin, qmax, axis=1, group_size=group_size)
        np.testing.assert_array_equal(x_fq, fq_torch.reshape(w.shape))


def test_matches_torch_golden():
    """Frozen torch 2.13 outputs (tests/fixtures/make_golden_groups.py), run without torch."""
    golden = np.load(FIXTURES / "groups_golden.npz")
    assert int(golden["count"]) >= 6
    for i in range(int(golden["count"])):
        x, scale, zero_point = golden[f"x{i}"], golden[f"scale{i}"], golden[f"zero_point{i}"]
        group_size, qmin, qmax = (int(v) for v in golden[f"params{i}"])
        x_q = quantize(x, scale, zero_point, qmin, qmax, axis=1, group_size=group_size)
        np.testing.assert_array_equal(x_q, golden[f"q{i}"])
        np.testing.assert_array_equal(
            dequantize(x_q, scale, zero_point, axis=1, group_size=group_size), golden[f"dq{i}"]
        )
        np.testing.assert_array_equal(
            fake_quantize(x, scale, zero_point, qmin, qmax, axis=1, group_size=group_size),
            golden[f"fq{i}"],
        )


# --- bad input ---------------------------------------------------------------------------------

W = np.zeros((4, 100), np.float32)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: quantize(W, np.ones((4, 1)), np.zeros((4, 1)), -8, 7, axis=1, group_size=64),
            ValueError,
            "100 elements, which is not divisible by group_size=64",
        ),
        (
            lambda: calc_group_qparams(W, -8, 7, axis=1, group_size=64),
            ValueError,
            "100 .*group_size=64",
        ),
        (
            lambda: quantize(W, np.ones((4, 5)), np.zeros((4, 5)), -8, 7, axis=1, group_size=25),
            ValueError,
            r"scale must have shape \(4, 4\) .*group_size=25, got shape \(4, 5\)",
        ),
        (
            lambda: quantize(W, 1.0, 0, -8, 7, axis=None, group_size=4),
            ValueError,
            "group_size=4 needs an axis",
        ),
        (lambda: num_groups(8, 0), ValueError, "group_size must be >= 1, got 0"),
        (lambda: num_groups(8, True), TypeError, "group_size must be an int"),
        (lambda: num_groups(8, 2.0), TypeError, "group_size must be an int"),
        (lambda: group_min_max(np.zeros((0, 4)), 1, 2), ValueError, "must not be empty"),
        (
            lambda: dequantize(np.zeros((2, 4), np.int8), np.ones((2, 2)), np.zeros((2, 2)), 2, 2),
            ValueError,
            "axis must be an int in",
        ),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
