"""GPTQ: equal to a plain one-column-at-a-time OBQ solver, never worse than RTN, packs as RTN."""

import numpy as np
import pytest

import minquant as mq
from minquant.llm.gptq_quant import gptq, gptq_quantize, hessian, inverse_cholesky_upper
from minquant.llm.layer_inputs import calibration_batch, next_stage
from minquant.llm.weight_only import WeightOnlyLinear, quantize_rtn, weight_qrange
from minquant.nn import Linear


def obq_reference(w, X, bits, group_size, symmetric=False, damp=0.01, act_order=False):
    """Textbook GPTQ in float64 without Cholesky or lazy batches (Frantar et al., Alg. 1).

    The inverse Hessian of the columns left is updated by Gaussian elimination after each
    column (OBQ), the error spread with it; group parameters are taken from the updated
    weights when a group's first column is reached (static, from the original weights,
    with act-order).
    """
    W = np.array(w, np.float64)  # (out, in)
    n = W.shape[1]
    g = n if group_size is None else group_size
    X = np.asarray(X, np.float64)
    H = 2 * X.T @ X / len(X)
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * np.mean(np.diag(H)) * np.eye(n)
    Hinv = np.linalg.inv(H)  # (in, in), rows/columns of quantized columns become zero
    qmin, qmax = weight_qrange(bits, symmetric)
    order = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(n)

    def qparams(cols):
        lo = np.minimum(cols.min(axis=1), 0).astype(np.float32)
        hi = np.maximum(cols.max(axis=1), 0).astype(np.float32)
        scale, zero_point = mq.calc_qparams(lo, hi, qmin, qmax, symmetric)
        return scale.astype(np.float16).astype(np.float64), zero_point

    params = {}
    if act_order:
        params = {k: qparams(W[:, k * g : (k + 1) * g]) for k in range(n // g)}
    w_hat = np.zeros_like(W)
    for j in order:
        if not act_order and j % g == 0:
            params[j // g] = qparams(W[:, j : j + g])
        scale, zero_point = params[j // g]
        q = np.clip(np.rint(W[:, j] / scale) + zero_point, qmin, qmax)
        w_hat[:, j] = (q - zero_point) * scale
        d = Hinv[j, j]
        W -= np.outer((W[:, j] - w_hat[:, j]) / d, Hinv[j, :])
        Hinv -= np.outer(Hinv[:, j], Hinv[j, :]) / d
    return w_hat


def correlated(rng, tokens, n):
    """Inputs (tokens, n) with correlated channels of very different sizes (like an LLM's)."""
    mix = rng.standard_normal((n, n)) / np.sqrt(n)
    return (rng.standard_normal((tokens, n)) @ mix) * rng.lognormal(0, 1, n)


def rtn_hat(w, bits, group_size, symmetric=False):
    codes, scale, zero_point = quantize_rtn(w, bits, group_size or w.shape[1], symmetric)
    zero_point = np.zeros(scale.shape, np.int64) if zero_point is None else zero_point
    g = group_size or w.shape[1]
    return mq.dequantize(codes, scale, zero_point, axis=1, group_size=g)


def output_error(w, w_hat, X):
    return float(np.sum((np.asarray(X, np.float64) @ (w - w_hat).T) ** 2))


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize(
    ("bits", "group_size", "symmetric", "block_size"),
    [(4, 32, False, 128), (3, 64, True, 48), (2, None, False, 16), (3, 16, False, 24)],
)
def test_gptq_equals_the_column_by_column_reference(
    bits, group_size, symmetric, block_size, act_order
):
    rng = np.random.default_rng(bits * 10 + block_size)
    w = rng.standard_normal((24, 128)).astype(np.float32)
    X = correlated(rng, 300, 128)
    X[:, 5] = 0  # a dead input
    got = gptq(w, X, bits, group_size, symmetric, block_size=block_size, act_order=act_order)
    want = obq_reference(w, X, bits, group_size, symmetric, act_order=act_order)
    assert got.dtype == np.float32
    assert np.linalg.norm(got - want) <= 1e-6 * np.linalg.norm(want)
    assert np.all(got[:, 5] == 0)


def test_block_size_changes_nothing():
    rng = np.random.default_rng(1)
    w, X = rng.standard_normal((16, 96)), correlated(rng, 200, 96)
    results = [gptq(w, X, 3, 32, block_size=b) for b in (1, 7, 32, 96, 500)]
    for w_hat in results[1:]:
        np.testing.assert_allclose(w_hat, results[0], rtol=0, atol=1e-6)


def test_toy_2x2_error_feedback_by_hand():
    # H = [[2, 1], [1, 2]] (damp 0): the error of column 0 moves into column 1 by -H01/H11
    # times the inverse-Hessian row: w1 <- w1 - (w0 - q0) * Hinv01 / Hinv00 = w1 + (w0 - q0)/2.
    X = np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]) * np.sqrt(1.5)  # 2 X^T X / 3 = H
    np.testing.assert_allclose(hessian(X), [[2.0, 1.0], [1.0, 2.0]])
    U = inverse_cholesky_upper(hessian(X))
    np.testing.assert_allclose(U.T @ U, np.linalg.inv([[2.0, 1.0], [1.0, 2.0]]))
    assert U[1, 0] == 0
    want = obq_reference(np.array([[0.3, 0.3]]), X, 2, None, damp=0.0)
    got = gptq(np.array([[0.3, 0.3]]), X, 2, damp=0.0)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def _random_layer_errors(bits: int, count: int) -> np.ndarray:
    """(count, 2) output errors of GPTQ and RTN on seeded random layers with correlated inputs."""
    errors = []
    for seed in range(count):
        rng = np.random.default_rng(seed)
        out, groups = int(rng.integers(4, 33)), int(rng.integers(1, 4))
        group_size, symmetric, act_order = [16, 32][seed % 2], seed % 4 < 2, seed % 5 < 2
        n = groups * group_size
        w = rng.standard_normal((out, n)).astype(np.float32)  # (out, n)
        X = correlated(rng, 4 * n, n)  # (4n, n)
        w_hat = gptq(w, X, bits, group_size, symmetric, act_order=act_order)
        w_rtn = rtn_hat(w, bits, group_size, symmetric)
        errors.append((output_error(w, w_hat, X), output_error(w, w_rtn, X)))
    return np.array(errors)


@pytest.mark.parametrize("bits", [3, 4])
def test_gptq_beats_rtn_on_random_layers(bits):
    # NOTE: GPTQ is greedy (each group's grid is fixed before the later columns move), so
    # "never worse than RTN" is not a theorem: in a scan of 50 seeded random layers per bit width
    # it lost once at 3 bits and 10 times at 2 bits (e.g. 2 bits, g16, asymmetric: 1.5x RTN's
    # error). The claim tested is the paper's: much better on average, worse rarely. On every
    # tiny_lm layer it is never worse (test below). Measured here: median ratio 0.51 (3 bits)
    # and 0.46 (4 bits), never above 1 on these 40 layers.
    errors = _random_layer_errors(bits, count=40)
    ratio = errors[:, 0] / errors[:, 1]  # GPTQ / RTN per layer
    assert np.median(ratio) < 0.8
    assert np.mean(ratio <= 1.0) >= 0.95


@pytest.fixture(scope="module")
def tiny():
    lm = mq.models.load_pretrained("tiny_lm")
    tokens = mq.data.encode(mq.data.load_text("train"))
    return lm, calibration_batch(tokens, 8, 128, np.random.default_rng(0))


def test_next_stage_groups_layers_that_share_an_input(tiny):
    lm, calib = tiny
    stage = next_stage(lm, calib)
    assert [layer for layer, _ in stage] == [lm.layers[0].attn.wq, lm.layers[0].attn.wk,
                                             lm.layers[0].attn.wv]  # fmt: skip
    assert stage[0][1].shape == (8 * 128, 128)


@pytest.mark.parametrize(("bits", "group_size"), [(3, 128), (4, 64)])
def test_gptq_beats_rtn_on_every_tiny_lm_layer(tiny, bits, group_size):
    lm, calib = tiny
    inputs = mq.llm.weight_only._linear_inputs(lm, calib)
    for name, layer in lm.named_modules():
        if type(layer) is Linear:
            w, X = layer.weight.data, inputs[id(layer)]
            gptq_error = output_error(w, gptq(w, X, bits, group_size), X)
            assert gptq_error <= output_error(w, rtn_hat(w, bits, group_size), X), name


def test_quantize_weights_gptq_packs_like_rtn(tiny):
    lm, calib = tiny
    rtn = mq.llm.quantize_weights(lm, 3, 128)
    for method in ("gptq", "gptq_act_order"):
        qlm = mq.llm.quantize_weights(lm, 3, 128, method=method, X_calib=calib)
        q_layers = dict(qlm.named_modules())
        for name, layer in rtn.named_modules():
            if isinstance(layer, WeightOnlyLinear):
                other = q_layers[name]
                assert isinstance(other, WeightOnlyLinear)
                assert other.nbytes() == layer.nbytes()
                assert other.packed.shape == layer.packed.shape
        # the packed model computes with the codes GPTQ chose (the first layer, float input)
        first = lm.layers[0].attn.wq
        X = mq.llm.weight_only._linear_inputs(lm, calib)[id(first)]
        want = gptq(first.weight.data, X, 3, 128, act_order=method != "gptq")
        np.testing.assert_array_equal(qlm.layers[0].attn.wq.dequantized_weight(), want)
    assert isinstance(lm.layers[0].attn.wq, Linear)  # the input model is untouched


def test_gptq_quantize_contract():
    rng = np.random.default_rng(0)
    w, X = rng.standard_normal((8, 64)), rng.standard_normal((100, 64))
    codes, scale, zero_point = gptq_quantize(w, X, 4, 32)
    assert codes.shape == (8, 64) and codes.min() >= 0 and codes.max() <= 15
    assert scale.shape == zero_point.shape == (8, 2)
    assert np.all(scale.astype(np.float16).astype(np.float32) == scale)
    layer = Linear(64, 8, rng=rng)
    WeightOnlyLinear.from_linear(layer, 4, 32, method="gptq", X=X)  # passes its checks


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"X": np.ones((10, 63))}, "X must be"),
        ({"group_size": 48}, "group_size must divide"),
        ({"bits": 9}, "bits must be"),
        ({"damp": -0.1}, "damp must be"),
        ({"block_size": 0}, "block_size"),
    ],
)
def test_gptq_rejects_bad_input(kwargs, match):
    rng = np.random.default_rng(0)
    args = {"w": rng.standard_normal((4, 64)), "X": rng.standard_normal((10, 64)), "bits": 4}
    with pytest.raises(ValueError, match=match):
        gptq(**{**args, **kwargs})


def test_gptq_rejects_nan_and_needs_calibration():
    w = np.ones((2, 4))
    with pytest.raises(ValueError, match="X"):
        gptq(w, np.full((3, 4), np.nan), 4)
    with pytest.raises(ValueError, match="X_calib"):
        mq.llm.quantize_weights(mq.models.load_pretrained("tiny_lm"), 4, 128, method="gptq")
