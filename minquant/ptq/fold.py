r"""BatchNorm folding and layer grouping: the float model as the integer model will see it.

Eval-mode BatchNorm is a per-channel affine map, so it merges into the convolution before it:

$$w' = w \cdot \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}}, \qquad
b' = (b - \mu)\,\frac{\gamma}{\sqrt{\sigma^2 + \epsilon}} + \beta.$$

Grouping splits a layer list into the steps of an integer model: a Conv2d/Linear with the
ReLU after it (the ReLU becomes the output clamp), or one layer on its own.

Reference: B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", CVPR 2018 (arXiv:1712.05877), section 3.2 (folding).
"""

import copy

import numpy as np

from minquant import nn

__all__ = ["SUPPORTED_LAYERS", "check_sequential", "fold_batchnorm"]


#: Layers that :func:`quantize_model` converts (after BatchNorm folding).
SUPPORTED_LAYERS = (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.Flatten)


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


def _group_layers(layers: list[nn.Module]) -> list[list[nn.Module]]:
    """Split the layer list into steps: ``[Conv2d|Linear, ReLU?]`` pairs and single layers."""
    groups: list[list[nn.Module]] = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, SUPPORTED_LAYERS):
            allowed = ", ".join(t.__name__ for t in (nn.BatchNorm2d, *SUPPORTED_LAYERS))
            raise ValueError(
                f"quantize_model: unsupported layer at index {i}: {layer!r} (supported: {allowed})"
            )
        fusable = groups and isinstance(groups[-1][0], (nn.Conv2d, nn.Linear))
        if isinstance(layer, nn.ReLU) and fusable and len(groups[-1]) == 1:
            groups[-1].append(layer)
        else:
            groups.append([layer])
    return groups
