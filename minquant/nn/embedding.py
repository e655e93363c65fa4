r"""``Embedding``: a learned lookup table from token ids to vectors.

$$y_{n} = W_{x_n}, \qquad W \in \mathbb{R}^{V \times d}$$

The backward pass scatters the upstream gradient back to the rows that were read:
$\partial L / \partial W_v = \sum_{n:\ x_n = v} g_n$ (a token that occurs twice receives both
gradients). Token ids are integers, so no gradient flows to the input.

In a GGUF file (llama.cpp) this weight is ``token_embd.weight``; in Hugging Face Llama it is
``model.embed_tokens.weight``.
"""

import numpy as np

from minquant.nn.module import Module, Parameter


class Embedding(Module):
    r"""Lookup table: tokens of any shape ``(...)`` to vectors ``(..., dim)``.

    ``weight`` (num_embeddings, dim), initialised $\mathcal{N}(0, 1)$ as ``torch.nn.Embedding``.

    >>> emb = Embedding(10, 4, rng=np.random.default_rng(0))
    >>> y = emb(np.array([[1, 2, 1]]))
    >>> y.shape, bool(np.array_equal(y[0, 0], emb.weight.data[1]))
    ((1, 3, 4), True)
    """

    def __init__(
        self, num_embeddings: int, dim: int, rng: np.random.Generator | None = None
    ) -> None:
        super().__init__()
        for name, value in (("num_embeddings", num_embeddings), ("dim", dim)):
            if int(value) != value or value < 1:
                raise ValueError(f"Embedding: {name} must be an int >= 1, got {value!r}")
        rng = np.random.default_rng() if rng is None else rng
        self.num_embeddings, self.dim = int(num_embeddings), int(dim)
        self.weight = Parameter(rng.standard_normal((num_embeddings, dim)))
        self._cache = None

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.dim}"

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens)
        if not np.issubdtype(tokens.dtype, np.integer):
            raise TypeError(f"{self._name()}: tokens must be integers, got {tokens.dtype}")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.num_embeddings):
            raise ValueError(
                f"{self._name()}: tokens must be in [0, {self.num_embeddings - 1}], "
                f"got {tokens.min()}..{tokens.max()}"
            )
        self._cache = tokens
        return self.weight.data[tokens]  # (..., dim), a copy

    def backward(self, grad_out: np.ndarray) -> None:
        """Add the gradient of every position to the row of its token; returns ``None``."""
        self._need_cache(self._cache)
        tokens = self._cache.reshape(-1)  # (N,)
        # NOTE: np.add.at, not weight.grad[tokens] += ...: with fancy indexing a repeated
        # token would be written once instead of added once per occurrence.
        np.add.at(self.weight.grad, tokens, grad_out.reshape(-1, self.dim))  # (V, dim)
        return None
