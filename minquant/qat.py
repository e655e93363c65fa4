r"""Quantization-aware training: fake-quantize while training, then convert to integers.

``prepare_qat(model)`` rewrites a trained float ``Sequential`` so that every forward pass
sees the quantization the integer model will apply:

* each ``Conv2d -> BatchNorm2d`` pair becomes one :class:`QATConvBn2d` (BatchNorm folded
  into the convolution, see below) and each ``Linear`` a :class:`QATLinear`; both
  fake-quantize their (folded) weights with a symmetric, narrow-range, per-channel
  :class:`~minquant.fake_quant.FakeQuantize`;
* a :class:`~minquant.fake_quant.FakeQuantize` on the input and after every
  Conv2d/Linear(+ReLU) simulates the asymmetric per-tensor activation quantizers, at the
  very places where :func:`minquant.ptq.quantize_model` puts them.

Train it with any loop (:func:`minquant.train.fit`); gradients pass the rounding by the
straight-through estimator (or LSQ with ``learnable=True``). ``convert(qat_model)`` then
builds the same integer-only :class:`~minquant.ptq.QuantizedModel` as post-training
quantization, with the weights and ranges learned here.

**BatchNorm folding during training** (Jacob et al. 2018, section 3.2; Krishnamoorthi 2018,
section 3.2.2; PyTorch's ``ConvBn2d``). With $f = \gamma / \sqrt{\sigma^2_{run} + \epsilon}$
the weight that the integer model will use is $\mathrm{fq}(w f)$. While the statistics are
live, the convolution with that weight is rescaled back and batch-normalised with *batch*
statistics (so BatchNorm still trains and its running statistics keep moving):

$$y = \mathrm{BN}_{batch}\Big(\frac{\mathrm{conv}(x, \mathrm{fq}(w f))}{f} + b\Big).$$

After ``freeze_bn_steps`` training steps the statistics are frozen and the layer is exactly
the folded convolution of the deployed model (also in evaluation mode):

$$y = \mathrm{conv}(x, \mathrm{fq}(w f)) + (b - \mu_{run})\,f + \beta.$$

References:

* B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", CVPR 2018 (arXiv:1712.05877).
* R. Krishnamoorthi, "Quantizing deep convolutional networks for efficient inference:
  A whitepaper", 2018 (arXiv:1806.08342).
* S. K. Esser et al., "Learned Step Size Quantization", ICLR 2020 (arXiv:1902.08153).
"""

import copy
from functools import partial

import numpy as np

from minquant import nn, ptq
from minquant.fake_quant import FakeQuantize, _default_observer
from minquant.lowbit_qat import AbsMeanObserver, TernaryFakeQuantize, lsq_init_factor
from minquant.qnn.model import QuantConfig
from minquant.quant import qrange, quantize

#: Training steps after which BatchNorm statistics are frozen (PyTorch's QAT recipes freeze
#: them after a few epochs; our fine-tunes are short).
FREEZE_BN_STEPS = 50


#: Where ``prepare_qat`` takes the weight scale from (see :func:`prepare_qat`).
WEIGHT_QUANT = ("minmax", "lsq", "ternary")


def _weight_fake_quant(
    weight_bits: int, per_channel: bool, learnable: bool, weight_quant: str, narrow_range: bool
) -> FakeQuantize:
    axis = 0 if per_channel else None
    if weight_quant == "ternary":
        return TernaryFakeQuantize(axis=axis)
    if weight_quant == "lsq":
        qmax = qrange(weight_bits, signed=True, narrow_range=narrow_range)[1]
        observer = partial(AbsMeanObserver, factor=lsq_init_factor(qmax))
    else:
        # NOTE: averaging_constant=1 makes the weight range the *current* max |w| at every
        # step: the scale follows the weights exactly (a lagging moving average would clip).
        observer = partial(_default_observer(axis), averaging_constant=1.0)
    return FakeQuantize(
        num_bits=weight_bits,
        signed=True,
        symmetric=True,
        axis=axis,
        observer=observer,
        learnable=learnable,
        narrow_range=narrow_range,
    )


