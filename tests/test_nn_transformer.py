"""Transformer layers of minquant.nn against torch.nn (forward and every gradient), finite
differences, and the properties that define them (causality, rotations, normalisation)."""

import numpy as np
import pytest

from minquant import nn
from minquant.nn.attention import apply_rope, causal_attention, causal_attention_backward

TOL = {np.float64: 1e-10, np.float32: 1e-5}
DTYPES = [np.float64, np.float32]
SMALL = nn.TransformerConfig(
    vocab_size=11, dim=16, n_layers=2, n_heads=2, hidden_dim=32, max_seq_len=12
)


def _close(ours: np.ndarray, theirs, dtype) -> None:
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    assert ours.dtype == dtype
    np.testing.assert_allclose(ours, theirs, rtol=TOL[dtype], atol=TOL[dtype])


def _check_module(module: nn.Module, twin, x: np.ndarray, rng: np.random.Generator) -> None:
    """Forward, input gradient (for float inputs) and every parameter gradient equal torch's."""
    import torch

    dtype = module.parameters()[0].data.dtype.type
    floating = np.issubdtype(x.dtype, np.floating)
    x_t = torch.from_numpy(x.copy())
    if floating:
        x_t.requires_grad_(True)
    y_t = twin(x_t)
    y = module(x)
    _close(y, y_t, dtype)
    grad_out = rng.normal(size=y.shape).astype(dtype)
    y_t.backward(torch.from_numpy(grad_out))
    dx = module.backward(grad_out)
    if floating:
        _close(dx, x_t.grad, dtype)
    else:
        assert dx is None
    twin_params = dict(twin.named_parameters())
    assert sorted(twin_params) == sorted(name for name, _ in module.named_parameters())
    for name, p in module.named_parameters():
        _close(p.grad, twin_params[name].grad, dtype)


# --- parity with torch ------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_matches_torch(dtype):
    import torch

    rng = np.random.default_rng(0)
    emb = nn.Embedding(7, 5, rng=rng).to(dtype)
    twin = torch.nn.Embedding(7, 5).to(torch.float64 if dtype == np.float64 else torch.float32)
    twin.load_state_dict({"weight": torch.from_numpy(emb.weight.data.copy())})
    tokens = np.array([[1, 3, 3, 0], [6, 1, 1, 1]])  # repeated tokens add their gradients
    _check_module(emb, twin, tokens, rng)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["rms", "layer"])
def test_norms_match_torch(dtype, kind):
    import torch

    rng = np.random.default_rng([len(kind), DTYPES.index(dtype)])
    if kind == "rms":
        norm, twin = nn.RMSNorm(24), torch.nn.RMSNorm(24, eps=1e-6)
    else:
        norm, twin = nn.LayerNorm(24), torch.nn.LayerNorm(24, eps=1e-5)
    for p in norm.parameters():  # not the trivial initial values
        p.data[:] = rng.normal(size=p.shape)
    norm.to(dtype)
    twin = twin.to(torch.float64 if dtype == np.float64 else torch.float32)
    twin.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in norm.state_dict().items()})
    x = (3 * rng.normal(size=(2, 5, 24)) + 1).astype(dtype)
    _check_module(norm, twin, x, rng)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_matches_torch(dtype):
    import torch

    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(scale=4, size=200), [-1000.0, -90.0, -20.0, 0.0, 50.0]])
    x = x.astype(dtype)
    silu = nn.SiLU()
    x_t = torch.from_numpy(x.copy()).requires_grad_(True)
    y_t = torch.nn.functional.silu(x_t)
    with np.errstate(all="raise"):  # no overflow warning escapes, even at -1000
        y = silu(x)
        grad_out = rng.normal(size=x.shape).astype(dtype)
        dx = silu.backward(grad_out)
    y_t.backward(torch.from_numpy(grad_out))
    _close(y, y_t, dtype)
    _close(dx, x_t.grad, dtype)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 4), (2, 3, 17, 8)])
