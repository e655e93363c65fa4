r"""A Llama-style decoder-only transformer: SiLU, the SwiGLU MLP, the block and the model.

One block (pre-norm, residual, no biases):

$$h = x + \mathrm{Attn}(\mathrm{RMSNorm}(x)), \qquad
y = h + \mathrm{MLP}(\mathrm{RMSNorm}(h)),$$
$$\mathrm{MLP}(x) = W_2\big(\mathrm{SiLU}(W_1 x) \odot W_3 x\big), \qquad
\mathrm{SiLU}(a) = a\,\sigma(a).$$

The model: token embedding, ``n_layers`` blocks, a final RMSNorm and a Linear to the
vocabulary logits. Backward through a residual adds the two paths:
$\partial L/\partial h = g + \mathrm{RMSNorm}'^\top \mathrm{MLP}'^\top g$.

Every matrix is an ordinary :class:`~minquant.nn.Linear` reachable as an attribute, so
``model.named_modules()`` finds them all and a quantizer can swap each for its own layer.
Names (minquant / GGUF, llama.cpp / Hugging Face Llama):

=============================  ====================  ====================================
minquant                        GGUF                  Hugging Face
=============================  ====================  ====================================
``tok_embeddings``              ``token_embd``        ``model.embed_tokens``
``layers.N.attn_norm``          ``blk.N.attn_norm``   ``model.layers.N.input_layernorm``
``layers.N.attn.wq/wk/wv/wo``   ``blk.N.attn_q/k/v/   ``...self_attn.q/k/v/o_proj``
                                output``
``layers.N.ffn_norm``           ``blk.N.ffn_norm``    ``...post_attention_layernorm``
``layers.N.mlp.w1/w3/w2``       ``blk.N.ffn_gate/     ``...mlp.gate/up/down_proj``
                                up/down``
``norm``                        ``output_norm``       ``model.norm``
``output``                      ``output``            ``lm_head``
=============================  ====================  ====================================

References:

* N. Shazeer, "GLU Variants Improve Transformer", 2020 (arXiv:2002.05202).
* S. Elfwing, E. Uchibe, K. Doya, "Sigmoid-Weighted Linear Units", 2017 (arXiv:1702.03118).
* H. Touvron et al., "LLaMA", 2023 (arXiv:2302.13971); A. Karpathy, *nanoGPT*, *llama2.c*.
"""

from dataclasses import dataclass

import numpy as np

from minquant.nn.attention import CausalSelfAttention, KVCache
from minquant.nn.embedding import Embedding
from minquant.nn.layers import Linear
from minquant.nn.module import Module, Sequential
from minquant.nn.norm import RMSNorm


class SiLU(Module):
    r"""$\mathrm{SiLU}(x) = x\,\sigma(x)$; backward $\sigma(x)\,(1 + x(1 - \sigma(x)))$.

    >>> SiLU()(np.array([0.0, 100.0, -100.0])).tolist()
    [0.0, 100.0, -0.0]
    """

    def __init__(self) -> None:
        super().__init__()
        self._cache = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        # NOTE: for x < -88 (float32) e^{-x} overflows to inf and sigma = 1 / (1 + inf) = 0,
        # the correct limit: the overflow is expected, so its warning is silenced.
        with np.errstate(over="ignore"):
            sigma = 1 / (1 + np.exp(-x))  # (...)
        self._cache = (x, sigma)
        return x * sigma

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        self._need_cache(self._cache)
        x, sigma = self._cache
        return grad_out * sigma * (1 + x * (1 - sigma))


