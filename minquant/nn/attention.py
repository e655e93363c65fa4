r"""Rotary position embedding and causal multi-head self-attention (Llama style, no biases).

**Attention.** For one head with queries $Q$, keys $K$, values $V$ (rows are positions,
$d_h$ columns),

$$S = \frac{Q K^\top}{\sqrt{d_h}}, \qquad P = \mathrm{softmax}(S + M), \qquad O = P V,$$

with the causal mask $M_{ij} = -\infty$ for $j > i$ (a position sees itself and the past).
Backward, with $G = \partial L / \partial O$: $\partial L/\partial V = P^\top G$,
$\partial L / \partial P = G V^\top$, the softmax Jacobian
$\partial L/\partial S = P \odot (\partial L/\partial P - \mathrm{rowsum}(P \odot
\partial L/\partial P))$, then $\partial L/\partial Q = \partial L/\partial S\, K / \sqrt{d_h}$
and $\partial L/\partial K = (\partial L/\partial S)^\top Q / \sqrt{d_h}$.

**Rotary position embedding (RoPE).** Each pair of features $(x_{2i}, x_{2i+1})$ of a query
or key at position $t$ is rotated by the angle $t\,\theta_i$, $\theta_i = b^{-2i/d_h}$
(base $b = 10000$):

$$\begin{pmatrix} y_{2i} \\ y_{2i+1} \end{pmatrix} =
\begin{pmatrix} \cos t\theta_i & -\sin t\theta_i \\ \sin t\theta_i & \cos t\theta_i
\end{pmatrix} \begin{pmatrix} x_{2i} \\ x_{2i+1} \end{pmatrix},$$

so $q_s \cdot k_t$ depends on $s - t$ only. A rotation's inverse is its transpose, so the
backward pass is the same rotation by $-t\theta_i$.

**Key-value cache.** When generating, each new token needs the keys and values of all the
earlier positions, which do not change: :class:`KVCache` keeps them, so a decoding step runs
the projections for one token only (a matrix-*vector* product per Linear) and attends to the
cache. ``CausalSelfAttention.kv_cache`` is ``None`` in training; set it (or call
``TransformerLM.enable_kv_cache()``) to decode.

NOTE: the pairs are *adjacent* features, as in Meta's original Llama code and llama.cpp's
``LLAMA_ROPE_TYPE_NORM``: a GGUF export writes ``wq``/``wk`` as they are. Hugging Face's
``rotate_half`` pairs feature $i$ with $i + d_h/2$ instead; its checkpoints equal these up to a
permutation of the rows of ``wq`` and ``wk`` (what llama.cpp's converter undoes).

Names: ``wq, wk, wv, wo`` are GGUF ``blk.N.attn_q, attn_k, attn_v, attn_output`` and
Hugging Face ``self_attn.q_proj, k_proj, v_proj, o_proj``.

References:

* A. Vaswani et al., "Attention Is All You Need", NeurIPS 2017 (arXiv:1706.03762).
* J. Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding", 2021
  (arXiv:2104.09864).
* H. Touvron et al., "LLaMA: Open and Efficient Foundation Language Models", 2023
  (arXiv:2302.13971).
"""

import math

import numpy as np

from minquant.nn.layers import Linear
from minquant.nn.module import Module