def test_causal_attention_matches_scaled_dot_product_attention(dtype, shape):
    import torch

    rng = np.random.default_rng(list(shape))
    q, k, v = (rng.normal(size=shape).astype(dtype) for _ in range(3))
    q_t, k_t, v_t = (torch.from_numpy(a.copy()).requires_grad_(True) for a in (q, k, v))
    out_t = torch.nn.functional.scaled_dot_product_attention(q_t, k_t, v_t, is_causal=True)
    out, p = causal_attention(q, k, v)
    _close(out, out_t, dtype)
    grad_out = rng.normal(size=out.shape).astype(dtype)
    out_t.backward(torch.from_numpy(grad_out))
    grads = causal_attention_backward(grad_out, q, k, v, p)
    for ours, theirs in zip(grads, (q_t, k_t, v_t), strict=True):
        _close(ours, theirs.grad, dtype)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("start", [0, 5])
def test_rotary_embedding_matches_metas_complex_rope(dtype, start):
    import torch
    from torch_llama import rope_torch

    rng = np.random.default_rng(start)
    rope = nn.RotaryEmbedding(head_dim=8, max_seq_len=16)
    x = rng.normal(size=(2, 3, 7, 8)).astype(dtype)
    x_t = torch.from_numpy(x.copy()).requires_grad_(True)
    y_t = rope_torch(x_t, start)
    y = rope(x, start)
    _close(y, y_t, dtype)
    grad_out = rng.normal(size=y.shape).astype(dtype)
    y_t.backward(torch.from_numpy(grad_out))
    _close(rope.backward(grad_out), x_t.grad, dtype)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("part", ["attention", "mlp", "block", "model"])
def test_transformer_parts_match_torch(dtype, part):
    from torch_llama import twin

    rng = np.random.default_rng([DTYPES.index(dtype), len(part)])
    c = SMALL
    x = rng.normal(size=(3, c.max_seq_len, c.dim)).astype(dtype)
    if part == "attention":
        module = nn.CausalSelfAttention(c.dim, c.n_heads, c.max_seq_len, rng=rng)
    elif part == "mlp":
        module = nn.SwiGLU(c.dim, c.hidden_dim, rng=rng)
    elif part == "block":
        module = nn.TransformerBlock(c.dim, c.n_heads, c.hidden_dim, c.max_seq_len, rng=rng)
        for norm in (module.attn_norm, module.ffn_norm):
            norm.weight.data[:] = rng.uniform(0.5, 1.5, size=c.dim)
    else:
        module = nn.TransformerLM(c, rng=rng)
        module.norm.weight.data[:] = rng.uniform(0.5, 1.5, size=c.dim)
        x = rng.integers(0, c.vocab_size, size=(3, c.max_seq_len))
    module.to(dtype)
    _check_module(module, twin(module, dtype), x, rng)


@pytest.mark.torch
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_matches_torch(max_norm):
    import torch

    rng = np.random.default_rng(0)
    params = [nn.Parameter(rng.normal(size=s)) for s in ((3, 4), (5,))]
    twins = [torch.tensor(p.data, requires_grad=True) for p in params]
    for p, t in zip(params, twins, strict=True):
        p.grad[:] = rng.normal(size=p.shape)
        t.grad = torch.tensor(p.grad.copy())
    norm = nn.clip_grad_norm(params, max_norm)
    norm_t = torch.nn.utils.clip_grad_norm_(twins, max_norm)
    assert norm == pytest.approx(float(norm_t), rel=1e-6)
    for p, t in zip(params, twins, strict=True):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-6)


# --- without torch: finite differences and defining properties ---------------------------


def _finite_difference_check(module: nn.Module, x: np.ndarray, rng: np.random.Generator):
    """backward() equals central differences of sum(g * module(x)) (float64, 12 entries)."""
    module.to(np.float64)
    y = module(x)
    grad_out = rng.normal(size=y.shape)
    dx = module.backward(grad_out)
    h = 1e-6
    targets = [(p.data, p.grad) for p in module.parameters()]
    if np.issubdtype(x.dtype, np.floating):
        targets.append((x, dx))
    for array, grad in targets:
        for flat in rng.choice(array.size, size=min(12, array.size), replace=False):
            i = np.unravel_index(flat, array.shape)
            old = array[i]
            array[i] = old + h
            up = np.sum(grad_out * module(x))
            array[i] = old - h
            down = np.sum(grad_out * module(x))
            array[i] = old
            assert grad[i] == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("part", ["embedding", "rms", "layer", "attention", "block", "model"])
