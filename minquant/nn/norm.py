r"""Normalisation over the last axis: ``RMSNorm`` (Llama) and ``LayerNorm`` (GPT-2, BERT).

For a vector $x \in \mathbb{R}^d$ (the last axis; every leading index is independent):

$$\mathrm{RMSNorm}(x) = \frac{x}{\sqrt{\tfrac{1}{d}\sum_i x_i^2 + \epsilon}} \odot \gamma,
\qquad
\mathrm{LayerNorm}(x) = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \odot \gamma + \beta,$$

with $\mu$ and $\sigma^2$ the mean and the (biased) variance of $x$. With $r$ the reciprocal
root, $\hat x$ the normalised vector and $\hat g = g \odot \gamma$ the upstream gradient
carried through the scale, the backward passes are

$$\frac{\partial L}{\partial x} = r \big(\hat g - \hat x\, \overline{\hat g \hat x}\big)
\ \text{(RMSNorm)}, \qquad
\frac{\partial L}{\partial x} = r \big(\hat g - \overline{\hat g} - \hat x\,
\overline{\hat g \hat x}\big)\ \text{(LayerNorm)},$$

where the bar is the mean over the last axis; $\partial L/\partial \gamma = \sum g \odot \hat x$
and $\partial L/\partial \beta = \sum g$ over all leading indices.

In GGUF (llama.cpp) Llama's norms are ``blk.N.attn_norm``, ``blk.N.ffn_norm`` and
``output_norm``; in Hugging Face ``input_layernorm``, ``post_attention_layernorm``, ``norm``.

References:

* B. Zhang, R. Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019
  (arXiv:1910.07467).
* J. L. Ba, J. R. Kiros, G. E. Hinton, "Layer Normalization", 2016 (arXiv:1607.06450).
"""

import numpy as np

from minquant.nn.module import Module, Parameter


def _check_last_axis(layer: Module, x: np.ndarray, dim: int) -> None:
    if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating):
        got = x.dtype if isinstance(x, np.ndarray) else type(x).__name__
        raise TypeError(f"{layer._name()}: input must be a floating-point ndarray, got {got}")
    if x.ndim == 0 or x.shape[-1] != dim:
        raise ValueError(f"{layer._name()}: expected input of shape (..., {dim}), got {x.shape}")


class RMSNorm(Module):
    r"""Root-mean-square normalisation over the last axis, ``weight`` $\gamma$ (dim,) = 1.

    Equal to ``torch.nn.RMSNorm(dim, eps)``.

    >>> norm = RMSNorm(4)
    >>> norm(np.array([[2.0, -2.0, 2.0, -2.0]], dtype=np.float32)).tolist()
    [[1.0, -1.0, 1.0, -1.0]]
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = Parameter(np.ones(dim))
        self._cache = None

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"

    def forward(self, x: np.ndarray) -> np.ndarray:
        _check_last_axis(self, x, self.dim)
        mean_square = np.mean(x * x, axis=-1, keepdims=True)  # (..., 1)
        r = 1 / np.sqrt(mean_square + self.eps)  # (..., 1), the reciprocal RMS
        x_hat = x * r  # (..., dim)
        self._cache = (x_hat, r)
        return x_hat * self.weight.data  # (..., dim)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        self._need_cache(self._cache)
        x_hat, r = self._cache  # (..., dim), (..., 1)
        self.weight.grad += (grad_out * x_hat).reshape(-1, self.dim).sum(axis=0)  # (dim,)
        g_hat = grad_out * self.weight.data  # (..., dim)
        return r * (g_hat - x_hat * np.mean(g_hat * x_hat, axis=-1, keepdims=True))


class LayerNorm(Module):
    r"""Layer normalisation over the last axis: ``weight`` $\gamma$ (dim,) = 1, ``bias`` = 0.

    Equal to ``torch.nn.LayerNorm(dim, eps)``.

    >>> norm = LayerNorm(4)
    >>> norm(np.array([[1.0, 3.0, 1.0, 3.0]], dtype=np.float32)).round(4).tolist()
    [[-1.0, 1.0, -1.0, 1.0]]
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = Parameter(np.ones(dim))
        self.bias = Parameter(np.zeros(dim))
        self._cache = None

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"

    def forward(self, x: np.ndarray) -> np.ndarray:
        _check_last_axis(self, x, self.dim)
        centred = x - np.mean(x, axis=-1, keepdims=True)  # (..., dim)
        variance = np.mean(centred * centred, axis=-1, keepdims=True)  # (..., 1), biased
        r = 1 / np.sqrt(variance + self.eps)  # (..., 1)
        x_hat = centred * r  # (..., dim)
        self._cache = (x_hat, r)
        return x_hat * self.weight.data + self.bias.data  # (..., dim)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        self._need_cache(self._cache)
        x_hat, r = self._cache  # (..., dim), (..., 1)
        self.weight.grad += (grad_out * x_hat).reshape(-1, self.dim).sum(axis=0)  # (dim,)
        self.bias.grad += grad_out.reshape(-1, self.dim).sum(axis=0)  # (dim,)
        g_hat = grad_out * self.weight.data  # (..., dim)
        g_mean = np.mean(g_hat, axis=-1, keepdims=True)  # (..., 1)
        gx_mean = np.mean(g_hat * x_hat, axis=-1, keepdims=True)  # (..., 1)
        return r * (g_hat - g_mean - x_hat * gx_mean)  # (..., dim)
