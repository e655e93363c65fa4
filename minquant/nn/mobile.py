r"""Layers of MobileNet-like models: bounded ReLUs and global average pooling.

The depthwise convolution itself is :class:`minquant.nn.Conv2d` with ``groups`` = channels.
:class:`ClippedReLU` is the per-channel generalisation of ReLU6 that cross-layer
equalization needs: scaling channel $i$ by $1/s_i$ before a ReLU6 equals scaling after a
ReLU clipped at $6/s_i$.

References:

* A. Howard et al., "MobileNets", 2017 (arXiv:1704.04861); M. Sandler et al.,
  "MobileNetV2", CVPR 2018 (arXiv:1801.04381): ReLU6.
* M. Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
  Correction", ICCV 2019 (arXiv:1906.04721): why ReLU6 needs a per-channel bound.
"""

import numpy as np

from minquant.nn.layers import _check_input
from minquant.nn.module import Module


class ReLU6(Module):
    r"""$y = \min(\max(x, 0), 6)$, MobileNet's bounded ReLU.

    The gradient passes where $0 < x < 6$ (0 at both kinks, as PyTorch's ``hardtanh``).

    >>> ReLU6()(np.array([-1.0, 3.0, 6.0, 8.0])).tolist()
    [0.0, 3.0, 6.0, 6.0]
    """

    def __init__(self) -> None:
        super().__init__()
        self._cache = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        _check_input(self, x, "(any shape)", True)
        self._cache = (x > 0) & (x < 6)
        # NOTE: np.clip keeps the dtype of x (the bounds are Python ints).
        return np.clip(x, 0, 6)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        self._need_cache(self._cache)
        return grad_out * self._cache


class GlobalAvgPool2d(Module):
    r"""Mean over all pixels of each channel: (N, C, H, W) -> (N, C).

    $$y_{n,c} = \frac{1}{HW} \sum_{h,w} x_{n,c,h,w}, \qquad
    \frac{\partial L}{\partial x_{n,c,h,w}} = \frac{g_{n,c}}{HW}.$$

    PyTorch's twin is ``AdaptiveAvgPool2d(1)`` followed by ``Flatten()``.

    >>> GlobalAvgPool2d()(np.arange(8.0).reshape(1, 2, 2, 2)).tolist()
    [[1.5, 5.5]]
    """

    def __init__(self) -> None:
        super().__init__()
        self._cache = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        _check_input(self, x, "(N, C, H, W)", x.ndim == 4)
        self._cache = x.shape
        return x.mean(axis=(2, 3))  # (N, C)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        self._need_cache(self._cache)
        h, w = self._cache[2:]
        dx = grad_out / np.asarray(h * w, dtype=grad_out.dtype)  # (N, C)
        return np.ascontiguousarray(np.broadcast_to(dx[:, :, None, None], self._cache))


class ClippedReLU(Module):
    r"""$y_{n,c,\dots} = \min(\max(x_{n,c,\dots}, 0), u_c)$: a ReLU with a per-channel bound.

    ``upper`` (C,) holds $u_c > 0$ for the channel axis 1. ``ClippedReLU(np.full(C, 6.0))``
    is ReLU6. The gradient passes where $0 < x < u_c$. It is scale-equivariant channel by
    channel: $\mathrm{ClippedReLU}_{u}(x / s) = \mathrm{ClippedReLU}_{s u}(x) / s$ for $s > 0$.

    >>> ClippedReLU(np.array([1.0, 6.0]))(np.array([[3.0, 3.0]])).tolist()
    [[1.0, 3.0]]
    """

    _buffers = ("upper",)

    def __init__(self, upper: np.ndarray) -> None:
        super().__init__()
        upper = np.asarray(upper, dtype=np.float32)
        if upper.ndim != 1 or not np.all(upper > 0):
            raise ValueError(f"ClippedReLU: upper must be a 1-D array of bounds > 0, got {upper!r}")
        self.upper = upper
        self._cache = None

    def extra_repr(self) -> str:
        return f"channels={self.upper.size}"

    def forward(self, x: np.ndarray) -> np.ndarray:
        c = self.upper.size
        _check_input(self, x, f"(N, {c}, ...)", x.ndim >= 2 and x.shape[1] == c)
        upper = self.upper.astype(x.dtype).reshape((1, c) + (1,) * (x.ndim - 2))  # (1, C, 1..)
        self._cache = (x > 0) & (x < upper)
        return np.minimum(np.maximum(x, 0), upper)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        self._need_cache(self._cache)
        return grad_out * self._cache