def test_backward_matches_finite_differences(part):
    rng = np.random.default_rng(len(part))
    c = SMALL
    x = rng.normal(size=(2, 6, c.dim))
    module = {
        "embedding": lambda: nn.Embedding(c.vocab_size, c.dim, rng=rng),
        "rms": lambda: nn.RMSNorm(c.dim),
        "layer": lambda: nn.LayerNorm(c.dim),
        "attention": lambda: nn.CausalSelfAttention(c.dim, c.n_heads, c.max_seq_len, rng=rng),
        "block": lambda: nn.TransformerBlock(c.dim, c.n_heads, c.hidden_dim, 12, rng=rng),
        "model": lambda: nn.TransformerLM(c, rng=rng),
    }[part]()
    if part in ("embedding", "model"):
        x = rng.integers(0, c.vocab_size, size=(2, 6))
        x[0, :3] = 4  # a repeated token
    _finite_difference_check(module, x, rng)


def test_silu_golden_values():
    # x * sigmoid(x) at 1 and -2: 1 / (1 + e^-1), -2 / (1 + e^2)
    y = nn.SiLU()(np.array([1.0, -2.0]))
    np.testing.assert_allclose(y, [1 / (1 + np.exp(-1)), -2 / (1 + np.exp(2))], rtol=1e-15)


def test_norms_normalise():
    x = np.random.default_rng(0).normal(loc=3, scale=5, size=(4, 64))
    y = nn.RMSNorm(64, eps=0)(x)
    np.testing.assert_allclose(np.mean(y * y, axis=-1), 1, rtol=1e-12)
    y = nn.LayerNorm(64, eps=0)(x)
    np.testing.assert_allclose(y.mean(axis=-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=-1), 1, rtol=1e-12)


def test_rope_rotates_pairs_and_keeps_only_relative_positions():
    rope = nn.RotaryEmbedding(head_dim=8, max_seq_len=32)
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(2, 8))
    # the same vectors at positions (s, t) and (s + 9, t + 9): equal dot products
    queries = rope(np.tile(q, (32, 1)))  # (32, 8): q at every position
    keys = rope(np.tile(k, (32, 1)))  # (32, 8)
    assert queries[3] @ keys[1] == pytest.approx(queries[12] @ keys[10], rel=1e-12)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), np.linalg.norm(q), rtol=1e-12)
    # pair i at position t turns by t * 10000^(-2i/8): check pair 1 at position 3 by hand
    angle = 3 * 10000 ** (-2 / 8)
    rotated = [
        q[2] * np.cos(angle) - q[3] * np.sin(angle),
        q[2] * np.sin(angle) + q[3] * np.cos(angle),
    ]
    np.testing.assert_allclose(queries[3, 2:4], rotated, rtol=1e-12)
    np.testing.assert_array_equal(queries[0], q)  # position 0 is not rotated
    np.testing.assert_allclose(
        apply_rope(queries[None], *_cos_minus_sin(rope)), q[None, None].repeat(32, 1), atol=1e-12
    )


def _cos_minus_sin(rope):
    return np.cos(rope.angles), -np.sin(rope.angles)


def test_attention_is_causal_and_decodes_like_a_kv_cache():
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(2, 9, 4)) for _ in range(3))
    out, p = causal_attention(q, k, v)
    np.testing.assert_allclose(p.sum(axis=-1), 1, rtol=1e-12)
    assert np.all(np.triu(p, k=1) == 0)  # no weight on the future
    # the first query sees only the first key: its output is the first value
    np.testing.assert_allclose(out[:, 0], v[:, 0], rtol=1e-12)
    # the last 3 queries against all 9 keys = the last 3 rows of the full attention
    out_last, _ = causal_attention(q[:, -3:], k, v)
    np.testing.assert_allclose(out_last, out[:, -3:], rtol=1e-12)


