r"""The integer-only model that :mod:`minquant.ptq` and :mod:`minquant.qat` build.

A :class:`QuantizedModel` is a chain of :class:`Step` s between a ``Quantize`` edge (float32
to int8) and a ``Dequantize`` edge (int8 to float32). Each step pairs the float layers it
replaces (a Conv2d/Linear and its fused ReLU, a pooling, a flatten) with

* its integer module (:mod:`minquant.qnn`), run by ``model(X)`` and ``forward_int(X)``;
* its fake-quant float twin, run by ``simulate(X)``: the same weights (dequantized), each
  output rounded to the same grid, $\hat{x} = s\,(\mathrm{clip}(z + \mathrm{rint}(x/s)) - z)$.

Where the integer model rounds by a rule of its own, the twin follows it: a fused
ReLU6/ClippedReLU clamps at the integer model's code of its bound, and global average
pooling rounds the exact mean with the integer pooling's tie rule
(:class:`~minquant.qnn.SimulatedGlobalAvgPool2d`). What is left is float32 noise in the
simulated convolutions near a rounding boundary: ``code_mismatches(X)`` counts it per step,
``layer_report(X)`` measures the SQNR of both against the float model.

Two sizes are reported: ``nbytes`` (the arrays the int8 forward pass reads, one int8 byte per
weight code whatever ``weight_bits``) and ``packed_nbytes`` (the same model stored with its
``weight_bits``-bit codes packed, e.g. two 4-bit codes per byte): the size a file or a
4-bit kernel would need, and the number to compare W8, W4 and W2 models by.

Reference: B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", CVPR 2018 (arXiv:1712.05877).
"""

import textwrap
from dataclasses import dataclass

import numpy as np

from minquant import nn
from minquant.qnn.mobile import SimulatedGlobalAvgPool2d
from minquant.qnn.qparams import Dequantize, QParams, Quantize, QuantizedModule
from minquant.qnn.requant import DEFAULT_ROUNDING
from minquant.quant import fake_quantize, sqnr

__all__ = ["QuantConfig", "QuantizedModel", "Step"]

#: Width of the lines of ``repr(QuantizedModel)``: longer module lines wrap between arguments.
REPR_WIDTH = 100


@dataclass(frozen=True)
class QuantConfig:
    """How a :class:`QuantizedModel` was built (read by its repr, sizes and the torch bridge).

    >>> QuantConfig(weight_bits=8, act_bits=8, per_channel=True, observer="minmax")
    QuantConfig(weight_bits=8, act_bits=8, per_channel=True, observer='minmax', \
requant='fixedpoint', reduce_range=False, rounding='single')
    """

    weight_bits: int  # bits per weight code, 2 to 8 (stored one code per int8)
    act_bits: int  # bits per activation code, 2 to 8
    per_channel: bool  # one weight scale per output channel (else one per tensor)
    observer: str  # the activation observer (a name of minquant.ptq.OBSERVERS, or "qat")
    requant: str = "fixedpoint"  # "fixedpoint" (TFLite, integers only) or "float" (PyTorch)
    reduce_range: bool = False  # activations calibrated one bit narrower (PyTorch x86)
    rounding: str = DEFAULT_ROUNDING  # fixed-point multiply: "single" (TFLite) or "double"


@dataclass
class Step:
    """One stage of a :class:`QuantizedModel`: float layers and their integer replacement."""

    float_layers: list[nn.Module]  # e.g. [Conv2d, ReLU] (BatchNorm already folded)
    module: QuantizedModule  # the integer-only module
    sim_layer: nn.Module | None  # Conv2d/Linear (dequantized weights), pooling twin, or None
    qparams: QParams  # of the step's output