class SwiGLU(Module):
    r"""The gated MLP of Llama: ``w2(silu(w1(x)) * w3(x))``, (B, T, dim) -> (B, T, dim).

    ``w1`` is the gate (dim -> hidden_dim), ``w3`` the up projection (dim -> hidden_dim),
    ``w2`` the down projection (hidden_dim -> dim), all without bias (Meta's names).

    >>> mlp = SwiGLU(8, 16, rng=np.random.default_rng(0))
    >>> mlp(np.ones((2, 3, 8), dtype=np.float32)).shape, mlp.w2.in_features
    ((2, 3, 8), 16)
    """

    def __init__(self, dim: int, hidden_dim: int, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        rng = np.random.default_rng() if rng is None else rng
        self.dim, self.hidden_dim = dim, hidden_dim
        self.w1 = Linear(dim, hidden_dim, bias=False, rng=rng)
        self.w3 = Linear(dim, hidden_dim, bias=False, rng=rng)
        self.w2 = Linear(hidden_dim, dim, bias=False, rng=rng)
        self.act = SiLU()
        self._cache = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        shape = x.shape  # (..., dim)
        x2 = x.reshape(-1, self.dim)  # (N, dim)
        gate = self.act(self.w1(x2))  # (N, hidden)
        up = self.w3(x2)  # (N, hidden)
        self._cache = (gate, up)
        return self.w2(gate * up).reshape(shape)  # (..., dim)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        self._need_cache(self._cache)
        gate, up = self._cache  # (N, hidden) each
        d_hidden = self.w2.backward(grad_out.reshape(-1, self.dim))  # (N, hidden)
        dx = self.w1.backward(self.act.backward(d_hidden * up))  # (N, dim)
        dx += self.w3.backward(d_hidden * gate)
        return dx.reshape(grad_out.shape)  # (..., dim)


class TransformerBlock(Module):
    """Pre-norm decoder block: ``h = x + attn(attn_norm(x))``, ``h + mlp(ffn_norm(h))``.

    >>> block = TransformerBlock(8, 2, 16, max_seq_len=4, rng=np.random.default_rng(0))
    >>> block(np.ones((1, 4, 8), dtype=np.float32)).shape
    (1, 4, 8)
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        hidden_dim: int,
        max_seq_len: int,
        norm_eps: float = 1e-5,
        rope_base: float = 10000.0,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        rng = np.random.default_rng() if rng is None else rng
        self.attn_norm = RMSNorm(dim, norm_eps)
        self.attn = CausalSelfAttention(dim, n_heads, max_seq_len, rope_base, rng=rng)
        self.ffn_norm = RMSNorm(dim, norm_eps)
        self.mlp = SwiGLU(dim, hidden_dim, rng=rng)

    def forward(self, x: np.ndarray) -> np.ndarray:
        h = x + self.attn(self.attn_norm(x))  # (B, T, dim)
        return h + self.mlp(self.ffn_norm(h))  # (B, T, dim)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        dh = grad_out + self.ffn_norm.backward(self.mlp.backward(grad_out))  # (B, T, dim)
        return dh + self.attn_norm.backward(self.attn.backward(dh))  # (B, T, dim)


@dataclass(frozen=True)
class TransformerConfig:
    """Shape of a :class:`TransformerLM` (the defaults are the packaged ``tiny_lm``)."""

    vocab_size: int = 63  # the characters of minquant.data.VOCAB
    dim: int = 128  # d_model, the width of the residual stream
    n_layers: int = 4  # decoder blocks
    n_heads: int = 4  # attention heads of 32 features each
    hidden_dim: int = 384  # SwiGLU width, about 8/3 dim, a multiple of 128 (group sizes)
    max_seq_len: int = 128  # context length (RoPE table size)
    norm_eps: float = 1e-5  # RMSNorm epsilon (Llama 2)
    rope_base: float = 10000.0  # RoPE base b of theta_i = b^(-2i/head_dim)


class TransformerLM(Module):
    """Decoder-only language model: tokens (B, T) int -> next-token logits (B, T, vocab).

    ``backward(dlogits)`` fills every ``.grad`` and returns ``None`` (tokens have no gradient).
    After ``enable_kv_cache()`` each call takes the *next* tokens only and returns their
    logits (decoding; see :class:`~minquant.nn.attention.KVCache`).

    >>> config = TransformerConfig(vocab_size=10, dim=8, n_layers=2, n_heads=2, hidden_dim=16)
    >>> model = TransformerLM(config, rng=np.random.default_rng(0))
    >>> model(np.zeros((3, 5), dtype=np.int64)).shape
    (3, 5, 10)
    >>> [name for name, m in model.named_modules() if isinstance(m, Linear)][:4]
    ['layers.0.attn.wq', 'layers.0.attn.wk', 'layers.0.attn.wv', 'layers.0.attn.wo']
    """

    def __init__(self, config: TransformerConfig, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        rng = np.random.default_rng() if rng is None else rng
        c = config
        self.config = config
        self.tok_embeddings = Embedding(c.vocab_size, c.dim, rng=rng)
        blocks = [
            TransformerBlock(
                c.dim, c.n_heads, c.hidden_dim, c.max_seq_len, c.norm_eps, c.rope_base, rng=rng
            )
            for _ in range(c.n_layers)
        ]
        self.layers = Sequential(*blocks)
        self.norm = RMSNorm(c.dim, c.norm_eps)
        self.output = Linear(c.dim, c.vocab_size, bias=False, rng=rng)

    def save(self, path: str) -> None:
        """Write the model to exactly ``path`` (an ``.npz``, no pickle); ``mq.load`` reads it.

        Float or quantized by :func:`minquant.llm.quantize_weights`: see
        :mod:`minquant.export.lm` for what the file holds.
        """
        from minquant.export.npz import save

        save(self, path)

    def attention_layers(self) -> list[CausalSelfAttention]:
        return [m for m in self.modules() if isinstance(m, CausalSelfAttention)]

    def enable_kv_cache(self) -> None:
        """Give every attention layer a new, empty key-value cache (decoding from position 0).

        >>> model = TransformerLM(TransformerConfig(), rng=np.random.default_rng(0))
        >>> full = model(np.array([[5, 6, 7]]))  # (1, 3, vocab)
        >>> model.enable_kv_cache()
        >>> first_two, third = model(np.array([[5, 6]])), model(np.array([[7]]))
        >>> model.disable_kv_cache()
        >>> bool(np.allclose(third[0, 0], full[0, 2], atol=1e-5))
        True
        """
        for attn in self.attention_layers():
            attn.kv_cache = KVCache()

    def disable_kv_cache(self) -> None:
        """Drop the caches: calls take whole sequences again (training, evaluation)."""
        for attn in self.attention_layers():
            attn.kv_cache = None

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[1] > self.config.max_seq_len:
            raise ValueError(
                f"TransformerLM: tokens must be (B, T) with T <= {self.config.max_seq_len} "
                f"(the context length), got shape {tokens.shape}"
            )
        b, t = tokens.shape
        x = self.tok_embeddings(tokens)  # (B, T, dim)
        x = self.norm(self.layers(x))  # (B, T, dim)
        logits = self.output(x.reshape(b * t, self.config.dim))  # (B*T, vocab)
        return logits.reshape(b, t, self.config.vocab_size)  # (B, T, vocab)

    def backward(self, grad_out: np.ndarray) -> None:
        b, t, vocab = grad_out.shape
        dx = self.output.backward(grad_out.reshape(b * t, vocab))  # (B*T, dim)
        dx = self.layers.backward(self.norm.backward(dx.reshape(b, t, self.config.dim)))
        self.tok_embeddings.backward(dx)  # (B, T, dim) -> the embedding rows
        return None