def _act_fake_quant(act_bits: int, learnable: bool) -> FakeQuantize:
    # NOTE: unsigned and asymmetric, as the activation observers of minquant.ptq (convert
    # shifts the codes by 2^(b-1) into int8 without changing the scale).
    return FakeQuantize(num_bits=act_bits, signed=False, symmetric=False, learnable=learnable)


def _with_weight(layer: nn.Conv2d | nn.Linear, weight: np.ndarray, run, arg: np.ndarray):
    """Run ``run(arg)`` (the layer's forward or backward) with ``weight`` in place of the
    layer's weight and no bias; return the result and the gradient for ``weight``.

    This reuses the float engine's convolution and matmul (and their backward passes) for
    the fake-quantized weight, while the layer's own weight and bias stay untouched.
    """
    original_weight, original_bias = layer.weight, layer.bias
    stand_in = nn.Parameter(weight)
    layer.weight, layer.bias = stand_in, None
    try:
        out = run(arg)
    finally:
        layer.weight, layer.bias = original_weight, original_bias
    return out, stand_in.grad


class QATLinear(nn.Module):
    r"""Linear layer with fake-quantized weights: $y = x\,\mathrm{fq}(W)^\top + b$.

    Backward: $\partial L/\partial W = \mathrm{fq}'\big(g^\top x\big)$ (the STE mask or LSQ),
    $\partial L/\partial x = g\,\mathrm{fq}(W)$.
    """

    def __init__(self, linear: nn.Linear, weight_fake_quant: FakeQuantize) -> None:
        super().__init__()
        self.linear = linear
        self.weight_fake_quant = weight_fake_quant
        self._cache = None

    def folded_weight_bias(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The float weight and bias the integer layer quantizes."""
        bias = None if self.linear.bias is None else self.linear.bias.data
        return self.linear.weight.data, bias

    def forward(self, x: np.ndarray) -> np.ndarray:
        w_fq = self.weight_fake_quant(self.linear.weight.data)  # (out, in)
        y, _ = _with_weight(self.linear, w_fq, self.linear.forward, x)  # (N, out)
        if self.linear.bias is not None:
            y += self.linear.bias.data
        self._cache = w_fq
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        self._need_cache(self._cache)
        dx, grad_w_fq = _with_weight(self.linear, self._cache, self.linear.backward, grad_out)
        self.linear.weight.grad += self.weight_fake_quant.backward(grad_w_fq)  # (out, in)
        if self.linear.bias is not None:
            self.linear.bias.grad += grad_out.sum(axis=0)  # (out,)
        return dx  # (N, in)


class QATConvBn2d(nn.Module):
    r"""Conv2d (+ BatchNorm2d folded in) with fake-quantized folded weights.

    See the module docstring for the two regimes (live / frozen statistics). Without a
    BatchNorm (``bn=None``) it is a plain convolution with weight $\mathrm{fq}(w)$.
    ``freeze_bn_steps`` counts training-mode forward passes; ``freeze_bn()`` freezes now.

    The backward pass is the chain rule through both regimes, including the gradient that
    reaches $\gamma$ through the folding factor $f$ (as autograd does for PyTorch's
    ``ConvBn2d``).
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        bn: nn.BatchNorm2d | None,
        weight_fake_quant: FakeQuantize,
        freeze_bn_steps: int = FREEZE_BN_STEPS,
    ) -> None:
        super().__init__()
        if bn is not None and bn.num_features != conv.out_channels:
            raise ValueError(
                f"QATConvBn2d: BatchNorm2d({bn.num_features}) does not match the "
                f"{conv.out_channels} output channels of {conv!r}"
            )
        self.conv, self.bn = conv, bn
        self.weight_fake_quant = weight_fake_quant
        self.freeze_bn_steps = int(freeze_bn_steps)
        self.num_steps = 0
        self.bn_frozen = bn is None
        self._cache = None

    def extra_repr(self) -> str:
        return f"freeze_bn_steps={self.freeze_bn_steps}, bn_frozen={self.bn_frozen}"

    def freeze_bn(self) -> None:
        self.bn_frozen = True

    def _inv_std(self) -> np.ndarray:
        """$1 / \\sqrt{\\sigma^2_{run} + \\epsilon}$, (C,); ones without a BatchNorm."""
        if self.bn is None:
            return np.ones(self.conv.out_channels, dtype=np.float32)
        return (1.0 / np.sqrt(self.bn.running_var + np.float32(self.bn.eps))).astype(np.float32)

    def _factor(self) -> np.ndarray:
        """Folding factor $f = \\gamma / \\sqrt{\\sigma^2_{run} + \\epsilon}$, (C,)."""
        if self.bn is None:
            return self._inv_std()
        return (self.bn.weight.data * self._inv_std()).astype(np.float32)

    def folded_weight_bias(self) -> tuple[np.ndarray, np.ndarray]:
        """The folded float weight $w f$ and bias $(b - \\mu) f + \\beta$ (float32)."""
        f = self._factor()  # (C,)
        w_fold = self.conv.weight.data * f[:, None, None, None]  # (C, C_in, k, k)
        b = self.conv.bias.data if self.conv.bias is not None else np.zeros_like(f)
        if self.bn is None:
            return w_fold, b.astype(np.float32)
        b_fold = (b - self.bn.running_mean) * f + self.bn.bias.data  # (C,)
        return w_fold, b_fold.astype(np.float32)

    def forward(self, x: np.ndarray) -> np.ndarray:
        if self.training and not self.bn_frozen:
            self.num_steps += 1
            if self.num_steps > self.freeze_bn_steps:
                self.freeze_bn()
        live = self.training and not self.bn_frozen
        # NOTE: f comes from the running variance *before* this batch updates it (as torch).
        f, inv_std = self._factor(), self._inv_std()  # (C,)
        w_fold, b_fold = self.folded_weight_bias()
        w_fq = self.weight_fake_quant(w_fold)  # (C, C_in, k, k)
        y_conv, _ = _with_weight(self.conv, w_fq, self.conv.forward, x)  # (N, C, Ho, Wo)
        self._cache = (w_fq, f, inv_std, live, y_conv if live else None)
        if not live:
            return y_conv + b_fold[:, None, None]
        y = y_conv / f[:, None, None]  # (N, C, Ho, Wo), the unfolded convolution
        if self.conv.bias is not None:
            y = y + self.conv.bias.data[:, None, None]
        return self.bn(y)  # batch statistics; updates the running statistics

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        self._need_cache(self._cache)
        w_fq, f, inv_std, live, y_conv = self._cache
        axes = (0, 2, 3)
        if live:
            grad_y = self.bn.backward(grad_out)  # (N, C, Ho, Wo), w.r.t. conv / f + b
            if self.conv.bias is not None:
                self.conv.bias.grad += grad_y.sum(axis=axes)
            grad_conv = grad_y / f[:, None, None]  # (N, C, Ho, Wo)
            # d(conv / f)/df = -conv / f^2, then df/dgamma = 1 / sqrt(var + eps)
            grad_f = -(grad_y * y_conv).sum(axis=axes) / (f * f)  # (C,)
        else:
            grad_conv = grad_out
            sum_g = grad_out.sum(axis=axes)  # (C,)
            grad_f = np.zeros_like(f)
            if self.conv.bias is not None:
                self.conv.bias.grad += sum_g * f
            if self.bn is not None:
                self.bn.bias.grad += sum_g
                b = self.conv.bias.data if self.conv.bias is not None else 0.0
                grad_f += sum_g * (b - self.bn.running_mean)
        dx, grad_w_fq = _with_weight(self.conv, w_fq, self.conv.backward, grad_conv)
        grad_w_fold = self.weight_fake_quant.backward(grad_w_fq)  # STE mask or LSQ
        self.conv.weight.grad += grad_w_fold * f[:, None, None, None]
        if self.bn is not None:
            grad_f += (grad_w_fold * self.conv.weight.data).sum(axis=(1, 2, 3))
            self.bn.weight.grad += grad_f * inv_std
        return dx  # (N, C_in, H, W)


