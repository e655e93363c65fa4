"""Activations of tiny_lm: capture and statistics, W8A8 on the int8 GEMM, LLM.int8(),
SmoothQuant (scales, folding) and the quantized KV cache."""

from fractions import Fraction

import numpy as np
import pytest

import minquant as mq
from minquant.llm.activations import (
    activation_stats,
    capture_linear_inputs,
    inject_outlier_channel,
    kurtosis,
)
from minquant.llm.kv_cache import KVQuantizedLM, QuantizedKVCache, quantize_per_token
from minquant.llm.smoothquant import fold_smoothing, smooth_model, smoothquant_scales
from minquant.llm.w8a8 import (
    W8A8Linear,
    argmax_agreement,
    code_mismatch,
    float_column_fraction,
    int8_decomposed_matmul,
    quantize_activations,
)


@pytest.fixture(scope="module")
def lm():
    return mq.models.load_pretrained("tiny_lm")


@pytest.fixture(scope="module")
def tokens():
    return mq.data.encode(mq.data.load_text("val")[: 2 * 128]).reshape(2, 128)


@pytest.fixture(scope="module")
def calib():
    return mq.data.encode(mq.data.load_text("train")[: 2 * 128]).reshape(2, 128)


# --- capture and statistics --------------------------------------------------------------


def test_capture_matches_a_manual_forward(lm, tokens):
    X = capture_linear_inputs(lm, tokens)
    assert len(X) == 29 and X["layers.0.mlp.w2"].shape == (256, 384)
    x = lm.layers[0].attn_norm(lm.tok_embeddings(tokens)).reshape(-1, 128)
    np.testing.assert_array_equal(X["layers.0.attn.wq"], x)
    assert "forward" not in vars(lm.layers[0].attn.wq)  # the recorder is removed


def test_kurtosis_known_values():
    assert kurtosis(np.array([-1.0, 1.0])) == 1.0  # two points: the minimum
    assert kurtosis(np.zeros(5)) == 0.0
    x = np.array([0.0, 0.0, 0.0, 0.0, 10.0])  # mean 2, m2 16, m4 = (4 * 16 + 4096) / 5
    assert np.isclose(kurtosis(x), (4 * 16 + 8**4) / 5 / 16**2)
    with pytest.raises(ValueError, match="empty"):
        kurtosis(np.array([]))


def test_activation_stats_finds_the_outlier_channel_and_token():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 16)).astype(np.float32)
    X[:, 7] *= 30
    X[13, 2] = 1000.0
    s = activation_stats(X, k=2)
    assert s.top_channels.tolist() == [2, 7] and s.top_tokens[0] == 13
    assert s.outlier_ratio > 100 and s.kurtosis > 3
    with pytest.raises(ValueError, match="2-D"):
        activation_stats(np.ones(3))


def test_synthetic_outlier_keeps_the_float_function_to_the_bit(lm, tokens):
    out = inject_outlier_channel(lm, channel=3, factor=64.0)
    np.testing.assert_array_equal(out(tokens), lm(tokens))
    X = capture_linear_inputs(out, tokens)
    for i in range(4):
        for name in ("attn.wq", "mlp.w1"):
            assert activation_stats(X[f"layers.{i}.{name}"]).top_channels[0] == 3
    assert lm.layers[0].attn_norm.weight.data[3] != out.layers[0].attn_norm.weight.data[3]
    with pytest.raises(ValueError, match="power of two"):
        inject_outlier_channel(lm, factor=30.0)
    with pytest.raises(ValueError, match="channel"):
        inject_outlier_channel(lm, channel=128)


# --- SmoothQuant -----------------------------------------------------------------------------


def test_smoothquant_scales_formula_by_hand():
    X = np.array([[4.0, -0.0], [-9.0, 0.0]], np.float32)
    w = np.array([[1.0, 2.0], [-4.0, 0.5]], np.float32)
    s = smoothquant_scales(X, w, alpha=0.5)
    # channel 0: sqrt(9) / sqrt(4) = 1.5; channel 1: X max clamped to 1e-5 -> sqrt(1e-5 / 2)
    np.testing.assert_allclose(s, [1.5, np.sqrt(1e-5 / 2)], rtol=1e-6)
    np.testing.assert_allclose(smoothquant_scales(X, w, alpha=1.0), [9.0, 1e-5], rtol=1e-6)
    np.testing.assert_allclose(smoothquant_scales(X, w, alpha=0.0), [0.25, 0.5], rtol=1e-6)


