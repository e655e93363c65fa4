"""Exercise 12: GPTQ's column loop, against mq.llm.gptq (one group per row)."""

import numpy as np
import pytest

import minquant as mq
from minquant.llm.gptq_quant import group_qparams, inverse_cholesky_upper
from minquant.llm.weight_only import weight_qrange

pytestmark = pytest.mark.ex12

TOY_X = np.sqrt(1.5) * np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])


def test_cholesky_worked_example(ex):
    U = ex.inverse_hessian_cholesky(TOY_X, damp=0.0)
    np.testing.assert_allclose(U, [[0.8164966, -0.4082483], [0.0, 0.7071068]], atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_cholesky_matches_the_library(ex, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((200, 24)) @ rng.standard_normal((24, 24))
    H = 2 * X.T @ X / 200
    H += 0.01 * np.mean(np.diag(H)) * np.eye(24)
    U = ex.inverse_hessian_cholesky(X)
    np.testing.assert_allclose(U, inverse_cholesky_upper(H), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(U.T @ U, np.linalg.inv(H), rtol=1e-8, atol=1e-12)
    assert np.all(np.tril(U, -1) == 0)


def test_columns_worked_examples(ex):
    U = ex.inverse_hessian_cholesky(TOY_X, damp=0.0)
    w_hat = ex.gptq_columns(np.array([[0.3, 0.3]]), U, np.array([0.5]), np.array([0]), -2, 1)
    np.testing.assert_allclose(w_hat, [[0.5, 0.0]], atol=1e-12)
    w = np.array([[0.3, 0.7, -0.2]])
    rtn = ex.gptq_columns(w, np.eye(3), np.array([0.5]), np.array([0]), -2, 1)
    np.testing.assert_allclose(rtn, [[0.5, 0.5, 0.0]])


@pytest.mark.parametrize(("bits", "symmetric"), [(2, False), (3, True), (4, False)])
def test_columns_match_the_library(ex, bits, symmetric):
    rng = np.random.default_rng(bits)
    w = rng.standard_normal((16, 48)).astype(np.float32)
    X = (rng.standard_normal((300, 48)) @ rng.standard_normal((48, 48))) * rng.lognormal(0, 1, 48)
    qmin, qmax = weight_qrange(bits, symmetric)
    scale, zero_point = group_qparams(w, qmin, qmax, symmetric)  # (16,), float16 exact
    got = ex.gptq_columns(w, ex.inverse_hessian_cholesky(X), scale, zero_point, qmin, qmax)
    want = mq.llm.gptq(w, X, bits, group_size=None, symmetric=symmetric)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
    # and it beats rounding each weight on its own, on the layer's output
    rtn = ex.gptq_columns(w, np.eye(48), scale, zero_point, qmin, qmax)
    assert np.sum((X @ (w - got).T) ** 2) < np.sum((X @ (w - rtn).T) ** 2)