def prepare_qat(
    model: nn.Sequential,
    weight_bits: int = 4,
    act_bits: int = 4,
    per_channel: bool = True,
    learnable: bool = False,
    freeze_bn_steps: int = FREEZE_BN_STEPS,
    weight_quant: str = "minmax",
    weight_narrow_range: bool = True,
) -> nn.Sequential:
    r"""A copy of the float ``model`` with fake quantization on weights and activations.

    ``Conv2d [-> BatchNorm2d]`` becomes :class:`QATConvBn2d` (statistics frozen after
    ``freeze_bn_steps`` training steps), ``Linear`` becomes :class:`QATLinear`; weights are
    fake-quantized symmetric, narrow range, ``weight_bits`` (per output channel if
    ``per_channel``); a :class:`~minquant.fake_quant.FakeQuantize` of ``act_bits`` unsigned
    asymmetric codes follows the input and every Conv2d/Linear (after its ReLU, if any).
    With ``learnable=True`` the scales (and activation zero points) are LSQ parameters: the
    observers initialise them; call :func:`disable_observers` to let them learn.
    The input model is not modified. The result is in training mode.

    ``weight_quant`` chooses the weight scale: ``"minmax"`` (the current $\max |w|$, as
    post-training quantization), ``"lsq"`` (LSQ's $2\,\overline{|w|} / \sqrt{q_{max}}$,
    recomputed every step, or only the initial value with ``learnable=True``) or
    ``"ternary"`` (BitNet b1.58: $\{-1, 0, 1\} \cdot \overline{|w|}$,
    :class:`~minquant.lowbit_qat.TernaryFakeQuantize`; needs ``weight_bits=2``, where the
    codes are stored). ``weight_narrow_range`` drops the code $-2^{b-1}$ (symmetric grid, as
    :func:`minquant.ptq.quantize_model`); at 2 bits that leaves only $\{-1, 0, 1\}$, so a
    2-bit QAT run does better with ``weight_narrow_range=False`` ($\{-2, -1, 0, 1\}$, as
    PyTorch's ``quant_min=-2, quant_max=1``; see docs/results.md).

    >>> from minquant.models import small_cnn
    >>> qat_model = prepare_qat(small_cnn(rng=np.random.default_rng(0)), 4, 4)
    >>> [type(m).__name__ for m in qat_model][:5]
    ['FakeQuantize', 'QATConvBn2d', 'ReLU', 'FakeQuantize', 'MaxPool2d']
    """
    layers = ptq.check_sequential(model)
    weight_bits = ptq.check_bits("weight_bits", weight_bits)
    act_bits = ptq.check_bits("act_bits", act_bits)
    if int(freeze_bn_steps) != freeze_bn_steps or freeze_bn_steps < 0:
        raise ValueError(f"freeze_bn_steps must be an int >= 0, got {freeze_bn_steps!r}")
    if weight_quant not in WEIGHT_QUANT:
        raise ValueError(f"weight_quant must be one of {WEIGHT_QUANT}, got {weight_quant!r}")
    if weight_quant == "ternary" and (weight_bits != 2 or learnable):
        raise ValueError(
            "weight_quant='ternary' stores 2-bit codes and recomputes its scale: it needs "
            f"weight_bits=2 and learnable=False, got weight_bits={weight_bits}, "
            f"learnable={learnable}"
        )
    layers = [copy.deepcopy(layer) for layer in layers]
    out: list[nn.Module] = [_act_fake_quant(act_bits, learnable)]
    for group in ptq.group_layers(layers, "prepare_qat"):
        if isinstance(group.layer, ptq.PLAIN_LAYERS):
            out.append(group.layer)
            continue
        w_fq = _weight_fake_quant(
            weight_bits, per_channel, learnable, weight_quant, weight_narrow_range
        )
        if isinstance(group.layer, nn.Linear):
            out.append(QATLinear(group.layer, w_fq))
        else:
            out.append(QATConvBn2d(group.layer, group.bn, w_fq, freeze_bn_steps))
        if group.relu is not None:
            out.append(group.relu)
        out.append(_act_fake_quant(act_bits, learnable))
    return nn.Sequential(*out).train()


