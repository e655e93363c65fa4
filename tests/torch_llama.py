"""A plain PyTorch twin of minquant's TransformerLM (the oracle of the transformer tests).

Written from the formulas with torch.nn modules and torch.nn.functional (RMSNorm, SiLU,
scaled_dot_product_attention); RoPE as Meta's Llama code writes it, with complex numbers.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch (the oracle) is not installed")
F = torch.nn.functional


def rope_torch(x: torch.Tensor, start: int = 0, base: float = 10000.0) -> torch.Tensor:
    """Meta's apply_rotary_emb: adjacent pairs as complex numbers times e^{i t theta}."""
    t, hd = x.shape[-2], x.shape[-1]
    theta = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))  # (hd/2,)
    positions = torch.arange(start, start + t, dtype=torch.float64)  # (T,)
    freqs = torch.polar(torch.ones(t, hd // 2, dtype=torch.float64), torch.outer(positions, theta))
    x_c = torch.view_as_complex(x.to(torch.float64).reshape(*x.shape[:-1], hd // 2, 2))
    out = torch.view_as_real(x_c * freqs).reshape(x.shape)
    # NOTE: rotate in float64 and round once, as minquant does with its float64 angle table.
    return out.to(x.dtype) if x.dtype == torch.float64 else _rope_in_dtype(x, start, base)


def _rope_in_dtype(x: torch.Tensor, start: int, base: float) -> torch.Tensor:
    """Float32 RoPE: cos/sin rounded to float32 first, then the rotation in float32."""
    t, hd = x.shape[-2], x.shape[-1]
    theta = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    angles = torch.outer(torch.arange(start, start + t, dtype=torch.float64), theta)
    cos, sin = torch.cos(angles).to(x.dtype), torch.sin(angles).to(x.dtype)
    x_even, x_odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), -1).flatten(-2)


class Attention(torch.nn.Module):
    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.wq = torch.nn.Linear(dim, dim, bias=False)
        self.wk = torch.nn.Linear(dim, dim, bias=False)
        self.wv = torch.nn.Linear(dim, dim, bias=False)
        self.wo = torch.nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.n_heads, c // self.n_heads).transpose(1, 2)

        q, k, v = rope_torch(heads(self.wq(x))), rope_torch(heads(self.wk(x))), heads(self.wv(x))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hd)
        return self.wo(out.transpose(1, 2).reshape(b, t, c))


class MLP(torch.nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = torch.nn.Linear(dim, hidden_dim, bias=False)
        self.w3 = torch.nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = torch.nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(torch.nn.Module):
    def __init__(self, dim: int, n_heads: int, hidden_dim: int, eps: float) -> None:
        super().__init__()
        self.attn_norm = torch.nn.RMSNorm(dim, eps=eps)
        self.attn = Attention(dim, n_heads)
        self.ffn_norm = torch.nn.RMSNorm(dim, eps=eps)
        self.mlp = MLP(dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.attn(self.attn_norm(x))
        return h + self.mlp(self.ffn_norm(h))


class LM(torch.nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        c = config
        self.tok_embeddings = torch.nn.Embedding(c.vocab_size, c.dim)
        self.layers = torch.nn.Sequential(
            *[Block(c.dim, c.n_heads, c.hidden_dim, c.norm_eps) for _ in range(c.n_layers)]
        )
        self.norm = torch.nn.RMSNorm(c.dim, eps=c.norm_eps)
        self.output = torch.nn.Linear(c.dim, c.vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.output(self.norm(self.layers(self.tok_embeddings(tokens))))


def twin(module, dtype=np.float32) -> torch.nn.Module:
    """The torch twin of a minquant TransformerLM / block / attention / MLP, same weights."""
    from minquant import nn

    if isinstance(module, nn.TransformerLM):
        out = LM(module.config)
    elif isinstance(module, nn.TransformerBlock):
        attn = module.attn
        out = Block(attn.dim, attn.n_heads, module.mlp.hidden_dim, module.attn_norm.eps)
    elif isinstance(module, nn.CausalSelfAttention):
        out = Attention(module.dim, module.n_heads)
    elif isinstance(module, nn.SwiGLU):
        out = MLP(module.dim, module.hidden_dim)
    else:
        raise TypeError(type(module))
    out = out.to(torch.float64 if dtype == np.float64 else torch.float32)
    out.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in module.state_dict().items()})
    return out
