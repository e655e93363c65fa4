r"""BatchNorm folding and layer grouping: the float model as the integer model will see it.

Eval-mode BatchNorm is a per-channel affine map, so it merges into the convolution before it:

$$w' = w \cdot \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}}, \qquad
b' = (b - \mu)\,\frac{\gamma}{\sqrt{\sigma^2 + \epsilon}} + \beta.$$

Grouping splits a layer list into the steps of an integer model: a Conv2d/Linear with the
ReLU after it (the ReLU becomes the output clamp; for PTQ also a ReLU6 or ClippedReLU, whose
upper bound becomes a second clamp), or one layer on its own.

Reference: B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", CVPR 2018 (arXiv:1712.05877), section 3.2 (folding).
"""

import copy
from dataclasses import dataclass

import numpy as np

from minquant import nn

__all__ = [
    "FUSED_ACTIVATIONS",
    "PLAIN_LAYERS",
    "LayerGroup",
    "check_sequential",
    "fold_batchnorm",
    "group_layers",
]


#: Layers that stay a step of their own (no weights; they map codes to codes).
PLAIN_LAYERS = (nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.GlobalAvgPool2d)

#: Activations that fuse into the Conv2d/Linear before them as output clamps in PTQ
#: (:func:`minquant.ptq.quantize_model`); QAT fuses ReLU only.
FUSED_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.ClippedReLU)


