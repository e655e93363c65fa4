r"""A model's ``Linear`` weights stored in an LLM number format (GGUF, MX, NF4, FP8, ternary).

:func:`quantize_weights_format` replaces every ``nn.Linear`` of a model by a
:class:`FormatLinear` that keeps the *real bytes* of its weight in one of
:data:`minquant.formats.WEIGHT_FORMATS` (``q4_0``, ``nf4``, ``mxfp4``, ``fp8_e4m3``,
``ternary``, ...). Forward reads the weight back from the bytes and multiplies in float32:

$$y = x\,\hat{W}^\top + b, \qquad \hat{W} = \mathrm{decode}_{\text{fmt}}(\text{bytes}).$$

The decoder is the formats package's own (``dequantize_blocks``, NF4, binary, the FP8
element decode), so $\hat{W}$ equals the ``w_hat`` of :func:`minquant.formats.quantize_weight`
bit for bit. No float copy of $\hat{W}$ is kept: every call decodes it again, which costs one
pass over the bytes (a few NumPy operations per weight) and one float32 (out, in) buffer that
lives only during the call. For a perplexity evaluation (many tokens per call) the matmul
dominates; a serving kernel would decode inside the GEMV instead (as
:mod:`minquant.kernels.gemv` does for integer codes).

**Rows that are not whole blocks.** A block format cuts each row into blocks of its block
size (32 for GGUF and MX, 64 for NF4, 256 for TQ1_0 / TQ2_0 / ternary). When ``in`` is not
a multiple of it (tiny_lm's rows of 128 and 384 values against TQ's 256) the weight is read
in row-major order as one long row, padded with zeros to a whole number of blocks, and
stored as blocks of that long row ("flat" layout: a block may span two output rows, as the
weight's bytes in memory do). The padding is stored, so :meth:`FormatLinear.nbytes` counts
it. ``ternary`` computes its absmean scale on the weight before padding.

References:

* llama.cpp / GGML, ``ggml/src/ggml-quants.c`` (Q4_0 ... TQ2_0); OCP Microscaling
  Formats (MX) v1.0; T. Dettmers et al., "QLoRA", arXiv:2305.14314 (NF4);
  P. Micikevicius et al., "FP8 Formats for Deep Learning", arXiv:2209.05433;
  S. Ma et al., "The Era of 1-bit LLMs", arXiv:2402.17764 (ternary).
"""

from __future__ import annotations

import copy

import numpy as np

from minquant import formats
from minquant.formats import nf4, ternary
from minquant.nn import Linear, Module, Parameter


def block_size(fmt: str) -> int:
    """Values per block of ``fmt`` along a row; 1 for per-row formats (FP8, binary).

    >>> block_size("q4_0"), block_size("nf4"), block_size("ternary"), block_size("fp8_e4m3")
    (32, 64, 256, 1)
    """
    check_format(fmt)
    if fmt in formats.BLOCK_FORMATS:
        return formats.BLOCK_FORMATS[fmt].block_size
    if fmt == "ternary":
        return ternary.BLOCK_SIZE
    if fmt == "nf4_dq":
        return nf4.BLOCK_SIZE
    return 8 if fmt == "binary" else 1


def check_format(fmt: object) -> str:
    """``fmt`` if it names a weight format, else a ValueError listing every name."""
    if not isinstance(fmt, str) or fmt not in formats.WEIGHT_FORMATS:
        raise ValueError(f"format must be one of {sorted(formats.WEIGHT_FORMATS)}, got {fmt!r}")
    return fmt