def test_smoothquant_scales_match_the_reference_code():
    torch = pytest.importorskip("torch", reason="torch is the oracle for smooth.py's formula")
    rng = np.random.default_rng(1)
    X = (rng.standard_normal((64, 32)) * rng.uniform(0.1, 30, 32)).astype(np.float32)
    w = rng.standard_normal((48, 32)).astype(np.float32)
    for alpha in (0.3, 0.5, 0.85):
        # smooth.py (mit-han-lab/smoothquant): act_scales.pow(a) / weight_scales.pow(1 - a)
        act = torch.from_numpy(np.abs(X).max(0)).double().clamp(min=1e-5)
        wmax = torch.from_numpy(w).abs().max(dim=0)[0].double().clamp(min=1e-5)
        ref = (act.pow(alpha) / wmax.pow(1 - alpha)).clamp(min=1e-5).float().numpy()
        np.testing.assert_array_equal(smoothquant_scales(X, w, alpha), ref)


def test_smoothquant_scales_reject_bad_input():
    with pytest.raises(ValueError, match="alpha"):
        smoothquant_scales(np.ones((2, 3)), np.ones((4, 3)), alpha=1.5)
    with pytest.raises(ValueError, match="same in"):
        smoothquant_scales(np.ones((2, 3)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        smoothquant_scales(np.array([[np.nan, 1.0]]), np.ones((1, 2)))
    norm = mq.nn.RMSNorm(2)
    with pytest.raises(ValueError, match="positive"):
        fold_smoothing(norm, [], np.array([1.0, 0.0]))


def test_smooth_model_keeps_the_float_function_and_equalizes_at_alpha_one(lm, tokens, calib):
    smooth = smooth_model(lm, calib, alpha=0.5)
    np.testing.assert_allclose(smooth(tokens), lm(tokens), rtol=1e-4, atol=2e-4)
    assert np.array_equal(lm(tokens), mq.models.load_pretrained("tiny_lm")(tokens))  # untouched
    flat = smooth_model(lm, calib, alpha=1.0)  # X_j / max|X_j|: every channel max is 1
    X = capture_linear_inputs(flat, calib)
    np.testing.assert_allclose(np.abs(X["layers.1.attn.wq"]).max(0), 1.0, rtol=1e-4)
    np.testing.assert_allclose(np.abs(X["layers.2.mlp.w3"]).max(0), 1.0, rtol=1e-4)


# --- W8A8 ------------------------------------------------------------------------------------


def round_to_float32(value: Fraction) -> np.float32:
    """The float32 nearest to an exact rational (ties to an even mantissa), by search."""
    guess = np.float32(float(value))  # float() is correct to float64: within 1 ulp
    down, up = np.nextafter(guess, np.float32(-np.inf)), np.nextafter(guess, np.float32(np.inf))
    candidates = sorted(
        [down, guess, up],
        key=lambda c: (abs(Fraction(float(c)) - value), int(c.view(np.int32)) & 1),
    )
    return candidates[0]


def reference_w8a8(x, w, x_scale):
    """Independent W8A8: int64 NumPy matmul of the codes, then the exact rational product
    s_x s_w acc rounded once to float32 (Python fractions)."""
    w_scale = np.abs(w).max(1) / np.float32(127)  # (out,)
    w_q = np.clip(np.rint(w / w_scale[:, None]), -127, 127).astype(np.int64)
    x_q = np.clip(np.rint(x / x_scale), -127, 127).astype(np.int64)
    acc = x_q @ w_q.T  # (N, out) int64, exact
    s_x = np.broadcast_to(np.float32(x_scale), (len(x), 1))  # (N, 1)
    y = np.empty(acc.shape, np.float32)
    for t, o in np.ndindex(*acc.shape):
        exact = Fraction(float(s_x[t, 0])) * Fraction(float(w_scale[o])) * int(acc[t, o])
        y[t, o] = round_to_float32(exact)
    return y


def test_round_to_float32_by_hand():
    assert round_to_float32(Fraction(1, 3)) == np.float32(1 / 3)
    tie = Fraction(1) + Fraction(1, 2**24)  # halfway between 1 and 1 + 2^-23: to even, 1
    assert round_to_float32(tie) == np.float32(1.0)
    assert round_to_float32(tie + Fraction(1, 2**60)) == np.float32(1 + 2**-23)


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_w8a8_linear_equals_an_exact_reference(mode):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((40, 96)).astype(np.float32)
    x = (rng.standard_normal((33, 96)) * 3).astype(np.float32)
    if mode == "static":
        layer, x_scale = W8A8Linear(w, "static", x_scale=0.05), np.float32(0.05)  # clips
    else:
        layer = W8A8Linear(w, "dynamic")
        x_scale = (np.abs(x).max(1, keepdims=True) / np.float32(127)).astype(np.float32)
    y = layer(x)
    np.testing.assert_array_equal(y, reference_w8a8(x, w, x_scale))
    kw = {"x_scale": 0.05 if mode == "static" else None, "simulate": True}
    # the float64 twin rounds the same real number once: equal but for rare boundary cases
    y_sim = W8A8Linear(w, mode, **kw)(x)
    assert np.mean(y_sim == y) > 0.999
    # at most one float32 ulp apart, plus the float64 sum's error bound K u sum|x_hat w_hat|
    # (an exact 0 of the integer sum can come out as 1e-15 from float64 cancellation)
    x_q, s_x, _ = layer.quantize_input(x)
    magnitude = np.abs(x_q * s_x.astype(np.float64)) @ np.abs(layer.w_q * layer.w_scale[:, None]).T
    bound = np.spacing(np.abs(y)) + 96 * 2.0**-53 * magnitude  # (33, 40)
    assert (np.abs(y_sim - y) <= bound).all()
    # the naive float32 twin rounds every sum: most outputs move by an ulp or a few
    y_naive = W8A8Linear(w, mode, sim_dtype="float32", **kw)(x)
    assert np.mean(y_naive != y) > 0.1
    np.testing.assert_allclose(y_naive, y, rtol=1e-5, atol=1e-4)


def test_per_token_beats_per_tensor_on_rows_of_different_size():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((16, 64)).astype(np.float32)
    x = rng.standard_normal((8, 64)).astype(np.float32)
    x[0] *= 100  # one loud token
    exact = x @ w.T
    static = W8A8Linear(w, "static", x_scale=float(np.abs(x).max() / 127))
    dynamic = W8A8Linear(w, "dynamic")
    err_static = np.abs(static(x) - exact)[1:].max()
    err_dynamic = np.abs(dynamic(x) - exact)[1:].max()
    assert err_dynamic < err_static / 10


def test_int8_decomposed_matmul():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((20, 32)).astype(np.float32)
    X[:, [5, 17]] *= 40  # outlier columns
    w = rng.standard_normal((24, 32)).astype(np.float32)
    y = int8_decomposed_matmul(X, w, threshold=6.0)
    inl = np.ones(32, bool)
    inl[[5, 17]] = False
    x_in = np.where(inl, X, 0)
    expected = reference_w8a8(x_in, w, np.abs(x_in).max(1, keepdims=True) / np.float32(127))
    expected += X[:, ~inl] @ w[:, ~inl].T
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-5)
    # decomposition error is far below per-token int8 of the whole matrix
    err_dec = np.abs(y - X @ w.T).max()
    err_dyn = np.abs(W8A8Linear(w, "dynamic")(X) - X @ w.T).max()
    assert err_dec < err_dyn / 5
    layer = W8A8Linear(w, "llm_int8", threshold=6.0)
    layer(X)
    assert float_column_fraction(layer) == 2 / 32
    with pytest.raises(ValueError, match="same in"):
        int8_decomposed_matmul(X, w[:, :3])


def test_w8a8_linear_rejects_bad_arguments():
    w = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="mode"):
        W8A8Linear(w, "per_channel")
    with pytest.raises(ValueError, match="x_scale"):
        W8A8Linear(w, "static")
    with pytest.raises(ValueError, match="NaN"):
        W8A8Linear(np.full((2, 3), np.nan, np.float32), "dynamic")
    with pytest.raises(RuntimeError, match="inference"):
        W8A8Linear(w, "dynamic").backward(np.ones((1, 2)))


