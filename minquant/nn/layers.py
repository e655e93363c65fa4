r"""Layers with explicit forward and backward passes, in PyTorch layouts (NCHW).

Each ``backward`` is the chain rule for one layer, written out; for an output
$y = f(x; \theta)$ and an upstream gradient $g = \partial L / \partial y$ it returns
$\partial L / \partial x$ and adds $\partial L / \partial \theta$ to ``theta.grad``.

Default initialisation is PyTorch's (see :func:`minquant.nn.functional.kaiming_uniform`),
drawn from an explicit ``rng``; ``rng=None`` means ``np.random.default_rng()`` (unseeded).

References:

* S. Ioffe, C. Szegedy, "Batch Normalization", ICML 2015 (arXiv:1502.03167).
* PyTorch ``torch.nn`` (layouts, initialisation, BatchNorm running statistics).
"""

import numpy as np

from minquant.nn.functional import col2im, conv_output_size, im2col, kaiming_uniform
from minquant.nn.module import Module, Parameter


def _check_input(layer: Module, x: np.ndarray, expected: str, ok: bool) -> None:
    """Raise a ValueError naming the layer, the expected shape and the shape it was given."""
    if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating):
        got = x.dtype if isinstance(x, np.ndarray) else type(x).__name__
        raise TypeError(f"{layer._name()}: input must be a floating-point ndarray, got {got}")
    if not ok:
        raise ValueError(f"{layer._name()}: expected input of shape {expected}, got {x.shape}")


