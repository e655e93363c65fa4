r"""A key-value cache stored in int8 or int4: values per token, keys per token or per channel.

While generating, a model keeps the keys and values of every earlier position of every
layer: $2 \cdot n_\text{layers} \cdot d$ numbers per token, which for long contexts outgrows
the weights. :class:`QuantizedKVCache` stores each new value vector (one head, one token:
``head_dim`` numbers) as ``bits``-bit codes with a float16 scale and minimum:

$$q = \mathrm{clip}\big(\mathrm{rint}((x - m) / s),\ 0,\ 2^b - 1\big), \qquad
s = \frac{\max x - \min x}{2^b - 1}, \qquad m = \min x, \qquad \hat{x} = s\,q + m.$$

**Keys: per token or per channel.** With ``key_axis="token"`` keys are stored like values.
KIVI (Liu et al. 2024) finds that keys have outlier *channels* and quantizes them per
channel, across tokens: ``key_axis="channel"`` takes the min and max of each channel over a
group of ``group_size`` tokens. A per-channel scale needs its group to be complete, so the
newest tokens (fewer than ``group_size``) stay in float32, as KIVI's residual, until the
group fills. Per-token scales are set the moment a token arrives, so one pass over a whole
window computes exactly what token-by-token decoding would (each token's codes depend on it
alone); with per-channel keys it does not (a group's scale would see later tokens), so
:class:`KVQuantizedLM` then evaluates a window by decoding it token by token.

Memory per token and layer: $H (d_h b / 8 + 4)$ bytes for values (codes packed $8/b$ per
byte, a float16 scale and minimum per head), the same for per-token keys, and
$H (d_h b / 8 + 4 d_h / G)$ for per-channel keys (a float16 scale and minimum per channel
and group of $G$ tokens), against $2 H d_h \cdot 4$ in float32; plus, per channel, at most
$G - 1$ float32 keys of the residual (a constant, not per token).

References:

* Z. Liu et al., "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache", ICML 2024
  (arXiv:2402.02750).
* C. Hooper et al., "KVQuant", NeurIPS 2024 (arXiv:2401.18079).
"""

from __future__ import annotations

import numpy as np

from minquant.nn import Module
from minquant.nn.attention import KVCache

#: Bytes of the per-(head, token) parameters: a float16 scale and a float16 minimum.
PARAM_BYTES = 4
KEY_AXES = ("token", "channel")  # keys quantized per token, or per channel (KIVI)