@pytest.mark.parametrize("mode", ["static", "dynamic", "llm_int8", "smoothquant"])
def test_quantize_activations_integer_agrees_with_simulation(lm, tokens, calib, mode):
    q_int = quantize_activations(lm, mode, calib)
    q_sim = quantize_activations(lm, mode, calib, simulate=True)
    names = [n for n, m in q_int.named_modules() if isinstance(m, W8A8Linear)]
    assert len(names) == 29 and not any(isinstance(m, W8A8Linear) for m in lm.modules())
    logits = q_int(tokens)
    assert argmax_agreement(logits, q_sim(tokens)) >= 0.999
    assert argmax_agreement(logits, lm(tokens)) > 0.9
    # the float64 twin quantizes every layer's input to the same codes
    assert max(code_mismatch(q_int, q_sim, tokens).values()) == 0.0


def test_naive_float32_simulation_drifts_layer_by_layer(lm, tokens, calib):
    """The float32 twin: the first layer agrees, later layers' codes differ more and more."""
    q_int = quantize_activations(lm, "dynamic", calib)
    q_naive = quantize_activations(lm, "dynamic", calib, simulate=True, sim_dtype="float32")
    mismatch = code_mismatch(q_int, q_naive, tokens)
    assert next(iter(mismatch)) == "layers.0.attn.wq" and mismatch["layers.0.attn.wq"] == 0.0
    assert mismatch["output"] > 0.0
    assert mismatch["layers.3.attn.wo"] > mismatch["layers.1.attn.wo"]
    with pytest.raises(ValueError, match="sim_dtype"):
        quantize_activations(lm, "dynamic", simulate=True, sim_dtype="float16")