def rope_angles(head_dim: int, max_seq_len: int, base: float = 10000.0) -> np.ndarray:
    r"""The rotation angles $t\,\theta_i$, float64 (max_seq_len, head_dim // 2).

    >>> rope_angles(4, 3)[2].tolist()  # position 2: theta = 1, 1/100
    [2.0, 0.02]
    """
    if head_dim % 2 != 0:
        raise ValueError(f"rope_angles: head_dim must be even, got {head_dim}")
    # NOTE: angles in float64 and cast once at use, so the float64 engine is exact to 1e-16.
    theta = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (hd/2,)
    positions = np.arange(max_seq_len, dtype=np.float64)  # (T_max,)
    return np.outer(positions, theta)  # (T_max, hd/2)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate the adjacent feature pairs of ``x`` (..., T, head_dim) by the given angles.

    ``cos`` and ``sin`` are (T, head_dim // 2); pass ``-sin`` for the inverse rotation.

    >>> x = np.array([[[1.0, 0.0]]])  # (1, T=1, head_dim=2)
    >>> apply_rope(x, np.array([[0.0]]), np.array([[1.0]])).tolist()  # a quarter turn
    [[[0.0, 1.0]]]
    """
    x_even, x_odd = x[..., 0::2], x[..., 1::2]  # (..., T, hd/2) each, views
    y = np.empty_like(x)  # (..., T, hd)
    y[..., 0::2] = x_even * cos - x_odd * sin
    y[..., 1::2] = x_even * sin + x_odd * cos
    return y


class RotaryEmbedding(Module):
    r"""RoPE for queries or keys (B, H, T, head_dim) at positions ``start`` .. ``start+T-1``.

    No parameters: the angle table (max_seq_len, head_dim // 2) is fixed. The backward pass
    rotates back by the positions of the last forward call (the same for ``q`` and ``k``).

    >>> rope = RotaryEmbedding(head_dim=4, max_seq_len=8)
    >>> q = np.ones((1, 1, 3, 4))
    >>> bool(np.allclose(rope.backward(rope(q)), q))  # a rotation, undone by backward
    True
    """

    def __init__(self, head_dim: int, max_seq_len: int, base: float = 10000.0) -> None:
        super().__init__()
        self.head_dim, self.max_seq_len, self.base = head_dim, max_seq_len, base
        self.angles = rope_angles(head_dim, max_seq_len, base)  # (T_max, hd/2), float64
        self._cache = None

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_seq_len={self.max_seq_len}, base={self.base}"

    def __call__(self, x: np.ndarray, start: int = 0) -> np.ndarray:
        return self.forward(x, start)

    def _cos_sin(self, start: int, length: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        if start < 0 or start + length > self.max_seq_len:
            raise ValueError(
                f"{self._name()}: positions {start}..{start + length - 1} are outside "
                f"[0, {self.max_seq_len - 1}] (the context length)"
            )
        angles = self.angles[start : start + length]  # (T, hd/2)
        return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)

    def forward(self, x: np.ndarray, start: int = 0) -> np.ndarray:
        if x.ndim < 2 or x.shape[-1] != self.head_dim:
            raise ValueError(f"{self._name()}: expected (..., T, {self.head_dim}), got {x.shape}")
        cos, sin = self._cos_sin(start, x.shape[-2], x.dtype)  # (T, hd/2) each
        self._cache = start
        return apply_rope(x, cos, sin)  # (..., T, hd)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        self._need_cache(self._cache)
        cos, sin = self._cos_sin(self._cache, grad_out.shape[-2], grad_out.dtype)
        return apply_rope(grad_out, cos, -sin)  # (..., T, hd), the inverse rotation


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Causal scaled dot-product attention; returns the output and the probabilities ``P``.

    ``q`` (..., T_q, d_h), ``k`` and ``v`` (..., T_k, d_h) with ``T_k >= T_q``: the queries are
    the *last* ``T_q`` positions (query ``i`` sees keys ``0 .. T_k - T_q + i``), which is the
    usual causal mask when ``T_q == T_k`` and the decoding step of a key-value cache otherwise.
    Equal to ``torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)``
    for ``T_q == T_k``.

    >>> q = k = v = np.eye(2)[None]  # (1, T=2, d_h=2)
    >>> out, p = causal_attention(q, k, v)
    >>> p[0, 0].tolist()  # the first position sees only itself
    [1.0, 0.0]
    """
    t_q, t_k = q.shape[-2], k.shape[-2]
    if t_k < t_q:
        raise ValueError(f"causal_attention: {t_q} queries but only {t_k} keys")
    scale = 1 / math.sqrt(q.shape[-1])
    scores = (q @ k.swapaxes(-1, -2)) * np.asarray(scale, q.dtype)  # (..., T_q, T_k)
    future = np.triu(np.ones((t_q, t_k), dtype=bool), k=1 + t_k - t_q)  # (T_q, T_k)
    scores += np.where(future, -np.inf, 0).astype(q.dtype)  # (..., T_q, T_k), the mask
    # NOTE: every row holds at least its own position, so its max is finite: no NaN.
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)  # (..., T_q, T_k), exp(-inf) = 0 on the mask
    p /= p.sum(axis=-1, keepdims=True)
    return p @ v, p  # (..., T_q, d_h), (..., T_q, T_k)


def causal_attention_backward(
    grad_out: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, p: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients ``(dq, dk, dv)`` of :func:`causal_attention` for the upstream ``grad_out``."""
    scale = np.asarray(1 / math.sqrt(q.shape[-1]), q.dtype)
    dv = p.swapaxes(-1, -2) @ grad_out  # (..., T_k, d_h)
    dp = grad_out @ v.swapaxes(-1, -2)  # (..., T_q, T_k)
    # NOTE: masked entries have p = 0, so the softmax Jacobian gives them no gradient.
    ds = p * (dp - np.sum(dp * p, axis=-1, keepdims=True))  # (..., T_q, T_k)
    dq = (ds @ k) * scale  # (..., T_q, d_h)
    dk = (ds.swapaxes(-1, -2) @ q) * scale  # (..., T_k, d_h)
    return dq, dk, dv


class KVCache:
    """The keys and values (B, H, T_cached, head_dim) of one attention layer, post-RoPE.

    ``append`` adds the new positions and returns everything cached so far.

    >>> cache = KVCache()
    >>> k, v = cache.append(np.zeros((1, 2, 3, 4)), np.ones((1, 2, 3, 4)))
    >>> k, v = cache.append(np.zeros((1, 2, 1, 4)), np.ones((1, 2, 1, 4)))
    >>> cache.length, k.shape
    (4, (1, 2, 4, 4))
    """

    def __init__(self) -> None:
        self.k: np.ndarray | None = None  # (B, H, T_cached, hd)
        self.v: np.ndarray | None = None  # (B, H, T_cached, hd)

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def append(self, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k = np.concatenate([self.k, k], axis=-2)  # (B, H, T_cached + T, hd)
            self.v = np.concatenate([self.v, v], axis=-2)  # (B, H, T_cached + T, hd)
        return self.k, self.v


class CausalSelfAttention(Module):
    r"""Multi-head causal self-attention with RoPE: (B, T, dim) -> (B, T, dim).

    $$\mathrm{out} = \mathrm{concat}_h\big(\mathrm{attn}(R\,x W_q^{h\top},\ R\,x W_k^{h\top},
    \ x W_v^{h\top})\big)\, W_o^\top$$

    ``wq, wk, wv, wo`` are ordinary :class:`~minquant.nn.Linear` layers (dim, dim) without
    bias, applied to the (B*T, dim) matrix of all positions; replace them to quantize.
    With a :class:`KVCache` in ``kv_cache`` the input holds the *new* positions only: they
    are placed after the cached ones (RoPE positions and causal mask) and appended to the
    cache; there is no backward pass in that mode.

    >>> attn = CausalSelfAttention(dim=8, n_heads=2, max_seq_len=16, rng=np.random.default_rng(0))
    >>> attn(np.ones((3, 5, 8), dtype=np.float32)).shape
    (3, 5, 8)
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        max_seq_len: int,
        rope_base: float = 10000.0,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        if dim % n_heads != 0:
            raise ValueError(
                f"CausalSelfAttention: dim {dim} is not divisible by n_heads {n_heads}"
            )
        rng = np.random.default_rng() if rng is None else rng
        self.dim, self.n_heads, self.head_dim = dim, n_heads, dim // n_heads
        self.wq = Linear(dim, dim, bias=False, rng=rng)
        self.wk = Linear(dim, dim, bias=False, rng=rng)
        self.wv = Linear(dim, dim, bias=False, rng=rng)
        self.wo = Linear(dim, dim, bias=False, rng=rng)
        self.rope = RotaryEmbedding(self.head_dim, max_seq_len, rope_base)
        self.kv_cache: KVCache | None = None
        self._cache = None

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_heads={self.n_heads}"

    def _split_heads(self, x: np.ndarray, b: int, t: int) -> np.ndarray:
        """(B*T, dim) -> (B, H, T, head_dim)."""
        return x.reshape(b, t, self.n_heads, self.head_dim).transpose(0, 2, 1, 3)

    def _merge_heads(self, x: np.ndarray) -> np.ndarray:
        """(B, H, T, head_dim) -> (B*T, dim), a contiguous copy for the next matmul."""
        b, _, t, _ = x.shape
        return x.transpose(0, 2, 1, 3).reshape(b * t, self.dim)

    def forward(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"{self._name()}: expected input (B, T, {self.dim}), got {x.shape}")
        b, t, _ = x.shape
        start = 0 if self.kv_cache is None else self.kv_cache.length
        x2 = x.reshape(b * t, self.dim)  # (B*T, dim)
        q = self.rope(self._split_heads(self.wq(x2), b, t), start)  # (B, H, T, hd)
        k = self.rope(self._split_heads(self.wk(x2), b, t), start)  # (B, H, T, hd)
        v = self._split_heads(self.wv(x2), b, t)  # (B, H, T, hd)
        if self.kv_cache is not None:
            k, v = self.kv_cache.append(k, v)  # (B, H, start + T, hd) each
        out, p = causal_attention(q, k, v)  # (B, H, T, hd), (B, H, T, start + T)
        self._cache = None if self.kv_cache is not None else (q, k, v, p)
        return self.wo(self._merge_heads(out)).reshape(b, t, self.dim)  # (B, T, dim)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        if self.kv_cache is not None:
            raise RuntimeError(f"{self._name()}: no backward pass with a key-value cache")
        self._need_cache(self._cache)
        q, k, v, p = self._cache
        b, _, t, _ = q.shape
        d_out = self.wo.backward(grad_out.reshape(b * t, self.dim))  # (B*T, dim)
        dq, dk, dv = causal_attention_backward(self._split_heads(d_out, b, t), q, k, v, p)
        dq = self.rope.backward(dq)  # (B, H, T, hd)
        dk = self.rope.backward(dk)  # (B, H, T, hd)
        dx = self.wq.backward(self._merge_heads(dq))  # (B*T, dim)
        dx += self.wk.backward(self._merge_heads(dk))
        dx += self.wv.backward(self._merge_heads(dv))
        return dx.reshape(b, t, self.dim)  # (B, T, dim)