class QuantizedModel:
    r"""An integer-only model: ``Quantize``, integer modules, ``Dequantize``.

    ``model(X)`` returns float32 logits computed with integer arithmetic inside;
    ``forward_int(X)`` returns the int8 logits; ``simulate(X)`` runs the fake-quant float
    simulation of the same model (same weights, same activation quantizers);
    ``layer_report(X)`` measures the SQNR of every layer against the float model.
    Built by :func:`quantize_model`.
    """

    def __init__(
        self,
        steps: list[Step],
        input_qparams: QParams,
        float_model: nn.Sequential,
        config: QuantConfig,
        batch_size: int = 1000,
    ) -> None:
        self.steps = steps
        self.quantize = Quantize(input_qparams)
        self.dequantize = Dequantize(steps[-1].qparams)
        self.float_model = float_model  # BatchNorm folded, eval mode
        self.config = config
        # NOTE: each kernel call is one parallel region; large batches amortise its start-up.
        self.batch_size = batch_size

    @property
    def output_qparams(self) -> QParams:
        return self.dequantize.qparams

    @property
    def nbytes(self) -> int:
        """Bytes of every array the integer forward pass reads (weights, biases, multipliers).

        Weight codes take one int8 byte each whatever ``weight_bits``; see
        :attr:`packed_nbytes` for the bit-packed size.
        """
        return sum(step.module.nbytes for step in self.steps)

    @property
    def packed_nbytes(self) -> int:
        r"""Bytes as stored with the weight codes packed at ``weight_bits`` bits each.

        $\lceil N K b / 8 \rceil$ bytes per weight tensor (see
        :meth:`minquant.qnn.QuantizedLinear.packed_nbytes`) plus biases, multipliers and
        shifts at their own size. Equal to :attr:`nbytes` for 8-bit weights.
        """
        weight_bits = self.config.weight_bits
        return sum(step.module.packed_nbytes(weight_bits) for step in self.steps)

    @property
    def float_nbytes(self) -> int:
        """Bytes of the float32 model's parameters (BatchNorm folded, as it would be deployed)."""
        return sum(p.data.astype(np.float32).nbytes for p in self.float_model.parameters())

    def save(self, path: str) -> None:
        """Write the model to exactly ``path`` (an ``.npz``, no pickle); ``mq.load`` reads it.

        See :mod:`minquant.export.cnn` for what the file holds.
        """
        from minquant.export.npz import save

        save(self, path)

    def forward_int(self, X: np.ndarray) -> np.ndarray:
        """int8 logits: quantize the input, then integer-only modules (in batches)."""
        outputs = []
        for start in range(0, len(X), self.batch_size):
            x_q = self.quantize(X[start : start + self.batch_size])  # int8
            for step in self.steps:
                x_q = step.module(x_q)
            outputs.append(x_q)
        return np.concatenate(outputs)  # (N, classes) int8

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return self.dequantize(self.forward_int(X))  # (N, classes) float32

    def _simulate_step(self, step: Step, x: np.ndarray) -> np.ndarray:
        if step.sim_layer is None:
            # NOTE: max pooling, flatten and ReLU map fake-quantized values to such values.
            for layer in step.float_layers:
                x = layer(x)
            return x
        if isinstance(step.sim_layer, SimulatedGlobalAvgPool2d):
            return step.sim_layer(x)  # rounds onto the grid itself, as the integer pool
        x = step.sim_layer(x)
        if len(step.float_layers) > 1:
            x = np.maximum(x, np.float32(0.0))  # the fused activation's clamp at 0.0
        qp = step.qparams
        x = fake_quantize(x, qp.scale, qp.zero_point, qp.qmin, qp.qmax)
        return self._clamp_upper(step, x)

    @staticmethod
    def _clamp_upper(step: Step, x: np.ndarray) -> np.ndarray:
        """A fused ReLU6 / ClippedReLU: clamp at the grid value of the integer bound's code."""
        upper = getattr(step.module, "upper", None)
        if upper is None:
            return x
        # NOTE: the integer model clamps at the code of the bound u, rounded its own way:
        # TFLite z + round(u / s) half away from zero after a float32 division, PyTorch
        # z + rint(u * (1/s)) half to even. Clamping the float value at u and rounding it
        # as any other value would follow neither rule at a tie (u = 1.25, s = 0.5: TFLite's
        # code is z + 3, rint gives z + 2), so the simulation clamps on the grid at the
        # integer model's own code, as it adds the integer model's own bias.
        requant, qp = step.module.requant, step.qparams
        codes = (
            requant.qmax if requant.upper_q is None else np.minimum(requant.upper_q, requant.qmax)
        )
        bound = (np.asarray(codes, np.float32) - np.float32(qp.zero_point)) * np.float32(qp.scale)
        if bound.ndim == 1:
            bound = bound.reshape(-1, *[1] * (x.ndim - 2))  # (C, 1, 1) or (C,)
        return np.minimum(x, bound)  # same shape as x

    def simulate(self, X: np.ndarray) -> np.ndarray:
        r"""The fake-quant float simulation of the same model, in float32.

        $\hat{x} = s\,(\mathrm{clip}(z + \mathrm{rint}(x / s)) - z)$ after the input and
        after every Conv2d/Linear(+ReLU), whose weights are $w_q s_w$ (and, for
        ``"fixedpoint"``, whose bias is $b_q s_x s_w$); a bounded ReLU then clamps at the
        grid value of the integer model's bound code, and global average pooling runs its
        twin :class:`~minquant.qnn.SimulatedGlobalAvgPool2d`.
        """
        qp = self.quantize.qparams
        x = fake_quantize(X, qp.scale, qp.zero_point, qp.qmin, qp.qmax)
        for step in self.steps:
            x = self._simulate_step(step, x)
        return x  # (N, classes) float32

    def layer_report(self, X: np.ndarray) -> list[dict]:
        """SQNR (dB) of every step's output against the float model's, integer and simulated.

        Each row: ``layer`` (the integer module), ``sqnr_db`` (dequantized integer output vs
        float) and ``sim_sqnr_db`` (fake-quant simulation vs float).
        """
        qp = self.quantize.qparams
        x_f = np.asarray(X, dtype=np.float32)
        x_q = self.quantize(x_f)
        x_s = fake_quantize(x_f, qp.scale, qp.zero_point, qp.qmin, qp.qmax)
        rows = [self._row(repr(self.quantize), x_f, x_q, qp, x_s)]
        for step in self.steps:
            for layer in step.float_layers:
                x_f = layer(x_f)
            x_q = step.module(x_q)
            x_s = self._simulate_step(step, x_s)
            rows.append(self._row(repr(step.module), x_f, x_q, step.qparams, x_s))
        return rows

    def code_mismatches(self, X: np.ndarray) -> list[dict]:
        """How often each step's simulation rounds to another code than its integer module.

        Every step is fed the integer model's own input codes (dequantized for the
        simulation), so the count is the step's own disagreement, not an inherited one. Each
        row: ``layer``, ``mismatches`` (output codes that differ), ``total`` (output codes)
        and ``max_abs`` (the largest difference, in codes).

        >>> from minquant.ptq import quantize_model
        >>> rng = np.random.default_rng(0)
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4, rng=rng))
        >>> X = rng.normal(size=(32, 1, 4, 4)).astype(np.float32)
        >>> [row["mismatches"] for row in quantize_model(model, X).code_mismatches(X)]
        [0, 0]
        """
        qp = self.quantize.qparams
        x_q = self.quantize(np.asarray(X, dtype=np.float32))
        rows = []
        for step in self.steps:
            x_hat = (x_q.astype(np.float32) - np.float32(qp.zero_point)) * np.float32(qp.scale)
            y_q = step.module(x_q)
            qp = step.qparams
            y_s = self._simulate_step(step, x_hat)
            codes = np.rint(y_s / np.float32(qp.scale)).astype(np.int64) + qp.zero_point
            diff = np.abs(codes - y_q.astype(np.int64))  # same shape as y_q
            rows.append(
                {
                    "layer": repr(step.module),
                    "mismatches": int(np.count_nonzero(diff)),
                    "total": int(diff.size),
                    "max_abs": int(diff.max(initial=0)),
                }
            )
            x_q = y_q
        return rows

    @staticmethod
    def _row(name: str, x_f: np.ndarray, x_q: np.ndarray, qp: QParams, x_s: np.ndarray) -> dict:
        x_hat = (x_q.astype(np.float32) - qp.zero_point) * np.float32(qp.scale)
        return {"layer": name, "sqnr_db": sqnr(x_f, x_hat), "sim_sqnr_db": sqnr(x_f, x_s)}

    def _requant_repr(self) -> str:
        """The requantizer of the Conv2d/Linear modules, as its repr shows it."""
        for step in self.steps:
            requant = getattr(step.module, "requant", None)
            if requant is not None:
                return requant.extra_repr()
        return f"requant={self.config.requant!r}"

    def __repr__(self) -> str:
        c = self.config
        fp32 = self.float_nbytes
        lines = [
            f"QuantizedModel(W{c.weight_bits}A{c.act_bits}, per_channel={c.per_channel}, "
            f"observer={c.observer!r}, reduce_range={c.reduce_range},",
            f"  {self._requant_repr()},",
            f"  nbytes={self.nbytes:,} ({self.nbytes / fp32:.1%} of float32 {fp32:,}), "
            f"packed_nbytes={self.packed_nbytes:,} ({self.packed_nbytes / fp32:.1%})",
            f"  (input): {self.quantize!r}",
        ]
        lines += [f"  ({i}): {step.module!r}" for i, step in enumerate(self.steps)]
        lines += [f"  (output): {self.dequantize!r}", ")"]
        # NOTE: wrap between arguments only (at ", "), never inside a name or a number.
        wrapped = [
            textwrap.fill(
                line,
                REPR_WIDTH,
                subsequent_indent=" " * 6,
                break_long_words=False,
                break_on_hyphens=False,
            )
            for line in lines
        ]
        return "\n".join(wrapped)
