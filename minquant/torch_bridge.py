r"""PyTorch interop: the same models, the same integers, in ``torch``.

Everything minquant computes has a PyTorch counterpart, and this module builds it:

* :func:`to_torch` / :func:`from_torch` move a float ``Sequential`` (Conv2d, BatchNorm2d,
  ReLU, MaxPool2d, Flatten, Linear) between the two libraries; the layouts are the same
  (NCHW, ``weight`` (out, in, k, k)), so the weights are copied one to one.
* :func:`to_torch_quantized` turns a :class:`~minquant.ptq.QuantizedModel` built with
  ``requant="float"`` into a ``torch.ao`` quantized model (x86 engine) holding the very same
  int8 weights and quantization parameters. Its forward pass is the integer pipeline of
  :mod:`minquant.qnn`, run by PyTorch's kernels:
  $$y_q = \mathrm{clip}\Big(\mathrm{rint}\big((\mathrm{acc} + b / (s_x s_w))
  \cdot (s_x s_w / s_y)\big) + z_y\Big).$$
* :func:`to_torch_qat` rebuilds a model made by :func:`minquant.qat.prepare_qat` from
  ``torch.nn`` layers and ``torch.ao.quantization.FakeQuantize`` modules with the same
  (frozen) scales and zero points, for a bit-for-bit comparison of the fake-quant forward
  pass, on the CPU or on a GPU.

PyTorch stores activations as ``quint8``; minquant stores them as int8. The two are the
same affine map shifted by 128: the int8 code $v$ with zero point $z$ is the quint8 code
$v + 128$ with zero point $z + 128$ (the scale is unchanged, and so is every difference
$v - z$ the arithmetic uses).

PyTorch is an optional dependency (``pip install "minquant[torch]"``); it is imported when a
function of this module is first called.

References:

* PyTorch ``torch.ao.nn.quantized`` (Linear, Conv2d, Quantize, DeQuantize) and
  ``torch.ao.nn.intrinsic.quantized`` (LinearReLU, ConvReLU2d), x86/fbgemm engine.
* PyTorch ``torch.ao.quantization.FakeQuantize``.
* B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", CVPR 2018 (arXiv:1712.05877).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from minquant import nn

if TYPE_CHECKING:
    import torch

    from minquant.fake_quant import FakeQuantize
    from minquant.ptq import QuantizedModel
    from minquant.qnn import QuantizedModule

#: int8 code + QUINT8_OFFSET = PyTorch's quint8 code (zero points shift the same way).
QUINT8_OFFSET = 128

INSTALL_HINT = 'pip install "minquant[torch]"'


def _torch() -> ModuleType:
    """Import torch, or explain how to install it."""
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            f"minquant.torch_bridge needs PyTorch, which is not installed: {INSTALL_HINT}"
        ) from err
    return torch


def _tensor(x: np.ndarray) -> torch.Tensor:
    """A float32 torch tensor with a copy of ``x`` (never shares minquant's memory)."""
    return _torch().tensor(np.asarray(x, dtype=np.float32))


# --- float models ---------------------------------------------------------------------------


def _layer_to_torch(layer: nn.Module) -> torch.nn.Module:
    tnn = _torch().nn
    if isinstance(layer, nn.Sequential):
        return tnn.Sequential(*[_layer_to_torch(child) for child in layer])
    if isinstance(layer, nn.Linear):
        out = tnn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    elif isinstance(layer, nn.Conv2d):
        out = tnn.Conv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            groups=getattr(layer, "groups", 1),
            bias=layer.bias is not None,
        )
    elif isinstance(layer, nn.BatchNorm2d):
        out = tnn.BatchNorm2d(layer.num_features, eps=layer.eps, momentum=layer.momentum)
    elif isinstance(layer, nn.ReLU):
        return tnn.ReLU()
    elif isinstance(layer, nn.ReLU6):
        return tnn.ReLU6()
    elif isinstance(layer, nn.GlobalAvgPool2d):
        return tnn.Sequential(tnn.AdaptiveAvgPool2d(1), tnn.Flatten())
    elif isinstance(layer, nn.MaxPool2d):
        return tnn.MaxPool2d(layer.kernel_size, stride=layer.stride)
    elif isinstance(layer, nn.Flatten):
        return tnn.Flatten()
    else:
        raise ValueError(
            f"to_torch: unsupported layer {layer!r} (supported: Sequential, Linear, Conv2d, "
            "BatchNorm2d, ReLU, ReLU6, GlobalAvgPool2d, MaxPool2d, Flatten)"
        )
    # NOTE: the parameter and buffer names are PyTorch's, so the state dicts match key by key
    # (BatchNorm's num_batches_tracked aside, which eval mode does not read).
    state = {name: _tensor(value) for name, value in layer.state_dict().items()}
    out.load_state_dict(state, strict=False)
    return out