def stored_shape(fmt: str, shape: tuple[int, int]) -> tuple[int, int]:
    """The (rows, columns) array that is actually stored for a weight of ``shape``.

    ``shape`` itself when its rows are whole blocks; otherwise the flat layout
    (blocks, block size), the last block padded with zeros.

    >>> stored_shape("q4_0", (384, 128)), stored_shape("tq2_0", (63, 128))
    ((384, 128), (32, 256))
    """
    rows, cols = (int(n) for n in shape)
    size = block_size(fmt)
    if cols % size == 0:
        return rows, cols
    if fmt not in formats.BLOCK_FORMATS and fmt != "ternary":
        raise ValueError(
            f"a weight of shape {shape} has rows of {cols} values, not a multiple of {size} ({fmt})"
        )
    return -(-rows * cols // size), size


def encode_weight(w: np.ndarray, fmt: str) -> tuple[np.ndarray, tuple[int, int]]:
    """The bytes of ``w`` (out, in) in ``fmt`` and the shape they store (:func:`stored_shape`).

    >>> w = np.random.default_rng(0).normal(size=(3, 128)).astype(np.float32)
    >>> data, shape = encode_weight(w, "tq1_0")  # 384 values -> 2 blocks of 256, 54 bytes each
    >>> data.shape, shape
    ((2, 54), (2, 256))
    """
    w = np.asarray(w, dtype=np.float32)  # (out, in)
    shape = stored_shape(check_format(fmt), w.shape)
    if shape == w.shape:
        return formats.quantize_weight(w, fmt)[0], shape
    if fmt == "ternary":
        # NOTE: the absmean scale of the weight itself, not of the zero-padded one; ternary
        # is then exactly these values stored as TQ2_0 (as quantize_weight does).
        w_q, gamma = formats.ternarize(w)
        w, fmt = w_q.astype(np.float32) * gamma, "tq2_0"
    flat = np.zeros(shape[0] * shape[1], np.float32)
    flat[: w.size] = w.ravel()
    return formats.quantize_weight(flat.reshape(shape), fmt)[0], shape


def decode_weight(
    data: np.ndarray, fmt: str, shape: tuple[int, int], stored: tuple[int, int] | None = None
) -> np.ndarray:
    """float32 weight (out, in) from :func:`encode_weight` bytes, with the formats' decoders.

    >>> w = np.random.default_rng(0).normal(size=(3, 128)).astype(np.float32)
    >>> data, stored = encode_weight(w, "q8_0")
    >>> w_hat = decode_weight(data, "q8_0", w.shape, stored)
    >>> bool(np.all(w_hat == formats.quantize_weight(w, "q8_0")[1]))
    True
    """
    stored = tuple(shape) if stored is None else tuple(stored)
    if fmt in formats.BLOCK_FORMATS:
        w_hat = formats.dequantize_blocks(data, fmt, stored)  # (rows, columns)
    elif fmt == "ternary":
        w_hat = formats.dequantize_blocks(data, "tq2_0", stored)
    elif fmt == "nf4_dq":
        w_hat = nf4.nf4_weight_from_bytes(data, stored).dequantize()
    elif fmt == "binary":
        w_hat = ternary.dequantize_binary(data)
    else:  # fp8_e4m3 / fp8_e5m2: per row [float32 scale (4 bytes)][one code per weight]
        check_format(fmt)
        scale = np.ascontiguousarray(data[:, :4]).view("<f4").astype(np.float32)  # (out, 1)
        w_hat = formats.decode(data[:, 4:], fmt) * scale  # (out, in)
    rows, cols = shape
    return w_hat.reshape(-1)[: rows * cols].reshape(rows, cols).astype(np.float32, copy=False)


class FormatLinear(Module):
    r"""A ``Linear`` whose weight is stored as the bytes of a number format.

    ``data`` uint8 (the real bytes: codes and scales), ``fmt`` the format's name,
    ``weight_shape`` (out, in), ``stored`` the shape the bytes encode (see
    :func:`stored_shape`), ``bias`` (out,) float32 or ``None``. Forward only.

    >>> import minquant as mq
    >>> layer = FormatLinear.from_linear(mq.nn.Linear(64, 8, rng=np.random.default_rng(0)), "q4_0")
    >>> layer(np.ones((3, 64), np.float32)).shape, layer.nbytes(), layer.bits_per_weight()
    ((3, 8), 288, 4.5)
    """

    def __init__(
        self,
        data: np.ndarray,
        fmt: str,
        weight_shape: tuple[int, int],
        stored: tuple[int, int],
        bias: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.fmt = check_format(fmt)
        self.out_features, self.in_features = (int(n) for n in weight_shape)
        self.stored = tuple(int(n) for n in stored)
        self.data = data  # uint8, weight_nbytes(fmt, stored) bytes
        self.bias = None if bias is None else Parameter(bias)  # (out,)
        expected = formats.weight_nbytes(fmt, self.stored)
        if data.dtype != np.uint8 or data.nbytes != expected:
            raise ValueError(
                f"data must be {expected} uint8 bytes for {fmt} {self.stored}, "
                f"got {data.nbytes} bytes of {data.dtype}"
            )

    @classmethod
    def from_linear(cls, linear: Linear, fmt: str) -> FormatLinear:
        """Encode ``linear.weight`` in ``fmt`` (the bias stays float32)."""
        w = np.asarray(linear.weight.data, dtype=np.float32)  # (out, in)
        data, stored = encode_weight(w, fmt)
        bias = None if linear.bias is None else linear.bias.data.astype(np.float32)
        return cls(data, fmt, w.shape, stored, bias)

    def dequantized_weight(self) -> np.ndarray:
        """The float32 weight $\\hat{W}$ (out, in), decoded from the bytes."""
        shape = (self.out_features, self.in_features)
        return decode_weight(self.data, self.fmt, shape, self.stored)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype != np.float32 or x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{self._name()} expects float32 input of shape (..., {self.in_features}), "
                f"got {x.dtype} {x.shape}"
            )
        # NOTE: decoded on every call, never cached: the model holds only the bytes.
        y = x.reshape(-1, self.in_features) @ self.dequantized_weight().T  # (N, out)
        if self.bias is not None:
            y += self.bias.data
        return y.reshape((*x.shape[:-1], self.out_features))

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        raise NotImplementedError(
            f"{self._name()} is for inference only (its weight is stored as {self.fmt} bytes)"
        )

    def nbytes(self) -> int:
        """Bytes of the stored weight, scales and padding included (not the bias)."""
        return int(self.data.nbytes)

    def bits_per_weight(self) -> float:
        """Measured storage per weight: ``8 * nbytes() / (out * in)``."""
        return 8 * self.nbytes() / (self.out_features * self.in_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fmt={self.fmt}"


def quantize_weights_format(model: Module, fmt: str) -> Module:
    """A copy of ``model`` with every ``nn.Linear`` replaced by a :class:`FormatLinear`.

    The input model is not changed. ``mq.llm.quantize_weights(model, format=fmt)`` calls this.

    >>> from minquant.nn import ReLU, Sequential
    >>> rng = np.random.default_rng(0)
    >>> model = Sequential(Linear(64, 32, rng=rng), ReLU(), Linear(32, 10, rng=rng))
    >>> qmodel = quantize_weights_format(model, "nf4")
    >>> [type(m).__name__ for m in qmodel], qmodel[0].bits_per_weight()
    (['FormatLinear', 'ReLU', 'FormatLinear'], 4.5)
    """
    check_format(fmt)
    qmodel = copy.deepcopy(model)
    for module in list(qmodel.modules()):
        for name, child in list(vars(module).items()):
            if isinstance(child, Linear):
                setattr(module, name, FormatLinear.from_linear(child, fmt))
    return qmodel.eval()


def model_nbytes(model: Module) -> tuple[int, int]:
    """(bytes, weights) over the model's quantized linear layers (anything with ``nbytes()``).

    ``8 * bytes / weights`` is the model's bits per weight over its linear layers.
    """
    layers = [m for m in model.modules() if hasattr(m, "nbytes") and hasattr(m, "in_features")]
    n_bytes = sum(m.nbytes() for m in layers)
    n_weights = sum(m.in_features * m.out_features for m in layers)
    return n_bytes, n_weights