def quantize_per_token(x: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes uint8 (..., d) and float16 ``scale``, ``minimum`` (..., 1) over the last axis.

    >>> codes, scale, minimum = quantize_per_token(np.array([[0.0, 1.0, 3.0]]), bits=2)
    >>> codes.tolist(), scale.tolist(), minimum.tolist()
    ([[0, 1, 3]], [[1.0]], [[0.0]])
    """
    if bits not in (2, 3, 4, 5, 6, 7, 8):
        raise ValueError(f"quantize_per_token: bits must be in 2..8, got {bits!r}")
    x = np.asarray(x, np.float32)
    if not np.isfinite(x).all():
        raise ValueError("quantize_per_token: x holds NaN or Inf")
    qmax = 2**bits - 1
    lo = x.min(axis=-1, keepdims=True)  # (..., 1)
    hi = x.max(axis=-1, keepdims=True)  # (..., 1)
    # NOTE: the stored precision is float16, so scale and minimum are rounded to float16
    # *before* the codes are computed with them: codes and stored parameters agree.
    minimum = lo.astype(np.float16)  # (..., 1)
    scale = ((hi - minimum.astype(np.float32)) / qmax).astype(np.float16)  # (..., 1)
    scale = np.where(scale > 0, scale, np.float16(1.0))  # a constant row: codes 0
    q = np.rint((x - minimum.astype(np.float32)) / scale.astype(np.float32))  # (..., d)
    return np.clip(q, 0, qmax).astype(np.uint8), scale, minimum


def dequantize_per_token(codes: np.ndarray, scale: np.ndarray, minimum: np.ndarray) -> np.ndarray:
    """``scale * codes + minimum`` in float32 (..., d).

    >>> dequantize_per_token(np.array([[0, 1, 3]], np.uint8), np.float16([[0.5]]),
    ...                      np.float16([[-1.0]])).tolist()
    [[-1.0, -0.5, 0.5]]
    """
    return codes.astype(np.float32) * scale.astype(np.float32) + minimum.astype(np.float32)


class QuantizedKVCache(KVCache):
    """A :class:`~minquant.nn.attention.KVCache` that keeps keys and values as ``bits``-bit codes.

    ``append`` quantizes the new (B, H, T, head_dim) values per (head, token), and the keys
    per (head, token) or, with ``key_axis="channel"``, per (head, channel) over each complete
    group of ``group_size`` tokens (the rest wait in float32); it returns the dequantized
    cache, float32 (B, H, T_cached, head_dim).

    >>> cache = QuantizedKVCache(bits=8)
    >>> k = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 1, 2, 4)
    >>> k_hat, v_hat = cache.append(k, k)
    >>> cache.length, bool(np.abs(k_hat - k).max() <= 1 / 255)
    (2, True)
    >>> cache.nbytes_per_token(n_heads=1, head_dim=4)  # 2 x (4 codes + 4 bytes of params)
    16.0
    >>> kivi = QuantizedKVCache(bits=4, key_axis="channel", group_size=2)
    >>> k_hat, _ = kivi.append(k[:, :, :1], k[:, :, :1])  # one token: its key waits in float
    >>> bool(np.array_equal(k_hat, k[:, :, :1]))
    True
    """

    def __init__(self, bits: int = 8, key_axis: str = "token", group_size: int = 32) -> None:
        super().__init__()
        if bits not in (2, 3, 4, 5, 6, 7, 8):
            raise ValueError(f"QuantizedKVCache: bits must be in 2..8, got {bits!r}")
        if key_axis not in KEY_AXES:
            raise ValueError(f"QuantizedKVCache: key_axis must be in {KEY_AXES}, got {key_axis!r}")
        if not (isinstance(group_size, int) and group_size >= 2):
            raise ValueError(
                f"QuantizedKVCache: group_size must be an int >= 2, got {group_size!r}"
            )
        self.bits, self.key_axis, self.group_size = bits, key_axis, group_size
        self._k: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # codes, scale, min
        self._v: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._k_residual: np.ndarray | None = None  # (B, H, R, hd) float32, R < group_size

    def _append_keys(self, k: np.ndarray) -> list[np.ndarray]:
        """Store the new keys; return the dequantized key blocks, oldest first."""
        if self.key_axis == "token":
            self._k.append(quantize_per_token(k, self.bits))
            return [dequantize_per_token(*parts) for parts in self._k]
        residual = k if self._k_residual is None else np.concatenate([self._k_residual, k], -2)
        g = self.group_size
        while residual.shape[-2] >= g:
            group = np.swapaxes(residual[..., :g, :], -1, -2)  # (B, H, hd, G): channel rows
            self._k.append(quantize_per_token(group, self.bits))  # one scale per channel
            residual = residual[..., g:, :]  # (B, H, R, hd)
        self._k_residual = residual
        groups = [np.swapaxes(dequantize_per_token(*parts), -1, -2) for parts in self._k]
        return [*groups, residual.astype(np.float32)]  # (B, H, G, hd) each, then (B, H, R, hd)

    def append(self, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k_hat = self._append_keys(np.asarray(k, np.float32))
        self._v.append(quantize_per_token(v, self.bits))
        v_hat = [dequantize_per_token(*parts) for parts in self._v]
        self.k = np.concatenate(k_hat, axis=-2)  # (B, H, T_cached, hd), float32
        self.v = np.concatenate(v_hat, axis=-2)  # (B, H, T_cached, hd), float32
        return self.k, self.v

    def nbytes_per_token(self, n_heads: int, head_dim: int) -> float:
        """Bytes one token takes in this layer's cache (codes packed, float16 params).

        Per-channel keys count their group's parameters shared over ``group_size`` tokens;
        the float32 residual (fewer than ``group_size`` tokens) is not per token.
        """
        codes = head_dim * self.bits / 8
        if self.key_axis == "token":
            key_params = PARAM_BYTES
        else:
            key_params = PARAM_BYTES * head_dim / self.group_size
        return n_heads * (2 * codes + PARAM_BYTES + key_params)


class KVQuantizedLM(Module):
    """A language model whose attention layers read their keys and values from int-b caches.

    Used like the model: ``mq.llm.perplexity`` (every call runs with fresh quantized caches,
    so each window sees its keys and values quantized, as decoding would) and
    ``mq.llm.generate`` (``enable_kv_cache`` installs :class:`QuantizedKVCache` objects).

    >>> import minquant as mq
    >>> lm = mq.models.load_pretrained("tiny_lm")
    >>> kv8 = KVQuantizedLM(lm, bits=8)
    >>> mq.llm.generate(kv8, "KING:", 12, temperature=0) == mq.llm.generate(lm, "KING:", 12, 0)
    True
    >>> kv8.nbytes_per_token(), kv8.float32_nbytes_per_token()  # all 4 layers
    (1152.0, 4096)
    """

    def __init__(
        self, model: Module, bits: int = 8, key_axis: str = "token", group_size: int = 32
    ) -> None:
        super().__init__()
        QuantizedKVCache(bits, key_axis, group_size)  # validates the arguments
        self.model, self.bits, self.config = model, bits, model.config
        self.key_axis, self.group_size = key_axis, group_size
        self._decoding = False

    def extra_repr(self) -> str:
        return f"bits={self.bits}, key_axis={self.key_axis}, group_size={self.group_size}"

    def _new_cache(self) -> QuantizedKVCache:
        return QuantizedKVCache(self.bits, self.key_axis, self.group_size)

    def _install(self) -> None:
        for attn in self.model.attention_layers():
            attn.kv_cache = self._new_cache()

    def enable_kv_cache(self) -> None:
        self._install()
        self._decoding = True

    def disable_kv_cache(self) -> None:
        self.model.disable_kv_cache()
        self._decoding = False

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        if self._decoding:
            return self.model(tokens)
        self._install()
        try:
            if self.key_axis == "token":
                return self.model(tokens)  # per-token codes: one pass is what decoding does
            # NOTE: per-channel keys: a group's scale must not see later tokens, so the
            # window is decoded token by token, as generation would.
            steps = [self.model(tokens[:, t : t + 1]) for t in range(tokens.shape[1])]
            return np.concatenate(steps, axis=1)  # (B, T, vocab)
        finally:
            self.model.disable_kv_cache()

    def nbytes_per_token(self) -> float:
        """Cache bytes per token, all layers (keys and values, codes packed, fp16 params)."""
        c = self.config
        layer = self._new_cache().nbytes_per_token(c.n_heads, c.dim // c.n_heads)
        return c.n_layers * layer

    def float32_nbytes_per_token(self) -> int:
        """The same for a float32 cache: $2\\,n_\\text{layers}\\,d \\cdot 4$ bytes."""
        return 2 * self.config.n_layers * self.config.dim * 4