def to_torch(model: nn.Module) -> torch.nn.Module:
    """The ``torch.nn`` twin of a minquant float model: same layers, same float32 weights.

    The training/eval mode is copied too. Supported: ``Sequential``, ``Linear``, ``Conv2d``
    (``groups`` too), ``BatchNorm2d``, ``ReLU``, ``ReLU6``, ``MaxPool2d``, ``Flatten`` and
    ``GlobalAvgPool2d`` (as ``AdaptiveAvgPool2d(1)`` then ``Flatten``).

    >>> import torch
    >>> from minquant.models import small_cnn
    >>> model = small_cnn(rng=np.random.default_rng(0)).eval()
    >>> X = np.random.default_rng(1).random((2, 1, 28, 28), dtype=np.float32)
    >>> with torch.no_grad():
    ...     logits = to_torch(model)(torch.from_numpy(X)).numpy()
    >>> bool(np.allclose(logits, model(X), atol=1e-5))
    True
    """
    _torch()
    return _layer_to_torch(model).train(model.training)


def _check_from_torch(module: torch.nn.Module, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"from_torch: unsupported configuration {module!r}: need {allowed}")


def _layer_from_torch(module: torch.nn.Module, rng: np.random.Generator) -> nn.Module:
    tnn = _torch().nn
    if isinstance(module, tnn.Sequential):
        return nn.Sequential(*[_layer_from_torch(child, rng) for child in module])
    if isinstance(module, tnn.Linear):
        out = nn.Linear(module.in_features, module.out_features, module.bias is not None, rng)
    elif isinstance(module, tnn.Conv2d):
        (kh, kw), (sh, sw), padding = module.kernel_size, module.stride, module.padding
        ok = kh == kw and sh == sw and not isinstance(padding, str) and padding[0] == padding[1]
        ok = ok and module.dilation == (1, 1) and module.groups == 1
        ok = ok and module.padding_mode == "zeros"
        _check_from_torch(module, ok, "square kernel, equal strides/paddings, no groups")
        out = nn.Conv2d(
            module.in_channels,
            module.out_channels,
            kh,
            stride=sh,
            padding=padding[0],
            bias=module.bias is not None,
            rng=rng,
        )
    elif isinstance(module, tnn.BatchNorm2d):
        ok = module.affine and module.track_running_stats and module.momentum is not None
        _check_from_torch(module, ok, "affine=True, track_running_stats=True, a momentum")
        out = nn.BatchNorm2d(module.num_features, eps=module.eps, momentum=module.momentum)
    elif isinstance(module, tnn.ReLU):
        return nn.ReLU()
    elif isinstance(module, tnn.MaxPool2d):
        ok = module.padding == 0 and module.dilation == 1 and not module.ceil_mode
        ok = ok and isinstance(module.kernel_size, int) and isinstance(module.stride, int)
        _check_from_torch(module, ok, "int kernel_size and stride, no padding/dilation/ceil")
        return nn.MaxPool2d(module.kernel_size, module.stride)
    elif isinstance(module, tnn.Flatten):
        _check_from_torch(module, module.start_dim == 1 and module.end_dim == -1, "Flatten()")
        return nn.Flatten()
    else:
        raise ValueError(
            f"from_torch: unsupported layer {type(module).__name__} (supported: Sequential, "
            "Linear, Conv2d, BatchNorm2d, ReLU, MaxPool2d, Flatten)"
        )
    state = {name: value.detach().cpu().numpy() for name, value in module.state_dict().items()}
    state.pop("num_batches_tracked", None)
    out.load_state_dict(state)
    return out


