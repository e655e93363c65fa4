"""minquant.nn.functional: cross-entropy, im2col/col2im."""

import numpy as np
import pytest

from minquant import nn
from minquant.nn.functional import col2im, conv_output_size, im2col


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batch", [1, 7])
def test_cross_entropy_matches_torch(dtype, batch):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(batch)
    logits = rng.normal(0, 3, size=(batch, 10)).astype(dtype)
    y = rng.integers(0, 10, size=batch)
    loss, dlogits = nn.cross_entropy(logits, y)
    logits_t = torch.from_numpy(logits).requires_grad_(True)
    loss_t = torch.nn.functional.cross_entropy(logits_t, torch.from_numpy(y))
    loss_t.backward()
    tol = 1e-10 if dtype == np.float64 else 1e-5
    assert loss == pytest.approx(loss_t.item(), rel=tol, abs=tol)
    assert dlogits.dtype == dtype
    np.testing.assert_allclose(dlogits, logits_t.grad.numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cross_entropy_is_stable_for_huge_logits(dtype):
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, 1e4], [1e4, 1e4, -1e4]], dtype=dtype)
    y = np.array([0, 0, 1])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # exp(-2e4) may underflow
        loss, dlogits = nn.cross_entropy(logits, y)
    # row 0 is right (loss 0), row 1 is wrong by 2e4, row 2 is a tie of two classes (log 2)
    assert loss == pytest.approx((0 + 2e4 + np.log(2)) / 3, rel=1e-6)
    expected = np.array([[0, 0, 0], [-1, 0, 1], [0.5, -0.5, 0]]) / 3
    np.testing.assert_allclose(dlogits, expected, atol=1e-7)


def test_cross_entropy_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 5))
    y = np.array([0, 4, 2, 2])
    _, dlogits = nn.cross_entropy(logits, y)
    eps = 1e-6
    for index in np.ndindex(logits.shape):
        up, down = logits.copy(), logits.copy()
        up[index] += eps
        down[index] -= eps
        numerical = (nn.cross_entropy(up, y)[0] - nn.cross_entropy(down, y)[0]) / (2 * eps)
        assert dlogits[index] == pytest.approx(numerical, abs=1e-8)


@pytest.mark.parametrize(
    ("logits", "y", "error", "match"),
    [
        (np.zeros((2, 3, 1)), np.zeros(2, int), ValueError, r"shape \(N, K\), got \(2, 3, 1\)"),
        (np.zeros((2, 3), int), np.zeros(2, int), TypeError, "floating point, got int64"),
        (np.zeros((2, 3)), np.zeros(3, int), ValueError, r"shape \(2,\), got int64 \(3,\)"),
        (np.zeros((2, 3)), np.zeros(2), ValueError, r"integer labels of shape \(2,\)"),
        (np.zeros((2, 3)), np.array([0, 3]), ValueError, r"labels must be in \[0, 2\], got 0..3"),
        (np.zeros((0, 3)), np.zeros(0, int), ValueError, "the batch is empty"),
    ],
)
def test_cross_entropy_bad_input(logits, y, error, match):
    with pytest.raises(error, match=match):
        nn.cross_entropy(logits, y)


def test_im2col_columns_are_the_patches():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 5, 6))
    k, s, p = 3, 2, 1
    cols = im2col(x, k, s, p)  # (C, k, k, N, Ho, Wo)
    h_out, w_out = conv_output_size(5, k, s, p), conv_output_size(6, k, s, p)
    assert cols.shape == (3, k, k, 2, h_out, w_out) == (3, 3, 3, 2, 3, 3)
    x_pad = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    for n, h, w in np.ndindex(2, h_out, w_out):
        patch = x_pad[n, :, s * h : s * h + k, s * w : s * w + k]  # (C, k, k)
        np.testing.assert_array_equal(cols[:, :, :, n, h, w], patch)


def test_col2im_is_the_adjoint_of_im2col():
    # <im2col(x), d> == <x, col2im(d)> for all x, d: the defining property of the adjoint
    rng = np.random.default_rng(1)
    for k, s, p in [(3, 1, 1), (3, 2, 0), (2, 2, 0), (1, 1, 0), (3, 2, 1)]:
        x = rng.normal(size=(2, 3, 7, 6))
        cols = im2col(x, k, s, p)
        d = rng.normal(size=cols.shape)
        lhs = np.sum(cols * d)
        rhs = np.sum(x * col2im(d, x.shape, k, s, p))
        assert lhs == pytest.approx(rhs, rel=1e-12)


def test_col2im_checks_kernel_size_against_the_patches():
    x = np.ones((1, 2, 5, 5))
    dcols = im2col(x, 3, 1, 0)  # (2, 3, 3, 1, 3, 3)
    with pytest.raises(ValueError, match=r"kernel_size 2, got \(2, 3, 3, 1, 3, 3\)"):
        col2im(dcols, x.shape, 2, 1, 0)
