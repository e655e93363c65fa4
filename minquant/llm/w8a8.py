r"""W8A8: int8 activations times int8 weights on the integer GEMM, and LLM.int8().

Every ``nn.Linear`` becomes a :class:`W8A8Linear`. Weights are int8 symmetric per output
channel, packed once for :func:`minquant.kernels.vnni.matmul_int8_packed`; activations are
quantized symmetric int8 on the way in, the product accumulates in int32 (exact), and the
result is dequantized on the way out:

$$Y_{to} \approx s_{x,t}\, s_{w,o} \sum_j q^x_{tj}\, q^w_{oj}, \qquad
q^x_{tj} = \mathrm{clip}\big(\mathrm{rint}(X_{tj} / s_{x,t}), -127, 127\big),
\qquad s_{w,o} = \max_j |W_{oj}| / 127.$$

The activation scale $s_x$ is, by ``mode``:

* ``"static"``: one per tensor, $\max|X| / 127$ over calibration text (fixed at inference;
  larger values clip);
* ``"dynamic"``: one per token (row), $\max_j |X_{tj}| / 127$, computed at every call;
* ``"llm_int8"``: LLM.int8(): the input columns $j$ where any $|X_{tj}| \geq$ ``threshold``
  are taken out and multiplied in float (with the float weight columns; float64, added
  before the one float32 cast); the rest go through the int8 GEMM with per-token scales
  (vector-wise quantization);
* ``"smoothquant"``: the model is smoothed first (:mod:`minquant.llm.smoothquant`), then
  ``"static"``.

``simulate=True`` builds the fake-quant twin: the same codes and scales, dequantized and
multiplied as real numbers, $\hat Y = (s_x q^x)(s_w q^w)^\top$. Both paths are written so
that they round *the same real number once* to float32:

* integer: $s_x s_w$ in float64 (exact: two 24-bit mantissas), times the exact int32
  accumulator in float64, one cast to float32;
* simulation (``sim_dtype="float64"``, the default): $s_x q^x$ and $s_w q^w$ in float64
  (exact: a 24-bit mantissa times a 7-bit code), products summed in float64, one cast.

Their float64 values differ by about $K \cdot 2^{-53}$ relative, so the float32 results
are equal unless the exact value lies that close to a float32 rounding boundary.
``sim_dtype="float32"`` is the *naive* twin (dequantize to float32, multiply in float32):
every rounding of its sums can move an output by an ulp, the next quantizer turns an ulp
at a rounding boundary into a whole step, and :func:`code_mismatch` and
:func:`argmax_agreement` show how that compounds over the layers.

NOTE: codes use the narrow range [-127, 127] for both operands (symmetric, so that $+a$ and
$-a$ are both representable); $127^2 \cdot 384$ is far inside int32.

References:

* T. Dettmers et al., "LLM.int8()", NeurIPS 2022 (arXiv:2208.07339).
* G. Xiao et al., "SmoothQuant", ICML 2023 (arXiv:2211.10438).
* Z. Yao et al., "ZeroQuant", NeurIPS 2022 (arXiv:2206.01861): per-token dynamic scales.
"""

from __future__ import annotations

import copy

import numpy as np

from minquant.kernels.vnni import matmul_int8_packed, pack_b
from minquant.llm.activations import capture_linear_inputs
from minquant.llm.smoothquant import smooth_model
from minquant.nn import Linear, Module

MODES = ("static", "dynamic", "llm_int8", "smoothquant")
QMAX = 127  # narrow symmetric int8: codes in [-127, 127]
SIM_DTYPES = ("float64", "float32")  # faithful twin, naive twin


def absmax_scale(x: np.ndarray, axis: int | None = None) -> np.ndarray:
    """``max|x| / 127`` (float32) over ``axis`` (kept), 1.0 where the maximum is 0.

    >>> absmax_scale(np.array([[254.0, -1.0], [0.0, 0.0]]), axis=1).tolist()
    [[2.0], [1.0]]
    """
    amax = np.abs(np.asarray(x, np.float32)).max(axis=axis, keepdims=axis is not None)
    # NOTE: an all-zero row gets scale 1 (its codes are 0 whatever the scale): no 0 / 0.
    return np.where(amax > 0, amax / np.float32(QMAX), np.float32(1.0)).astype(np.float32)


