r"""Evaluating and sampling a language model: next-token loss, perplexity, generation.

A language model gives, for every prefix $x_{<t}$, a distribution $p(x_t \mid x_{<t})$ over
the vocabulary. Its quality on a text of $N$ predicted tokens is the mean cross entropy in
nats per token and its exponential, the perplexity (the "effective number of choices"):

$$\mathcal{L} = -\frac{1}{N} \sum_t \log p(x_t \mid x_{<t}), \qquad
\mathrm{PPL} = e^{\mathcal{L}}.$$

The text is cut into consecutive, non-overlapping windows of ``context`` tokens (each window
predicts its own next ``context`` tokens, so the first token of a window sees no earlier
context): fixed windows make the number deterministic and fast, at the price of a slightly
higher loss than a sliding window would give.

Sampling draws $x_t \sim \mathrm{softmax}(z_t / \tau)$ from the last position's logits $z_t$
at temperature $\tau$; $\tau = 0$ takes the most likely token (greedy decoding).

References: C. E. Shannon, "Prediction and Entropy of Printed English", 1951;
A. Karpathy, *nanoGPT* (``sample.py``); Hugging Face, "Perplexity of fixed-length models".
"""

import math

import numpy as np

from minquant import nn
from minquant.data import decode, encode


def _as_tokens(tokens: np.ndarray | str, name: str) -> np.ndarray:
    if isinstance(tokens, str):
        return encode(tokens)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(
            f"{name}: tokens must be a str or a 1-D integer array, got {tokens.dtype} "
            f"{tokens.shape}"
        )
    return tokens.astype(np.int64)


def next_token_loss(
    model: nn.Module,
    tokens: np.ndarray,
    context: int | None = None,
    batch_size: int = 16,
) -> float:
    r"""Mean next-token cross entropy of ``model`` on ``tokens``, in nats per token.

    Windows of ``context`` tokens (default: the model's context length) predict the token
    after each position; the ``len(tokens) - 1`` predictions that fit whole windows count,
    a remainder shorter than a window is left out. ``batch_size`` windows run at once.

    >>> from minquant.models import load_pretrained
    >>> from minquant.data import encode, load_text
    >>> loss = next_token_loss(load_pretrained("tiny_lm"), encode(load_text("val")[:1025]))
    >>> 1.0 < loss < 2.5  # the first 1,024 predictions of Macbeth
    True
    """
    tokens = _as_tokens(tokens, "next_token_loss")
    context = model.config.max_seq_len if context is None else context
    if not 1 <= context <= model.config.max_seq_len:
        raise ValueError(
            f"next_token_loss: context must be in [1, {model.config.max_seq_len}], got {context}"
        )
    num_windows = (len(tokens) - 1) // context
    if num_windows < 1:
        raise ValueError(
            f"next_token_loss: need at least context + 1 = {context + 1} tokens, got {len(tokens)}"
        )
    starts = np.arange(num_windows) * context  # (W,)
    offsets = np.arange(context + 1)  # (context + 1,)
    total = 0.0
    for i in range(0, num_windows, batch_size):
        windows = tokens[starts[i : i + batch_size, None] + offsets]  # (b, context + 1)
        logits = model(windows[:, :-1])  # (b, context, vocab)
        targets = windows[:, 1:].reshape(-1)  # (b * context,)
        loss, _ = nn.cross_entropy(logits.reshape(len(targets), -1), targets)
        # NOTE: a sum of batch means weighted by their sizes, in Python floats (float64).
        total += loss * len(targets)
    return total / (num_windows * context)


def perplexity(
    model: nn.Module,
    tokens: np.ndarray,
    context: int | None = None,
    batch_size: int = 16,
) -> float:
    r"""$\exp$ of :func:`next_token_loss`: the perplexity of ``model`` on ``tokens``.

    A uniform guess over the 63 characters has perplexity 63.

    >>> from minquant.models import load_pretrained
    >>> from minquant.data import encode, load_text
    >>> tokens = encode(load_text("val")[:1025])
    >>> lm = load_pretrained("tiny_lm")
    >>> bool(np.isclose(perplexity(lm, tokens), np.exp(next_token_loss(lm, tokens))))
    True
    """
    return math.exp(next_token_loss(model, tokens, context, batch_size))


def generate(
    model: nn.TransformerLM,
    prompt: str | np.ndarray,
    n: int,
    temperature: float = 1.0,
    rng: np.random.Generator | None = None,
) -> str | np.ndarray:
    r"""Continue ``prompt`` by ``n`` tokens sampled from ``model`` at ``temperature``.

    Returns a ``str`` (prompt and continuation) for a ``str`` prompt, else the int64 tokens.
    ``temperature=0`` is greedy (no randomness); otherwise ``rng`` draws the samples
    (``None``: an unseeded generator).

    Decoding uses the model's key-value cache: the prompt (its last ``max_seq_len`` tokens)
    runs once, then every step feeds one token. When the context is full, the cache restarts
    from the last ``max_seq_len // 2`` tokens (llama.cpp's "context shift"), so token ``t``
    is predicted from ``out[s:t]`` with ``t - s <= max_seq_len``.

    >>> from minquant.models import load_pretrained
    >>> lm = load_pretrained("tiny_lm")
    >>> a = generate(lm, "KING:", 20, rng=np.random.default_rng(0))
    >>> a == generate(lm, "KING:", 20, rng=np.random.default_rng(0)), a[:6]
    (True, 'KING:\n')
    """
    as_text = isinstance(prompt, str)
    tokens = _as_tokens(prompt, "generate")
    if len(tokens) == 0:
        raise ValueError("generate: the prompt is empty")
    if n < 0:
        raise ValueError(f"generate: n must be >= 0, got {n}")
    if temperature < 0 or not math.isfinite(temperature):
        raise ValueError(f"generate: temperature must be finite and >= 0, got {temperature}")
    rng = np.random.default_rng() if rng is None and temperature > 0 else rng
    window = model.config.max_seq_len
    out = list(tokens.tolist())
    start = max(0, len(out) - window)  # out[start:] is in the cache
    model.enable_kv_cache()
    try:
        logits = model(np.array([out[start:]]))[0, -1]  # (vocab,), the prompt at once
        for i in range(n):
            out.append(_sample(logits, temperature, rng))
            if i == n - 1:
                break
            if len(out) - start > window:  # the new token does not fit: shift the context
                start = len(out) - window // 2
                model.enable_kv_cache()
                logits = model(np.array([out[start:]]))[0, -1]  # (vocab,)
            else:
                logits = model(np.array([out[-1:]]))[0, -1]  # (vocab,), one new token
    finally:
        model.disable_kv_cache()
    result = np.array(out, dtype=np.int64)  # (len(prompt) + n,)
    return decode(result) if as_text else result


def _sample(logits: np.ndarray, temperature: float, rng: np.random.Generator | None) -> int:
    """One token from ``softmax(logits / temperature)``; the argmax at temperature 0."""
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature  # (vocab,)
    probs = np.exp(z - z.max())  # (vocab,)
    probs /= probs.sum()
    return int(rng.choice(len(probs), p=probs))
