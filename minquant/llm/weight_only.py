r"""Weight-only quantization of a model: every ``Linear`` keeps packed low-bit codes.

A language model generating text is limited by the time it takes to read its weights, not
by arithmetic (one multiply-add per weight per token). Weight-only quantization stores
each ``Linear.weight`` (out, in) as ``num_bits``-bit codes with one float16 scale (and, if
asymmetric, one zero point) per group of ``group_size`` inputs, and computes with float32
activations:

$$y = x\,\hat{W}^\top + b, \qquad
\hat{W}_{o,i} = s_{o,\lfloor i/g \rfloor}\,\big(q_{o,i} - z_{o,\lfloor i/g \rfloor}\big).$$

:class:`WeightOnlyLinear` never keeps a float copy of $\hat{W}$: a few input rows (token
generation) go through the Numba kernel of :mod:`minquant.kernels.gemv`, which unpacks the codes
on the fly; many rows (a prompt, a perplexity evaluation) are multiplied by float32 BLAS
one dequantized tile of rows at a time. :func:`quantize_weights` converts a whole model;
its ``method`` names a function in :data:`WEIGHT_QUANTIZERS` (round to nearest here;
GPTQ and AWQ register themselves there).

References:

* T. Dettmers, L. Zettlemoyer, "The case for 4-bit precision: k-bit inference scaling
  laws", ICML 2023 (arXiv:2212.09720): round to nearest with groups.
* E. Frantar et al., "GPTQ", ICLR 2023 (arXiv:2210.17323); J. Lin et al., "AWQ",
  MLSys 2024 (arXiv:2306.00978): the methods that plug into the same registry.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np

from minquant.kernels.gemv import matmul_weight_only, pack_weight, unpack_weight
from minquant.llm.activations import capture_linear_inputs
from minquant.nn import Linear, Module, Parameter
from minquant.quant import calc_group_qparams, dequantize, qrange, quantize

#: (w, num_bits, group_size, symmetric, X) -> (codes, scale, zero_point); see quantize_rtn.
WeightQuantizer = Callable[
    [np.ndarray, int, int, bool, "np.ndarray | None"],
    tuple[np.ndarray, np.ndarray, "np.ndarray | None"],
]

#: Inputs with at most this many rows use the on-the-fly GEMV kernel; more rows use BLAS
#: on dequantized tiles (the product is then compute-bound, and BLAS is faster).
GEMV_MAX_ROWS = 16
#: Output rows dequantized per tile on the BLAS path (a tile of 256 x in float32).
TILE_ROWS = 256


def weight_qrange(num_bits: int, symmetric: bool) -> tuple[int, int]:
    """The code range of a weight quantizer: signed narrow when symmetric, else unsigned.

    Symmetric weights use $[-(2^{b-1} - 1), 2^{b-1} - 1]$ so that $+a$ and $-a$ are both
    representable (zero point 0); asymmetric ones use all $2^b$ codes $[0, 2^b - 1]$.

    >>> weight_qrange(4, symmetric=True), weight_qrange(4, symmetric=False)
    ((-7, 7), (0, 15))
    """
    if not isinstance(num_bits, (int, np.integer)) or not 2 <= num_bits <= 8:
        raise ValueError(f"bits must be an int in [2, 8], got {num_bits!r}")
    if symmetric:
        return qrange(num_bits, signed=True, narrow_range=True)
    return qrange(num_bits, signed=False)


def quantize_rtn(
    w: np.ndarray,
    num_bits: int,
    group_size: int,
    symmetric: bool,
    X: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    r"""Round to nearest (RTN), per group along the input axis; the contract of every method.

    Returns ``codes`` (out, in) in :func:`weight_qrange`, ``scale`` (out, in / g) float32
    values that float16 represents exactly (the stored precision: the scale is rounded to
    float16 *before* the codes are computed with it, so codes and stored scale agree), and
    ``zero_point`` (out, in / g) or ``None`` when symmetric. ``X`` (the layer's calibration
    inputs, (tokens, in)) is ignored by RTN; GPTQ and AWQ use it.

    >>> codes, scale, zero_point = quantize_rtn(np.array([[0.5, -1.0, 2.0, 4.0]]), 4, 2, True)
    >>> codes.tolist(), scale.tolist(), zero_point  # scales: float16(1/7), float16(4/7)
    ([[4, -7, 4, 7]], [[0.142822265625, 0.5712890625]], None)
    """
    qmin, qmax = weight_qrange(num_bits, symmetric)
    scale, zero_point = calc_group_qparams(w, qmin, qmax, 1, group_size, symmetric)  # (out, G)
    scale = scale_to_float16(scale).astype(np.float32)
    codes = quantize(w, scale, zero_point, qmin, qmax, axis=1, group_size=group_size)
    return codes, scale, None if symmetric else zero_point


def scale_to_float16(scale: np.ndarray) -> np.ndarray:
    """``scale`` rounded to float16 (to nearest even); an error if one overflows or vanishes.

    >>> scale_to_float16(np.array([0.1, 1.2e-7], dtype=np.float32)).astype(np.float32).tolist()
    [0.0999755859375, 1.1920928955078125e-07]
    """
    with np.errstate(over="ignore"):
        half = np.asarray(scale, dtype=np.float32).astype(np.float16)
    bad = ~np.isfinite(half) | (half <= 0)
    if np.any(bad):
        raise ValueError(
            f"scale must be positive and fit in float16 (6e-8 .. 65504), got values such as "
            f"{np.asarray(scale)[bad].ravel()[:3]}"
        )
    return half


#: Weight quantization methods by name: ``quantize_weights(model, method=name)``.
WEIGHT_QUANTIZERS: dict[str, WeightQuantizer] = {"rtn": quantize_rtn}

#: Methods that need the whole model, not one layer (sequential calibration, scales folded
#: between layers): name -> (model, bits, group_size, symmetric, X_calib) -> quantized copy.
MODEL_QUANTIZERS: dict[str, Callable[..., Module]] = {}


class WeightOnlyLinear(Module):
    r"""A ``Linear`` whose weight is stored as packed codes + float16 group scales.

    ``packed`` (out, in * bits / 8) uint8 rows of codes in the kernel's byte order
    (:func:`~minquant.kernels.gemv.pack_weight`; two's complement when ``signed``),
    ``scale`` (out, in / g) float16, ``zero_point`` (out, in / g) uint8 or ``None``
    (symmetric), ``bias`` (out,) float32 or ``None``.
    Forward only: ``backward`` raises.

    >>> rng = np.random.default_rng(0)
    >>> layer = WeightOnlyLinear.from_linear(Linear(64, 8, rng=rng), num_bits=4, group_size=32)
    >>> layer(np.ones((3, 64), np.float32)).shape, layer.packed.shape, layer.scale.shape
    ((3, 8), (8, 32), (8, 2))
    >>> layer.bits_per_weight()  # 4 + (16-bit scale + 8-bit zero point) / 32
    4.75
    """

    def __init__(
        self,
        packed: np.ndarray,
        scale: np.ndarray,
        zero_point: np.ndarray | None,
        bias: np.ndarray | None,
        in_features: int,
        num_bits: int,
        group_size: int,
        signed: bool,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(packed.shape[0])
        self.num_bits, self.group_size, self.signed = int(num_bits), int(group_size), signed
        self.packed = packed  # (out, in * bits / 8) uint8
        self.scale = scale  # (out, in / g) float16
        self.zero_point = zero_point  # (out, in / g) uint8, or None
        self.bias = None if bias is None else Parameter(bias)  # (out,)
        # NOTE: one call on a zero vector validates every shape and dtype now, not later.
        matmul_weight_only(
            np.zeros(self.in_features, np.float32), packed, scale, zero_point,
            self.num_bits, self.group_size, signed,
        )  # fmt: skip

    @classmethod
    def from_linear(
        cls,
        linear: Linear,
        num_bits: int = 4,
        group_size: int | None = 64,
        symmetric: bool = False,
        method: str = "rtn",
        X: np.ndarray | None = None,
    ) -> WeightOnlyLinear:
        """Quantize ``linear.weight`` with ``WEIGHT_QUANTIZERS[method]`` and pack it.

        ``group_size=None`` is per output channel (one group per row).
        """
        if method not in WEIGHT_QUANTIZERS:
            raise ValueError(f"method must be one of {sorted(WEIGHT_QUANTIZERS)}, got {method!r}")
        w = np.asarray(linear.weight.data, dtype=np.float32)  # (out, in)
        out_features, in_features = w.shape
        group = in_features if group_size is None else group_size
        codes, scale, zero_point = WEIGHT_QUANTIZERS[method](w, num_bits, group, symmetric, X)
        qmin, qmax = weight_qrange(num_bits, symmetric)
        groups = in_features // group
        if codes.shape != w.shape or codes.min() < qmin or codes.max() > qmax:
            raise ValueError(
                f"method {method!r} returned codes outside {w.shape} / [{qmin}, {qmax}]"
            )
        half = scale_to_float16(scale)  # (out, G)
        if half.shape != (out_features, groups) or np.any(half.astype(np.float32) != scale):
            raise ValueError(
                f"method {method!r} must return a ({out_features}, {groups}) scale that "
                "float16 represents exactly (the codes must be computed with the stored scale)"
            )
        if zero_point is not None:
            zero_point = np.asarray(zero_point).astype(np.uint8)  # (out, G) in [0, 2^b - 1]
        packed = pack_weight(codes, num_bits, group, signed=symmetric)  # (out, in * b / 8)
        bias = None if linear.bias is None else linear.bias.data.astype(np.float32)
        return cls(packed, half, zero_point, bias, in_features, num_bits, group, symmetric)

    def dequantized_weight(self) -> np.ndarray:
        """The float32 weight $\\hat{W}$ (out, in), built on demand (forward never does)."""
        codes = unpack_weight(
            self.packed, self.num_bits, self.group_size, self.in_features, self.signed
        )  # (out, in)
        return self._dequantize_rows(codes, 0, self.out_features)

    def _dequantize_rows(self, codes: np.ndarray, start: int, stop: int) -> np.ndarray:
        zero_point = (
            np.zeros(self.scale.shape, np.int64)[start:stop]
            if self.zero_point is None
            else self.zero_point[start:stop]
        )
        scale = self.scale[start:stop].astype(np.float32)
        return dequantize(codes, scale, zero_point, axis=1, group_size=self.group_size)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype != np.float32 or x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{self._name()} expects float32 input of shape (..., {self.in_features}), "
                f"got {x.dtype} {x.shape}"
            )
        x2 = x.reshape(-1, self.in_features)  # (N, in)
        if x2.shape[0] <= GEMV_MAX_ROWS:
            y = matmul_weight_only(
                x2, self.packed, self.scale, self.zero_point,
                self.num_bits, self.group_size, self.signed, check_values=False,
            )  # fmt: skip
        else:
            y = np.empty((x2.shape[0], self.out_features), np.float32)  # (N, out)
            for start in range(0, self.out_features, TILE_ROWS):
                stop = min(start + TILE_ROWS, self.out_features)
                codes = unpack_weight(
                    self.packed[start:stop],
                    self.num_bits,
                    self.group_size,
                    self.in_features,
                    self.signed,
                )  # (tile, in)
                y[:, start:stop] = x2 @ self._dequantize_rows(codes, start, stop).T
        if self.bias is not None:
            y += self.bias.data
        return y.reshape((*x.shape[:-1], self.out_features))

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        raise NotImplementedError(
            f"{self._name()} is for inference only (its weight is packed integers): train "
            "the float model, then quantize it with mq.llm.quantize_weights"
        )

    def nbytes(self) -> int:
        """Bytes of the stored weight: codes, scales and zero points (not the bias)."""
        zero_point = 0 if self.zero_point is None else self.zero_point.nbytes
        return self.packed.nbytes + self.scale.nbytes + zero_point

    def bits_per_weight(self) -> float:
        """Measured storage per weight: ``8 * nbytes() / (out * in)``."""
        return 8 * self.nbytes() / (self.out_features * self.in_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bits={self.num_bits}, group_size={self.group_size}, symmetric={self.signed}"
        )


def _linear_inputs(model: Module, X_calib: np.ndarray) -> dict[int, np.ndarray]:
    """Run ``model`` on ``X_calib`` once; return each Linear's input, (tokens, in), by id.

    :func:`~minquant.llm.activations.capture_linear_inputs` keyed by the layer object's id
    instead of its name (the quantizers below walk layers, not names).
    """
    by_name = capture_linear_inputs(model, X_calib)  # name -> (tokens, in)
    return {id(m): by_name[name] for name, m in model.named_modules() if name in by_name}


class _Default(int):
    """An int default that ``quantize_weights`` tells apart from the same value passed."""


_DEFAULT_BITS, _DEFAULT_GROUP_SIZE = _Default(4), _Default(64)


def quantize_weights(
    model: Module,
    bits: int = _DEFAULT_BITS,
    group_size: int | None = _DEFAULT_GROUP_SIZE,
    method: str = "rtn",
    symmetric: bool = False,
    X_calib: np.ndarray | None = None,
    format: str | None = None,
) -> Module:
    """A copy of ``model`` with every ``nn.Linear`` replaced by a :class:`WeightOnlyLinear`.

    ``method`` is ``"rtn"``, ``"gptq"``, ``"gptq_act_order"`` or ``"awq"`` (the functions of
    :data:`WEIGHT_QUANTIZERS` and :data:`MODEL_QUANTIZERS`); ``X_calib``, a batch of model
    inputs, gives each layer its calibration inputs for methods that use them.
    ``group_size=None`` quantizes per output channel. The input model is not changed.

    ``format`` (one of :data:`minquant.formats.WEIGHT_FORMATS`: ``"q4_0"``, ``"nf4"``,
    ``"mxfp4"``, ``"fp8_e4m3"``, ``"ternary"``, ...) stores every weight in that number
    format instead (:class:`minquant.llm.formats.FormatLinear`); it fixes the bits and the
    block size, so it cannot be combined with ``bits`` or ``group_size``.

    >>> from minquant.nn import ReLU, Sequential
    >>> rng = np.random.default_rng(0)
    >>> model = Sequential(Linear(64, 32, rng=rng), ReLU(), Linear(32, 10, rng=rng))
    >>> qmodel = quantize_weights(model, bits=4, group_size=32)
    >>> [type(m).__name__ for m in qmodel]
    ['WeightOnlyLinear', 'ReLU', 'WeightOnlyLinear']
    >>> x = rng.standard_normal((2, 64)).astype(np.float32)
    >>> bool(np.abs(qmodel(x) - model(x)).max() < 0.1)
    True
    """
    if format is not None:
        pairs = (("bits", bits), ("group_size", group_size))
        given = [f"{name}={value!r}" for name, value in pairs if not isinstance(value, _Default)]
        if given:
            raise ValueError(f"give format or bits/group_size, not both: {format=}, {given}")
        if method != "rtn" or symmetric or X_calib is not None:
            raise ValueError(f"format={format!r} takes no method, symmetric or X_calib")
        from minquant.llm.formats import quantize_weights_format

        return quantize_weights_format(model, format)
    methods = sorted({*WEIGHT_QUANTIZERS, *MODEL_QUANTIZERS})
    if method not in methods:
        raise ValueError(f"method must be one of {methods}, got {method!r}")
    weight_qrange(bits, symmetric)  # validates bits
    if method in MODEL_QUANTIZERS:
        return MODEL_QUANTIZERS[method](model, bits, group_size, symmetric, X_calib)
    qmodel = copy.deepcopy(model)
    inputs = {} if X_calib is None else _linear_inputs(qmodel, X_calib)
    for module in list(qmodel.modules()):
        for name, child in list(vars(module).items()):
            if isinstance(child, Linear):
                layer = WeightOnlyLinear.from_linear(
                    child, bits, group_size, symmetric, method, inputs.get(id(child))
                )
                setattr(module, name, layer)
    return qmodel.eval()


# NOTE: GPTQ and AWQ register themselves in the tables above; their modules import this
# one, so these imports stay last.
from minquant.llm import awq, gptq_quant  # noqa: E402, F401