class Linear(Module):
    r"""Fully connected layer: $y = x W^\top + b$, ``weight`` (out, in), ``bias`` (out,).

    Backward: $\partial L/\partial x = g W$, $\partial L/\partial W = g^\top x$,
    $\partial L/\partial b = \sum_n g_n$.

    >>> layer = Linear(3, 2, rng=np.random.default_rng(0))
    >>> layer.weight.shape, layer(np.ones((4, 3), dtype=np.float32)).shape
    ((2, 3), (4, 2))
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        rng = np.random.default_rng() if rng is None else rng
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(kaiming_uniform((out_features, in_features), in_features, rng))
        self.bias = Parameter(kaiming_uniform((out_features,), in_features, rng)) if bias else None
        self._cache = None

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )

    def forward(self, x: np.ndarray) -> np.ndarray:
        ok = x.ndim == 2 and x.shape[1] == self.in_features
        _check_input(self, x, f"(N, {self.in_features})", ok)
        self._cache = x
        y = x @ self.weight.data.T  # (N, out)
        if self.bias is not None:
            y += self.bias.data
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        self._need_cache(self._cache)
        x = self._cache  # (N, in)
        self.weight.grad += grad_out.T @ x  # (out, in)
        if self.bias is not None:
            self.bias.grad += grad_out.sum(axis=0)  # (out,)
        return grad_out @ self.weight.data  # (N, in)


class Conv2d(Module):
    r"""2-D convolution (cross-correlation, as PyTorch) by im2col and one matmul.

    $$y_{n,o,h,w} = b_o + \sum_{c,i,j} W_{o,c,i,j}\, x_{n,c,\,s h + i - p,\,s w + j - p}$$

    ``weight`` (out, in, k, k), ``bias`` (out,). Forward is $Y = W \mathrm{cols}$ with
    ``cols`` the im2col matrix $(C k^2, N H_o W_o)$; with $G$ the upstream gradient as
    $(C_{out}, N H_o W_o)$, backward is $\partial L/\partial W = G\, \mathrm{cols}^\top$ and
    $\partial L/\partial x = \mathrm{col2im}(W^\top G)$.

    **Groups.** With ``groups`` $= g$ the channels split into $g$ independent convolutions:
    output channel $o$ sees only the $C/g$ input channels of its group, ``weight`` is
    (out, in / g, k, k) and the matmul becomes a batch of $g$ matmuls. ``groups == in ==
    out`` is the *depthwise* convolution of MobileNet (one $k \times k$ filter per channel).

    >>> conv = Conv2d(1, 4, kernel_size=3, padding=1, rng=np.random.default_rng(0))
    >>> conv(np.zeros((2, 1, 28, 28), dtype=np.float32)).shape
    (2, 4, 28, 28)
    >>> depthwise = Conv2d(8, 8, kernel_size=3, padding=1, groups=8)
    >>> depthwise.weight.shape
    (8, 1, 3, 3)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bias: bool = True,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("kernel_size", kernel_size, 1),
            ("stride", stride, 1),
            ("groups", groups, 1),
        ):
            if int(value) != value or value < low:
                raise ValueError(f"Conv2d: {name} must be an int >= {low}, got {value!r}")
        if int(padding) != padding or padding < 0:
            raise ValueError(f"Conv2d: padding must be an int >= 0, got {padding!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"Conv2d: in_channels ({in_channels}) and out_channels ({out_channels}) "
                f"must both be divisible by groups ({groups})"
            )
        rng = np.random.default_rng() if rng is None else rng
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, int(groups)
        self.kernel_size, self.stride, self.padding = int(kernel_size), int(stride), int(padding)
        # NOTE: as PyTorch, the fan-in counts only the input channels of one group.
        fan_in = in_channels // groups * kernel_size * kernel_size
        shape = (out_channels, in_channels // groups, kernel_size, kernel_size)
        self.weight = Parameter(kaiming_uniform(shape, fan_in, rng))
        self.bias = Parameter(kaiming_uniform((out_channels,), fan_in, rng)) if bias else None
        self._cache = None

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, "
            + (f"groups={self.groups}, " if self.groups > 1 else "")
            + f"bias={self.bias is not None}"
        )

    def forward(self, x: np.ndarray) -> np.ndarray:
        k, s, p = self.kernel_size, self.stride, self.padding
        ok = x.ndim == 4 and x.shape[1] == self.in_channels
        ok = ok and x.shape[2] + 2 * p >= k and x.shape[3] + 2 * p >= k
        _check_input(self, x, f"(N, {self.in_channels}, H, W) with H, W + 2*{p} >= {k}", ok)
        n = x.shape[0]
        h_out = conv_output_size(x.shape[2], k, s, p)
        w_out = conv_output_size(x.shape[3], k, s, p)
        if self.groups == 1:
            cols = im2col(x, k, s, p).reshape(-1, n * h_out * w_out)  # (C*k*k, N*Ho*Wo)
            w2d = self.weight.data.reshape(self.out_channels, -1)  # (O, C*k*k)
            y = w2d @ cols  # (O, N*Ho*Wo): the one BLAS call
        else:
            g = self.groups
            cols = im2col(x, k, s, p).reshape(g, -1, n * h_out * w_out)  # (g, C/g*k*k, M)
            w3d = self.weight.data.reshape(g, self.out_channels // g, -1)  # (g, O/g, C/g*k*k)
            y = np.matmul(w3d, cols).reshape(self.out_channels, -1)  # (O, M), g matmuls
        if self.bias is not None:
            y += self.bias.data[:, None]
        self._cache = (x.shape, cols)
        # NOTE: a transposed view, NCHW by shape and (C, N, H, W) in memory; no copy.
        return y.reshape(self.out_channels, n, h_out, w_out).transpose(1, 0, 2, 3)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        self._need_cache(self._cache)
        x_shape, cols = self._cache
        n, o, h_out, w_out = grad_out.shape
        g = grad_out.transpose(1, 0, 2, 3).reshape(o, n * h_out * w_out)  # (O, N*Ho*Wo)
        if self.bias is not None:
            self.bias.grad += g.sum(axis=1)  # (O,)
        k = self.kernel_size
        if self.groups == 1:
            w2d = self.weight.data.reshape(o, -1)  # (O, C*k*k)
            self.weight.grad += (g @ cols.T).reshape(self.weight.shape)  # (O, C, k, k)
            dcols = w2d.T @ g  # (C*k*k, N*Ho*Wo)
        else:
            groups = self.groups
            g3d = g.reshape(groups, o // groups, -1)  # (g, O/g, M)
            w3d = self.weight.data.reshape(groups, o // groups, -1)  # (g, O/g, C/g*k*k)
            dw = np.matmul(g3d, cols.transpose(0, 2, 1))  # (g, O/g, C/g*k*k)
            self.weight.grad += dw.reshape(self.weight.shape)  # (O, C/g, k, k)
            dcols = np.matmul(w3d.transpose(0, 2, 1), g3d)  # (g, C/g*k*k, M)
        dcols = dcols.reshape(x_shape[1], k, k, n, h_out, w_out)  # (C, k, k, N, Ho, Wo)
        return col2im(dcols, x_shape, k, self.stride, self.padding)  # (N, C, H, W)


class ReLU(Module):
    r"""$y = \max(x, 0)$; the gradient passes where $x > 0$ (0 at $x = 0$, as PyTorch).

    >>> ReLU()(np.array([-1.0, 0.0, 2.0])).tolist()
    [0.0, 0.0, 2.0]
    """

    def __init__(self) -> None:
        super().__init__()
        self._cache = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        _check_input(self, x, "(any shape)", True)
        mask = x > 0
        self._cache = mask
        return x * mask

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        self._need_cache(self._cache)
        return grad_out * self._cache


class MaxPool2d(Module):
    r"""Max over each $k \times k$ window with stride $s$ (default $s = k$), floor mode.

    The gradient goes to the (first, in row-major order) maximum of each window, as in
    PyTorch; overlapping windows add up.

    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> MaxPool2d(2)(x)[0, 0].tolist()
    [[5.0, 7.0], [13.0, 15.0]]
    """

    def __init__(self, kernel_size: int, stride: int | None = None) -> None:
        super().__init__()
        stride = kernel_size if stride is None else stride
        for name, value in (("kernel_size", kernel_size), ("stride", stride)):
            if int(value) != value or value < 1:
                raise ValueError(f"MaxPool2d: {name} must be an int >= 1, got {value!r}")
        self.kernel_size, self.stride = int(kernel_size), int(stride)
        self._cache = None

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"

    def _window_offsets(self, h_out: int, w_out: int) -> list[tuple[slice, slice]]:
        """For each offset (i, j) in the window, the strided slices of the pixels it covers."""
        k, s = self.kernel_size, self.stride
        return [
            (slice(i, i + s * h_out, s), slice(j, j + s * w_out, s))
            for i in range(k)
            for j in range(k)
        ]

    def forward(self, x: np.ndarray) -> np.ndarray:
        k, s = self.kernel_size, self.stride
        ok = x.ndim == 4 and x.shape[2] >= k and x.shape[3] >= k
        _check_input(self, x, f"(N, C, H, W) with H, W >= {k}", ok)
        h_out, w_out = conv_output_size(x.shape[2], k, s, 0), conv_output_size(x.shape[3], k, s, 0)
        # NOTE: a running maximum over the k*k strided views of x (no window copies); the
        # strict ">" keeps the first maximum of a tie, which is where PyTorch sends the gradient.
        offsets = self._window_offsets(h_out, w_out)
        rows, cols = offsets[0]
        y = x[:, :, rows, cols]  # (N, C, Ho, Wo), offset (0, 0)
        argmax = np.zeros(y.shape, dtype=np.int8 if k * k <= 127 else np.int32)
        for index, (rows, cols) in enumerate(offsets[1:], start=1):
            candidate = x[:, :, rows, cols]  # (N, C, Ho, Wo), a view
            better = candidate > y
            y = np.where(better, candidate, y)
            argmax[better] = index
        self._cache = (x.shape, argmax)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        self._need_cache(self._cache)
        x_shape, argmax = self._cache
        h_out, w_out = argmax.shape[2:]
        dx = np.zeros(x_shape, dtype=grad_out.dtype)  # (N, C, H, W)
        # NOTE: one pass per window offset (4 for a 2x2 window), never a loop over the batch;
        # "+=" because overlapping windows (stride < kernel) share pixels.
        for index, (rows, cols) in enumerate(self._window_offsets(h_out, w_out)):
            dx[:, :, rows, cols] += grad_out * (argmax == index)
        return dx


class Flatten(Module):
    """Reshape (N, ...) to (N, features); backward reshapes back.

    >>> Flatten()(np.zeros((2, 3, 4, 4))).shape
    (2, 48)
    """

    def __init__(self) -> None:
        super().__init__()
        self._cache = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        _check_input(self, x, "(N, ...) with at least 2 dimensions", x.ndim >= 2)
        self._cache = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        self._need_cache(self._cache)
        return grad_out.reshape(self._cache)


class BatchNorm2d(Module):
    r"""Batch normalisation over the (N, H, W) axes of each channel.

    $$\hat{x} = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}, \qquad y = \gamma \hat{x} + \beta.$$

    Training mode uses the batch mean $\mu$ and biased variance $\sigma^2$ and updates the
    running statistics with the *unbiased* variance, as PyTorch:
    $\mathrm{running} \leftarrow (1 - m)\,\mathrm{running} + m\,\mathrm{batch}$.
    Evaluation mode normalises with the running statistics (a fixed affine map).

    Backward in training mode, with $M = N H W$ values per channel and $g$ the upstream
    gradient (sums over $N, H, W$):
    $$\frac{\partial L}{\partial x} = \frac{\gamma}{M\sqrt{\sigma^2 + \epsilon}}
    \Big(M g - \textstyle\sum g - \hat{x} \sum g \hat{x}\Big),\quad
    \frac{\partial L}{\partial \gamma} = \textstyle\sum g \hat{x},\quad
    \frac{\partial L}{\partial \beta} = \textstyle\sum g.$$

    >>> bn = BatchNorm2d(3)
    >>> y = bn(np.random.default_rng(0).normal(5.0, 2.0, (8, 3, 4, 4)))
    >>> bool(np.allclose(y.mean(axis=(0, 2, 3)), 0.0, atol=1e-6)), bn.running_mean.shape
    (True, (3,))
    """

    _buffers = ("running_mean", "running_var")

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = Parameter(np.ones(num_features))  # gamma
        self.bias = Parameter(np.zeros(num_features))  # beta
        self.running_mean = np.zeros(num_features, dtype=np.float32)
        self.running_var = np.ones(num_features, dtype=np.float32)
        self._cache = None

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"

    def forward(self, x: np.ndarray) -> np.ndarray:
        ok = x.ndim == 4 and x.shape[1] == self.num_features
        _check_input(self, x, f"(N, {self.num_features}, H, W)", ok)
        axes = (0, 2, 3)
        if self.training:
            m = x.size // x.shape[1]
            if m < 2:
                raise ValueError(
                    f"{self._name()}: training mode needs more than 1 value per channel, "
                    f"got input of shape {x.shape}"
                )
            mean = x.mean(axis=axes)  # (C,)
            centered = x - mean[:, None, None]  # (N, C, H, W)
            var = (centered * centered).mean(axis=axes)  # (C,), biased: normalises the batch
            mom = self.momentum
            # NOTE: the running variance is the unbiased estimate (times M / (M - 1)), as torch.
            self.running_mean[...] = (1 - mom) * self.running_mean + mom * mean
            self.running_var[...] = (1 - mom) * self.running_var + mom * var * (m / (m - 1))
        else:
            var = self.running_var
            centered = x - self.running_mean[:, None, None]  # (N, C, H, W)
        inv_std = 1.0 / np.sqrt(var + self.eps)  # (C,)
        x_hat = centered * inv_std[:, None, None]  # (N, C, H, W)
        self._cache = (x_hat, inv_std, self.training)
        return x_hat * self.weight.data[:, None, None] + self.bias.data[:, None, None]

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        self._need_cache(self._cache)
        x_hat, inv_std, training = self._cache
        axes = (0, 2, 3)
        sum_g = grad_out.sum(axis=axes)  # (C,)
        sum_g_xhat = (grad_out * x_hat).sum(axis=axes)  # (C,)
        self.weight.grad += sum_g_xhat
        self.bias.grad += sum_g
        scale = (self.weight.data * inv_std)[:, None, None]  # (C, 1, 1)
        if not training:
            return grad_out * scale  # the statistics are constants in eval mode
        m = grad_out.size // grad_out.shape[1]
        mean_g = (sum_g / m)[:, None, None]  # (C, 1, 1)
        mean_g_xhat = (sum_g_xhat / m)[:, None, None]  # (C, 1, 1)
        return scale * (grad_out - mean_g - x_hat * mean_g_xhat)  # (N, C, H, W)