def from_torch(module: torch.nn.Module) -> nn.Module:
    """The minquant twin of a ``torch.nn`` model built from the layers :func:`to_torch` makes.

    Weights are copied to float32; the training/eval mode is kept. Anything else (a
    dilated or grouped convolution, an unsupported layer) is a ValueError naming it.

    >>> import torch
    >>> torch_model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> model = from_torch(torch_model)
    >>> model
    Sequential(
      (0): Flatten()
      (1): Linear(in_features=4, out_features=2, bias=True)
    )
    >>> bool(np.array_equal(model[1].weight.data, torch_model[1].weight.detach().numpy()))
    True
    """
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch: expected a torch.nn.Module, got {type(module).__name__}")
    # NOTE: the layers draw (and then overwrite) initial weights; a fixed generator keeps
    # that draw deterministic without seeding anything global.
    return _layer_from_torch(module, np.random.default_rng(0)).train(module.training)


# --- the integer model ----------------------------------------------------------------------


@contextlib.contextmanager
def _quantized_engine(engine: str) -> Iterator[None]:
    """Pack weights for ``engine``, then restore the global engine setting."""
    backends = _torch().backends.quantized
    if engine not in backends.supported_engines:
        raise ValueError(
            f"engine must be one of {backends.supported_engines} on this machine, got {engine!r}"
        )
    previous = backends.engine
    backends.engine = engine
    try:
        yield
    finally:
        backends.engine = previous


def _torch_weight(module: QuantizedModule) -> torch.Tensor:
    """minquant's int8 weight codes and per-channel scales as a ``torch.qint8`` tensor."""
    from minquant import qnn

    torch = _torch()
    if isinstance(module, qnn.QuantizedDepthwiseConv2d):
        w_q = module.w_q.copy()  # (C, 1, k, k)
    else:
        w_q = module.w_t.T.copy()  # (out, K): w_t is the transposed weight
    if isinstance(module, qnn.QuantizedConv2d):
        k = module.kernel_size
        w_q = w_q.reshape(module.out_channels, module.in_channels, k, k)  # (O, C, k, k)
    # NOTE: torch keeps per-channel scales in float64; fbgemm reads them back as float32,
    # which gives exactly minquant's float32 scales.
    scales = torch.tensor(module.w_scale.astype(np.float64))  # (out,)
    zero_points = torch.zeros(len(scales), dtype=torch.int64)
    return torch._make_per_channel_quantized_tensor(torch.from_numpy(w_q), scales, zero_points, 0)


def _gemm_to_torch(module: QuantizedModule) -> torch.nn.Module:
    from minquant import qnn

    torch = _torch()
    nnq, nniq = torch.ao.nn.quantized, torch.ao.nn.intrinsic.quantized
    if isinstance(module, (qnn.QuantizedConv2d, qnn.QuantizedDepthwiseConv2d)):
        # NOTE: fbgemm's depthwise kernel adds pairs of u8 * i8 products in int16, which
        # saturates for activation codes above 127; with reduce_range (7-bit activations, the
        # default of requant="float") its codes equal minquant's exact int32 sums.
        cls = nniq.ConvReLU2d if module.relu else nnq.Conv2d
        out = cls(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            groups=getattr(module, "groups", 1),
        )
    else:
        cls = nniq.LinearReLU if module.relu else nnq.Linear
        out = cls(module.in_features, module.out_features)
    bias = None if module.requant.bias is None else _tensor(module.requant.bias)
    out.set_weight_bias(_torch_weight(module), bias)
    y_qp = module.output_qparams
    out.scale = float(y_qp.scale)
    out.zero_point = y_qp.zero_point + QUINT8_OFFSET
    if module.upper is None:
        return out
    if np.ndim(module.upper) != 0 or float(module.upper) != 6.0:
        raise ValueError(
            f"to_torch_quantized: a per-channel ClippedReLU has no torch.ao counterpart "
            f"({module!r}); equalize with relu6='relu' or keep ReLU6"
        )
    # NOTE: quantized relu6 clamps to [z, quantize(6.0)] on the same qparams: after the
    # conv's [0, 255] (and ReLU's z) clamp, the same codes as minquant's fused clamp.
    return torch.nn.Sequential(out, nnq.ReLU6())