def check_sequential(model: nn.Module) -> list[nn.Module]:
    """The layers of ``model``; a TypeError unless it is an ``nn.Sequential``.

    >>> [type(m).__name__ for m in check_sequential(nn.Sequential(nn.Flatten(), nn.ReLU()))]
    ['Flatten', 'ReLU']
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model must be an nn.Sequential, got {type(model).__name__}")
    return list(model)


def fold_batchnorm(model: nn.Sequential) -> nn.Sequential:
    r"""A copy of ``model`` in eval mode with every ``Conv2d -> BatchNorm2d`` pair merged.

    $$w' = w \cdot \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}}, \qquad
    b' = (b - \mu)\,\frac{\gamma}{\sqrt{\sigma^2 + \epsilon}} + \beta$$

    (computed in float64, stored in float32). The input model is not modified.

    >>> rng = np.random.default_rng(0)
    >>> model = nn.Sequential(nn.Conv2d(1, 2, 3, rng=rng), nn.BatchNorm2d(2), nn.ReLU())
    >>> model[1].running_mean[:] = [0.5, -1.0]
    >>> folded = fold_batchnorm(model)
    >>> [type(m).__name__ for m in folded]
    ['Conv2d', 'ReLU']
    >>> X = rng.normal(size=(4, 1, 5, 5)).astype(np.float32)
    >>> bool(np.allclose(folded(X), model.eval()(X), atol=1e-5))
    True
    """
    layers = check_sequential(model)
    folded = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, nn.BatchNorm2d):
            folded.append(copy.deepcopy(layer))
            continue
        if not folded or not isinstance(folded[-1], nn.Conv2d):
            raise ValueError(
                f"fold_batchnorm: BatchNorm2d at index {i} must follow a Conv2d, "
                f"got {type(layers[i - 1]).__name__ if i else 'nothing'} before it"
            )
        conv = folded[-1]
        if conv.out_channels != layer.num_features:
            raise ValueError(
                f"fold_batchnorm: BatchNorm2d({layer.num_features}) at index {i} does not "
                f"match the {conv.out_channels} output channels of the Conv2d before it"
            )
        gamma = layer.weight.data.astype(np.float64)  # (C,)
        inv_std = 1.0 / np.sqrt(layer.running_var.astype(np.float64) + layer.eps)  # (C,)
        factor = gamma * inv_std  # (C,)
        w = conv.weight.data.astype(np.float64)  # (C, C_in, k, k)
        b = np.zeros(conv.out_channels) if conv.bias is None else conv.bias.data  # (C,)
        mean = layer.running_mean.astype(np.float64)  # (C,)
        b_folded = (b - mean) * factor + layer.bias.data.astype(np.float64)  # (C,)
        conv.weight = nn.Parameter(w * factor[:, None, None, None])
        conv.bias = nn.Parameter(b_folded)
    return nn.Sequential(*folded).eval()


@dataclass
class LayerGroup:
    """One step of a quantized model: a Conv2d/Linear with what follows it, or one layer.

    ``layer`` is the Conv2d/Linear (or its QAT version), else a ReLU/MaxPool2d/Flatten/
    GlobalAvgPool2d on its own; ``bn`` the BatchNorm2d after a Conv2d, ``relu`` the ReLU
    (or, in PTQ, ReLU6/ClippedReLU) that becomes the output clamp, ``output_quant`` the
    activation quantizer after them (QAT models only).
    """

    layer: nn.Module
    bn: nn.BatchNorm2d | None = None
    relu: nn.Module | None = None
    output_quant: nn.Module | None = None

    @property
    def layers(self) -> list[nn.Module]:
        """The float layers of the step, in order (without ``output_quant``)."""
        return [m for m in (self.layer, self.bn, self.relu) if m is not None]


def group_layers(
    layers: list[nn.Module],
    caller: str,
    gemm_types: tuple[type, ...] = (nn.Conv2d, nn.Linear),
    output_quant: type | None = None,
    activations: tuple[type, ...] = (nn.ReLU,),
) -> list[LayerGroup]:
    """Split a layer list into steps: Conv2d/Linear -> BatchNorm2d? -> ReLU? (-> quantizer).

    ``activations`` are the layer types that fuse as the ReLU of a step (PTQ passes
    :data:`FUSED_ACTIVATIONS`, which adds ReLU6 and ClippedReLU).

    The one grouping of :func:`minquant.ptq.quantize_model` (after folding, so no BatchNorm),
    :func:`minquant.qat.prepare_qat` (on the float model) and :func:`minquant.qat.convert`
    (``gemm_types`` the QAT layers, each followed by an ``output_quant``). Anything else is
    a ValueError naming ``caller``, the index and the layer.

    >>> groups = group_layers([nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten()],
    ...                       "example")
    >>> [[type(m).__name__ for m in g.layers] for g in groups]
    [['Conv2d', 'BatchNorm2d', 'ReLU'], ['Flatten']]
    """
    groups: list[LayerGroup] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        if isinstance(layer, gemm_types):
            group = LayerGroup(layer)
            if isinstance(layer, nn.Conv2d) and _next_is(layers, i, nn.BatchNorm2d):
                i += 1
                group.bn = layers[i]
            if _next_is(layers, i, activations):
                i += 1
                group.relu = layers[i]
            if output_quant is not None:
                if not _next_is(layers, i, output_quant):
                    raise ValueError(
                        f"{caller}: {layer!r} is not followed by a {output_quant.__name__}"
                    )
                i += 1
                group.output_quant = layers[i]
        elif isinstance(layer, PLAIN_LAYERS):
            group = LayerGroup(layer)
        elif isinstance(layer, nn.BatchNorm2d):
            raise ValueError(f"{caller}: BatchNorm2d at index {i} must follow a Conv2d")
        else:
            raise ValueError(
                f"{caller}: unsupported layer at index {i}: {layer!r} (supported: Conv2d, "
                "BatchNorm2d after a Conv2d, Linear, "
                + ", ".join(t.__name__ for t in activations[1:])
                + (" after a Conv2d/Linear, " if len(activations) > 1 else "")
                + "ReLU, MaxPool2d, Flatten, GlobalAvgPool2d)"
            )
        groups.append(group)
        i += 1
    return groups


def _next_is(layers: list[nn.Module], i: int, kind: type | tuple[type, ...]) -> bool:
    return i + 1 < len(layers) and isinstance(layers[i + 1], kind)