def fake_quantizers(qat_model: nn.Module) -> list[FakeQuantize]:
    """Every :class:`~minquant.fake_quant.FakeQuantize` in ``qat_model`` (weights included)."""
    return [m for m in qat_model.modules() if isinstance(m, FakeQuantize)]


def disable_observers(qat_model: nn.Module) -> None:
    """Freeze every quantization range (LSQ parameters then learn on their own)."""
    for fq in fake_quantizers(qat_model):
        fq.disable_observer()


def _float_layer(layer: QATLinear | QATConvBn2d) -> nn.Module:
    """The deployed float layer: BatchNorm folded, weights not yet quantized."""
    w_fold, b_fold = layer.folded_weight_bias()
    base = layer.linear if isinstance(layer, QATLinear) else layer.conv
    float_layer = copy.deepcopy(base)
    float_layer.weight = nn.Parameter(w_fold)
    float_layer.bias = None if b_fold is None else nn.Parameter(b_fold)
    return float_layer.eval()


def convert(qat_model: nn.Sequential, requant: str = "float") -> ptq.QuantizedModel:
    r"""The integer-only :class:`~minquant.ptq.QuantizedModel` of a trained QAT model.

    Weights are quantized with the scales of their fake quantizers (the codes the QAT model
    trained with: $w_q = \mathrm{clip}(\mathrm{round}(w f / s_w))$ of the folded weight),
    activations with the learned ranges, shifted from unsigned to int8 codes exactly as in
    :func:`minquant.ptq.quantize_model`. ``requant`` is ``"float"`` (the default: PyTorch's
    float32 requantization, whose rounding is the fake quantizer's, so the integer model
    reproduces the trained QAT model code for code) or ``"fixedpoint"`` (TFLite: rounding
    half away from zero in fixed point, which moves a few 4-bit codes by one step).
    A model whose quantizers never observed data (never trained nor calibrated) is an error.

    >>> from minquant.models import small_cnn
    >>> rng = np.random.default_rng(0)
    >>> qat_model = prepare_qat(small_cnn(rng=rng), 8, 8)
    >>> _ = qat_model(rng.random((8, 1, 28, 28), dtype=np.float32))   # observe one batch
    >>> qmodel = convert(qat_model)
    >>> qmodel.forward_int(np.zeros((2, 1, 28, 28), np.float32)).dtype
    dtype('int8')
    """
    layers = ptq.check_sequential(qat_model)
    if not layers or not isinstance(layers[0], FakeQuantize):
        raise ValueError("convert: expected a model made by prepare_qat (input FakeQuantize)")
    for fq in fake_quantizers(qat_model):
        if fq.num_observed == 0:
            raise ValueError(
                f"convert: {fq._name()} never observed any data; train the QAT model (or run "
                "forward passes in training mode) before converting it"
            )
    act_bits = layers[0].num_bits
    input_qp = ptq.activation_qparams(layers[0], act_bits)
    steps, float_layers, x_qp = [], [], input_qp
    weight_bits, per_channel = None, None
    groups = ptq.group_layers(layers[1:], "convert", (QATLinear, QATConvBn2d), FakeQuantize)
    for group in groups:
        if isinstance(group.layer, ptq.PLAIN_LAYERS):
            float_group, y_qp = [group.layer], x_qp
            module, sim = ptq.convert_group(float_group, x_qp, y_qp, None, requant)
        else:
            float_layer = _float_layer(group.layer)
            float_group = [float_layer] + ([group.relu] if group.relu is not None else [])
            y_qp = ptq.activation_qparams(group.output_quant, act_bits)
            w_fq = group.layer.weight_fake_quant
            scale, zero_point = w_fq.calculate_qparams()
            w_q = quantize(
                float_layer.weight.data, scale, zero_point, w_fq.qmin, w_fq.qmax, axis=w_fq.axis
            ).astype(np.int8)
            module, sim = ptq.convert_group(float_group, x_qp, y_qp, (w_q, scale), requant)
            weight_bits, per_channel = w_fq.num_bits, w_fq.axis is not None
        steps.append(ptq.Step(float_layers=float_group, module=module, sim_layer=sim, qparams=y_qp))
        float_layers += float_group
        x_qp = y_qp
    config = QuantConfig(
        weight_bits=weight_bits,
        act_bits=act_bits,
        per_channel=per_channel,
        observer="qat",
        requant=requant,
        reduce_range=False,
    )
    return ptq.QuantizedModel(steps, input_qp, nn.Sequential(*float_layers).eval(), config)