def _step_to_torch(module: QuantizedModule) -> torch.nn.Module:
    # NOTE: imported here, so that the float bridge does not load the Numba kernels.
    from minquant import qnn

    tnn = _torch().nn
    if isinstance(module, (qnn.QuantizedConv2d, qnn.QuantizedDepthwiseConv2d, qnn.QuantizedLinear)):
        return _gemm_to_torch(module)
    if isinstance(module, qnn.QuantizedGlobalAvgPool2d):
        # NOTE: quantized adaptive_avg_pool2d keeps the input qparams and rounds the mean of
        # the quint8 codes half to even, as QuantizedGlobalAvgPool2d(requant="float").
        return tnn.Sequential(tnn.AdaptiveAvgPool2d(1), tnn.Flatten())
    if isinstance(module, qnn.QuantizedMaxPool2d):
        return tnn.MaxPool2d(module.kernel_size, stride=module.stride)
    if isinstance(module, qnn.QuantizedFlatten):
        return tnn.Flatten()
    if isinstance(module, qnn.QuantizedReLU):
        return tnn.ReLU()  # on a quint8 tensor: max(x_q, zero_point), as QuantizedReLU
    raise ValueError(f"to_torch_quantized: no PyTorch counterpart for {module!r}")


def to_torch_quantized(qmodel: QuantizedModel, engine: str = "x86") -> torch.nn.Sequential:
    r"""The ``torch.ao`` quantized twin of ``qmodel``: same int8 weights, scales, zero points.

    ``qmodel`` must use ``requant="float"`` (PyTorch's requantization; the fixed-point
    multipliers of ``"fixedpoint"`` have no ``torch.ao`` counterpart) and 8-bit activations.
    The result is a ``torch.nn.Sequential``: ``Quantize`` (quint8), one quantized module per
    step (``Conv2d``/``ConvReLU2d`` (``groups`` = C for a depthwise step), followed by
    ``ReLU6`` where one is fused, ``Linear``/``LinearReLU``, ``MaxPool2d``, ``Flatten``,
    ``AdaptiveAvgPool2d(1)`` + ``Flatten``), ``DeQuantize``. Like ``qmodel`` it takes a
    float tensor and returns float logits;
    ``model[:-1](x).int_repr() - 128`` are the int8 logits of ``qmodel.forward_int``.
    Weights are packed for ``engine`` (the global engine setting is restored afterwards).
    NOTE: on Linux CPUs with AVX512-VNNI the ``"x86"`` engine runs convolutions on oneDNN
    rather than fbgemm, whose arithmetic minquant reproduces; ``engine="fbgemm"`` is
    fbgemm on every x86 CPU.

    >>> import torch
    >>> from minquant.ptq import quantize_model
    >>> rng = np.random.default_rng(0)
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8, rng=rng), nn.ReLU(),
    ...                       nn.Linear(8, 3, rng=rng))
    >>> X = rng.normal(size=(64, 1, 4, 4)).astype(np.float32)
    >>> qmodel = quantize_model(model, X, requant="float")
    >>> torch_model = to_torch_quantized(qmodel)
    >>> [type(m).__name__ for m in torch_model]
    ['Quantize', 'Flatten', 'LinearReLU', 'Linear', 'DeQuantize']
    >>> codes = torch_model[:-1](torch.from_numpy(X)).int_repr().numpy().astype(int) - 128
    >>> bool(np.array_equal(codes, qmodel.forward_int(X)))
    True
    """
    torch = _torch()
    requant, act_bits = qmodel.config.requant, qmodel.config.act_bits
    if requant != "float":
        raise ValueError(
            f"to_torch_quantized: qmodel must be built with requant='float' (PyTorch's "
            f"float32 requantization), got requant={requant!r}"
        )
    if act_bits != 8:
        raise ValueError(f"to_torch_quantized: torch.ao needs act_bits=8, got {act_bits}")
    nnq = torch.ao.nn.quantized
    x_qp = qmodel.quantize.qparams
    with _quantized_engine(engine):
        layers = [nnq.Quantize(float(x_qp.scale), x_qp.zero_point + QUINT8_OFFSET, torch.quint8)]
        layers += [_step_to_torch(step.module) for step in qmodel.steps]
    layers.append(nnq.DeQuantize())
    return torch.nn.Sequential(*layers).eval()


