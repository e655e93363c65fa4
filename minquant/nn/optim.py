r"""Optimisers: SGD (momentum, weight decay) and Adam, step for step as ``torch.optim``.

References:

* B. T. Polyak, "Some methods of speeding up the convergence of iteration methods", 1964.
* D. P. Kingma, J. Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015
  (arXiv:1412.6980).
"""

from collections.abc import Iterable

import numpy as np

from minquant.nn.module import Parameter


class Optimizer:
    """Holds a list of parameters; ``step()`` updates them from their ``.grad``."""

    def __init__(self, params: Iterable[Parameter], lr: float) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.lr = lr

    def zero_grad(self) -> None:
        for p in self.params:
            p.zero_grad()

    def step(self) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    r"""Stochastic gradient descent with (heavy-ball) momentum, as ``torch.optim.SGD``.

    $$g \leftarrow \nabla_\theta L + \lambda\theta, \qquad
    v \leftarrow \mu v + g \ (v = g \text{ at the first step}), \qquad
    \theta \leftarrow \theta - \eta v.$$

    >>> p = Parameter(np.array([1.0]))
    >>> p.grad[:] = 2.0
    >>> opt = SGD([p], lr=0.1)
    >>> opt.step()
    >>> p.data.tolist()
    [0.800000011920929]
    """

    def __init__(
        self,
        params: Iterable[Parameter],
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr)
        self.momentum, self.weight_decay = momentum, weight_decay
        self.velocity: list[np.ndarray | None] = [None] * len(self.params)

    def step(self) -> None:
        for i, p in enumerate(self.params):
            g = p.grad
            if self.weight_decay != 0:
                g = g + self.weight_decay * p.data
            if self.momentum != 0:
                v = self.velocity[i]
                # NOTE: PyTorch starts the momentum buffer at the first gradient, not at 0.
                v = g.copy() if v is None else self.momentum * v + g
                self.velocity[i] = v
                g = v
            p.data -= self.lr * g


class Adam(Optimizer):
    r"""Adam with bias correction, as ``torch.optim.Adam``.

    $$m \leftarrow \beta_1 m + (1 - \beta_1) g, \qquad v \leftarrow \beta_2 v + (1 - \beta_2) g^2,$$
    $$\theta \leftarrow \theta - \frac{\eta}{1 - \beta_1^t}\,
    \frac{m}{\sqrt{v} / \sqrt{1 - \beta_2^t} + \epsilon}.$$

    ``weight_decay`` adds $\lambda\theta$ to the gradient (L2, not AdamW).

    >>> p = Parameter(np.array([1.0]))
    >>> p.grad[:] = 0.5
    >>> opt = Adam([p], lr=0.1)
    >>> opt.step()
    >>> round(float(p.data[0]), 6)  # the first step moves every weight by about lr
    0.9
    """

    def __init__(
        self,
        params: Iterable[Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.t = 0
        self.m = [np.zeros_like(p.data) for p in self.params]
        self.v = [np.zeros_like(p.data) for p in self.params]

    def step(self) -> None:
        self.t += 1
        beta1, beta2 = self.betas
        bias_correction1 = 1 - beta1**self.t
        bias_correction2 = 1 - beta2**self.t
        step_size = self.lr / bias_correction1
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            g = p.grad
            if self.weight_decay != 0:
                g = g + self.weight_decay * p.data
            m *= beta1
            m += (1 - beta1) * g
            v *= beta2
            v += (1 - beta2) * g * g
            denom = np.sqrt(v) / np.sqrt(bias_correction2) + self.eps
            p.data -= step_size * m / denom


def clip_grad_norm(params: Iterable[Parameter], max_norm: float) -> float:
    r"""Scale all gradients in place so that their global L2 norm is at most ``max_norm``.

    $$n = \sqrt{\textstyle\sum_p \lVert g_p \rVert^2}, \qquad
    g_p \leftarrow g_p \cdot \min\big(1, \tfrac{\text{max\_norm}}{n + 10^{-6}}\big),$$

    as ``torch.nn.utils.clip_grad_norm_``; returns the norm $n$ before clipping (a useful
    training diagnostic: spikes show instability).

    >>> p = Parameter(np.zeros(2))
    >>> p.grad[:] = [3.0, 4.0]
    >>> clip_grad_norm([p], max_norm=1.0), p.grad.round(4).tolist()
    (5.0, [0.6, 0.8])
    """
    if max_norm <= 0:
        raise ValueError(f"clip_grad_norm: max_norm must be > 0, got {max_norm}")
    params = list(params)
    # NOTE: squares summed in float64 (torch sums in the gradient dtype; the two agree to
    # float32 rounding, far below what clipping itself changes).
    total = float(np.sqrt(sum(np.sum(p.grad.astype(np.float64) ** 2) for p in params)))
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for p in params:
            p.grad *= np.asarray(coef, dtype=p.grad.dtype)
    return total