def test_kv_cache_decoding_equals_the_full_forward():
    rng = np.random.default_rng(0)
    model = nn.TransformerLM(SMALL, rng=rng).to(np.float64)
    tokens = rng.integers(0, SMALL.vocab_size, size=(2, 12))
    full = model(tokens)  # (2, 12, vocab)
    model.enable_kv_cache()
    chunks = [model(tokens[:, a:b]) for a, b in ((0, 3), (3, 4), (4, 5), (5, 12))]
    assert model.layers[0].attn.kv_cache.length == 12
    with pytest.raises(RuntimeError, match="no backward pass with a key-value cache"):
        model.backward(np.zeros_like(chunks[-1]))
    with pytest.raises(ValueError, match=r"positions 12..12 are outside \[0, 11\]"):
        model(tokens[:, :1])  # the context is full
    model.disable_kv_cache()
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), full, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(model(tokens), full)  # no cache left behind


def test_model_output_does_not_depend_on_future_tokens():
    rng = np.random.default_rng(0)
    model = nn.TransformerLM(SMALL, rng=rng)
    tokens = rng.integers(0, SMALL.vocab_size, size=(2, 10))
    changed = tokens.copy()
    changed[:, 6:] = (changed[:, 6:] + 1) % SMALL.vocab_size
    a, b = model(tokens), model(changed)
    np.testing.assert_array_equal(a[:, :6], b[:, :6])
    assert not np.allclose(a[:, 6:], b[:, 6:])


def test_linear_layers_are_reachable_and_replaceable():
    model = nn.TransformerLM(SMALL, rng=np.random.default_rng(0))
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    per_block = ["attn.wq", "attn.wk", "attn.wv", "attn.wo", "mlp.w1", "mlp.w3", "mlp.w2"]
    expected = [f"layers.{i}.{n}" for i in range(SMALL.n_layers) for n in per_block]
    assert list(linears) == [*expected, "output"]
    assert all(m.bias is None for m in linears.values())
    assert linears["layers.1.mlp.w2"].in_features == SMALL.hidden_dim

    class Recorder(nn.Module):
        """Stands in for a Linear: records its input (the hook a quantizer uses)."""

        def __init__(self, inner: nn.Linear) -> None:
            super().__init__()
            self.inner, self.inputs = inner, []

        def forward(self, x: np.ndarray) -> np.ndarray:
            self.inputs.append(x)
            return self.inner(x)

    tokens = np.random.default_rng(1).integers(0, SMALL.vocab_size, size=(2, 5))
    before = model(tokens)
    block = model.layers[1]
    block.mlp.w2 = Recorder(block.mlp.w2)
    np.testing.assert_array_equal(model(tokens), before)
    assert block.mlp.w2.inputs[0].shape == (2 * 5, SMALL.hidden_dim)  # (B*T, in_features)


def test_state_dict_names_follow_llama():
    model = nn.TransformerLM(SMALL, rng=np.random.default_rng(0))
    names = list(model.state_dict())
    assert names[:3] == [
        "tok_embeddings.weight",
        "layers.0.attn_norm.weight",
        "layers.0.attn.wq.weight",
    ]
    assert names[-2:] == ["norm.weight", "output.weight"]
    assert len(names) == 2 + 9 * SMALL.n_layers + 1


def test_bad_input_is_named():
    model = nn.TransformerLM(SMALL, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"tokens must be \(B, T\) with T <= 12"):
        model(np.zeros((1, 13), dtype=np.int64))
    with pytest.raises(ValueError, match=r"tokens must be in \[0, 10\], got 0..11"):
        model(np.array([[0, 11]]))
    with pytest.raises(TypeError, match="tokens must be integers, got float64"):
        nn.Embedding(3, 2)(np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"expected input of shape \(..., 16\), got \(2, 8\)"):
        nn.RMSNorm(16)(np.zeros((2, 8)))
    with pytest.raises(ValueError, match="dim 10 is not divisible by n_heads 4"):
        nn.CausalSelfAttention(10, 4, 8)
    with pytest.raises(ValueError, match=r"positions 5..8 are outside \[0, 7\]"):
        nn.RotaryEmbedding(4, 8)(np.zeros((4, 4)), start=5)
    with pytest.raises(RuntimeError, match="backward\\(\\) called before forward"):
        nn.RMSNorm(4).backward(np.zeros((1, 4)))