def test_quantize_activations_errors(lm):
    with pytest.raises(ValueError, match="mode"):
        quantize_activations(lm, "fp8")
    with pytest.raises(ValueError, match="X_calib"):
        quantize_activations(lm, "static")


# --- KV cache --------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_per_token_error_is_half_a_step(bits):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 7, 32)).astype(np.float32)
    codes, scale, minimum = quantize_per_token(x, bits)
    assert codes.max() <= 2**bits - 1 and scale.dtype == np.float16
    x_hat = codes * scale.astype(np.float32) + minimum.astype(np.float32)
    assert (np.abs(x_hat - x) <= scale.astype(np.float32) / 2 * (1 + 1e-3) + 1e-6).all()
    with pytest.raises(ValueError, match="bits"):
        quantize_per_token(x, 1)


def test_kv_quantized_window_equals_decoding(lm, tokens):
    kv4 = KVQuantizedLM(lm, bits=4)
    full = kv4(tokens[:1, :20])  # (1, 20, vocab): the whole window at once
    kv4.enable_kv_cache()
    steps = [kv4(tokens[:1, i : i + 1])[0, 0] for i in range(20)]
    kv4.disable_kv_cache()
    np.testing.assert_allclose(np.stack(steps), full[0], rtol=1e-4, atol=1e-4)
    assert all(a.kv_cache is None for a in lm.attention_layers())


def test_kv_cache_memory_and_effect(lm, tokens):
    assert KVQuantizedLM(lm, 4).nbytes_per_token() == 4 * 2 * 4 * (16 + 4)
    assert QuantizedKVCache(8).nbytes_per_token(4, 32) == 288
    loss = {b: mq.llm.next_token_loss(KVQuantizedLM(lm, b), tokens.reshape(-1)) for b in (8, 4)}
    base = mq.llm.next_token_loss(lm, tokens.reshape(-1))
    assert abs(loss[8] - base) < 0.01 < loss[4] - base + 0.01


def test_per_channel_keys_wait_in_float_then_quantize_per_channel():
    rng = np.random.default_rng(6)
    k = rng.standard_normal((1, 2, 5, 8)).astype(np.float32)  # (B, H, T, hd)
    k[..., 3] *= 50  # an outlier channel, as KIVI finds in keys
    cache = QuantizedKVCache(bits=4, key_axis="channel", group_size=4)
    k_hat, _ = cache.append(k[:, :, :3], k[:, :, :3])
    np.testing.assert_array_equal(k_hat, k[:, :, :3])  # 3 < 4 tokens: still float32
    k_hat, _ = cache.append(k[:, :, 3:], k[:, :, 3:])
    np.testing.assert_array_equal(k_hat[:, :, 4:], k[:, :, 4:])  # the 5th token waits
    group = k[:, :, :4]  # (1, 2, 4, 8): quantized per (head, channel) over its 4 tokens
    lo, hi = group.min(axis=2, keepdims=True), group.max(axis=2, keepdims=True)
    step = (hi - lo) / 15  # (1, 2, 1, 8): a step per channel
    assert (np.abs(k_hat[:, :, :4] - group) <= step / 2 * 1.01 + 1e-3).all()
    per_token = QuantizedKVCache(bits=4).append(group, group)[0]
    normal = np.arange(8) != 3  # per-token scales are set by the outlier channel
    err_channel = np.abs(k_hat[:, :, :4] - group)[..., normal].max()
    assert err_channel < np.abs(per_token - group)[..., normal].max() / 5
    with pytest.raises(ValueError, match="key_axis"):
        QuantizedKVCache(4, key_axis="head")
    with pytest.raises(ValueError, match="group_size"):
        QuantizedKVCache(4, key_axis="channel", group_size=1)


def test_per_channel_kv_model_decodes_and_counts_its_bytes(lm, tokens):
    kivi = KVQuantizedLM(lm, bits=4, key_axis="channel", group_size=8)
    full = kivi(tokens[:1, :20])  # evaluated by decoding token by token
    kivi.enable_kv_cache()
    steps = [kivi(tokens[:1, i : i + 1])[0, 0] for i in range(20)]
    kivi.disable_kv_cache()
    np.testing.assert_array_equal(np.stack(steps), full[0])
    # keys: 16 code bytes + 32 channels x 4 bytes / 8 tokens; values: 16 + 4 (per head)
    assert kivi.nbytes_per_token() == 4 * 4 * (16 + 32 * 4 / 8 + 16 + 4)
    assert all(a.kv_cache is None for a in lm.attention_layers())