def quantize_symmetric(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """int8 codes ``clip(rint(x / scale), -127, 127)`` (round half to even).

    >>> quantize_symmetric(np.array([0.5, 1.5, -300.0]), np.float32(1.0)).tolist()
    [0, 2, -127]
    """
    q = np.rint(np.asarray(x, np.float32) / scale)
    return np.clip(q, -QMAX, QMAX).astype(np.int8)


def int8_decomposed_matmul(X: np.ndarray, w: np.ndarray, threshold: float = 6.0) -> np.ndarray:
    r"""LLM.int8(): $X W^\top$ with outlier input columns in float, the rest in int8.

    Columns $O = \{j : \max_t |X_{tj}| \geq \text{threshold}\}$ are multiplied in float64;
    the others with per-token activation scales and per-output-channel weight scales on the
    int8 GEMM (int32 accumulation). Returns float32 (tokens, out).

    >>> X = np.array([[1.0, 20.0], [-0.5, 10.0]], np.float32)  # column 1 is an outlier
    >>> w = np.array([[1.0, 0.5]], np.float32)
    >>> int8_decomposed_matmul(X, w).tolist()  # exact here: column 0 quantizes losslessly
    [[11.0], [4.5]]
    """
    X, w = np.asarray(X, np.float32), np.asarray(w, np.float32)
    if X.ndim != 2 or w.ndim != 2 or X.shape[1] != w.shape[1]:
        raise ValueError(
            f"int8_decomposed_matmul: X must be (tokens, in) and w (out, in) with the same "
            f"in, got X {X.shape} and w {w.shape}"
        )
    layer = W8A8Linear(w, "llm_int8", threshold=threshold)
    return layer(X)


class W8A8Linear(Module):
    """A Linear (no bias) with int8 weights and int8 activations; see the module docstring.

    >>> rng = np.random.default_rng(0)
    >>> w = rng.standard_normal((8, 16)).astype(np.float32)
    >>> x = rng.standard_normal((4, 16)).astype(np.float32)
    >>> layer = W8A8Linear(w, "dynamic")
    >>> bool(np.abs(layer(x) - x @ w.T).max() < 0.1)
    True
    """

    def __init__(
        self,
        w: np.ndarray,
        mode: str,
        x_scale: float | None = None,
        threshold: float = 6.0,
        simulate: bool = False,
        sim_dtype: str = "float64",
    ) -> None:
        super().__init__()
        if sim_dtype not in SIM_DTYPES:
            raise ValueError(
                f"W8A8Linear: sim_dtype must be one of {SIM_DTYPES}, got {sim_dtype!r}"
            )
        if mode not in ("static", "dynamic", "llm_int8"):
            raise ValueError(f"W8A8Linear: mode must be static, dynamic or llm_int8, got {mode!r}")
        if mode == "static" and (x_scale is None or not x_scale > 0):
            raise ValueError(f"W8A8Linear: static mode needs x_scale > 0, got {x_scale}")
        w = np.asarray(w, np.float32)  # (out, in)
        if not np.isfinite(w).all():
            raise ValueError("W8A8Linear: the weight holds NaN or Inf")
        self.out_features, self.in_features = w.shape
        self.mode, self.threshold, self.simulate = mode, float(threshold), simulate
        self.sim_dtype = sim_dtype
        # the float type of the simulation, and of the integer path's epilogue
        self.dtype = np.float32 if simulate and sim_dtype == "float32" else np.float64
        self.x_scale = None if x_scale is None else np.float32(x_scale)
        self.w_scale = absmax_scale(w, axis=1)[:, 0]  # (out,)
        self.w_q = quantize_symmetric(w, self.w_scale[:, None])  # (out, in) int8
        self.packed = pack_b(np.ascontiguousarray(self.w_q.T))  # B = w_q^T (in, out), once
        # NOTE: float64 dequantized weights are exact (a 7-bit code times a float32 scale).
        w_hat = self.w_q.astype(self.dtype) * self.w_scale[:, None]  # (out, in)
        self.w_hat = w_hat if simulate else None  # the simulation's weight
        # NOTE: LLM.int8() keeps the float weight for its outlier columns.
        self.w_float = w if mode == "llm_int8" else None
        self.float_columns = 0  # outlier columns seen (llm_int8), summed over calls
        self.total_columns = 0  # columns seen, summed over calls

    @classmethod
    def from_linear(cls, linear: Linear, mode: str, **kwargs: object) -> W8A8Linear:
        if linear.bias is not None:
            raise ValueError("W8A8Linear.from_linear: Linears with a bias are not supported")
        return cls(linear.weight.data, mode, **kwargs)

    def extra_repr(self) -> str:
        sim = self.sim_dtype if self.simulate else False
        return f"{self.in_features}, {self.out_features}, mode={self.mode}, sim={sim}"

    def quantize_input(self, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Codes (N, in) int8, scales (N, 1) float32 and LLM.int8()'s outlier mask (in,).

        One function for both paths: the integer layer and its simulation quantize the
        same float32 input to the same codes with the same scales.
        """
        outliers = None
        x_int = x2  # (N, in)
        if self.mode == "llm_int8":
            outliers = np.abs(x2).max(axis=0) >= self.threshold  # (in,)
            x_int = np.where(outliers[None, :], np.float32(0), x2)  # (N, in)
        if self.mode == "static":
            scale = np.full((len(x2), 1), self.x_scale, np.float32)  # (N, 1)
        else:
            scale = absmax_scale(x_int, axis=1)  # (N, 1), per token
        return quantize_symmetric(x_int, scale), scale, outliers

    def forward(self, x: np.ndarray) -> np.ndarray:
        shape = x.shape  # (..., in)
        x2 = np.asarray(x, np.float32).reshape(-1, self.in_features)  # (N, in)
        x_q, scale, outliers = self.quantize_input(x2)
        if outliers is not None:
            self.float_columns += int(outliers.sum())
            self.total_columns += self.in_features
        if self.simulate:
            x_hat = x_q.astype(self.dtype) * scale  # (N, in), exact in float64
            y = x_hat @ self.w_hat.T  # (N, out), fake quant
        else:
            acc = matmul_int8_packed(x_q, self.packed)  # (N, out) int32, exact
            # NOTE: an int32 acc is exact in float64, and so is s_x s_w (two 24-bit
            # mantissas), so y is the exact real product up to one float64 rounding; the
            # float32 cast below is the only rounding that matters (the simulation ends the
            # same way).
            s = scale.astype(np.float64) * self.w_scale[None, :].astype(np.float64)  # (N, out)
            y = acc.astype(np.float64) * s  # (N, out)
        if outliers is not None and outliers.any():
            x_out = x2[:, outliers].astype(y.dtype)  # (N, n_outliers)
            y = y + x_out @ self.w_float[:, outliers].T.astype(y.dtype)  # (N, out), float part
        return y.astype(np.float32).reshape(*shape[:-1], self.out_features)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        raise RuntimeError(f"{self._name()}: W8A8Linear is for inference (no backward)")


def quantize_activations(
    model: Module,
    mode: str = "dynamic",
    X_calib: np.ndarray | None = None,
    threshold: float = 6.0,
    alpha: float = 0.5,
    simulate: bool = False,
    sim_dtype: str = "float64",
) -> Module:
    """A copy of ``model`` with every ``nn.Linear`` replaced by a :class:`W8A8Linear`.

    ``mode`` is one of ``"static"``, ``"dynamic"``, ``"llm_int8"``, ``"smoothquant"``;
    ``X_calib`` (B, T) calibration tokens are needed by ``"static"`` (per-tensor ranges) and
    ``"smoothquant"`` (the smoothing scales and then the ranges). ``threshold`` is
    LLM.int8()'s outlier threshold, ``alpha`` SmoothQuant's migration strength.
    ``simulate=True`` gives the fake-quant twin with the same qparams, multiplied in
    ``sim_dtype`` (``"float32"``: the naive twin). The input model is not changed.

    >>> import minquant as mq
    >>> lm = mq.models.load_pretrained("tiny_lm")
    >>> qlm = quantize_activations(lm, "dynamic")
    >>> type(qlm.layers[0].attn.wq).__name__, qlm.output.mode
    ('W8A8Linear', 'dynamic')
    """
    if mode not in MODES:
        raise ValueError(f"quantize_activations: mode must be one of {MODES}, got {mode!r}")
    if mode in ("static", "smoothquant") and X_calib is None:
        raise ValueError(f"quantize_activations: mode {mode!r} needs X_calib tokens (B, T)")
    if mode == "smoothquant":
        qmodel = smooth_model(model, X_calib, alpha)
        mode = "static"
    else:
        qmodel = copy.deepcopy(model).eval()
    inputs = capture_linear_inputs(qmodel, X_calib) if mode == "static" else {}
    for prefix, module in list(qmodel.named_modules()):
        for name, child in list(vars(module).items()):
            if isinstance(child, Linear):
                path = f"{prefix}.{name}" if prefix else name
                x_scale = float(absmax_scale(inputs[path])) if inputs else None
                layer = W8A8Linear.from_linear(
                    child,
                    mode,
                    x_scale=x_scale,
                    threshold=threshold,
                    simulate=simulate,
                    sim_dtype=sim_dtype,
                )
                setattr(module, name, layer)
    return qmodel.eval()


def float_column_fraction(model: Module) -> float:
    """The fraction of input columns LLM.int8() layers of ``model`` kept in float so far.

    >>> X = np.array([[1.0, 20.0]], np.float32)
    >>> layer = W8A8Linear(np.ones((1, 2), np.float32), "llm_int8")
    >>> _ = layer(X)
    >>> float_column_fraction(layer)
    0.5
    """
    layers = [m for m in model.modules() if isinstance(m, W8A8Linear) and m.mode == "llm_int8"]
    total = sum(m.total_columns for m in layers)
    return sum(m.float_columns for m in layers) / total if total else 0.0


def code_mismatch(model_a: Module, model_b: Module, tokens: np.ndarray) -> dict[str, float]:
    """Per :class:`W8A8Linear` (in the order they run), the fraction of its input codes that
    differ between ``model_a`` and ``model_b`` run on the same ``tokens`` (B, T).

    The first layer always agrees (both read the same embeddings); a nonzero entry means an
    earlier layer's float output differed by enough to cross a rounding boundary of this
    layer's quantizer. Each model's codes come from its own layer's
    :meth:`W8A8Linear.quantize_input`.

    >>> import minquant as mq
    >>> lm = mq.models.load_pretrained("tiny_lm")
    >>> tokens = mq.data.encode("To be, or not to be")[None]
    >>> q_int = quantize_activations(lm, "dynamic")
    >>> q_sim = quantize_activations(lm, "dynamic", simulate=True)
    >>> mismatch = code_mismatch(q_int, q_sim, tokens)
    >>> len(mismatch), mismatch["layers.0.attn.wq"]
    (29, 0.0)
    """
    inputs_a = capture_linear_inputs(model_a, tokens, W8A8Linear)
    inputs_b = capture_linear_inputs(model_b, tokens, W8A8Linear)
    layers_a, layers_b = dict(model_a.named_modules()), dict(model_b.named_modules())
    mismatch = {}
    for name, x_a in inputs_a.items():
        codes_a = layers_a[name].quantize_input(x_a)[0]  # (N, in) int8
        codes_b = layers_b[name].quantize_input(inputs_b[name])[0]  # (N, in) int8
        mismatch[name] = float(np.mean(codes_a != codes_b))
    return mismatch


def argmax_agreement(logits_a: np.ndarray, logits_b: np.ndarray) -> float:
    """The fraction of positions whose most likely next token is the same in both.

    >>> argmax_agreement(np.array([[0.0, 1.0], [2.0, 1.0]]), np.array([[0.0, 3.0], [0.0, 1.0]]))
    0.5
    """
    a, b = np.asarray(logits_a), np.asarray(logits_b)
    if a.shape != b.shape:
        raise ValueError(f"argmax_agreement: shapes differ, {a.shape} and {b.shape}")
    return float(np.mean(a.argmax(axis=-1) == b.argmax(axis=-1)))