# --- fake quantization ----------------------------------------------------------------------


def _fake_quant_to_torch(fq: FakeQuantize) -> torch.nn.Module:
    """A ``torch.ao.quantization.FakeQuantize`` frozen at ``fq``'s scale and zero point."""
    torch = _torch()
    tq = torch.ao.quantization
    scale, zero_point = fq.calculate_qparams()  # (1,) or (C,)
    per_channel = fq.axis is not None
    observer = tq.MovingAveragePerChannelMinMaxObserver if per_channel else tq.MinMaxObserver
    kwargs = {"ch_axis": fq.axis} if per_channel else {}
    out = tq.FakeQuantize(
        observer=observer,
        quant_min=fq.qmin,
        quant_max=fq.qmax,
        dtype=torch.qint8 if fq.signed else torch.quint8,
        qscheme=torch.per_channel_symmetric if per_channel else torch.per_tensor_affine,
        **kwargs,
    )
    out.disable_observer()  # the ranges are frozen: nothing below may move them
    out.scale = torch.tensor(scale, dtype=torch.float32)
    out.zero_point = torch.tensor(zero_point, dtype=torch.int32)
    if not fq.fake_quant_enabled:
        out.disable_fake_quant()
    return out


def _qat_layer(layer: nn.Module) -> torch.nn.Module:
    """Conv2d/Linear with the folded float weight, fake-quantized on every forward pass."""
    torch = _torch()
    tqat = torch.ao.nn.qat
    w_fold, b_fold = layer.folded_weight_bias()
    # NOTE: torch.ao.nn.qat layers compute with weight_fake_quant(weight), the very pattern
    # of minquant's QATLinear / QATConvBn2d once the BatchNorm statistics are frozen. The
    # default qconfig only builds placeholders, replaced right below.
    qconfig = torch.ao.quantization.get_default_qat_qconfig("x86")
    if hasattr(layer, "linear"):
        base = layer.linear
        out = tqat.Linear(base.in_features, base.out_features, b_fold is not None, qconfig)
    else:
        base = layer.conv
        out = tqat.Conv2d(
            base.in_channels,
            base.out_channels,
            base.kernel_size,
            stride=base.stride,
            padding=base.padding,
            bias=b_fold is not None,
            qconfig=qconfig,
        )
    out.weight = torch.nn.Parameter(_tensor(w_fold))
    out.bias = None if b_fold is None else torch.nn.Parameter(_tensor(b_fold))
    out.weight_fake_quant = _fake_quant_to_torch(layer.weight_fake_quant)
    return out


def to_torch_qat(qat_model: nn.Sequential) -> torch.nn.Sequential:
    r"""The PyTorch twin of a QAT model, with its current (frozen) quantization ranges.

    Every minquant :class:`~minquant.fake_quant.FakeQuantize` becomes a
    ``torch.ao.quantization.FakeQuantize`` with the same scale and zero point (observers
    disabled); each ``QATConvBn2d``/``QATLinear`` becomes ``torch.ao.nn.qat.Conv2d``/``Linear``
    holding the BatchNorm-folded weight $w f$ and bias $(b - \mu) f + \beta$, whose weight
    fake quantizer uses the same per-channel scales. This is the deployed form: it matches
    minquant's QAT model in evaluation mode (statistics frozen). The result is in eval mode.

    $$\hat{x} = s\,\big(\mathrm{clip}(z + \mathrm{rint}(x \cdot s^{-1}),
    q_{min}, q_{max}) - z\big)\ \text{on both sides.}$$
    """
    from minquant.fake_quant import FakeQuantize
    from minquant.qat import QATConvBn2d, QATLinear

    torch = _torch()
    layers = []
    for layer in qat_model:
        if isinstance(layer, FakeQuantize):
            layers.append(_fake_quant_to_torch(layer))
        elif isinstance(layer, (QATConvBn2d, QATLinear)):
            layers.append(_qat_layer(layer))
        else:
            layers.append(_layer_to_torch(layer))
    return torch.nn.Sequential(*layers).eval()
